"""Training objectives: what a batch is trained towards, apart from the loop that trains it.

An objective is a small object called as ``objective(net, batch) -> LossOutput`` (after NVlabs' EDM,
whose losses are classes called with the network and the data). It also says which times a batch
draws (``draw_times``), whether the network needs MeanFlow's interval input (``interval``), and
whether DDP's wrapper and ``torch.compile`` can carry its forward pass (``uses_ddp``, ``compiles``).
``fmcli.training.loop.Trainer`` keeps the loop, precision, distribution and files, and names none of them.

    base.py           the interface, the batch it sees, the time distribution
    flow_matching.py  E || v(x_t, t) - (x1 - x0) ||^2
    meanflow.py       MeanFlow's average velocity with its targets (x1 - x0, self-guided, a teacher's)
    pool.py           a teacher's solved jumps, exact targets for the sampler's grids (distillation)

``make_objective(config, num_classes, teacher, item_shape, captions)`` builds the one a training config asks for.
"""

from fmcli.training.objectives.base import Batch, LossOutput, Objective, TimeDistribution, Times
from fmcli.training.objectives.flow_matching import FlowMatching
from fmcli.training.objectives.meanflow import (
    ConditionalVelocity,
    MeanFlow,
    SelfGuidedVelocity,
    TeacherVelocity,
    make_meanflow,
)

__all__ = [
    "Batch",
    "ConditionalVelocity",
    "FlowMatching",
    "LossOutput",
    "MeanFlow",
    "Objective",
    "SelfGuidedVelocity",
    "TeacherVelocity",
    "TimeDistribution",
    "Times",
    "make_objective",
]


def make_objective(config, num_classes: int, teacher=None, item_shape=None, captions=None) -> Objective:
    """The objective of a ``TrainConfig``; ``teacher`` (a LoadedModel) makes a MeanFlow objective distil it.
    ``item_shape`` is the shape of one training item (MeanFlow's jump diagnostics draw noise of it); ``captions``
    (a text model's, one tuple per item) the prompts a text teacher's pool and the diagnostics are drawn from."""
    times = TimeDistribution(config.time_sampling, config.time_mean, config.time_std)
    if config.objective == "fm":
        return FlowMatching(times)
    return make_meanflow(config, times, num_classes, teacher, item_shape, captions)
