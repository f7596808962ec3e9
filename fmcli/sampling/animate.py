"""Animations of generation: a GIF (or a PNG filmstrip) of ONE solve from noise to data.

Time convention: x_t = (1 - t) x0 + t x1, t = 0 is data, t = 1 is noise; sampling integrates
dx/dt = v(x, t) from t = 1 to t = 0. The frames are the states x_t of a single solve, read from
the solver's trajectory at the frame times (``generate(..., save_at=times)``; fixed-step solvers
interpolate linearly between grid states, adaptive ones use their dense output). Nothing is
solved twice, so the last frame is exactly what ``fm sample`` gives for the same checkpoint,
seed, solver and options, and the first frame is the initial noise x1.

What a frame shows (``show``):

    x     the state x_t: noise that sharpens into a sample
    x0    the model's current guess of the end point, x̂0 = x_t - t v(x_t, t) (exact on a straight
          path); it is sharp long before x_t is. Costs one extra model evaluation per frame
          (of the whole batch), i.e. ``frames`` more evaluations than the solve itself.
    both  the two side by side (x_t left, x̂0 right)

2-D data (``kind == "points"``): particles moving along the flow over a quiver plot of the learned
velocity at the frame's t, with the training data faintly behind. Arrows show -v: the velocity
field v points towards NOISE (t increasing), and sampling runs t backwards, so -v is the
direction the particles actually move.

Memory: the solve returns its trajectory as float32 on the CPU, frames x num x prod(shape) x 4
bytes (40 frames of 80 MNIST digits: 10 MB; briefly twice that while ``generate`` joins its
batches); requests above ``MAX_TRAJECTORY_BYTES`` are refused. Each frame is turned into a uint8
PIL image as soon as it is rendered, so the frames waiting for the encoder need about
frames x width x height bytes (x3 for RGB), and the float trajectory is dropped before encoding.

Palettes: grayscale data stays gray: frames are "L" images, which Pillow writes with a gray
palette (one entry per gray level: no colour, no dithering). RGB frames are quantized to an
adaptive 256-colour palette per frame with median cut and no dithering. Median cut splits colour
space by population, the best of Pillow's methods for photo-like images (fast octree is quicker
but coarser); Floyd-Steinberg dithering would add pixel noise that changes from frame to frame
(a visible shimmer in a GIF) and compresses worse with GIF's LZW.
"""

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fmcli.data.base import LoadOptions, to_uint8
from fmcli.data.resolve import load_data
from fmcli.errors import FMError
from fmcli.flow.path import predicted_data
from fmcli.io.checkpoint import LoadedModel
from fmcli.io.files import atomic_write_bytes
from fmcli.io.images import PlotFrame, encode_filmstrip, encode_gif, grid_image, side_by_side, with_caption
from fmcli.sampling.generate import SampleResult, decode_latents, generate
from fmcli.sampling.options import SamplingOptions

SHOW_MODES = ("x", "x0", "both")
FORMATS = {".gif": "gif", ".png": "png"}
DEFAULT_FRAMES = {"gif": 40, "png": 8}
FRAMES_RANGE = (2, 1000)
FPS_RANGE = (1, 50)  # GIF delays are whole centiseconds; browsers slow delays under 20 ms to 100 ms
SCALE_RANGE = (1, 16)
MAX_HOLD_S = 60.0
MAX_TRAJECTORY_BYTES = 4 * 2**30
POINTS_SIZE_PER_SCALE = 128  # a 2-D plot is 128 x scale pixels square (512 at the default scale 4)
QUIVER_GRID = 20  # 20 x 20 arrows
BACKGROUND_POINTS = 2000

ProgressFn = Callable[[str, int, int], None]  # (stage "solve" or "render", done, total)


@dataclass
class AnimationSettings:
    frames: int = 40
    fps: int = 12
    hold: float = 1.5  # extra seconds on the final frame
    loop: bool = True
    scale: int = 4  # nearest-neighbour magnification of images; 2-D plots are 128 x scale px
    show: str = "x"  # x, x0 or both
    nrow: int | None = None  # images per grid row (None: near square)


@dataclass
class Animation:
    frames: list[Image.Image]  # "L" (grayscale data) or "RGB" images, all the same size
    times: list[float]  # t of each frame, 1 -> 0
    grid_box: tuple[int, int, int, int]  # (left, top, right, bottom) of the x_t grid / plot in each frame
    nfe: int  # model evaluations of the solve (per sample)
    extra_nfe: int  # evaluations for x̂0 frames and the quiver plots (one per frame each)
    seconds: float
    result: SampleResult | None = None  # the solve's final samples (what fm sample draws), without the trajectory


# --- checks that need no model ------------------------------------------------------------


def output_kind(out: Path) -> str:
    """``gif`` or ``png`` from the file name; FMError for anything else or a missing folder."""
    kind = FORMATS.get(Path(out).suffix.lower())
    if kind is None:
        raise FMError(
            f"cannot tell the animation format from {out}: end --out in .gif (an animation) "
            "or .png (a filmstrip of frames side by side)"
        )
    if not Path(out).parent.exists():
        raise FMError(f"output folder {Path(out).parent} does not exist; create it first")
    if Path(out).is_dir():
        raise FMError(f"{out} is a folder; give a file name ending in .gif or .png")
    return kind


def check_settings(settings: AnimationSettings) -> None:
    """One clear FMError for each out-of-range option."""
    if not FRAMES_RANGE[0] <= settings.frames <= FRAMES_RANGE[1]:
        raise FMError(
            f"--frames must be in {FRAMES_RANGE[0]}..{FRAMES_RANGE[1]} (got {settings.frames}): "
            "an animation needs at least the noise and the final sample"
        )
    if not FPS_RANGE[0] <= settings.fps <= FPS_RANGE[1]:
        raise FMError(
            f"--fps must be in {FPS_RANGE[0]}..{FPS_RANGE[1]} (got {settings.fps}); GIF frame delays "
            "are centiseconds and browsers play delays under 20 ms slowly"
        )
    if not SCALE_RANGE[0] <= settings.scale <= SCALE_RANGE[1]:
        raise FMError(f"--scale must be an integer in {SCALE_RANGE[0]}..{SCALE_RANGE[1]} (got {settings.scale})")
    if not 0 <= settings.hold <= MAX_HOLD_S:
        raise FMError(f"--hold must be between 0 and {MAX_HOLD_S:g} seconds (got {settings.hold:g})")
    if settings.show not in SHOW_MODES:
        raise FMError(f"--show must be one of {', '.join(SHOW_MODES)} (got {settings.show!r})")
    if settings.nrow is not None and settings.nrow < 1:
        raise FMError(f"--nrow must be at least 1 (got {settings.nrow})")


def frame_times(frames: int) -> list[float]:
    """``frames`` times evenly spaced from 1 (noise) down to 0 (data), both ends exact."""
    return [1.0 - i / (frames - 1) for i in range(frames - 1)] + [0.0]


def frame_durations_ms(frames: int, fps: int, hold: float) -> list[int]:
    """Per-frame display times in ms, whole centiseconds (GIF's unit); the last one adds the hold."""
    tick = max(2, round(100 / fps))
    durations = [10 * tick] * frames
    durations[-1] += 10 * round(hold * 100)
    return durations


def trajectory_bytes(frames: int, num: int, shape: Sequence[int]) -> int:
    return frames * num * math.prod(shape) * 4


# --- drawing --------------------------------------------------------------------------------


def state_grid(states: Tensor, nrow: int | None, scale: int) -> Image.Image:
    """Float images [N, C, H, W] in model space [-1, 1] -> the uint8 grid ``fm sample`` writes (times ``scale``)."""
    return grid_image(to_uint8(states), nrow=nrow, scale=scale)


def time_label(t: float, frames: int) -> str:
    return f"t = {t:.2f}" if frames <= 101 else f"t = {t:.3f}"  # no two frames share a label


def load_background(meta_data: dict, train_config: dict, seed: int) -> np.ndarray | None:
    """Up to BACKGROUND_POINTS training points of the checkpoint's data set, or None when it can't be loaded."""
    try:
        options = LoadOptions(split="train", data_dir=train_config.get("data_dir"), download=False)
        data = load_data(str(meta_data["name"]), options).data.float()
    except (FMError, OSError):  # a plugin data set that is gone, a missing file: the plot is fine without it
        return None
    if data.dim() != 2 or data.shape[1] != 2:
        return None
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:BACKGROUND_POINTS]
    return data[order].numpy()


# --- rendering ------------------------------------------------------------------------------


def predicted_x0(
    velocity: Callable[..., Tensor],
    states: Tensor,
    t: float,
    labels: Tensor | None,
    device: torch.device,
    batch_size: int,
    one_step: bool = False,
) -> Tensor:
    """x̂0 = x_t - t v(x_t, t) for CPU states [N, ...], evaluated in batches on ``device``; CPU float result.

    ``one_step`` (models trained for few-step sampling): x̂0 = x_t - t u(x_t, 0, t), the model's own jump
    from t straight to the data, exact for an exact average velocity where x_t - t v is only a straight guess.
    """
    guesses = []
    for first in range(0, len(states), batch_size):
        x = states[first : first + batch_size].to(device)
        y = None if labels is None else labels[first : first + batch_size].to(device)
        t_tensor = torch.tensor(t, device=device, dtype=x.dtype)
        interval = {"r": torch.zeros_like(t_tensor)} if one_step else {}
        guesses.append(predicted_data(x, t_tensor, velocity(x, t_tensor, y, **interval)).float().cpu())
    return torch.cat(guesses)


@torch.no_grad()
def render_animation(
    loaded: LoadedModel,
    sampling: SamplingOptions,
    *,
    num: int,
    classes: Tensor | None,
    settings: AnimationSettings,
    progress: ProgressFn | None = None,
    reference: Tensor | None = None,
) -> Animation:
    """Solve once from noise to data with ``save_at`` = the frame times, and draw every frame. ``classes``: the
    condition rows (class indices or prompt token ids); ``reference``: a negative prompt's, as ``generate``."""
    check_settings(settings)
    shape = loaded.meta.shape  # a latent model's trajectory is kept as latents, decoded frame by frame
    needed = trajectory_bytes(settings.frames, num, shape)
    if needed > MAX_TRAJECTORY_BYTES:
        raise FMError(
            f"{settings.frames} frames of {num} samples of shape {list(shape)} would keep "
            f"{needed / 2**30:.1f} GiB of trajectory in memory (limit {MAX_TRAJECTORY_BYTES / 2**30:.0f} GiB); "
            "use fewer --frames or --num"
        )
    start = time.perf_counter()
    result = generate(
        loaded,
        sampling,
        num=num,
        condition=classes,
        reference=reference,
        save_at=frame_times(settings.frames),
        progress=(lambda done, total: progress("solve", done, total)) if progress else None,
        decode=False,
    )
    times = [float(t) for t in result.times]
    trajectory = result.trajectory  # [T, N, ...] float32 on the CPU
    result.trajectory = None
    velocity = result.velocity  # the guidance the solve used: scale, interval, guide
    x0 = functools.partial(
        predicted_x0,
        velocity,
        labels=classes,
        device=loaded.device,
        batch_size=result.batch_size,  # the solve's (given, or chosen for the memory)
        one_step=bool(loaded.meta.model_config.get("interval")),
    )
    if loaded.meta.data["kind"] == "points":
        frames, box, extra = _points_frames(
            loaded, trajectory, times, classes, velocity, x0, settings, sampling.seed, progress
        )
    else:
        pictures = functools.partial(decode_latents, loaded.autoencoder) if loaded.autoencoder else None
        frames, box, extra = _image_frames(trajectory, times, x0, settings, progress, pictures)
        if pictures is not None:  # what fm sample gives: the decoded end point
            result.samples = pictures(result.samples)
    del trajectory
    return Animation(
        frames=frames,
        times=times,
        grid_box=box,
        nfe=result.nfe,
        extra_nfe=extra,
        seconds=time.perf_counter() - start,
        result=result,
    )


def _image_frames(
    trajectory: Tensor,
    times: list[float],
    x0: Callable[..., Tensor],
    settings: AnimationSettings,
    progress: ProgressFn | None,
    pictures: Callable[[Tensor], Tensor] | None = None,
) -> tuple[list[Image.Image], tuple[int, int, int, int], int]:
    """The frames of an image model; ``pictures`` decodes a latent model's states (x_t and the x0 guesses)."""
    frames, box = [], (0, 0, 0, 0)
    gap = 4 * settings.scale
    grid = lambda states: state_grid(pictures(states) if pictures else states, settings.nrow, settings.scale)  # noqa: E731
    for index, t in enumerate(times):
        states = trajectory[index]
        if settings.show == "x":
            content, text = grid(states), time_label(t, len(times))
        elif settings.show == "x0":
            content = grid(x0(states, t))
            text = f"{time_label(t, len(times))}  guess x0 = x_t - t v"
        else:
            content = side_by_side(grid(states), grid(x0(states, t)), gap)
            text = f"{time_label(t, len(times))}  left x_t, right guess x0"
        frame, strip = with_caption(content, text, settings.scale)
        frames.append(frame)
        width = content.width if settings.show != "both" else (content.width - gap) // 2
        box = (0, strip, width, strip + content.height)
        if progress:
            progress("render", index + 1, len(times))
    return frames, box, 0 if settings.show == "x" else len(times)


def motion_field(
    velocity: Callable[..., Tensor], points: Tensor, times: Sequence[float], labels: Tensor | None, device: torch.device
) -> Tensor:
    """-v(points, t) for each t: [T, G, 2] on the CPU, the direction particles move while sampling (t decreasing).

    One model evaluation (of the G grid points) per time.
    """
    y = None if labels is None else labels.to(device)
    return torch.stack([-velocity(points.to(device), torch.tensor(t, device=device), y).float().cpu() for t in times])


def _points_frames(
    loaded: LoadedModel,
    trajectory: Tensor,
    times: list[float],
    classes: Tensor | None,
    velocity: Callable[..., Tensor],
    x0: Callable[..., Tensor],
    settings: AnimationSettings,
    seed: int,
    progress: ProgressFn | None,
) -> tuple[list[Image.Image], tuple[int, int, int, int], int]:
    """Particles over the quiver plot of -v at each frame's t (the direction they move while sampling)."""
    device = loaded.device
    coordinates = trajectory.abs().numpy().ravel()
    coordinates = coordinates[np.isfinite(coordinates)]
    extent = 1.15 * max(float(np.percentile(coordinates, 99.5)) if coordinates.size else 1.0, 1e-3)
    plot = PlotFrame(size=POINTS_SIZE_PER_SCALE * settings.scale, extent=extent)
    axis = (torch.arange(QUIVER_GRID) + 0.5) / QUIVER_GRID * 2 * extent - extent
    grid = torch.cartesian_prod(axis, axis)  # [400, 2]
    # One class drawn for every particle: its field. Mixed classes or none: the unconditional (null-class) field.
    single = classes is not None and bool((classes == classes[0]).all())
    field_labels = torch.full((len(grid),), int(classes[0])) if single else None
    field_note = " without class" if classes is not None and not single else ""
    fields = motion_field(velocity, grid, times, field_labels, device)
    # One arrow scale for all frames (so lengths compare across t): the 98th percentile speed spans 90% of a cell.
    speeds = fields.norm(dim=-1).numpy().ravel()
    speeds = speeds[np.isfinite(speeds)]
    spacing = 2 * extent / QUIVER_GRID
    typical = float(np.percentile(speeds, 98)) if speeds.size else 1.0
    arrow_scale = 0.9 * spacing / max(typical, 1e-8)
    background = load_background(loaded.meta.data, loaded.meta.train_config, seed)
    labels = None if classes is None else classes.tolist()
    frames, box = [], (0, 0, 0, 0)
    gap = 4 * settings.scale
    for index, t in enumerate(times):
        arrows = fields[index] * arrow_scale
        too_long = arrows.norm(dim=-1, keepdim=True) > spacing
        arrows = torch.where(too_long, arrows / arrows.norm(dim=-1, keepdim=True) * spacing, arrows)
        arrows = torch.nan_to_num(arrows).numpy()

        def panel(points: Tensor, arrows: np.ndarray = arrows) -> Image.Image:
            return plot.draw(points.numpy(), labels, background, grid.numpy(), arrows)

        states = trajectory[index]
        label = f"{time_label(t, len(times))}  arrows: -v{field_note} (where particles move)"
        if settings.show == "x":
            content = panel(states)
        elif settings.show == "x0":
            content, label = panel(x0(states, t)), f"{label}, dots: guess x0"
        else:
            content = side_by_side(panel(states), panel(x0(states, t)), gap)
            label = f"{label}; left x_t, right guess x0"
        frame, strip = with_caption(content, label, settings.scale)
        frames.append(frame)
        box = (0, strip, plot.size, strip + plot.size)
        if progress:
            progress("render", index + 1, len(times))
    extra = len(times) * (1 if settings.show == "x" else 2)
    return frames, box, extra


# --- encoding -------------------------------------------------------------------------------


def write_animation(out: Path, animation: Animation, settings: AnimationSettings) -> int:
    """Write the GIF or the filmstrip PNG atomically (no partial file on failure); returns its size in bytes."""
    kind = output_kind(out)
    if kind == "gif":
        durations = frame_durations_ms(len(animation.frames), settings.fps, settings.hold)
        payload = encode_gif(animation.frames, durations, settings.loop)
    else:
        payload = encode_filmstrip(animation.frames)
    atomic_write_bytes(Path(out), payload)
    return len(payload)
