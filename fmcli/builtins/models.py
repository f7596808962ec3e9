"""Built-in model architectures: the image U-Net and the point MLP (imported when first built)."""

from fmcli.hookspecs import hookimpl
from fmcli.specs import ModelSpec, lazy_callable


@hookimpl
def fm_register_models(register):
    register(
        ModelSpec(
            name="unet",
            description="U-Net for images (time + class conditioning, optional attention)",
            build=lazy_callable("fmcli.models.unet:UNet"),
        )
    )
    register(
        ModelSpec(
            name="mlp",
            description="residual MLP for point data such as the 2-D toys",
            build=lazy_callable("fmcli.models.mlp:MLPVelocity"),
        )
    )
