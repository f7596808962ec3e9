"""2-D toy distributions (float32 [N, 2], roughly unit scale) for quick experiments and plots.

Each is sampled from ``numpy.random.default_rng([seed, split_index])``, so a seed gives the same
points every time, and the test split (index 1) comes from a different stream than the
training split (index 0).
``options.num_samples`` defaults to ``DEFAULT_NUM_SAMPLES`` for every split.

* ``moons``: two interleaving half circles (sklearn's ``make_moons``, noise 0.1), centred, x1.5;
  label = moon (``upper``, ``lower``).
* ``8gaussians``: eight Gaussians (std 0.15) evenly spaced on the circle of radius sqrt(2), so each
  coordinate has variance about 1; label = mode index, mode ``k`` at angle ``2 pi k / 8``.
* ``checkerboard``: uniform on the 8 dark squares of a 4x4 board covering [-2, 2]^2; unlabelled.
* ``spirals``: two interleaved arms r = theta / 4, theta in [0, 3 pi], the second rotated by pi,
  noise 0.1; label = arm.
"""

from collections.abc import Callable

import numpy as np
import torch

from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.errors import FMError

DEFAULT_NUM_SAMPLES = 20_000
SPLITS = ("train", "test")

Sample = tuple[np.ndarray, np.ndarray | None]  # points [N, 2], labels [N] or None


def split_counts(n: int, parts: int) -> np.ndarray:
    """``n`` split into ``parts`` near-equal counts (the first ones get the remainder)."""
    return np.full(parts, n // parts) + (np.arange(parts) < n % parts)


def moons(n: int, rng: np.random.Generator) -> Sample:
    upper, lower = split_counts(n, 2)
    angle_upper, angle_lower = rng.uniform(0, np.pi, upper), rng.uniform(0, np.pi, lower)
    points = np.concatenate(
        [
            np.stack([np.cos(angle_upper), np.sin(angle_upper)], 1),
            np.stack([1 - np.cos(angle_lower), 0.5 - np.sin(angle_lower)], 1),
        ]
    )
    points += rng.normal(0, 0.1, points.shape)
    points = (points - (0.5, 0.25)) * 1.5  # centre the pair, stretch to about unit scale
    return points, np.repeat([0, 1], [upper, lower])


def eight_gaussians(n: int, rng: np.random.Generator) -> Sample:
    labels = rng.integers(0, 8, n)
    angles = 2 * np.pi * labels / 8
    centres = np.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1)
    return centres + rng.normal(0, 0.15, (n, 2)), labels


def checkerboard(n: int, rng: np.random.Generator) -> Sample:
    """x uniform on [-2, 2]; y uniform on the two unit cells of x's column that share its colour."""
    x = rng.uniform(-2, 2, n)
    # cell (floor x, floor y) is dark when floor(x) + floor(y) is even
    row_within = rng.integers(0, 2, n) * 2 + (np.floor(x) % 2)  # 0 or 2 (+1 on odd columns)
    y = rng.uniform(0, 1, n) + row_within - 2
    return np.stack([x, y], 1), None


def spirals(n: int, rng: np.random.Generator) -> Sample:
    first, second = split_counts(n, 2)
    theta = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi  # sqrt: even density along the arm
    arm = np.repeat([0, 1], [first, second])
    radius = theta / 4
    angle = theta + np.pi * arm  # the second arm is the first rotated by 180 degrees
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    return points + rng.normal(0, 0.1, (n, 2)), arm


TOYS: dict[str, tuple[Callable[[int, np.random.Generator], Sample], list[str] | None]] = {
    # name: (sampler, class names or None); descriptions are registered in fmcli.builtins.datasets
    "moons": (moons, ["upper", "lower"]),
    "8gaussians": (eight_gaussians, [str(k) for k in range(8)]),
    "checkerboard": (checkerboard, None),
    "spirals": (spirals, ["arm 0", "arm 1"]),
}


def load_toy(name: str, options: LoadOptions) -> ArrayDataset:
    """``options.num_samples`` points of toy ``name``, shuffled, deterministic in (seed, split)."""
    if options.split not in SPLITS:
        raise FMError(f"{name} has no split {options.split!r}; use one of: {', '.join(SPLITS)}")
    n = options.num_samples or DEFAULT_NUM_SAMPLES
    if n <= 0:
        raise FMError(f"num_samples must be positive, not {n}")
    rng = np.random.default_rng([options.seed, SPLITS.index(options.split)])
    sample, class_names = TOYS[name]
    points, labels = sample(n, rng)
    order = rng.permutation(n)  # the samplers emit class by class
    return ArrayDataset(
        name=name,
        split=options.split,
        kind="points",
        data=torch.from_numpy(points[order].astype(np.float32)),
        labels=None if labels is None else torch.from_numpy(labels[order].astype(np.int64)),
        class_names=None if class_names is None else list(class_names),
        info={"seed": options.seed, "num_samples": n},
    )
