"""Pictures: PNG grids, folders of PNGs, .npz arrays, 2-D plots, captioned frames, GIFs and filmstrips.

Everything here turns tensors into bytes; files are written atomically (``fmcli.io.files``).
"""

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from fmcli.errors import FMError
from fmcli.io.files import atomic_write_bytes

OUTPUT_FORMATS = ("png", "folder", "npz")
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
BACKGROUND_GREY = (215, 215, 215)
ARROW_COLOUR = (150, 160, 190)
FILMSTRIP_COLUMNS = 8


# --- image grids ------------------------------------------------------------------------------


def grid_image(images: Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1) -> Image.Image:
    """uint8 [N, C, H, W] -> one PIL image, ``nrow`` images per row (default: a near-square grid)."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top : top + h, left : left + w] = array[i]
    picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# --- 2-D plots ----------------------------------------------------------------------------------


@dataclass
class PlotFrame:
    """A square 2-D plot of [-extent, extent]^2, ``size`` pixels wide, y up."""

    size: int
    extent: float

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        return (xy / self.extent * 0.5 + 0.5) * self.size * np.array([1, -1]) + np.array([0, self.size])

    def draw(
        self,
        points: np.ndarray,
        labels: list[int] | None,
        background: np.ndarray | None = None,
        arrows_from: np.ndarray | None = None,
        arrows: np.ndarray | None = None,
        radius: float | None = None,
    ) -> Image.Image:
        """Background data (light grey), arrows ``arrows_from -> arrows_from + arrows`` (data units), then points
        coloured by label."""
        picture = Image.new("RGB", (self.size, self.size), "white")
        draw = ImageDraw.Draw(picture)
        if background is not None:
            for x, y in self.to_pixel(background):
                draw.point((x, y), fill=BACKGROUND_GREY)
        if arrows is not None:
            self._draw_arrows(draw, arrows_from, arrows)
        radius = radius or max(1.5, self.size / 256)
        label_list = labels if labels is not None else [None] * len(points)
        for (x, y), label in zip(self.to_pixel(points), label_list, strict=True):
            colour = PALETTE[label % len(PALETTE)] if label is not None else PALETTE[0]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
        return picture

    def _draw_arrows(self, draw: ImageDraw.ImageDraw, starts: np.ndarray, arrows: np.ndarray) -> None:
        head = max(2.0, self.size / 170)
        for (x0, y0), (x1, y1) in zip(self.to_pixel(starts), self.to_pixel(starts + arrows), strict=True):
            draw.line((x0, y0, x1, y1), fill=ARROW_COLOUR, width=1)
            length = math.hypot(x1 - x0, y1 - y0)
            if length > 1.5 * head:  # an arrow head on arrows long enough to show one
                ux, uy = (x1 - x0) / length, (y1 - y0) / length
                for side in (1, -1):  # two barbs at +-30 degrees from the shaft, pointing back
                    bx = x1 - head * (ux * 0.866 - side * uy * 0.5)
                    by = y1 - head * (uy * 0.866 + side * ux * 0.5)
                    draw.line((x1, y1, bx, by), fill=ARROW_COLOUR, width=1)


def scatter_image(
    points: Tensor,
    labels: Tensor | None = None,
    size: int = 512,
    extent: float | None = None,
    background: Tensor | None = None,
) -> Image.Image:
    """A plain scatter plot of 2-D points (coloured by label), drawn with Pillow."""
    pts = points.detach().float().cpu().numpy()
    extent = extent or float(max(np.abs(pts).max() * 1.1, 1e-3))
    back = background.float().cpu().numpy() if background is not None else None
    return PlotFrame(size, extent).draw(pts, labels.tolist() if labels is not None else None, back, radius=1.5)


# --- captioned frames, GIFs and filmstrips ---------------------------------------------------------


@functools.lru_cache(maxsize=8)
def caption_font(scale: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font, larger for larger frames (10 px at scale 1, 16 px at the default 4)."""
    return ImageFont.load_default(size=min(32, 10 + 2 * (scale - 1)))


def with_caption(content: Image.Image, text: str, scale: int) -> tuple[Image.Image, int]:
    """``content`` under a black strip holding ``text`` in white; returns the frame and the strip height.

    The content keeps its pixels and sits at (0, strip height); the frame is widened (black) when
    the text is wider than the content.
    """
    font = caption_font(scale)
    left, top, right, bottom = font.getbbox(text)
    pad = 2 + scale // 2
    strip = bottom + 2 * pad
    frame = Image.new(content.mode, (max(content.width, right + 2 * pad), strip + content.height), 0)
    frame.paste(content, (0, strip))
    white = 255 if content.mode == "L" else (255, 255, 255)
    ImageDraw.Draw(frame).text((pad, pad), text, fill=white, font=font)
    return frame, strip


def side_by_side(left: Image.Image, right: Image.Image, gap: int) -> Image.Image:
    """Two panels next to each other on black, tops aligned."""
    canvas = Image.new(left.mode, (left.width + gap + right.width, max(left.height, right.height)), 0)
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


def gif_frame(frame: Image.Image) -> Image.Image:
    """Grayscale stays "L" (a gray palette); RGB gets a median-cut 256-colour palette without dithering."""
    if frame.mode == "L":
        return frame
    return frame.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def encode_gif(frames: Sequence[Image.Image], durations_ms: Sequence[int], loop: bool) -> bytes:
    """An animated GIF; ``loop`` repeats forever (NETSCAPE loop 0), otherwise it plays once."""
    converted = [gif_frame(frame) for frame in frames]
    options = {"save_all": True, "append_images": converted[1:], "duration": list(durations_ms)}
    if loop:
        options["loop"] = 0
    buffer = io.BytesIO()
    converted[0].save(buffer, format="GIF", **options)
    return buffer.getvalue()


def encode_filmstrip(frames: Sequence[Image.Image], columns: int = FILMSTRIP_COLUMNS, gap: int = 4) -> bytes:
    """The frames side by side (wrapping after ``columns``) on black, as a PNG."""
    columns = min(columns, len(frames))
    rows = math.ceil(len(frames) / columns)
    width, height = frames[0].size
    strip = Image.new(frames[0].mode, (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), 0)
    for index, frame in enumerate(frames):
        row, column = divmod(index, columns)
        strip.paste(frame, (column * (width + gap), row * (height + gap)))
    return png_bytes(strip)


# --- sample files -------------------------------------------------------------------------------


def output_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in OUTPUT_FORMATS:
            raise FMError(f"unknown --format {fmt!r}: use one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix == ".npz":
        return "npz"
    if suffix == "":
        return "folder"
    raise FMError(f"cannot tell the output format from {path}: end it in .png or .npz, give a folder, or use --format")


def check_output_folder(path: Path, fmt: str) -> None:
    """FMError if the folder the samples go into is missing: ``path`` itself for the folder format, else its parent.
    Commands call it before sampling too, so a typo costs no wait."""
    parent = Path(path) if fmt == "folder" else Path(path).parent
    if not parent.exists():
        raise FMError(f"output folder {parent} does not exist; create it first")


def write_samples(
    path: Path,
    images_uint8: Tensor | None,
    labels: Tensor | None,
    fmt: str,
    points: Tensor | None = None,
    nrow: int | None = None,
    prompts: list[str] | None = None,
) -> list[Path]:
    """Write samples in ``fmt``; returns the files written. Images are uint8 [N, C, H, W]; ``prompts`` (a text
    model's, one per sample) go into the .npz as ``prompts`` and beside a folder's PNGs as prompts.txt."""
    path = Path(path)
    check_output_folder(path, fmt)
    count = len(images_uint8 if images_uint8 is not None else points)
    label_array = (labels if labels is not None else torch.full((count,), -1)).numpy()
    if points is not None:
        if fmt == "npz":
            return [_write_npz(path, points=points.numpy(), labels=label_array)]
        if fmt == "png":
            atomic_write_bytes(path, png_bytes(scatter_image(points, labels)))
            return [path]
        raise FMError("2-D samples can be written as .png (a scatter plot) or .npz")
    if fmt == "png":
        atomic_write_bytes(path, png_bytes(grid_image(images_uint8, nrow=nrow)))
        return [path]
    text = {} if prompts is None else {"prompts": np.array(prompts, dtype=str)}
    if fmt == "npz":
        return [_write_npz(path, images=images_uint8.permute(0, 2, 3, 1).numpy(), labels=label_array, **text)]
    written = []
    if prompts is not None:
        atomic_write_bytes(path / "prompts.txt", "".join(f"{i:05d}.png\t{p}\n" for i, p in enumerate(prompts)).encode())
        written.append(path / "prompts.txt")
    for i, image in enumerate(images_uint8):
        tag = f"-class{int(label_array[i])}" if label_array[i] >= 0 else ""
        file = path / f"{i:05d}{tag}.png"
        atomic_write_bytes(file, png_bytes(grid_image(image[None], nrow=1, padding=0)))
        written.append(file)
    return written


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path
