"""Sample-quality metrics computed on feature vectors: FID, KID, precision/recall, accuracy.

All functions take features as float tensors [N, d] (one row per image) and work in
float64, so small differences between large numbers (FID of near-identical sets) stay exact.

FID  (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two sets,
     ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}). Biased upwards at small N; it needs
     N > d samples per set for a non-singular covariance.
KID  (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
     k(x, y) = (x.y / d + 1)^3, averaged over random subsets. Unbiased at any N >= 2.
P/R  (Kynkäänniemi et al. 2019): each set defines a manifold, the union of balls around
     its points with radius = distance to the k-th nearest neighbour in the same set.
     Precision = share of generated points inside the real manifold (fidelity);
     recall = share of real points inside the generated manifold (diversity).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from fmcli.errors import FMError


@dataclass
class FeatureStats:
    mean: Tensor  # [d] float64
    cov: Tensor  # [d, d] float64 (unbiased, divided by N - 1)
    count: int


def feature_statistics(features: Tensor) -> FeatureStats:
    """Mean and unbiased covariance of features [N, d]."""
    if features.shape[0] < 2:
        raise FMError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
    f = features.double()
    mean = f.mean(0)
    centred = f - mean
    cov = centred.T @ centred / (f.shape[0] - 1)
    return FeatureStats(mean=mean, cov=cov, count=f.shape[0])


def fid_min_samples(dim: int) -> int:
    """Fewest samples with a full-rank covariance in ``dim`` dimensions (rank <= N - 1)."""
    return dim + 1


def check_sample_count(num: int, extractor: str, dim: int, metrics: tuple[str, ...]) -> None:
    if "fid" in metrics and num < fid_min_samples(dim):
        raise FMError(
            f"FID with the {extractor!r} extractor ({dim}-d features) needs at least {fid_min_samples(dim)} samples "
            f"for a non-singular covariance, got {num}; raise --num, or leave FID out (--metrics kid,pr): "
            f"KID works from 2 samples"
        )


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}).

    Tr((S1 S2)^{1/2}) equals the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S1^{1/2} S2 S1^{1/2} (it is similar to S1 S2), which avoids the complex
    round-off of a general matrix square root.
    """
    mean1, mean2, cov1, cov2 = (a.double() for a in (mean1, mean2, cov1, cov2))
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    middle = (middle + middle.T) / 2
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    value = (mean1 - mean2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt
    return float(value.clamp_min(0))


def fid_from_features(features1: Tensor, features2: Tensor) -> float:
    s1, s2 = feature_statistics(features1), feature_statistics(features2)
    return frechet_distance(s1.mean, s1.cov, s2.mean, s2.cov)


def _polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """k(a_i, b_j) = (a_i . b_j / d + 1)^3, computed in place (the matrices are the cost of KID)."""
    kernel = a @ b.T
    return kernel.div_(a.shape[1]).add_(1).pow_(3)


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD^2 between sets x [m, d] and y [n, d] with the cubic polynomial kernel.

    Diagonal terms k(x_i, x_i) are left out of the within-set means, which is what makes
    the estimate unbiased (its expectation is 0 when both sets come from one distribution).
    """
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kernel_inception_distance(
    real: Tensor, fake: Tensor, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over random subsets.

    Subsets (drawn without replacement within each subset) keep the cost at
    num_subsets * subset_size^2 kernel evaluations; the subset size shrinks to the smaller set.
    """
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise FMError(
            f"KID needs at least 2 samples in each set, got {real.shape[0]} real and {fake.shape[0]} generated"
        )
    real, fake = real.double(), fake.double()
    generator = torch.Generator().manual_seed(seed)
    # With both sets no larger than the subset, every subset is the whole set: one estimate suffices.
    if size == real.shape[0] == fake.shape[0]:
        num_subsets = 1
    values = []
    for _ in range(num_subsets):
        r = real[torch.randperm(real.shape[0], generator=generator)[:size]]
        f = fake[torch.randperm(fake.shape[0], generator=generator)[:size]]
        values.append(mmd2_unbiased(r, f))
    stacked = torch.tensor(values, dtype=torch.float64)
    std = float(stacked.std()) if len(values) > 1 else 0.0
    return float(stacked.mean()), std


def _kth_neighbour_radii(points: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if points.shape[0] <= k:
        raise FMError(f"precision/recall with k={k} needs more than {k} samples per set, got {points.shape[0]}")
    radii = []
    for start in range(0, points.shape[0], chunk):
        distances = torch.cdist(points[start : start + chunk], points)
        # The smallest distance is the point to itself (0), so the k-th neighbour is index k.
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_manifold(queries: Tensor, points: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """For each query: is it within radius_j of some reference point j?"""
    inside = []
    for start in range(0, queries.shape[0], chunk):
        distances = torch.cdist(queries[start : start + chunk], points)
        inside.append((distances <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    real, fake = real.double(), fake.double()
    precision = _inside_manifold(fake, real, _kth_neighbour_radii(real, k)).double().mean()
    recall = _inside_manifold(real, fake, _kth_neighbour_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def class_accuracy(predicted: Tensor, requested: Tensor, num_classes: int) -> tuple[float, list[float | None]]:
    """Share of samples whose predicted class is the requested one: overall and per class.

    Classes that were never requested get None.
    """
    correct = (predicted == requested).double()
    per_class: list[float | None] = []
    for c in range(num_classes):
        mask = requested == c
        per_class.append(float(correct[mask].mean()) if mask.any() else None)
    return float(correct.mean()), per_class


def class_histogram(predicted: Tensor, num_classes: int) -> list[int]:
    """How many samples the classifier assigns to each class."""
    return torch.bincount(predicted.long(), minlength=num_classes)[:num_classes].tolist()
