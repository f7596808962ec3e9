"""Which noise goes with which data point: independent draws, or minibatch optimal transport."""

import torch
from torch import Tensor


def ot_pairing(x0: Tensor, x1: Tensor) -> Tensor:
    """Minibatch optimal transport: the permutation of x1 minimising sum_i ||x0_i - x1_perm(i)||^2.

    Pairing each data point with nearby noise makes the paths cross less, so the learned flow
    is straighter (fewer solver steps for the same error). Exact, by the Hungarian algorithm.
    """
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).float(), x1.flatten(1).float()).pow(2).cpu().numpy()
    _, columns = linear_sum_assignment(cost)
    return torch.as_tensor(columns, device=x1.device)
