"""A procedural RGB image folder (no download): coloured shapes in 5 classes, for benchmarks and tests.

    python bench/procedural.py OUT --train 5000 --test 1000 --size 32

Writes OUT/train/<class>/NNNNN.png and OUT/test/<class>/NNNNN.png. The class is the shape (circle,
square, triangle, cross, ring); colours, background, position, size and rotation are random, so a
model must learn shapes, not colours. Seeded: the same arguments give the same files.
"""

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross", "ring")


def _colour(rng: np.random.Generator, light: bool) -> tuple[int, int, int]:
    hue, sat = rng.uniform(0, 1), rng.uniform(0.5, 1.0)
    value = rng.uniform(0.75, 1.0) if light else rng.uniform(0.05, 0.35)
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), int(sat * 255), int(value * 255))).convert("RGB")
    return rgb.getpixel((0, 0))


def shape_image(kind: str, size: int, rng: np.random.Generator, scale: int = 4) -> Image.Image:
    """One ``size`` x ``size`` RGB image of ``kind``, drawn at ``scale`` x and shrunk (smooth edges)."""
    big = size * scale
    light_background = rng.uniform() < 0.5
    image = Image.new("RGB", (big, big), _colour(rng, light_background))
    draw = ImageDraw.Draw(image)
    fill = _colour(rng, not light_background)
    radius = rng.uniform(0.22, 0.38) * big
    cx, cy = (rng.uniform(0.35, 0.65) * big for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)

    def polygon(corners: int) -> list[tuple[float, float]]:
        turns = [angle + 2 * math.pi * k / corners for k in range(corners)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in turns]

    if kind == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif kind == "square":
        draw.polygon(polygon(4), fill=fill)
    elif kind == "triangle":
        draw.polygon(polygon(3), fill=fill)
    elif kind == "cross":
        width = radius * 0.35
        for turn in (0.0, math.pi / 2):
            dx, dy = math.cos(angle + turn), math.sin(angle + turn)
            ends = [(cx - dx * radius, cy - dy * radius), (cx + dx * radius, cy + dy * radius)]
            draw.line(ends, fill=fill, width=int(width * 2))
    else:  # ring
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=fill, width=int(radius * 0.35))
    image = image.filter(ImageFilter.GaussianBlur(scale * 0.3)).resize((size, size), Image.Resampling.LANCZOS)
    noise = rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def write_folder(out: Path, count: int, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for index in range(count):
        kind = CLASSES[index % len(CLASSES)]
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        shape_image(kind, size, rng).save(folder / f"{index:05d}.png")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_folder(args.out / "train", args.train, args.size, args.seed)
    write_folder(args.out / "test", args.test, args.size, args.seed + 1)
    print(f"wrote {args.train} + {args.test} images of {args.size}x{args.size} in {len(CLASSES)} classes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
