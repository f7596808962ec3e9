"""Built-in data sets: MNIST, the embedded MNIST subset, captioned shapes and four 2-D toys (loaders imported on
first load).

Image folders are not registered here: they need a path, which ``fmcli.data.resolve`` handles.
"""

from fmcli.hookspecs import hookimpl
from fmcli.specs import DatasetSpec, lazy_callable

TOYS = {  # name -> description; the samplers are fmcli.data.toys.TOYS
    "moons": "two interleaving half circles (2-D), labelled by moon",
    "8gaussians": "eight Gaussians on a circle (2-D), labelled by mode",
    "checkerboard": "uniform on a 4x4 checkerboard's dark squares (2-D), unlabelled",
    "spirals": "two interleaved spiral arms (2-D), labelled by arm",
}


NAMES = ("mnist", "mnist-mini", "shapes", *TOYS)  # for --help, which never loads plugins


@hookimpl
def fm_register_datasets(register):
    register(
        DatasetSpec(
            name="mnist",
            description="MNIST digits, 28x28 grayscale, 60,000 train / 10,000 test (IDX files, downloaded if absent)",
            kind="image",
            splits=("train", "test"),
            load=lazy_callable("fmcli.data.mnist:load_mnist"),
        )
    )
    register(
        DatasetSpec(
            name="mnist-mini",
            description="10,000 train / 2,000 test real MNIST digits, balanced, shipped with fm (no download)",
            kind="image",
            splits=("train", "test"),
            load=lazy_callable("fmcli.data.mini:load_mnist_mini"),
            # The README's first command: under 5 minutes on 2 CPU cores. Small batches won at this budget
            # (bench/demo_search.py: batch 16 > 32 > 64 >> 128 in FID after the same wall time). The warm-up is
            # the general rule's (10% of the planned steps, at most 200), so --max-time runs scale it too.
            train_defaults={"steps": 1600, "batch_size": 16},
        )
    )
    register(
        DatasetSpec(
            name="shapes",
            description="coloured shapes with captions, 32x32 RGB, 8,000 train / 2,000 test, drawn on the fly",
            kind="image",
            splits=("train", "test"),
            load=lazy_callable("fmcli.data.shapes:load_shapes"),
            # A mirror image is as likely as the image: every shape is mirror-symmetric (a flipped one is the same
            # shape turned, and turns are uniform), and no caption speaks of left or right.
            flip_invariant=True,
        )
    )
    for name, description in TOYS.items():
        register(
            DatasetSpec(
                name=name,
                description=description,
                kind="points",
                splits=("train", "test"),
                load=lazy_callable("fmcli.data.toys:load_toy", name),
            )
        )
