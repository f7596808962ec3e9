"""An MLP velocity network v(x, t, y) for point data x [B, D] (the 2-D toy data sets).

Same conventions as the U-Net (``fmcli.models.unet``): t in [0, 1] with t = 0 data and t = 1
noise, scaled by 1000 before the sinusoidal embedding; class embedding with ``num_classes + 1``
rows, the last one the null class, added to the time embedding; y=None means the null class.

    h = Linear(x)
    repeat depth times:   h = h + Linear(SiLU(Linear(SiLU(h)) + Linear(emb)))
    v = Linear(SiLU(h))

``interval=True`` adds the MeanFlow interval input r (see ``fmcli.models.unet.TimeClassEmbedding``, and its
``interval_scale``):
forward(x, t, y, r) is then the average velocity over [r, t], and r = None (= t) the instantaneous one.

The embedding is injected into every block (not only the input): on 2-D data the velocity
field changes sharply with t, and a single input bias washes out after a few layers.
"""

from torch import Tensor, nn

from fmcli.errors import FMError
from fmcli.models.embedding import (
    TIME_SCALE,
    TimeClassEmbedding,
    is_compiling,
    prepare_interval,
    prepare_time_and_labels,
)


class _Block(nn.Module):
    def __init__(self, hidden: int, emb_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(h)) + self.emb_proj(emb)))


class MLPVelocity(nn.Module):
    """Residual SiLU MLP; args dim (D), hidden width, depth (blocks), num_classes (0 = unconditional),
    interval (MeanFlow's interval input r; kept in ``config`` only when True)."""

    def __init__(
        self,
        *,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int = 0,
        interval: bool = False,
        interval_scale: float = TIME_SCALE,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise FMError(f"dim, hidden and depth must be positive, got dim={dim}, hidden={hidden}, depth={depth}")
        if num_classes < 0:
            raise FMError(f"num_classes must be 0 (unconditional) or positive, got {num_classes}")
        self.config = {"name": "mlp", "dim": dim, "hidden": hidden, "depth": depth, "num_classes": num_classes}
        if interval:
            self.config |= {"interval": True, "interval_scale": float(interval_scale)}
        self.dim, self.num_classes, self.interval = dim, num_classes, bool(interval)
        self.embedding = TimeClassEmbedding(min(hidden, 128), hidden, num_classes, self.interval, interval_scale)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def check_input(self, x: Tensor) -> None:
        """FMError unless x is a batch of the points this model takes (only x's shape is read)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise FMError(f"the model expects points of shape [batch, {self.dim}], got {list(x.shape)}")

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None, r: Tensor | float | None = None) -> Tensor:
        """x [B, D], t [B] or 0-dim in [0, 1], y [B] int64 or None (-> null class) -> v [B, D].

        Interval models: r <= t like t -> the average velocity over [r, t]; r = None is r = t (see ``UNet.forward``).
        """
        validate = not is_compiling()
        if validate:
            self.check_input(x)
        t, y = prepare_time_and_labels(t, y, x.shape[0], self.num_classes, x.device, validate)
        emb = self.embedding(t, y, prepare_interval(r, t, x.shape[0], self.interval, x.device, validate))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
