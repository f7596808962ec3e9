"""Built-in model architectures: the image U-Net and the point MLP."""

from fmcli.hookspecs import hookimpl
from fmcli.models import ModelSpec
from fmcli.models.mlp import MLPVelocity
from fmcli.models.unet import UNet


@hookimpl
def fm_register_models(register):
    register(ModelSpec(name="unet", description="U-Net for images (time + class conditioning, optional attention)", build=UNet))
    register(ModelSpec(name="mlp", description="residual MLP for point data such as the 2-D toys", build=MLPVelocity))
