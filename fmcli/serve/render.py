"""One setting of a page request, drawn through the Python API: ``Model.sample`` or, with the animation,
``Model.animate`` (whose frames are those ``fm animate`` writes, read from the same solve that gives the grid).

Writes a PNG grid, a GIF and an NPZ into a request folder and returns them with a caption (solver, steps, NFE,
seconds). Every model evaluation is counted: the page's progress bar moves with it, and a solve that needs more
than ``Limits.max_nfe`` evaluations (an adaptive solver on a rough model) is stopped with a message.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmcli.io.checkpoint import LoadedModel
from fmcli.sampling.model import Model, Samples
from fmcli.sampling.solvers import get_solver
from fmcli.serve.catalog import Entry
from fmcli.serve.limits import Limits, ServeError, Setting

Report = Callable[[int, int | None], None]  # (model evaluations so far, expected in all or None)


class _OverBudget(Exception):
    pass


class CountingNet(nn.Module):
    """The network, counting its calls (one per model evaluation of the batch) and stopping past a budget."""

    def __init__(self, net: nn.Module, report: Report, expected: int | None, budget: int):
        super().__init__()
        self.net, self.report, self.expected, self.budget, self.calls = net, report, expected, budget, 0

    @property
    def encoder(self):  # a text model's: prompts are tokenized by the network's own encoder
        return getattr(self.net, "encoder", None)

    def tokenize(self, prompts: list[str]):
        return self.net.tokenize(prompts)

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.budget:
            raise _OverBudget
        self.report(self.calls, self.expected)
        return self.net(*args, **kwargs)


@dataclass
class Output:
    grid: Path
    gif: Path | None
    npz: Path
    caption: str
    nfe: int
    seconds: float


def display_scale(shape: tuple[int, ...]) -> int:
    """Nearest-neighbour magnification so small images read on a page (MNIST: 28 px -> 84 px)."""
    side = max(shape[-2:]) if len(shape) >= 2 else 0
    return 3 if side <= 32 else 2 if side <= 64 else 1


def grid_rows(classes: str | None, num: int, num_classes: int) -> int | None:
    """Images per row: one row per class for 'all' when the rows are long enough, else near square."""
    if classes == "all" and num_classes and num % num_classes == 0 and num // num_classes >= 4:
        return num // num_classes
    return None


def render(
    loaded: LoadedModel,
    entry: Entry,
    setting: Setting,
    *,
    num: int,
    classes: str | None,
    seed: int,
    animate: bool,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    limits: Limits,
    out_dir: Path,
    stem: str,
    report: Report,
) -> Output:
    """Sample one setting and write ``stem``.png/.gif/.npz into ``out_dir``."""
    solver = get_solver(setting.solver)
    adaptive = bool(getattr(solver, "adaptive", False))
    expected = None if adaptive else setting.steps * (getattr(solver, "evals_per_step", None) or 1)
    counted = CountingNet(loaded.model, report, expected, limits.max_nfe)
    # The file's path too: its tuned grids and stored guidance apply, as they do in fm sample.
    model = Model(LoadedModel(model=counted, meta=loaded.meta, path=loaded.path, weights=loaded.weights,
                              autoencoder=loaded.autoencoder), entry.path)  # fmt: skip
    options = dict(solver=setting.solver, steps=setting.steps, cfg=setting.cfg, seed=seed,
                   guidance_interval=setting.interval)  # fmt: skip
    if prompt is not None:  # a text model: the prompt replaces the class, the negative prompt the empty one
        classes, options = None, options | {"prompts": prompt, "negative_prompt": negative_prompt}
    points = model.kind == "points"
    scale = display_scale(model.shape)
    nrow = grid_rows(classes, num, model.num_classes) or math.ceil(math.sqrt(num))  # the same in PNG and GIF
    gif = out_dir / f"{stem}.gif" if animate else None
    try:
        with torch.inference_mode():
            if animate:
                animation = model.animate(num, classes, out=gif, frames=limits.frames, scale=2 if points else scale,
                                          nrow=nrow, **options)  # fmt: skip
                samples = Samples.from_result(animation.result, model.meta, None if prompt is None else [prompt] * num)
            else:
                samples = model.sample(num, classes, **options)
    except _OverBudget:
        raise ServeError(
            f"{setting.solver} needed more than {limits.max_nfe} model evaluations; use a fixed-step solver "
            f"(heun, euler, ...) or fewer steps"
        ) from None
    grid = out_dir / f"{stem}.png"
    grid.write_bytes(_png(samples, nrow, scale))
    npz = out_dir / f"{stem}.npz"
    samples.save(npz)
    steps = "adaptive steps" if adaptive else f"{samples.steps} steps"
    guidance = samples.result.guidance.setting
    passes = f" ({samples.passes} network passes)" if samples.passes != samples.nfe else ""
    caption = (
        f"**{samples.solver}**, {steps} · **NFE {samples.nfe}**{passes} · **{samples.seconds:.2f} s** sampling · "
        f"{'guidance ' + guidance.describe().removeprefix('cfg ') if guidance.active else 'no guidance'}"
        f"{' (tuned)' if samples.result.guidance.source == 'tuned' else ''} · seed {seed} · "
        f"{num} {'points' if points else 'images'}"
        + (f" of “{prompt}”" if prompt is not None else "")
        + (f", steered away from “{negative_prompt}”" if negative_prompt else "")
    )
    return Output(grid, gif, npz, caption, samples.nfe, samples.seconds)


def _png(samples: Samples, nrow: int | None, scale: int) -> bytes:
    from fmcli.io.images import png_bytes

    return png_bytes(samples.grid(nrow=nrow, scale=scale))
