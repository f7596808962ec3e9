"""``rings``: points on three concentric circles (radii 0.5, 1.0, 1.5), labelled by ring.

Each ring gets a share of the points proportional to its radius, so the density along every
circle is the same; points are jittered radially with standard deviation 0.03. Procedural:
``num_samples`` (default 10,000) and ``seed`` choose the sample, drawn from
``numpy.random.default_rng([seed, split_index])`` like fm's built-in toys, so the test split
(index 1) comes from a different random stream than the train split (index 0).
"""

import numpy as np
import torch

from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.errors import FMError

RADII = (0.5, 1.0, 1.5)
NOISE = 0.03
DEFAULT_NUM_SAMPLES = 10_000
SPLITS = ("train", "test")


def load_rings(options: LoadOptions) -> ArrayDataset:
    if options.split not in SPLITS:
        raise FMError(f"rings has splits 'train' and 'test', not {options.split!r}")
    n = options.num_samples or DEFAULT_NUM_SAMPLES
    rng = np.random.default_rng([options.seed, SPLITS.index(options.split)])
    radii = np.array(RADII)
    labels = rng.choice(len(radii), size=n, p=radii / radii.sum())
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = radii[labels] + rng.normal(0, NOISE, n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return ArrayDataset(
        name="rings",
        split=options.split,
        kind="points",
        data=torch.from_numpy(points).float(),
        labels=torch.from_numpy(labels).long(),
        class_names=[f"r={r}" for r in RADII],
        info={"radii": RADII, "noise": NOISE, "seed": options.seed},
    )
