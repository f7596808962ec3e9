"""A model plugin that records what the training loop (or a sampler) feeds the network.

Two model names are registered through the public ``fm_register_models`` hook (see the
``recorder`` fixture in conftest.py): ``recording-mlp`` and ``recording-unet``. They ARE the real
networks (subclasses of ``MLPVelocity`` and ``UNet``: same maths, same state-dict keys); every
forward call additionally appends a ``Call`` to the recorder. Train with
``model={"name": "recording-mlp", ...}``: the ``model`` override is merged into the data set's
preset config, so only the name (and anything else given) changes.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fmcli.hookspecs import hookimpl
from fmcli.models import ModelSpec
from fmcli.models.mlp import MLPVelocity
from fmcli.models.unet import UNet
from fmcli.training.setup import PROBING


@dataclass
class Call:
    """One forward call: its inputs (detached float32 copies) and the state it ran under."""

    x: Tensor
    t: Tensor
    y: Tensor | None
    grad: bool  # torch.is_grad_enabled(): True for training forwards, False when sampling
    autocast: bool  # torch.is_autocast_enabled("cpu")
    autocast_dtype: torch.dtype
    out_dtype: torch.dtype  # dtype of the network's output (bfloat16 when its layers ran under bf16 autocast)


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    conv_calls: int = 0  # nn.Conv2d forwards, recomputations in the backward pass included
    convs_per_forward: int = 0  # nn.Conv2d modules in one network (each runs once per plain forward)

    def training_calls(self) -> list[Call]:
        return [call for call in self.calls if call.grad]


def _record(recorder: Recorder, x: Tensor, t, y: Tensor | None, out: Tensor) -> None:
    if PROBING.get():  # the trainer timing its first batch before step 0: not a training step
        return
    t = torch.as_tensor(t)
    recorder.calls.append(
        Call(
            x=x.detach().float().clone(),
            t=t.detach().float().clone().reshape(-1),
            y=None if y is None else y.detach().clone(),
            grad=torch.is_grad_enabled(),
            autocast=torch.is_autocast_enabled("cpu"),
            autocast_dtype=torch.get_autocast_dtype("cpu"),
            out_dtype=out.dtype,
        )
    )


class RecordingMLP(MLPVelocity):
    def __init__(self, recorder: Recorder, **kwargs):
        super().__init__(**kwargs)
        self.recorder = recorder
        self.config = {**self.config, "name": "recording-mlp"}

    def forward(self, x, t, y=None):
        out = super().forward(x, t, y)
        _record(self.recorder, x, t, y, out)
        return out


class RecordingUNet(UNet):
    def __init__(self, recorder: Recorder, **kwargs):
        super().__init__(**kwargs)
        self.recorder = recorder
        self.config = {**self.config, "name": "recording-unet"}
        convs = [module for module in self.modules() if isinstance(module, nn.Conv2d)]
        recorder.convs_per_forward = len(convs)
        for conv in convs:
            conv.register_forward_hook(self._count_conv)

    def _count_conv(self, module, inputs, output) -> None:
        if not PROBING.get():
            self.recorder.conv_calls += 1

    def forward(self, x, t, y=None):
        out = super().forward(x, t, y)
        _record(self.recorder, x, t, y, out)
        return out


class RecordingPlugin:
    """The plugin object registered with ``pm.register``: builds recording networks bound to one recorder."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    @hookimpl
    def fm_register_models(self, register):
        register(
            ModelSpec(
                name="recording-mlp",
                description="MLP that records its inputs (tests)",
                build=lambda **kwargs: RecordingMLP(self.recorder, **kwargs),
            )
        )
        register(
            ModelSpec(
                name="recording-unet",
                description="U-Net that records its inputs (tests)",
                build=lambda **kwargs: RecordingUNet(self.recorder, **kwargs),
            )
        )
