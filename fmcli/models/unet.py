"""A U-Net velocity network v(x, t, y) for images (after DDPM / ADM, trimmed to what small images need).

Layout, for ``channel_mults = [1, 2, 2]`` on 28x28 (base channels C)::

    conv_in 3x3 -> C @28                                     skips: [C]
    level 0: num_res_blocks x Res(C)           @28, down -> 14    skips: +C per block, +C after down
    level 1: num_res_blocks x Res(2C)          @14, down -> 7     skips: +2C ...,       +2C
    level 2: num_res_blocks x Res(2C) (+attn)  @7                 skips: +2C per block
    middle : Res(2C) -> Attn -> Res(2C)        @7
    up 2   : (num_res_blocks + 1) x Res(cat(h, skip) -> 2C) (+attn), up -> 14
    up 1   : (num_res_blocks + 1) x Res(cat(h, skip) -> 2C),         up -> 28
    up 0   : (num_res_blocks + 1) x Res(cat(h, skip) -> C)
    out    : GroupNorm -> SiLU -> conv 3x3 -> in_channels  (zero-initialised: v = 0 at start)

Every down level has a matching up level, and each up block consumes exactly one skip, popped
in reverse order, so the channel counts line up for any number of levels (the seed built 4
down blocks and 3 up blocks).

Conditioning: the time t in [0, 1] (t = 0 is data, t = 1 is noise) is multiplied by 1000 and
encoded with sinusoids, then an MLP; the class embedding (index ``num_classes`` = null class)
is added to it. With ``interval=True`` (MeanFlow, ``fmcli.flow.meanflow_loss``) the model also
takes the start r <= t of an interval and predicts the average velocity over [r, t]; the interval
length t - r gets its own sinusoid + MLP, added to the same embedding (see ``TimeClassEmbedding``).
Each residual block applies the embedding as a scale and shift of its normalised features,
h = GroupNorm(h) * (1 + scale) + shift: a multiplicative gate lets t switch features on and off
(near t = 1 the input is noise, near t = 0 it is data), which a plain added bias cannot; ADM
found it clearly better for the same cost.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fmcli.errors import FMError
from fmcli.models.embedding import (  # noqa: F401 - NO_INTERVAL_INPUT, is_compiling: this module's names in 0.1
    NO_INTERVAL_INPUT,
    TIME_SCALE,
    TimeClassEmbedding,
    is_compiling,
    prepare_interval,
    prepare_time_and_labels,
    zero_init,
)
from fmcli.models.forward_ad import Conv2d, GroupNorm, in_forward_ad

# --- building blocks ------------------------------------------------------------------------


def group_norm(channels: int, num_groups: int) -> GroupNorm:
    """GroupNorm with the largest group count <= num_groups that divides channels (so 24 or 8 channels work)."""
    groups = max(1, min(num_groups, channels))
    while channels % groups:
        groups -= 1
    return GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """h = skip(x) + conv(SiLU(GN(conv(SiLU(GN(x)))) * (1 + scale) + shift)), (scale, shift) = Linear(emb)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, num_groups)
        self.conv1 = Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = group_norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, heads of 32 channels (at least one)."""

    def __init__(self, channels: int, num_groups: int, head_channels: int = 32, strided: bool = False) -> None:
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        self.strided = strided  # interval (MeanFlow) models: torch's math attention in every pass, see forward
        self.norm = group_norm(channels, num_groups)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # Each [B, heads, HW, head_dim]. In training they are made contiguous: torch's CPU attention is then its
        # fused kernel, whose gradients have the same bits at any thread count (fmcli.runtime.threads: resume stays
        # exact). Strided views select the math kernel: sampling (as in fm 0.2) and forward-mode AD (MeanFlow's
        # jvp, which only the math kernel runs); interval models use it in every pass, so that a jvp's output is
        # bit for bit the plain forward's.
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        if torch.is_grad_enabled() and not (self.strided or in_forward_ad(x)):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class CrossAttnBlock(nn.Module):
    """Attention from the H*W positions to a prompt's token embeddings (keys where ``mask`` is True), residual.

    Queries from the normalised features, keys and values projected from the text encoder's width; the output
    projection starts at zero, so a fresh block is the identity and the pooled prompt (added to the time
    embedding) carries the condition until it learns where the words go."""

    def __init__(self, channels: int, context_dim: int, num_groups: int, head_channels: int = 32) -> None:
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        self.norm = group_norm(channels, num_groups)
        self.q = Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_init(Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        q = self.q(self.norm(x)).reshape(b, heads, c // heads, h * w).transpose(-1, -2)
        k, v = self.kv(tokens).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k.contiguous(), v.contiguous(), attn_mask=mask[:, None, None, :])
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --- the network ----------------------------------------------------------------------------


class UNet(nn.Module):
    """Velocity v(x_t, t, y) ~ x1 - x0 for images x [B, C, H, W] in [-1, 1] (t = 0 data, t = 1 noise).

    Args (all JSON-serialisable; kept in ``self.config`` with ``"name": "unet"``):
        in_channels: 1 (grayscale) or 3 (RGB); the output has the same channels.
        image_size: H = W; must be divisible by 2 ** (len(channel_mults) - 1).
        base_channels: channels at full resolution; level i has base_channels * channel_mults[i].
        channel_mults: one entry per resolution level.
        num_res_blocks: residual blocks per level on the way down (the way up has one more).
        attention_resolutions: spatial sizes (e.g. [7]) with self-attention; [] for none.
        num_classes: 0 for unconditional; else labels 0..num_classes-1 plus the null class num_classes.
        dropout: inside residual blocks.
        num_groups: GroupNorm groups (reduced automatically to divide small channel counts).
        interval: also take the interval start r (``forward(x, t, y, r=r)``) and predict the average velocity
            over [r, t] (MeanFlow). Kept in ``config`` only when True, so every other config, and the models
            built from existing checkpoints, stay exactly as they were.
        interval_scale: the factor on the interval length before its sinusoids (see ``TimeClassEmbedding``);
            in ``config`` only for interval models. The default 1000 is what checkpoints without it were built with.
        text: a text model: its encoder's ``export()`` (``fmcli.text``), rebuilt by the encoder's ``restore``; y is
            then prompt token ids [B, L] (``fmcli.models.condition``). The pooled prompt is added to the time
            embedding where a class embedding goes; a trainable encoder's weights are part of this model's.
        cross_attention: resolutions (e.g. [8]) where the features also attend to the prompt's token embeddings.
        Both in ``config`` only for text models.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        base_channels: int = 32,
        channel_mults: list[int] | tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: list[int] | tuple[int, ...] = (7,),
        num_classes: int = 0,
        dropout: float = 0.0,
        num_groups: int = 32,
        interval: bool = False,
        interval_scale: float = TIME_SCALE,
        text: dict | None = None,
        cross_attention: list[int] | tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        channel_mults = [int(m) for m in channel_mults]
        attention_resolutions = [int(r) for r in attention_resolutions]
        _check_config(
            in_channels,
            image_size,
            base_channels,
            channel_mults,
            num_res_blocks,
            attention_resolutions,
            num_classes,
            dropout,
            num_groups,
        )
        self.config = {
            "name": "unet",
            "in_channels": in_channels,
            "image_size": image_size,
            "base_channels": base_channels,
            "channel_mults": channel_mults,
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": attention_resolutions,
            "num_classes": num_classes,
            "dropout": dropout,
            "num_groups": num_groups,
        }
        if interval:
            self.config |= {"interval": True, "interval_scale": float(interval_scale)}
        cross_attention = [int(r) for r in cross_attention]
        if text:
            self.config |= {"text": dict(text), "cross_attention": cross_attention}
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.interval = bool(interval)
        self.grad_checkpointing = False

        emb_dim = 4 * base_channels
        self.embedding = TimeClassEmbedding(base_channels, emb_dim, num_classes, self.interval, interval_scale)
        self._frozen_text: list = []  # a frozen encoder (CLIP): outside the module tree, not in the state dict
        self._frozen_device = torch.device("cpu")  # where the frozen encoder is
        self.text_encoder = self.text_pool = None
        if text:
            _check_text(num_classes, cross_attention, image_size, channel_mults)
            encoder = restore_text_encoder(text)
            if encoder.trainable:
                self.text_encoder = encoder
            else:
                self._frozen_text.append(encoder)
            self.text_pool = nn.Sequential(nn.Linear(encoder.width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        context_dim = self.encoder.width if text else 0
        self.conv_in = Conv2d(in_channels, base_channels, 3, padding=1)

        def block(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, dropout, num_groups)

        # Down path: record the channels of every tensor pushed as a skip.
        skip_channels = [base_channels]
        ch, resolution = base_channels, image_size
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                layers = [block(ch, base_channels * mult)]
                ch = base_channels * mult
                if resolution in attention_resolutions:
                    layers.append(AttnBlock(ch, num_groups, strided=self.interval))
                if resolution in cross_attention:
                    layers.append(CrossAttnBlock(ch, context_dim, num_groups))
                self.down.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_channels.append(ch)
                resolution //= 2

        mid_attn = [AttnBlock(ch, num_groups, strided=self.interval)] if attention_resolutions else []
        mid_cross = [CrossAttnBlock(ch, context_dim, num_groups)] if cross_attention else []
        self.middle = nn.ModuleList([block(ch, ch), *mid_attn, *mid_cross, block(ch, ch)])

        # Up path: mirror image; each block concatenates one skip, popped last-in first-out.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                layers = [block(ch + skip_channels.pop(), base_channels * mult)]
                ch = base_channels * mult
                if resolution in attention_resolutions:
                    layers.append(AttnBlock(ch, num_groups, strided=self.interval))
                if resolution in cross_attention:
                    layers.append(CrossAttnBlock(ch, context_dim, num_groups))
                self.up.append(nn.ModuleList(layers))
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
                resolution *= 2
        assert not skip_channels, "every skip must be consumed exactly once"

        self.out = nn.Sequential(
            group_norm(ch, num_groups), nn.SiLU(), zero_init(Conv2d(ch, in_channels, 3, padding=1))
        )

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute residual/attention activations in the backward pass (less memory, ~30% more compute).

        Not inside ``torch.func.jvp`` (MeanFlow): there the forward also saves the tangent's tensors, and the
        recomputation in the backward pass, which runs without the tangent, would not match them.
        """
        self.grad_checkpointing = bool(enabled)

    @property
    def encoder(self):
        """The text encoder (trainable or frozen); None for class and unconditional models."""
        return self.text_encoder if self.text_encoder is not None else next(iter(self._frozen_text), None)

    def tokenize(self, prompts: list[str]) -> Tensor:
        """Prompts -> the token ids [B, L] this text model takes as y ("" is the empty prompt: no condition)."""
        if self.encoder is None:
            raise FMError("this model takes no prompts: it was not trained on captions")
        return self.encoder.tokenize(list(prompts))

    def _encode(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        encoder = self.encoder
        if self.text_encoder is None and self._frozen_device != y.device:
            encoder.to(y.device)  # a frozen encoder is not moved with the model: it follows the inputs
            self._frozen_device = y.device
        return encoder(y)

    def _run(self, layers: nn.ModuleList, h: Tensor, emb: Tensor, context: tuple | None = None) -> Tensor:
        for layer in layers:
            args = (h, *context) if isinstance(layer, CrossAttnBlock) else (h, emb)
            if (
                self.grad_checkpointing
                and self.training
                and torch.is_grad_enabled()
                and isinstance(layer, (ResBlock, AttnBlock, CrossAttnBlock))
                and not in_forward_ad(h)
            ):
                h = checkpoint(layer, *args, use_reentrant=False)
            else:
                h = layer(*args)
        return h

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None, r: Tensor | float | None = None) -> Tensor:
        """x [B, C, H, W], t [B] or 0-dim in [0, 1], y [B] int64 or None (-> null class) -> v [B, C, H, W].

        Interval models (``interval=True``) also take r <= t like t and return the average velocity
        u(x, r, t) = 1/(t - r) * integral_r^t v(x_s, s) ds along the trajectory through x at t; r = None
        means r = t, the instantaneous velocity v(x, t) (what the r = t share of MeanFlow training teaches).
        """
        validate = not is_compiling()
        if validate:
            self.check_input(x)
        context = self.encoder.context if self.encoder is not None else 0
        t, y = prepare_time_and_labels(t, y, x.shape[0], self.num_classes, x.device, validate, context)
        interval = prepare_interval(r, t, x.shape[0], self.interval, x.device, validate)
        if context:
            tokens, pooled, mask = self._encode(y)
            emb = self.embedding(t, None, interval) + self.text_pool(pooled.to(self.text_pool[0].weight.dtype))
            prompt = (tokens.to(self.text_pool[0].weight.dtype), mask)
        else:
            emb, prompt = self.embedding(t, y, interval), None

        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, prompt)
            skips.append(h)
        h = self._run(self.middle, h, emb, prompt)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layers, h, emb, prompt)
        return self.out(h)

    def check_input(self, x: Tensor) -> None:
        """FMError unless x is a batch of the images this model takes (only x's shape is read)."""
        expected = [self.in_channels, self.image_size, self.image_size]
        if x.dim() != 4 or list(x.shape[1:]) != expected:
            raise FMError(
                f"the model expects images of shape [batch, {', '.join(map(str, expected))}], got {list(x.shape)}; "
                "resize the data (--image-size / --channels) or train a model for this shape"
            )


def restore_text_encoder(exported: dict):
    """The text encoder a model config names (``fmcli.text``), rebuilt from its ``export()``."""
    from fmcli.registry import get_text_encoder

    spec = get_text_encoder(str(exported.get("name", "?")))
    with torch.device("cpu"):  # real weights, even while a checkpoint's model is laid out on "meta" to be checked
        return spec.restore(exported)


def _check_text(num_classes: int, cross_attention: list[int], image_size: int, channel_mults: list[int]) -> None:
    if num_classes:
        raise FMError("a model takes class labels or prompts, not both: give num_classes 0 with a text encoder")
    resolutions = [image_size // 2**i for i in range(len(channel_mults))]
    if any(r not in resolutions for r in cross_attention):
        raise FMError(f"cross_attention {cross_attention} must be resolutions of this model; choose from {resolutions}")


def _check_config(
    in_channels,
    image_size,
    base_channels,
    channel_mults,
    num_res_blocks,
    attention_resolutions,
    num_classes,
    dropout,
    num_groups,
) -> None:
    if in_channels < 1:
        raise FMError(f"in_channels must be at least 1, got {in_channels}")
    if base_channels < 1 or num_res_blocks < 1 or num_groups < 1:
        raise FMError("base_channels, num_res_blocks and num_groups must be positive integers")
    if not channel_mults or min(channel_mults) < 1:
        raise FMError(f"channel_mults must be a non-empty list of positive integers, got {channel_mults}")
    if num_classes < 0:
        raise FMError(f"num_classes must be 0 (unconditional) or positive, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise FMError(f"dropout must be in [0, 1), got {dropout}")
    divisor = 2 ** (len(channel_mults) - 1)
    if image_size < divisor or image_size % divisor:
        lower, upper = image_size // divisor * divisor, (image_size // divisor + 1) * divisor
        suggestion = f"use {lower} or {upper}" if lower > 0 else f"use {upper}"
        raise FMError(
            f"image size {image_size} is not divisible by {divisor}, the model's total downsampling; {suggestion} "
            f"(or use fewer channel_mults)"
        )
    resolutions = [image_size // 2**i for i in range(len(channel_mults))]
    unreachable = [r for r in attention_resolutions if r not in resolutions]
    if unreachable:
        raise FMError(
            f"attention_resolutions {unreachable} are not resolutions of this model; choose from {resolutions}"
        )
