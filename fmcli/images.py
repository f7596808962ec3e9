"""Writing what sampling produced: PNG grids, folders of PNGs, .npz arrays, and 2-D scatter plots."""

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from fmcli.checkpoint import atomic_write_bytes
from fmcli.errors import FMError

OUTPUT_FORMATS = ("png", "folder", "npz")
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


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


def scatter_image(points: Tensor, labels: Tensor | None = None, size: int = 512, extent: float | None = None,
                  background: Tensor | None = None) -> Image.Image:
    """A plain scatter plot of 2-D points (coloured by label), drawn with Pillow."""
    pts = points.detach().float().cpu().numpy()
    extent = extent or float(max(np.abs(pts).max() * 1.1, 1e-3))
    picture = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(picture)

    def to_pixel(xy: np.ndarray) -> np.ndarray:
        return (xy / extent * 0.5 + 0.5) * size * np.array([1, -1]) + np.array([0, size])

    if background is not None:
        for x, y in to_pixel(background.float().cpu().numpy()):
            draw.point((x, y), fill=(215, 215, 215))
    label_list = labels.tolist() if labels is not None else [None] * len(pts)
    for (x, y), label in zip(to_pixel(pts), label_list):
        colour = PALETTE[label % len(PALETTE)] if label is not None else (31, 119, 180)
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
    return picture


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


def write_samples(path: Path, images_uint8: Tensor | None, labels: Tensor | None, fmt: str,
                  points: Tensor | None = None, nrow: int | None = None) -> list[Path]:
    """Write samples in ``fmt``; returns the files written. Images are uint8 [N, C, H, W]."""
    path = Path(path)
    parent = path if fmt == "folder" else path.parent
    if not parent.exists():
        raise FMError(f"output folder {parent} does not exist; create it first")
    label_array = (labels if labels is not None else torch.full((len(images_uint8 if images_uint8 is not None else points),), -1)).numpy()
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
    if fmt == "npz":
        return [_write_npz(path, images=images_uint8.permute(0, 2, 3, 1).numpy(), labels=label_array)]
    written = []
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
