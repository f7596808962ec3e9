"""The velocity networks: shapes, per-sample time and class conditioning, errors, skips, checkpointing."""

import pytest
import torch
from helpers import flow_matching_loss, randomise_zero_init
from torch import nn

from fmcli.errors import FMError
from fmcli.models.mlp import MLPVelocity
from fmcli.models.presets import count_flops, default_model_config
from fmcli.models.unet import UNet

SMALL = dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[], num_groups=4)


def unet(**overrides) -> UNet:
    torch.manual_seed(0)
    return randomise_zero_init(UNet(**(dict(in_channels=1, image_size=16) | SMALL | overrides)))


@pytest.mark.parametrize("channels, size, num_classes", [(1, 28, 0), (1, 28, 10), (3, 32, 0), (3, 32, 5)])
def test_unet_maps_each_image_to_its_own_velocity(channels, size, num_classes):
    """v has the input's shape, and sample i's velocity depends on sample i alone (no batch statistics leak
    across samples, at every size the presets use, odd 7x7 levels included)."""
    model = unet(
        in_channels=channels,
        image_size=size,
        num_classes=num_classes,
        channel_mults=[1, 2, 2],
        attention_resolutions=[size // 4],
    )
    x = torch.randn(3, channels, size, size)
    y = torch.tensor([0, 1, num_classes - 1]) if num_classes else None
    t = torch.rand(3)
    with torch.no_grad():
        v = model(x, t, y)
        changed = x.clone()
        changed[1] = torch.randn(channels, size, size)
        w = model(changed, t, y)
        alone = torch.cat([model(x[i : i + 1], t[i : i + 1], None if y is None else y[i : i + 1]) for i in range(3)])
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert torch.equal(v[0], w[0]) and torch.equal(v[2], w[2]) and not torch.allclose(v[1], w[1])
    torch.testing.assert_close(alone, v, rtol=1e-4, atol=1e-5)


def test_fresh_unet_predicts_zero_velocity():
    """The final conv is zero-initialised, so training starts from v = 0."""
    model = UNet(in_channels=1, image_size=16, **SMALL)
    assert torch.count_nonzero(model(torch.randn(2, 1, 16, 16), torch.rand(2))) == 0


@pytest.mark.parametrize(
    "make",
    [lambda: unet(num_classes=3), lambda: randomise_zero_init(MLPVelocity(dim=2, hidden=32, depth=2, num_classes=3))],
)
def test_changing_one_samples_time_changes_only_that_sample(make):
    model = make()
    shape = (4, 1, 16, 16) if isinstance(model, UNet) else (4, 2)
    x = torch.randn(shape)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    with torch.no_grad():
        base = model(x, t)
        t2 = t.clone()
        t2[2] = 0.2
        changed = model(x, t2)
    diff = (changed - base).flatten(1).abs().amax(dim=1)
    assert diff[2] > 1e-4
    assert torch.all(diff[[0, 1, 3]] < 1e-6)


def test_scalar_time_equals_the_same_time_for_every_sample():
    model = unet()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        v_scalar = model(x, torch.tensor(0.3))
        v_vector = model(x, torch.full((3,), 0.3))
        v_float = model(x, 0.3)
    torch.testing.assert_close(v_scalar, v_vector)
    torch.testing.assert_close(v_float, v_vector)
    assert (v_scalar[0] - model(x, torch.tensor(0.7))[0]).abs().max() > 1e-4  # and t matters


def test_class_label_changes_output_and_none_is_the_null_class():
    model = unet(num_classes=4)
    x, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    with torch.no_grad():
        v0 = model(x, t, torch.tensor([0, 0]))
        v1 = model(x, t, torch.tensor([1, 1]))
        v_none = model(x, t)
        v_null = model(x, t, torch.tensor([4, 4]))
    assert (v0 - v1).abs().amax() > 1e-4
    torch.testing.assert_close(v_none, v_null)
    assert (v_none - v0).abs().amax() > 1e-4


@pytest.mark.parametrize(
    "y, match",
    [
        (torch.tensor([0, 5]), r"\[0, 4\]"),
        (torch.tensor([-1, 0]), r"\[0, 4\]"),
        (torch.tensor([0.0, 1.0]), "integers"),
        (torch.tensor([0, 1, 2]), "shape"),
    ],
)
def test_bad_labels_raise(y, match):
    with pytest.raises(FMError, match=match):
        unet(num_classes=4)(torch.randn(2, 1, 16, 16), torch.rand(2), y)


def test_labels_for_unconditional_model_raise():
    with pytest.raises(FMError, match="unconditional"):
        unet(num_classes=0)(torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 1]))
    with pytest.raises(FMError, match="unconditional"):
        MLPVelocity(dim=2, hidden=16, depth=1)(torch.randn(2, 2), torch.rand(2), torch.tensor([0, 1]))


def test_bad_image_size_names_the_divisor_and_alternatives():
    with pytest.raises(FMError, match=r"image size 30 is not divisible by 4.*use 28 or 32"):
        UNet(image_size=30, channel_mults=[1, 2, 2], attention_resolutions=[])
    with pytest.raises(FMError, match="not resolutions"):
        UNet(image_size=28, channel_mults=[1, 2, 2], attention_resolutions=[8])


@pytest.mark.parametrize("x_shape, t_shape", [((2, 3, 16, 16), (2,)), ((2, 1, 32, 32), (2,)), ((2, 1, 16, 16), (3,))])
def test_wrong_input_shapes_raise(x_shape, t_shape):
    with pytest.raises(FMError):
        unet()(torch.randn(x_shape), torch.rand(t_shape))


@pytest.mark.parametrize("mults", [[1, 2], [1, 2, 2], [2, 1, 3, 2]])
@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_every_skip_is_consumed_with_matching_channels(mults, num_res_blocks):
    """2, 3 and 4 levels, uneven channel multipliers: builds, runs, and each level is mirrored."""
    model = unet(image_size=16, channel_mults=mults, num_res_blocks=num_res_blocks)
    down_samples = sum(1 for layers in model.down if not hasattr(layers[0], "emb_proj"))
    up_samples = sum(1 for layers in model.up if not hasattr(layers[0], "emb_proj"))
    assert down_samples == up_samples == len(mults) - 1
    assert sum(1 for layers in model.up if hasattr(layers[0], "emb_proj")) == len(mults) * (num_res_blocks + 1)
    x = torch.randn(2, 1, 16, 16)
    assert model(x, torch.rand(2)).shape == x.shape


def test_group_norm_handles_small_channel_counts():
    model = unet(base_channels=6, channel_mults=[1, 3], num_groups=32)  # 6 and 18 channels
    assert model(torch.randn(1, 1, 16, 16), torch.rand(1)).shape == (1, 1, 16, 16)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = unet(num_classes=3, attention_resolutions=[8]).train()
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 2])

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(x, t, y).pow(2).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert any(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_channels_last_and_bf16_autocast():
    model = unet(attention_resolutions=[8])
    x, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    with torch.no_grad():
        reference = model(x, t)
        v_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v_bf16 = model(x, t)
    torch.testing.assert_close(v_cl, reference, rtol=1e-4, atol=1e-5)
    assert v_bf16.shape == x.shape
    assert (v_bf16.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_mlp_shapes_and_conditioning():
    model = randomise_zero_init(MLPVelocity(dim=3, hidden=32, depth=2, num_classes=2))
    x = torch.randn(5, 3)
    v = model(x, torch.rand(5))
    assert v.shape == (5, 3)
    assert (
        model(x, torch.tensor(0.5), torch.zeros(5, dtype=torch.long))
        - model(x, torch.tensor(0.5), torch.ones(5, dtype=torch.long))
    ).abs().max() > 1e-5
    with pytest.raises(FMError, match=r"\[batch, 3\]"):
        model(torch.randn(5, 2), torch.rand(5))


def test_registry_round_trip_config_to_identical_model():
    from fmcli.models import build_model

    config = {"name": "unet", "in_channels": 1, "image_size": 16, "num_classes": 3} | SMALL
    first = randomise_zero_init(build_model(config))
    assert isinstance(first, UNet) and first.config == first.config | config  # plus defaults such as dropout
    second = build_model(dict(first.config)).eval()
    second.load_state_dict(first.state_dict())
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([1, 3])
    torch.testing.assert_close(second(x, t, y), first(x, t, y), rtol=0, atol=0)

    mlp = build_model({"name": "mlp", "dim": 2, "hidden": 16, "depth": 1, "num_classes": 0})
    assert isinstance(mlp, MLPVelocity) and mlp.config["name"] == "mlp"


@pytest.mark.parametrize(
    "kind, shape", [("image", (1, 28, 28)), ("image", (3, 32, 32)), ("image", (3, 64, 64)), ("points", (2,))]
)
def test_default_configs_build_and_learn(kind, shape):
    """The preset of each size builds from its config alone and learns: 8 AdamW steps on one batch lower the
    flow-matching loss (a preset whose conditioning or skips were miswired could still return the right shape)."""
    from fmcli.models import build_model

    torch.manual_seed(0)
    config = default_model_config(kind, shape, num_classes=10)
    model = build_model(config)
    assert model.config == config
    x0, x1 = torch.randn(4, *shape).clamp(-1, 1), torch.randn(4, *shape)
    t, y = torch.rand(4), torch.tensor([0, 3, 9, 10])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = flow_matching_loss(model, x0, x1, t, y=y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.97 * losses[0], losses


def test_count_flops_matches_a_hand_count():
    """A 1x1 conv from 4 to 8 channels on 16x16, through count_flops's interface: 2*4*8*256 FLOPs."""

    class OneConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 1, bias=False)

        def forward(self, x, t, y=None):
            return self.conv(x)

    assert count_flops(OneConv(), torch.randn(1, 4, 16, 16), torch.rand(1)) == 2 * 4 * 8 * 256
