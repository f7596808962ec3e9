"""Built-in training loggers: ``jsonl`` (the run's metrics.jsonl, always on) and ``tensorboard``."""

from fmcli.hookspecs import hookimpl
from fmcli.specs import LoggerSpec, lazy_callable


@hookimpl
def fm_register_loggers(register):
    register(
        LoggerSpec(
            name="jsonl",
            description="metrics.jsonl in the run folder, one JSON record per log step (always on)",
            open=lazy_callable("fmcli.training.loggers:JsonlLogger"),
        )
    )
    register(
        LoggerSpec(
            name="tensorboard",
            description="TensorBoard event files in the run folder: loss, learning rate, gradient norm, images/s "
            "and sample grids (tensorboard --logdir runs/); needs pip install 'fmcli[tensorboard]'",
            open=lazy_callable("fmcli.training.loggers:TensorBoardLogger"),
            requires="tensorboard",
            install="pip install 'fmcli[tensorboard]'",
        )
    )
