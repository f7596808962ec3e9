"""The default layers of the training configuration: what fm chooses for an option the user left unset, and why.

``fmcli.training.config.resolve`` stacks them under the TOML file and the command line, in this order: the data
set's own defaults, the device's (batch and learning rate by measurement), the space's (a run in latent space) and
the objective's; each says why in ``decisions`` (config.json).
"""

OBJECTIVE_DEFAULTS = {"meanflow": {"time_sampling": "logit-normal", "time_mean": -0.4, "time_std": 1.0}}


def dataset_defaults(data: str) -> tuple[dict, str]:
    """The registered data set's own training defaults; image folders: horizontal flips on."""
    from fmcli.data.resolve import registered_dataset

    spec = registered_dataset(data)
    if spec is None:  # a folder of photos, icons, faces...: mirror images are as likely as the originals
        return {"hflip": True}, "image folders: a mirror image is as likely as the image"
    return {"hflip": spec.flip_invariant} | dict(spec.train_defaults), f"the {spec.name} data set's own default"


# Batch size and learning rate of image folders and full MNIST, per device. CPU: the winner of the RGB search
# (bench/demo_search.py --rgb: FID and accuracy after 10 minutes of 2 cores; docs/measured/folder-defaults.md).
# GPU: not measured by fm (no GPU was lent); the batch and learning rate of published recipes for U-Nets of the CUDA
# presets' size (DDPM's CIFAR-10 network, TorchCFM's CIFAR-10 example: batch 128, lr 2e-4).
DEVICE_DEFAULTS = {
    ("folder", "cpu"): (
        {"batch_size": 32, "lr": 1e-3},
        "CPU default for image folders: batch 32 at lr 1e-3 with the 16-channel preset won the RGB search "
        "(bench/demo_search.py --rgb, docs/measured/folder-defaults.md)",
    ),  # fmt: skip
    ("folder", "gpu"): (
        {"batch_size": 128, "lr": 2e-4},
        "GPU default for image folders: DDPM/TorchCFM CIFAR-10 recipe (not measured by fm)",
    ),  # fmt: skip
    ("mnist", "cpu"): (
        {"batch_size": 16, "lr": 2e-3},
        "CPU default for MNIST: batch 16 won the demo search (bench/demo_search.py) on 2 cores",
    ),  # fmt: skip
    ("mnist", "gpu"): ({"batch_size": 128, "lr": 2e-3}, "GPU default for MNIST: fm 0.1's (not measured on a GPU)"),
}


def device_defaults(data: str, device_type: str) -> tuple[dict, str]:
    """Batch size and learning rate for image folders and full MNIST on this kind of device (``DEVICE_DEFAULTS``)."""
    from fmcli.data.resolve import registered_dataset

    spec = registered_dataset(data)
    kind = "folder" if spec is None else spec.name if spec.name == "mnist" else None
    if kind is None:
        return {}, ""
    values, why = DEVICE_DEFAULTS[(kind, "cpu" if device_type == "cpu" else "gpu")]
    return dict(values), why


# From this --image-size, --autoencoder auto trains in latent space (fmcli.training.latent.plan_space).
LATENT_FROM = {"cpu": 128, "gpu": 256}
LATENT_DEFAULTS = (
    {"time_sampling": "logit-normal"},
    "latent space: logit-normal times (mean 0, std 1; Stable Diffusion 3's) beat uniform ones over the same 2,714 "
    "steps of the 128 px latent run: FID 71.2 against 100.6 and accuracy 0.800 against 0.736 at the default "
    "guidance, 89.6 against 152.3 and 0.684 against 0.600 without (docs/measured/latent.md)",
)


def space_defaults(autoencoder: str, image_size: int | None, device_type: str) -> tuple[dict, str]:
    """The defaults of a run that trains in latent space: an autoencoder given, or ``auto`` from ``LATENT_FROM``."""
    threshold = LATENT_FROM["cpu" if device_type == "cpu" else "gpu"]
    latent = autoencoder != "none" and (autoencoder != "auto" or (image_size or 0) >= threshold)
    return LATENT_DEFAULTS if latent else ({}, "")


def objective_defaults(objective: str) -> tuple[dict, str]:
    return OBJECTIVE_DEFAULTS.get(objective, {}), f"the {objective} objective's default (the MeanFlow paper's)"
