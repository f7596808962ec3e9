"""The Python API's model: ``fmcli.load(path)`` gives a ``Model`` that samples, animates and describes itself with
the same options and the same code as ``fm sample``, ``fm animate`` and ``fm info`` (``generate``,
``render_animation``, ``checkpoint_info``: there is no second sampling path).

    model = fmcli.load("runs/demo")                       # a checkpoint or a run folder (its last.safetensors)
    samples = model.sample(16, classes=3, solver="heun", steps=20, seed=0)
    samples.images                                         # uint8 numpy [16, 28, 28, 1]
    samples.save("threes.png")                             # or .npz, or a folder, as fm sample writes them

``solver`` is a registered name or a ``Solver`` object (a ``FixedStepSolver`` subclass of your own, registered
nowhere); ``save_at`` keeps the states x_t of the same solve (``samples.times``, ``samples.trajectory``).
Time convention: t = 1 is noise, t = 0 is data; sampling integrates from 1 to 0.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fmcli.data.base import to_uint8
from fmcli.device import resolve_device
from fmcli.errors import FMError
from fmcli.io.checkpoint import CheckpointMeta, LoadedModel, checkpoint_file, load_checkpoint
from fmcli.io.images import grid_image, output_format, scatter_image, write_samples
from fmcli.sampling.animate import Animation, AnimationSettings, frame_times, render_animation, write_animation
from fmcli.sampling.generate import SampleResult, generate
from fmcli.sampling.guidance import parse_classes
from fmcli.sampling.info import checkpoint_info
from fmcli.sampling.options import SamplingOptions, default_sampler
from fmcli.sampling.prompts import check_condition_kind, negative_condition, prompt_condition, spread
from fmcli.sampling.solvers.base import Solver

# What ``classes`` may be: None (unconditional), a class index or name, "all" (an equal share of every class),
# or one class per sample (a list of indices or names, a 1-D integer tensor or array).
Classes = Union[None, int, str, Sequence[Union[int, str]], Tensor, np.ndarray]
ProgressFn = Callable[[int, int], None]  # (samples done, samples asked for), as the solver's steps go
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Samples:
    """What ``Model.sample`` drew: pictures as uint8 arrays, the figures ``fm sample`` prints, and the trajectory.

    ``images`` is uint8 [N, H, W, C] for image models (None for 2-D models, whose samples are ``points``,
    float32 [N, D]). ``labels`` holds the class of each sample (None when unconditional; ``prompts``: a text
    model's prompt of each). With ``save_at``,
    ``times`` [T] and ``trajectory`` [T, N, ...] hold the states x_t of the same solve, float32 in model space
    (images in [-1, 1], laid out [T, N, C, H, W] like the model's input; ``trajectory_images()`` gives them as
    uint8 [T, N, H, W, C]). ``result`` keeps the tensors themselves.
    """

    images: np.ndarray | None
    points: np.ndarray | None
    labels: np.ndarray | None
    nfe: int  # model evaluations per sample
    seconds: float  # wall time of the solve
    cfg: float  # the guidance scale used
    passes: int  # network passes per sample: the NFE plus one per guided evaluation
    guidance: dict  # the guidance used: cfg, interval, guide, and its source (flags, tuned, default)
    options: SamplingOptions  # as used: the checkpoint's default solver and steps filled in
    times: np.ndarray | None
    trajectory: np.ndarray | None
    result: SampleResult
    prompts: list[str] | None = None  # a text model's prompt of each sample

    @classmethod
    def from_result(cls, result: SampleResult, meta: CheckpointMeta, prompts: list[str] | None = None) -> "Samples":
        points = meta.data.get("kind") == "points"
        classes = result.labels if meta.condition == "class" else None  # a text model's are token ids
        return cls(
            images=None if points else to_uint8(result.samples).permute(0, 2, 3, 1).numpy(),
            points=result.samples.numpy() if points else None,
            labels=None if classes is None else classes.cpu().numpy(),
            prompts=prompts,
            nfe=result.nfe,
            seconds=result.seconds,
            cfg=result.cfg,
            passes=result.passes,
            guidance=result.guidance.setting.as_json() | {"source": result.guidance.source},
            options=result.options,
            times=None if result.times is None else result.times.numpy(),
            trajectory=None if result.trajectory is None else result.trajectory.numpy(),
            result=result,
        )

    def __len__(self) -> int:
        return len(self.result.samples)

    @property
    def solver(self) -> str:
        """The solver's name (a registered one, or a Solver object's ``name``)."""
        return self.options.solver_name or ""

    @property
    def steps(self) -> int:
        return int(self.options.steps or 0)

    @property
    def time_grid(self) -> str:
        """The grid used: "tuned" (fm tune's, for these settings), a grid name, or "explicit"."""
        return self.result.time_grid

    def trajectory_images(self) -> np.ndarray:
        """The trajectory of an image model as uint8 [T, N, H, W, C] (what each animation frame shows)."""
        if self.trajectory is None:
            raise FMError("no trajectory: pass save_at (times, or a number of evenly spaced times) to sample()")
        if self.images is None:
            raise FMError("a 2-D model's trajectory is points: read samples.trajectory")
        states = self.result.trajectory
        return to_uint8(states.flatten(0, 1)).permute(0, 2, 3, 1).reshape(*states.shape[:2], *self.images.shape[1:])

    def grid(self, nrow: int | None = None, scale: int = 1) -> Image.Image:
        """The picture ``fm sample --out grid.png`` writes (a scatter plot for 2-D models), as a PIL image."""
        if self.images is None:
            return scatter_image(self.result.samples, self.result.labels)
        return grid_image(to_uint8(self.result.samples), nrow=nrow, scale=scale)

    def save(self, path: PathLike, *, nrow: int | None = None, format: str | None = None) -> list[Path]:
        """Write the samples as ``fm sample`` does: a .png grid, a .npz of arrays, or a folder of PNGs (a path
        without suffix). Returns the files written."""
        path = Path(path)
        fmt = output_format(path, format)
        if fmt == "folder":
            path.mkdir(parents=True, exist_ok=True)
        if self.images is None:
            return write_samples(path, None, self.result.labels, fmt, points=self.result.samples)
        return write_samples(path, to_uint8(self.result.samples), self.labels_tensor(), fmt, nrow=nrow,
                             prompts=self.prompts)  # fmt: skip

    def labels_tensor(self):
        return None if self.labels is None else torch.as_tensor(self.labels)


class Model:
    """A loaded checkpoint: ``sample``, ``animate``, ``info`` and what it was trained on (``class_names``, ...)."""

    def __init__(self, loaded: LoadedModel, path: Path | None = None):
        self.loaded = loaded
        self.path = None if path is None else Path(path)

    def __repr__(self) -> str:
        what = f"{self.meta.data.get('name')} {self.kind}s of shape {list(self.shape)}"
        return f"Model({str(self.path)!r}, {what}, {self.num_classes} classes, on {self.device})"

    @property
    def meta(self) -> CheckpointMeta:
        return self.loaded.meta

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def kind(self) -> str:
        """``image`` or ``points`` (2-D data); a latent model's samples are images."""
        kind = str(self.meta.data.get("kind"))
        return "image" if kind == "latent" else kind

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (1, 28, 28); a latent model's decoded picture, e.g. (3, 128, 128)."""
        return self.meta.image_shape

    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def default_sampler(self) -> tuple[str, int]:
        """(solver, steps) used when none are given: heun 20, or a few-step model's own sampler (meanflow 4)."""
        return default_sampler(self.meta)

    @property
    def info(self) -> dict:
        """What ``fm info --json`` prints: step, parameters, objective, default sampler, data, configs."""
        if self.path is None:
            raise FMError("this model was not loaded from a file; fm info needs the checkpoint's path")
        return checkpoint_info(self.path)

    def labels(self, classes: Classes, num: int | None) -> tuple[Tensor | None, int]:
        """(labels [num] or None, num) for ``classes`` (see ``Classes``); ``num`` None: one per listed class, or 16."""
        if isinstance(classes, bool):
            raise FMError(f"classes must be a class index, a class name, 'all' or a list of them (got {classes})")
        if classes is None or isinstance(classes, (str, int, np.integer)):
            num = 16 if num is None else num
            if num < 1:
                raise FMError(f"num must be at least 1 (got {num})")
            spec = None if classes is None else str(classes)
            return parse_classes(spec, num, self.class_names), num
        listed = classes.tolist() if isinstance(classes, (Tensor, np.ndarray)) else list(classes)
        if num is not None and num != len(listed):
            raise FMError(f"{len(listed)} classes were listed for num={num} samples; list one class per sample")
        if not listed:
            raise FMError("the list of classes is empty")
        labels = [int(parse_classes(str(item), 1, self.class_names)[0]) for item in listed]
        return torch.tensor(labels, dtype=torch.long), len(labels)

    def options(self, **fields: Any) -> SamplingOptions:
        """``SamplingOptions`` (validated) with this checkpoint's defaults filled in where a field is None."""
        return SamplingOptions(**fields).for_model(self.meta)

    def sample(
        self,
        num: int | None = None,
        classes: Classes = None,
        *,
        prompts: str | Sequence[str] | None = None,
        negative_prompt: str | None = None,
        solver: str | Solver | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        guidance_interval: tuple[float, float] | str | None = None,
        guide: PathLike | None = None,
        seed: int = 0,
        time_grid: str | Sequence[float] | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        batch_size: int | None = None,
        save_at: Sequence[float] | int | None = None,
        progress: ProgressFn | None = None,
    ) -> Samples:
        """Draw ``num`` samples (default 16, or one per listed class or prompt) from t = 1 (noise) to t = 0 (data):
        of ``classes`` for a class model, of ``prompts`` (a text, or a list: equal shares in order) for a text model,
        whose guidance steers away from ``negative_prompt`` instead of the empty prompt when one is given.

        The options are ``fm sample``'s: ``solver`` (a registered name or a Solver object; None: heun, or a
        few-step model's own meanflow), ``steps`` (None: 20, or 4 for meanflow), ``cfg``, ``guidance_interval``
        ((lo, hi) in fm's times, t = 1 noise) and ``guide`` (a checkpoint for autoguidance, or "none"): each None
        takes the setting ``fm tune --guidance`` stored, else the default (cfg 2 for classes on a model trained with
        label dropout, everywhere, no guide; ``samples.guidance`` says what was used), ``seed`` (same seed and
        options, same samples),
        ``time_grid`` (a grid name, "tuned", or explicit times from 1 to 0; None: the grid ``fm tune`` fitted for
        exactly these settings if there is one, else uniform; ``samples.time_grid`` says which), ``rtol``/``atol`` and
        ``batch_size`` (None: chosen for the memory, as ``fm sample`` does). ``save_at``: times in [0, 1] at which
        to keep the state (or a number of evenly spaced times from 1 to 0), read back as ``samples.times`` and
        ``samples.trajectory``. ``progress(done, num)`` hears how many samples are done as the solver steps.
        """
        labels, num, prompts = self.condition(classes, prompts, num)
        options = self.options(solver=solver, steps=steps, cfg=cfg, seed=seed, time_grid=time_grid, rtol=rtol,
                               atol=atol, batch_size=batch_size, guidance_interval=guidance_interval,
                               guide=None if guide is None else str(guide))  # fmt: skip
        times = _save_times(save_at)
        reference = negative_condition(self.loaded, negative_prompt, prompts, num, flag="negative_prompt")[0]
        result = generate(self.loaded, options, num=num, condition=labels, reference=reference, save_at=times,
                          progress=progress)  # fmt: skip
        return Samples.from_result(result, self.meta, prompts)

    def condition(self, classes: Classes, prompts: str | Sequence[str] | None, num: int | None) -> tuple:
        """(the condition rows, num, the prompt of each sample or None): classes for a class model, prompts for
        a text model (a prompt to a class model or a class to a text model: FMError)."""
        listed = None if prompts is None else [prompts] if isinstance(prompts, str) else list(prompts)
        check_condition_kind(self.loaded, listed, classes is not None)
        if listed is None:
            return (*self.labels(classes, num), None)
        if not listed:
            raise FMError("the list of prompts is empty")
        each = spread(listed, len(listed) if num is None else num)
        return prompt_condition(self.loaded, each)[0], len(each), each

    def animate(
        self,
        num: int | None = None,
        classes: Classes = None,
        *,
        prompts: str | Sequence[str] | None = None,
        negative_prompt: str | None = None,
        out: PathLike | None = None,
        frames: int = 40,
        fps: int = 12,
        hold: float = 1.5,
        loop: bool = True,
        scale: int = 4,
        show: str = "x",
        nrow: int | None = None,
        solver: str | Solver | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        guidance_interval: tuple[float, float] | str | None = None,
        guide: PathLike | None = None,
        seed: int = 0,
        time_grid: str | Sequence[float] | None = None,
        batch_size: int | None = None,
    ) -> Animation:
        """Frames of ONE solve from noise to data, as ``fm animate`` draws them; written to ``out`` (.gif, or a
        .png filmstrip) when given. ``frames``, ``fps``, ``hold``, ``loop``, ``scale``, ``show`` (x, x0 or both)
        and ``nrow`` are ``fm animate``'s options; the sampling options are ``sample``'s. The result holds the
        PIL frames, their times, the NFE and (``.result``) the final samples: ``Samples.from_result(a.result,
        model.meta)`` gives them as ``sample`` would."""
        labels, num, prompts = self.condition(classes, prompts, num)
        reference = negative_condition(self.loaded, negative_prompt, prompts, num, flag="negative_prompt")[0]
        if nrow is None and isinstance(classes, str) and classes == "all" and num % max(self.num_classes, 1) == 0:
            nrow = num // max(self.num_classes, 1)  # one row per class, as fm animate --class all draws it
        settings = AnimationSettings(frames=frames, fps=fps, hold=hold, loop=loop, scale=scale, show=show, nrow=nrow)
        options = self.options(solver=solver, steps=steps, cfg=cfg, seed=seed, time_grid=time_grid,
                               batch_size=batch_size, guidance_interval=guidance_interval,
                               guide=None if guide is None else str(guide))  # fmt: skip
        animation = render_animation(self.loaded, options, num=num, classes=labels, settings=settings,
                                     reference=reference)  # fmt: skip
        if out is not None:
            write_animation(Path(out), animation, settings)
        return animation


def _save_times(save_at: Sequence[float] | int | None) -> list[float] | None:
    if save_at is None:
        return None
    if isinstance(save_at, (int, np.integer)) and not isinstance(save_at, bool):
        if save_at < 2:
            raise FMError(f"save_at as a count needs at least 2 times, the noise and the sample (got {save_at})")
        return frame_times(int(save_at))
    return [float(t) for t in save_at]


def load(path: PathLike, device: str = "auto", weights: str = "ema") -> Model:
    """Load a checkpoint file or a run folder (its last.safetensors) for sampling.

    ``device``: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps. ``weights``: ema (the smoother
    average the CLI samples with) or raw. The file is checked before anything is allocated (``fm info`` reads
    the same header); a bad file raises ``FMError`` with one line saying why.
    """
    file = checkpoint_file(Path(path))
    return Model(load_checkpoint(file, device=resolve_device(device), weights=weights), file)
