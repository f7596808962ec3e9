"""`fm animate`: frames of one solve, the GIF's timing and palette, the filmstrip, 2-D plots, bad input.

Layout fact the comparisons rely on: the picture of x_t (the same uint8 grid ``fm sample`` writes)
sits in the bottom-left corner of every frame, under the caption strip.
"""

import io

import numpy as np
import pytest
import torch
import typer
from conftest import train_tiny
from PIL import Image
from typer.testing import CliRunner

from fmcli.cli import app as fm_app
from fmcli.cli.animate import animate_command
from fmcli.data.base import to_uint8
from fmcli.errors import FMError
from fmcli.io.checkpoint import CheckpointMeta, LoadedModel, load_checkpoint
from fmcli.io.images import PlotFrame, encode_gif, grid_image
from fmcli.sampling.animate import (
    AnimationSettings,
    frame_durations_ms,
    frame_times,
    motion_field,
    render_animation,
)
from fmcli.sampling.guidance import guided_velocity, parse_classes
from fmcli.sampling.options import SamplingOptions

runner = CliRunner()
animate_app = typer.Typer()
animate_app.command()(animate_command)

# Small and fast: 4 Heun steps, 2 digits per class, 5 frames, no magnification.
FAST = ["--steps", "4", "--seed", "7", "--scale", "1"]


def animate(*args) -> str:
    result = runner.invoke(animate_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def gif_frames(path) -> tuple[list[np.ndarray], list[int], dict]:
    """Every frame as uint8 RGB [H, W, 3], the durations in ms, and the first frame's info."""
    picture = Image.open(path)
    info = dict(picture.info)
    frames, durations = [], []
    for index in range(picture.n_frames):
        picture.seek(index)
        frames.append(np.asarray(picture.convert("RGB")))
        durations.append(picture.info["duration"])
    return frames, durations, info


def bottom_left(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return frame[frame.shape[0] - height :, :width]


def global_palette(gif: bytes) -> np.ndarray:
    """The global colour table straight from the GIF header, as [entries, 3]."""
    flags = gif[10]
    assert flags & 0x80, "no global colour table"
    entries = 2 ** ((flags & 0x07) + 1)
    return np.frombuffer(gif[13 : 13 + 3 * entries], dtype=np.uint8).reshape(entries, 3)


@pytest.fixture(scope="module")
def nine_gif(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("anim") / "nine.gif"
    animate(
        tiny_checkpoint,
        "--class",
        "all",
        "--num",
        "2",
        "--frames",
        "5",
        "--fps",
        "10",
        "--hold",
        "1.5",
        *FAST,
        "--out",
        out,
    )
    return out


@pytest.fixture(scope="module")
def sampled_png(tiny_checkpoint, tmp_path_factory):
    """What `fm sample` writes for the same seed and options (20 digits, one row of 2 per class)."""
    out = tmp_path_factory.mktemp("sample") / "grid.png"
    result = runner.invoke(
        fm_app,
        [
            "sample",
            str(tiny_checkpoint),
            "--class",
            "all",
            "--num",
            "20",
            "--nrow",
            "2",
            "--steps",
            "4",
            "--seed",
            "7",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(out).convert("RGB"))


def test_frame_times_and_durations_are_exact():
    assert frame_times(5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    # GIF delays are centiseconds: 12 fps -> 80 ms; the hold is added to the last frame only.
    assert frame_durations_ms(3, 12, 1.5) == [80, 80, 1580]
    assert frame_durations_ms(2, 50, 0) == [20, 20]


def test_gif_frame_count_durations_loop_and_gray_palette(nine_gif, tmp_path, tiny_checkpoint):
    frames, durations, info = gif_frames(nine_gif)
    assert len(frames) == 5
    assert durations == [100, 100, 100, 100, 1600]
    assert info["loop"] == 0
    for frame in frames:  # grayscale data stays gray: not one coloured pixel in any frame
        assert np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 1], frame[..., 2])
    palette = global_palette(nine_gif.read_bytes())
    assert np.array_equal(palette[:, 0], palette[:, 1]) and np.array_equal(palette[:, 1], palette[:, 2])

    once = tmp_path / "once.gif"
    animate(tiny_checkpoint, "--class", "3", "--num", "1", "--frames", "2", "--no-loop", *FAST, "--out", once)
    assert "loop" not in Image.open(once).info


def test_first_frame_is_the_noise_and_last_frame_is_fm_sample(nine_gif, sampled_png):
    frames, _, _ = gif_frames(nine_gif)
    height, width = sampled_png.shape[:2]
    assert (height, width) == (10 * 30 + 2, 2 * 30 + 2)  # one row per class, 2 digits each
    assert np.array_equal(bottom_left(frames[-1], (width, height)), sampled_png)
    # generate() draws x1 ~ N(0, I) from a generator seeded with --seed, for the whole batch at once
    noise = torch.randn((20, 1, 28, 28), generator=torch.Generator().manual_seed(7))
    expected = np.asarray(grid_image(to_uint8(noise), nrow=2).convert("RGB"))
    assert np.array_equal(bottom_left(frames[0], (width, height)), expected)
    assert not np.array_equal(frames[0], frames[-1])


@pytest.fixture(scope="module")
def moving_checkpoint(tmp_path_factory):
    """A tiny U-Net trained 3 steps at a large learning rate: |v| is about 0.7, so x_t moves by tens of gray
    levels between frames (the tiny_checkpoint's velocity is nearly zero: its frames would all look alike)."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "moving", lr=0.05, warmup_steps=0)


@torch.no_grad()
def fixed_step_states(checkpoint, x1: torch.Tensor, labels: torch.Tensor, solver: str, steps: int) -> list:
    """An independent solve of dx/dt = v(x, t, y) from t = 1 to 0 on the uniform grid t_k = 1 - k / steps,
    written out here (Euler, or Heun's trapezoid predictor-corrector); the states at every grid time."""
    model = load_checkpoint(checkpoint).model

    def v(x, t):
        return model(x, torch.full((len(x),), t), labels)

    grid = [1.0 - k / steps for k in range(steps)] + [0.0]
    states = [x1]
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x, h = states[-1], t_next - t
        if solver == "euler":
            states.append(x + h * v(x, t))
        else:
            k1 = v(x, t)
            k2 = v(x + h * k1, t + h)
            states.append(x + 0.5 * h * (k1 + k2))
    return states


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_middle_frames_are_the_states_at_their_times(moving_checkpoint, tmp_path, solver):
    """5 frames at t = 1, 0.75, 0.5, 0.25, 0 with 4 solver steps: every frame time is a grid time, so each
    middle frame must show the state of an independent solve stopped at that time (same noise, same grid)."""
    out = tmp_path / "moving.gif"
    result = runner.invoke(
        fm_app,
        [
            "animate",
            str(moving_checkpoint),
            "--class",
            "3",
            "--num",
            "4",
            "--nrow",
            "2",
            "--frames",
            "5",
            "--solver",
            solver,
            "--steps",
            "4",
            "--cfg",
            "1",
            "--seed",
            "7",
            "--scale",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    frames, _, _ = gif_frames(out)
    noise = torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(7))  # generate()'s x1 for --seed 7
    states = fixed_step_states(moving_checkpoint, noise, torch.full((4,), 3), solver, steps=4)
    pictures = [np.asarray(grid_image(to_uint8(x), nrow=2).convert("RGB")).astype(int) for x in states]
    size = pictures[0].shape[1], pictures[0].shape[0]
    for index in (1, 2, 3):
        shown = bottom_left(frames[index], size).astype(int)
        # The same float32 operations: equal up to a rounding tie at .5 of a gray level.
        assert np.abs(shown - pictures[index]).max() <= 1, index
        # ... while the neighbouring states differ by tens of levels, so a frame of the wrong time fails.
        for other in (index - 1, index + 1):
            assert np.abs(shown - pictures[other]).max() > 20, (index, other)


def test_show_x0_is_the_models_guess_and_both_puts_them_side_by_side(nine_gif, sampled_png, tiny_checkpoint, tmp_path):
    size = sampled_png.shape[1], sampled_png.shape[0]
    animate(
        tiny_checkpoint,
        "--class",
        "all",
        "--num",
        "2",
        "--frames",
        "5",
        "--show",
        "x0",
        *FAST,
        "--out",
        tmp_path / "x0.gif",
    )
    guesses, _, _ = gif_frames(tmp_path / "x0.gif")
    # at t = 0 the guess x_t - 0 * v is the sample itself
    assert np.array_equal(bottom_left(guesses[-1], size), sampled_png)
    # at t = 1 it is x1 - v(x1, 1), computed here from the model directly (with the default guidance, 2)
    loaded = load_checkpoint(tiny_checkpoint)
    noise = torch.randn((20, 1, 28, 28), generator=torch.Generator().manual_seed(7))
    labels = parse_classes("all", 20, loaded.meta.class_names)
    velocity = guided_velocity(loaded.model, 2.0, null_class=loaded.meta.num_classes)
    with torch.no_grad():
        guess = noise - velocity(noise, torch.tensor(1.0), labels)
    expected = np.asarray(grid_image(to_uint8(guess), nrow=2).convert("RGB"))
    assert np.abs(bottom_left(guesses[0], size).astype(int) - expected).max() <= 1  # float rounding at .5

    animate(
        tiny_checkpoint,
        "--class",
        "all",
        "--num",
        "2",
        "--frames",
        "5",
        "--show",
        "both",
        *FAST,
        "--out",
        tmp_path / "both.gif",
    )
    both, _, _ = gif_frames(tmp_path / "both.gif")
    states, _, _ = gif_frames(nine_gif)
    width, height = size
    gap = 4  # 4 px x scale 1
    for index in (0, 4):
        picture = both[index][both[index].shape[0] - height :]
        assert np.array_equal(picture[:, :width], bottom_left(states[index], size))
        assert np.array_equal(picture[:, width + gap : 2 * width + gap], bottom_left(guesses[index], size))


def test_png_filmstrip_holds_the_frames_side_by_side(tiny_checkpoint, tmp_path, sampled_png):
    out = tmp_path / "strip.png"
    animate(tiny_checkpoint, "--class", "all", "--num", "2", "--frames", "3", *FAST, "--out", out)
    strip = Image.open(out)
    assert strip.format == "PNG" and strip.mode == "L"
    frame_width = (strip.width - 2 * 4) // 3  # 3 frames with 4 px gaps
    assert 3 * frame_width + 8 == strip.width
    last = np.asarray(strip.convert("RGB"))[:, 2 * (frame_width + 4) :]
    assert np.array_equal(bottom_left(last, (sampled_png.shape[1], sampled_png.shape[0])), sampled_png)


def test_toy_animation_draws_particles_arrows_and_the_data(toy_checkpoint, tmp_path):
    out = tmp_path / "flow.gif"
    animate(toy_checkpoint, "--num", "64", "--frames", "3", "--steps", "2", "--scale", "1", "--out", out)
    frames, durations, _ = gif_frames(out)
    assert len(frames) == 3 and durations[-1] > durations[0]
    plot = frames[-1][-128:, :128]  # 128 x scale pixels, bottom left
    colours = {tuple(int(v) for v in c) for c in plot.reshape(-1, 3)}
    assert (31, 119, 180) in colours  # particles (unlabelled sampling: the first palette colour)
    assert (215, 215, 215) in colours  # the moons training data behind them
    assert any(abs(r - 150) + abs(g - 160) + abs(b - 190) < 12 for r, g, b in colours)  # arrows


class ConstantVelocity(torch.nn.Module):
    """v(x, t) = (1, 0) everywhere: sampling moves every particle by -v = (-1, 0) from t = 1 to 0."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a parameter, so the device can be read

    def forward(self, x, t, y=None):
        return torch.tensor([1.0, 0.0]).expand_as(x) + 0 * self.anchor


def test_particles_and_arrows_move_along_minus_v():
    meta = CheckpointMeta(
        format_version=1, model_config={}, data={"name": "no-such-data", "kind": "points", "shape": [2]}, step=0
    )
    loaded = LoadedModel(model=ConstantVelocity(), meta=meta)
    animation = render_animation(
        loaded, SamplingOptions(), num=200, classes=None, settings=AnimationSettings(frames=2, scale=2)
    )
    left, top, right, bottom = animation.grid_box
    first, last = (np.asarray(frame)[top:bottom, left:right].astype(int) for frame in animation.frames)

    def centroid(picture, colour):
        ys, xs = np.nonzero(np.abs(picture - colour).sum(-1) == 0)
        return xs.mean(), ys.mean(), len(xs)

    x0, y0, n0 = centroid(first, (31, 119, 180))
    x1, y1, n1 = centroid(last, (31, 119, 180))
    assert n0 > 100 and n1 > 100
    assert x1 < x0 - 10 and abs(y1 - y0) < 3  # the cloud moved left (along -v), not up or down
    # no background: the data set can't be loaded, so no light-grey points
    assert not (np.abs(first - (215, 215, 215)).sum(-1) == 0).any()
    # the arrows show -v = (-1, 0) everywhere: where the particles go
    grid = torch.cartesian_prod(torch.linspace(-2, 2, 5), torch.linspace(-2, 2, 5))
    field = motion_field(guided_velocity(loaded.model, 1.0, 0), grid, [1.0, 0.5, 0.0], None, torch.device("cpu"))
    assert torch.equal(field, torch.tensor([-1.0, 0.0]).expand(3, 25, 2))


def test_plot_arrow_heads_are_at_the_tip():
    plot = PlotFrame(size=200, extent=1.0)
    picture = plot.draw(np.zeros((0, 2)), None, None, np.array([[0.0, 0.0]]), np.array([[0.5, 0.0]]))
    ys, xs = np.nonzero((np.asarray(picture).astype(int) - (150, 160, 190) == 0).all(-1))
    assert xs.min() == 100 and xs.max() == 150  # from the centre to 0.5 (a quarter of 200 px) right
    assert set(ys[xs > 145]) > {100}  # the barbs spread up and down near the tip


def test_rgb_frames_keep_their_colours_without_dithering():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (200, 3), dtype=np.uint8)  # 200 colours fit a 256-entry palette exactly
    frames = [Image.fromarray(colours[rng.integers(0, 200, (16, 16))]) for _ in range(2)]
    gif = encode_gif(frames, [100, 100], loop=True)
    decoded = Image.open(io.BytesIO(gif))
    for index, frame in enumerate(frames):
        decoded.seek(index)
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(frame))


def test_memory_bound_refuses_huge_trajectories(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    with pytest.raises(FMError, match="fewer --frames or --num"):
        render_animation(loaded, SamplingOptions(), num=100_000, classes=None, settings=AnimationSettings(frames=1000))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--frames", "1"], "--frames"),
        (["--scale", "0"], "--scale"),
        (["--scale", "17"], "--scale"),
        (["--fps", "0"], "--fps"),
        (["--fps", "51"], "--fps"),
        (["--hold", "-1"], "--hold"),
        (["--show", "v"], "--show"),
        (["--class", "10"], "out of range"),
        (["--solver", "huen"], "unknown solver"),
    ],
)
def test_bad_options_fail_in_one_line_without_output(tiny_checkpoint, tmp_path, args, fragment):
    out = tmp_path / "x.gif"
    result = runner.invoke(animate_app, [str(tiny_checkpoint), *args, "--steps", "1", "--out", str(out)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, fragment", [("missing/x.gif", "does not exist"), ("x.mp4", "end --out in .gif")])
def test_bad_output_paths(tiny_checkpoint, tmp_path, name, fragment):
    result = runner.invoke(animate_app, [str(tiny_checkpoint), "--out", str(tmp_path / name)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


def test_help_has_examples():
    result = runner.invoke(animate_app, ["--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "--show" in result.output
