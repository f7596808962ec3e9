"""``shapes``: coloured shapes with captions, drawn on the fly, for a first text-to-image run without any file.

Each image shows one shape (``SHAPES``) in one colour (``COLOURS``) on one background (``BACKGROUNDS``), at a
random size, position and rotation, with slightly jittered colours. ``captions[i]`` holds 2-4 phrasings naming
all three ("a red circle on a white background", "red circle, black background", ...); ``labels`` is the
shape (class names = shape names), so the same data trains a class-conditional baseline; ``attributes`` holds
the shape, colour and background codes (``attribute_names`` their names) for per-attribute scoring.

Splits: ``train`` (8,000 items) and ``test`` (2,000); ``LoadOptions.num_samples`` sets the count of the split
loaded. Each split is drawn from ``numpy.random.default_rng([seed, split index])``: a seed gives the same items
every time, and the two splits differ. Items are balanced: each allowed (colour, shape, background) combination
appears equally often (the remainder: as many different ones, at random), in shuffled order. The (colour, shape)
pairs of ``HELD_OUT`` never appear in ``train`` and do in ``test`` (``info["held_out"]``): can a model draw a
purple circle having seen purple things and circles but never both at once? Every colour and every shape still
appears in training.

``draw_shapes`` renders from signed distances, anti-aliased over one pixel, vectorised in chunks: 10,000
images at 32 px take about a second. ``bench/procedural.py`` draws its folders with it too.
"""

import numpy as np
import torch

from fmcli.data.base import ArrayDataset, LoadOptions, set_channels
from fmcli.errors import FMError

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {  # name -> RGB
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 185),
    "orange": (245, 135, 30),
}
BACKGROUNDS = {"white": (240, 240, 240), "black": (20, 20, 20), "gray": (128, 128, 128)}
# One pair per shape and five different colours: every shape and every colour stays in the training split.
HELD_OUT = (("purple", "circle"), ("orange", "square"), ("red", "triangle"), ("green", "cross"), ("blue", "ring"))
SPLITS = ("train", "test")
DEFAULT_COUNTS = {"train": 8000, "test": 2000}
DEFAULT_SIZE = 32
MIN_SIZE = 8
FILL_JITTER, BACKGROUND_JITTER = 15, 8  # per channel, uniform in [-j, j]
TEMPLATES = (  # {a} is "a" or "an" for the colour that follows
    "{a} {colour} {shape} on a {background} background",
    "{colour} {shape}, {background} background",
    "a {shape} in {colour} over {background}",
    "{a} {colour} {shape} against {background}",
    "{background} background with {a} {colour} {shape}",
    "the {shape} is {colour} and the background is {background}",
    "a picture of {a} {colour} {shape} on {background}",
    "{colour} {shape} on {background}",
)
CHUNK = 1024  # images rendered at once (float32 [CHUNK, S, S] temporaries)


# ---------------------------------------------------------------- drawing


def _circle(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.hypot(x, y) - 0.8 * r


def _square(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(x), np.abs(y)) - 0.75 * r


def _triangle(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Equilateral, corners at distance ``r``: the farthest of its three edges (each at ``r / 2``)."""
    edges = [x * np.cos(a) + y * np.sin(a) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
    return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.5 * r


def _cross(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    ax, ay, half_width = np.abs(x), np.abs(y), 0.28 * r
    return np.minimum(np.maximum(ax - r, ay - half_width), np.maximum(ay - r, ax - half_width))


def _ring(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(x, y) - 0.675 * r) - 0.175 * r  # outer radius 0.85 r, inner 0.5 r


DISTANCES = (_circle, _square, _triangle, _cross, _ring)  # in the order of SHAPES; < 0 inside, in pixels


def draw_shapes(
    shapes: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    angles: np.ndarray,
    fills: np.ndarray,
    backgrounds: np.ndarray,
    size: int,
) -> np.ndarray:
    """uint8 [N, size, size, 3]: shape ``shapes[i]`` (an index into ``SHAPES``) centred at ``centres[i]`` (x, y in
    pixels), ``radii[i]`` pixels from its centre to its farthest point (about), turned by ``angles[i]`` radians,
    in RGB ``fills[i]`` over ``backgrounds[i]``."""
    count = len(shapes)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    for start in range(0, count, CHUNK):
        part = slice(start, start + CHUNK)
        dx = grid[None, None, :] - centres[part, 0, None, None].astype(np.float32)
        dy = grid[None, :, None] - centres[part, 1, None, None].astype(np.float32)
        cos = np.cos(angles[part]).astype(np.float32)[:, None, None]
        sin = np.sin(angles[part]).astype(np.float32)[:, None, None]
        x, y = dx * cos + dy * sin, dy * cos - dx * sin  # turned by -angle: the shape turns by +angle
        r = radii[part].astype(np.float32)[:, None, None]
        distance = np.empty_like(x)
        for code, shape_distance in enumerate(DISTANCES):
            mine = shapes[part] == code
            if mine.any():
                distance[mine] = shape_distance(x[mine], y[mine], r[mine])
        cover = np.clip(0.5 - distance, 0.0, 1.0)[..., None]
        fill = fills[part, None, None, :].astype(np.float32)
        ground = backgrounds[part, None, None, :].astype(np.float32)
        out[part] = np.clip(np.rint(ground + (fill - ground) * cover), 0, 255).astype(np.uint8)
    return out


def random_layout(count: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres [N, 2], radii [N], angles [N]): each shape a fifth to a third of the image across, fully inside."""
    radii = rng.uniform(0.2, 0.36, count) * size
    margin = 1.1 * radii + 1  # the farthest any shape's anti-aliased edge reaches from its centre
    room = np.maximum(size - 2 * margin, 0)
    centres = margin[:, None] + rng.uniform(0, 1, (count, 2)) * room[:, None]
    return centres, radii, rng.uniform(0, 2 * np.pi, count)


# ---------------------------------------------------------------- the data set


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def phrasings(colour: str, shape: str, background: str, picks: np.ndarray) -> tuple[str, ...]:
    fields = {"a": article(colour), "colour": colour, "shape": shape, "background": background}
    return tuple(TEMPLATES[index].format(**fields) for index in picks)


def combinations(split: str, held_out: tuple[tuple[str, str], ...]) -> np.ndarray:
    """int64 [K, 3] (shape, colour, background) codes a split draws from, evenly."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    excluded = {(colours.index(c), SHAPES.index(s)) for c, s in held_out} if split == "train" else set()
    return np.array(
        [
            (shape, colour, background)
            for shape in range(len(SHAPES))
            for colour in range(len(colours))
            for background in range(len(backgrounds))
            if (colour, shape) not in excluded
        ],
        dtype=np.int64,
    )


def check_held_out(held_out: tuple[tuple[str, str], ...]) -> None:
    """Each pair names a known colour and shape, and training still shows every colour and every shape."""
    for colour, shape in held_out:
        if colour not in COLOURS or shape not in SHAPES:
            raise FMError(f"held-out pair ({colour}, {shape}): colours are {', '.join(COLOURS)}; shapes {SHAPES}")
    kept = combinations("train", held_out)
    if set(kept[:, 0]) != set(range(len(SHAPES))) or set(kept[:, 1]) != set(range(len(COLOURS))):
        raise FMError("the held-out pairs leave a colour or a shape out of training altogether")


def load_shapes(options: LoadOptions, held_out: tuple[tuple[str, str], ...] = HELD_OUT) -> ArrayDataset:
    """The ``options.split`` of ``shapes`` (see the module docstring): uint8 [N, 3, S, S], S = ``image_size`` or 32."""
    if options.split not in SPLITS:
        raise FMError(f"shapes has no split {options.split!r}; use one of: {', '.join(SPLITS)}")
    count = DEFAULT_COUNTS[options.split] if options.num_samples is None else options.num_samples
    size = options.image_size or DEFAULT_SIZE
    if count <= 0:
        raise FMError(f"num_samples must be positive, not {count}")
    if size < MIN_SIZE:
        raise FMError(f"image size must be at least {MIN_SIZE} pixels for shapes (got {size})")
    check_held_out(held_out)
    rng = np.random.default_rng([options.seed, SPLITS.index(options.split)])
    allowed = combinations(options.split, held_out)
    whole, rest = divmod(count, len(allowed))  # every combination `whole` times, then `rest` different ones at random
    picks = np.concatenate([np.tile(np.arange(len(allowed)), whole), rng.choice(len(allowed), rest, replace=False)])
    codes = allowed[rng.permutation(picks)]
    shape, colour, background = codes[:, 0], codes[:, 1], codes[:, 2]
    fills = np.array(list(COLOURS.values()))[colour] + rng.integers(-FILL_JITTER, FILL_JITTER + 1, (count, 3))
    grounds = np.array(list(BACKGROUNDS.values()))[background]
    grounds = grounds + rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1, (count, 1))  # lighter or darker
    centres, radii, angles = random_layout(count, size, rng)
    pixels = draw_shapes(shape, centres, radii, angles, np.clip(fills, 0, 255), np.clip(grounds, 0, 255), size)

    how_many = rng.integers(2, 5, count)  # 2-4 phrasings per item, different templates
    order = np.argsort(rng.random((count, len(TEMPLATES))), axis=1)
    colour_names, background_names = list(COLOURS), list(BACKGROUNDS)
    captions = [
        phrasings(colour_names[c], SHAPES[s], background_names[b], order[i, : how_many[i]])
        for i, (s, c, b) in enumerate(codes.tolist())
    ]
    data = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    return ArrayDataset(
        name="shapes",
        split=options.split,
        kind="image",
        data=set_channels(data, options.channels),
        labels=torch.from_numpy(shape.copy()),
        class_names=list(SHAPES),
        info={
            "source": "procedural (fmcli.data.shapes)",
            "seed": options.seed,
            "num_samples": count,
            "held_out": [[colour, shape] for colour, shape in held_out],
            "captions": {"source": "built-in", "captioned": count, "total": count},
        },
        captions=captions,
        attributes={
            "shape": torch.from_numpy(shape.copy()),
            "colour": torch.from_numpy(colour.copy()),
            "background": torch.from_numpy(background.copy()),
        },
        attribute_names={"shape": list(SHAPES), "colour": colour_names, "background": background_names},
    )
