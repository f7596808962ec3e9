"""A procedural RGB image folder (no download): coloured shapes in 5 classes, for benchmarks and tests.

    python bench/procedural.py OUT --train 5000 --test 1000 --size 32
    python bench/procedural.py OUT --captions     # the built-in captioned set as folders with metadata.jsonl

Writes OUT/train/<class>/NNNNN.png and OUT/test/<class>/NNNNN.png. The class is the shape (circle,
square, triangle, cross, ring); colours, background, position, size and rotation are random, so a
model must learn shapes, not colours. Seeded: the same arguments give the same files. The drawing is
``fmcli.data.shapes.draw_shapes``, shared with the built-in data set ``shapes`` (named colours, with captions,
no files); the folders measured in bench/measured before it was shared were drawn with Pillow instead.
"""

import argparse
import colorsys
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmcli.data.shapes import SHAPES, draw_shapes  # noqa: E402 - the drawing the built-in `shapes` set uses

CLASSES = SHAPES  # circle, square, triangle, cross, ring


def _colours(rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, 3]: random hue and saturation, light (value 0.75-1) or dark (0.05-0.35) per item."""
    hue, sat = rng.uniform(0, 1, len(light)), rng.uniform(0.5, 1.0, len(light))
    value = np.where(light, rng.uniform(0.75, 1.0, len(light)), rng.uniform(0.05, 0.35, len(light)))
    rgb = [colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hue, sat, value, strict=True)]
    return np.rint(np.array(rgb) * 255).astype(np.uint8)


def shape_images(kinds: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, size, size, 3]: shape ``kinds[i]`` (an index into CLASSES) in a random colour on a random
    background of the opposite lightness, at a random size, position and rotation, plus a little noise."""
    count = len(kinds)
    light_background = rng.uniform(size=count) < 0.5
    backgrounds, fills = _colours(rng, light_background), _colours(rng, ~light_background)
    radii = rng.uniform(0.22, 0.38, count) * size
    centres = rng.uniform(0.35, 0.65, (count, 2)) * size
    angles = rng.uniform(0, 2 * np.pi, count)
    images = draw_shapes(kinds, centres, radii, angles, fills, backgrounds, size)
    noise = rng.normal(0, 4, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def write_folder(out: Path, count: int, size: int, seed: int) -> Path:
    kinds = np.arange(count) % len(CLASSES)
    images = shape_images(kinds, size, np.random.default_rng(seed))
    for index, (kind, image) in enumerate(zip(kinds, images, strict=True)):
        folder = out / CLASSES[kind]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    return out


def write_captioned(folder: Path, split: str, count: int, seed: int) -> None:
    """The built-in ``shapes`` split as NNNNN.png + metadata.jsonl (file_name, text: a list of phrasings, and the
    attributes, which fm ignores)."""
    import json

    from fmcli.data.base import LoadOptions
    from fmcli.data.shapes import load_shapes

    data = load_shapes(LoadOptions(split=split, num_samples=count, seed=seed))
    folder.mkdir(parents=True, exist_ok=False)
    names = data.attribute_names
    lines = []
    for i, image in enumerate(data.data.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
        attributes = {key: names[key][int(values[i])] for key, values in data.attributes.items()}
        lines.append(json.dumps({"file_name": f"{i:05d}.png", "text": list(data.captions[i]), **attributes}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--captions",
        action="store_true",
        help="write the built-in `shapes` set instead (named colours, held-out pairs): OUT/train and OUT/test, "
        "flat, each with a metadata.jsonl of every caption phrasing (the Hugging Face image-folder convention)",
    )
    args = parser.parse_args()
    if args.captions:
        for split, count in (("train", args.train), ("test", args.test)):
            write_captioned(args.out / split, split, count, args.seed)
        print(f"wrote {args.train} + {args.test} captioned images (metadata.jsonl) to {args.out}")
        return 0
    write_folder(args.out / "train", args.train, args.size, args.seed)
    write_folder(args.out / "test", args.test, args.size, args.seed + 1)
    print(f"wrote {args.train} + {args.test} images of {args.size}x{args.size} in {len(CLASSES)} classes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
