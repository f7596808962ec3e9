"""Built-in data sets: MNIST, the embedded MNIST subset and four 2-D toys.

Image folders are not registered here: they need a path, which ``fmcli.data.resolve`` handles.
"""

from functools import partial

from fmcli.data.base import DatasetSpec
from fmcli.data.mini import load_mnist_mini
from fmcli.data.mnist import load_mnist
from fmcli.data.toys import SPLITS as TOY_SPLITS
from fmcli.data.toys import TOYS, load_toy
from fmcli.hookspecs import hookimpl


@hookimpl
def fm_register_datasets(register):
    register(
        DatasetSpec(
            name="mnist",
            description="MNIST digits, 28x28 grayscale, 60,000 train / 10,000 test (IDX files, downloaded if absent)",
            kind="image",
            splits=("train", "test"),
            load=load_mnist,
        )
    )
    register(
        DatasetSpec(
            name="mnist-mini",
            description="10,000 train / 2,000 test real MNIST digits, balanced, shipped with fm (no download)",
            kind="image",
            splits=("train", "test"),
            load=load_mnist_mini,
            # Sized for the README's first command: about 4 minutes on 2 CPU cores.
            train_defaults={"steps": 350, "batch_size": 64, "warmup_steps": 50},
        )
    )
    for name, (_, _, description) in TOYS.items():
        load = partial(load_toy, name)
        register(DatasetSpec(name=name, description=description, kind="points", splits=TOY_SPLITS, load=load))
