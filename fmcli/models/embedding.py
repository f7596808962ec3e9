"""What every fm network takes besides x: the time t, the class y (with the null class), and MeanFlow's interval.

Time convention: t = 0 is data, t = 1 is noise. The time is embedded with sinusoids of 1000 t (the frequencies
of diffusion models' integer steps) and an MLP; the class embedding (row ``num_classes`` = the null class) is
added to it; interval models add an embedding of the interval length t - r. Shared by the U-Net and the MLP.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmcli.errors import FMError


def zero_init(module: nn.Module) -> nn.Module:
    """Start a residual branch at zero, so each block begins as the identity (stable early training)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


TIME_SCALE = 1000.0


# --- time and class conditioning (shared with the MLP) -------------------------------------


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, scale: float = TIME_SCALE) -> Tensor:
    """[B] times -> [B, dim]: cos(scale t w_k), sin(scale t w_k), w_k = max_period^(-k / (dim/2)).

    The factor 1000 (``TIME_SCALE``): these frequencies were designed for integer diffusion
    steps 0..1000; on raw t in [0, 1] the slow half of them would barely change and the
    network could hardly tell t = 0.2 from t = 0.3.
    """
    # float32 unless t is float64: float64 models exist for exact derivative checks (MeanFlow's JVP).
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = (scale * t.to(dtype))[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:  # odd width: pad with a zero column
        emb = F.pad(emb, (0, 1))
    return emb


class TimeClassEmbedding(nn.Module):
    """emb(t, y) = MLP(sinusoid(1000 t)) + E[y]; E has num_classes + 1 rows, the last one the null class.

    With ``interval=True``: emb(t, y, d) = MLP(sinusoid(1000 t)) + E[y] + MLP_d(sinusoid(s d)), d = t - r the
    length of the interval [r, t] the average velocity is taken over. MLP_d's last layer starts at zero, so a
    fresh interval model computes exactly what the same weights compute without the interval input, for any r.
    The interval's scale s (``interval_scale``) was 1000 like t's; MeanFlow's target differentiates the network
    in t (du/dt, a jvp), and a 1000x input scale makes that derivative large and noisy, so the published code
    feeds the raw times: models built since 0.2 record s = 1 (checkpoints without the key keep 1000).
    Why t - r and not r: every plain flow-matching sample (r = t) then feeds the same d = 0, whatever t, so
    "d = 0" is one well-trained input meaning "instantaneous velocity" (u(x, t, t) = v(x, t)); MeanFlow's
    ablation found (t, t - r) the best of the pairs it tried.
    """

    def __init__(
        self, freq_dim: int, dim: int, num_classes: int, interval: bool = False, interval_scale: float = TIME_SCALE
    ) -> None:
        super().__init__()
        self.freq_dim, self.interval_scale = freq_dim, interval_scale
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embedding = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        # Created only for interval models: the state dict of every other model keeps its keys.
        self.interval_mlp = (
            nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), zero_init(nn.Linear(dim, dim))) if interval else None
        )

    def forward(self, t: Tensor, y: Tensor | None, interval: Tensor | None = None) -> Tensor:
        """t [B], y [B] or None, interval = t - r [B] (interval models only) -> [B, dim]."""
        weight_dtype = self.time_mlp[0].weight.dtype
        emb = self.time_mlp(sinusoidal_embedding(t, self.freq_dim).to(weight_dtype))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(y)
        if self.interval_mlp is not None:
            length = sinusoidal_embedding(interval, self.freq_dim, scale=self.interval_scale)
            emb = emb + self.interval_mlp(length.to(weight_dtype))
        return emb


def prepare_time_and_labels(
    t: Tensor | float,
    y: Tensor | None,
    batch_size: int,
    num_classes: int,
    device: torch.device,
    validate: bool,
    context: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """Broadcast t (a number, 0-dim or [B]) to [B]; for a conditional model map y=None to the null condition.

    y is class indices [B], or for a text model (``context`` = L > 0) prompt token ids [B, L] (None: the empty
    prompt, all PAD; ``fmcli.models.condition``). Raises FMError for a wrong t shape, labels given to an
    unconditional model, labels outside [0, num_classes] or token ids of the wrong shape. ``validate=False``
    (under torch.compile) skips the checks, so no data-dependent Python branch is traced.
    """
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t), device=device)
    if validate and (t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, batch_size))):
        raise FMError(f"t must be a scalar or have shape [{batch_size}] (one time per sample), got {list(t.shape)}")
    if context:
        if y is None:
            return t.reshape(-1).expand(batch_size), torch.zeros((batch_size, context), dtype=torch.long, device=device)
        if validate and (
            y.dim() != 2 or y.shape[0] != batch_size or y.dtype.is_floating_point or y.dtype == torch.bool
        ):
            raise FMError(
                f"this text model takes prompt token ids y of shape [{batch_size}, L] (model.tokenize(prompts)), "
                f"got {list(y.shape)} {y.dtype}"
            )
        return t.reshape(-1).expand(batch_size), y
    if validate:
        if y is not None and num_classes == 0:
            raise FMError(
                "this model is unconditional: pass no class labels (y=None), or train a class-conditional model"
            )
        if y is not None:
            if y.dim() != 1 or y.shape[0] != batch_size:
                raise FMError(f"class labels y must have shape [{batch_size}], got {list(y.shape)}")
            if y.dtype.is_floating_point or y.dtype == torch.bool:
                raise FMError(f"class labels y must be integers, got {y.dtype}")
            if bool(((y < 0) | (y > num_classes)).any()):  # one host sync; skipped under compile
                raise FMError(
                    f"class labels y must be in [0, {num_classes}] ({num_classes} is the null class), "
                    f"got values from {int(y.min())} to {int(y.max())}"
                )
    t = t.reshape(-1).expand(batch_size)
    if num_classes > 0 and y is None:
        y = torch.full((batch_size,), num_classes, dtype=torch.long, device=device)
    return t, y


NO_INTERVAL_INPUT = "this model has no interval input; it was not trained for few-step sampling"


def prepare_interval(
    r: Tensor | float | None, t: Tensor, batch_size: int, has_interval: bool, device: torch.device, validate: bool
) -> Tensor | None:
    """The interval length t - r per sample [B], for t already broadcast to [B]; None for a model without it.

    r is a number, 0-dim or [B], like t; r = None means r = t (length 0: the instantaneous velocity).
    Raises FMError for r given to a model without the interval input, a wrong shape, or r > t: the
    average velocity u(x, r, t) is trained for r <= t only (sampling runs from t = 1 down to r = 0).
    """
    if not has_interval:
        if r is not None:
            raise FMError(NO_INTERVAL_INPUT)
        return None
    if r is None:
        return torch.zeros_like(t)
    if not isinstance(r, Tensor):
        r = torch.tensor(float(r), device=device, dtype=t.dtype)
    if validate and (r.dim() > 1 or (r.dim() == 1 and r.shape[0] not in (1, batch_size))):
        raise FMError(f"r must be a scalar or have shape [{batch_size}] (one time per sample), got {list(r.shape)}")
    r = r.reshape(-1).expand(batch_size)
    if validate and bool((r > t).any()):  # one host sync; skipped under compile
        raise FMError("the interval start r must not exceed t (the average velocity over [r, t] is trained for r <= t)")
    return t - r


def is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
