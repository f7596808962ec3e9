"""A small line plot with Pillow (no plotting dependency): a metric against NFE on a log-x axis.

Fixed-step solvers are lines through their step counts; adaptive solvers are single points
(one per tolerance), since their NFE is chosen by error control.
"""

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from fmcli.io.files import atomic_write_bytes
from fmcli.io.images import PALETTE, png_bytes


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap size
        return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks or [low, high]


def _label(value: float) -> str:
    return f"{value:.4g}"


def plot_metric_vs_nfe(
    runs: list[dict], path: Path, *, metric: str = "fid", title: str = "", size: tuple[int, int] = (720, 480)
) -> None:
    """One line per solver (points for adaptive ones) of ``run[metric]`` against ``run['nfe']``."""
    points = [r for r in runs if r.get(metric) is not None and r.get("nfe", 0) > 0]
    if not points:
        raise ValueError(f"no runs with {metric} and a positive NFE to plot")
    width, height = size
    left, right, top, bottom = 80, 170, 40, 60
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)

    nfes = [r["nfe"] for r in points]
    values = [r[metric] for r in points]
    x_low, x_high = min(nfes) / 1.25, max(nfes) * 1.25
    y_ticks = _nice_ticks(min(0.0, min(values)), max(values) * 1.08 if max(values) > 0 else 1.0)
    y_low, y_high = y_ticks[0], max(y_ticks[-1], max(values))

    def to_px(nfe: float, value: float) -> tuple[float, float]:
        fx = (math.log(nfe) - math.log(x_low)) / (math.log(x_high) - math.log(x_low))
        fy = (value - y_low) / (y_high - y_low) if y_high > y_low else 0.5
        return left + fx * (width - left - right), height - bottom - fy * (height - top - bottom)

    # axes, grid and tick labels
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for tick in _log_ticks(x_low, x_high):
        x, _ = to_px(tick, y_low)
        draw.line([x, top, x, height - bottom], fill=(230, 230, 230))
        draw.text((x, height - bottom + 6), _label(tick), fill="black", font=small, anchor="mt")
    for tick in y_ticks:
        _, y = to_px(x_low, tick)
        draw.line([left, y, width - right, y], fill=(230, 230, 230))
        draw.text((left - 6, y), _label(tick), fill="black", font=small, anchor="rm")
    draw.text(
        ((left + width - right) / 2, height - 18),
        "NFE (model evaluations per sample, log scale)",
        fill="black",
        font=font,
        anchor="mm",
    )
    label_img = Image.new("RGBA", (height - top - bottom, 20), (255, 255, 255, 0))
    ImageDraw.Draw(label_img).text((label_img.width / 2, 10), metric.upper(), fill="black", font=font, anchor="mm")
    rotated = label_img.rotate(90, expand=True)
    image.paste(rotated, (14, top), rotated)
    if title:
        draw.text(((left + width - right) / 2, top / 2), title, fill="black", font=font, anchor="mm")

    # one series per solver, in order of first appearance
    solvers = list(dict.fromkeys(r["solver"] for r in points))
    for index, solver in enumerate(solvers):
        colour = PALETTE[index % len(PALETTE)]
        series = sorted((r for r in points if r["solver"] == solver), key=lambda r: r["nfe"])
        pixels = [to_px(r["nfe"], r[metric]) for r in series]
        if len(pixels) > 1 and not series[0].get("adaptive"):
            draw.line(pixels, fill=colour, width=2)
        for x, y in pixels:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        # legend
        ly = top + 10 + index * 22
        lx = width - right + 15
        if not series[0].get("adaptive"):
            draw.line([lx, ly, lx + 24, ly], fill=colour, width=2)
        draw.ellipse([lx + 8, ly - 4, lx + 16, ly + 4], fill=colour)
        name = f"{solver} (adaptive)" if series[0].get("adaptive") else solver
        draw.text((lx + 32, ly), name, fill="black", font=small, anchor="lm")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), png_bytes(image))
