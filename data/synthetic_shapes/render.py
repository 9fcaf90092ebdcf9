"""Vectorised NumPy rasteriser and caption writer for the synthetic shapes dataset.

Every image holds one salient coloured shape (the label: colour x shape) on a textured or
noisy neutral background, optionally with one smaller distractor shape of another class.
Shapes are drawn from signed distance functions with one pixel of antialiasing, for a whole
batch of images at once. Captions always name the salient shape's colour and shape, and add
its size, position, background and sometimes the distractor, in varied phrasings and orders.

Everything is a pure function of a `numpy.random.Generator`, so the same seed gives the same
pixels and captions on every machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Saturated, well separated hues: distinguishable at 32 px and never confused with the
# low-saturation backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 30),
    "green": (35, 160, 55),
    "cyan": (30, 195, 215),
    "blue": (35, 70, 220),
    "purple": (135, 50, 190),
    "pink": (245, 115, 185),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES = ("small", "medium", "large")
# Half-extent of the shape as a fraction of the image side, per size class.
SIZE_RANGES = ((0.11, 0.15), (0.17, 0.22), (0.25, 0.31))
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
BACKGROUNDS = ("plain", "noisy", "gradient", "striped", "checkered")
LABEL_NAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)

# A distractor is at most this fraction of the salient shape's size.
DISTRACTOR_SCALE = (0.45, 0.6)
_COLOUR_JITTER = 12
_ROTATION_DEGREES = 12.0
_EXTENT = 1.2  # circumscribed radius of every shape, in units of its size parameter

_SIZE_WORDS = (("small", "little", "tiny"), ("medium", "medium-sized", "mid-sized"),
               ("large", "big", "huge"))
_POSITION_NOUNS = (
    ("top left", "upper left", "top left corner"),
    ("top", "top center", "upper middle"),
    ("top right", "upper right", "top right corner"),
    ("left", "left side", "middle left"),
    ("center", "middle", "centre"),
    ("right", "right side", "middle right"),
    ("bottom left", "lower left", "bottom left corner"),
    ("bottom", "bottom center", "lower middle"),
    ("bottom right", "lower right", "bottom right corner"),
)
_POSITION_PHRASES = (
    ("in the top left", "at the upper left", "in the top left corner"),
    ("at the top", "in the top center", "near the top"),
    ("in the top right", "at the upper right", "in the top right corner"),
    ("on the left", "on the left side", "at the left"),
    ("in the center", "in the middle", "at the centre"),
    ("on the right", "on the right side", "at the right"),
    ("in the bottom left", "at the lower left", "in the bottom left corner"),
    ("at the bottom", "in the bottom center", "near the bottom"),
    ("in the bottom right", "at the lower right", "in the bottom right corner"),
)
_BACKGROUND_WORDS = (("plain", "flat", "uniform"), ("noisy", "grainy", "speckled"),
                     ("gradient", "shaded", "gradient"), ("striped", "stripy", "striped"),
                     ("checkered", "checkerboard", "chequered"))
_TEMPLATES = (
    "{a_size} {size} {colour} {shape} {where}",
    "{colour} {shape}, {size}, {place}",
    "a photo of {a_colour} {colour} {shape}",
    "there is {a_size} {size} {colour} {shape} {where} on {background}",
    "{where}, {a_colour} {colour} {shape}",
    "{a_colour} {colour} {shape} on {background}",
    "{a_size} {size} {shape} in {colour}",
    "the {shape} is {colour} and {size}",
    "{colour} {shape} {where}",
    "an image showing {a_size} {size} {colour} {shape}",
    "{size} {colour} {shape} on {background}, {place}",
    "{a_colour} {colour} {shape} {where} of the picture",
)
_DISTRACTOR_PHRASES = (" next to {a} {colour} {shape}", ", with {a} small {colour} {shape} nearby",
                       " and {a} tiny {colour} {shape}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclasses.dataclass
class Scenes:
    """Parameters of a batch of images (one entry per image)."""

    label: np.ndarray          # int, colour * len(SHAPES) + shape
    colour: np.ndarray
    shape: np.ndarray
    size: np.ndarray           # index into SIZES
    position: np.ndarray       # index into POSITIONS (3 x 3 grid, row-major)
    background: np.ndarray     # index into BACKGROUNDS
    radius: np.ndarray         # pixels
    center: np.ndarray         # [B, 2] (x, y) pixels
    angle: np.ndarray          # radians
    rgb: np.ndarray            # [B, 3] float
    background_rgb: np.ndarray
    texture: np.ndarray        # [B, 4]: amplitude, orientation, period, phase
    noise: np.ndarray          # per-image noise sigma
    distractor_label: np.ndarray  # -1 when there is no distractor
    distractor_radius: np.ndarray
    distractor_center: np.ndarray
    distractor_angle: np.ndarray
    distractor_rgb: np.ndarray


def sample_scenes(rng: np.random.Generator, labels: np.ndarray, image_size: int,
                  distractor_prob: float) -> Scenes:
    """Draws everything but the pixels for images of the given labels."""
    n = len(labels)
    s = float(image_size)
    colour, shape = labels // len(SHAPES), labels % len(SHAPES)
    size = rng.integers(0, len(SIZES), n)
    ranges = np.asarray(SIZE_RANGES)[size]
    radius = s * rng.uniform(ranges[:, 0], ranges[:, 1])
    position = rng.integers(0, len(POSITIONS), n)
    center = _place(rng, position, radius, s)
    base = np.asarray(list(COLOURS.values()), np.float64)
    rgb = np.clip(base[colour] + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, (n, 3)), 0, 255)
    background = rng.integers(0, len(BACKGROUNDS), n)
    grey = rng.uniform(35, 220, n)
    background_rgb = np.clip(grey[:, None] + rng.uniform(-10, 10, (n, 3)), 0, 255)
    texture = np.stack([rng.uniform(12, 28, n), rng.uniform(0, np.pi, n),
                        s * rng.uniform(0.08, 0.25, n), rng.uniform(0, 2 * np.pi, n)], axis=1)
    noise = rng.uniform(2.0, 6.0, n)

    has = rng.random(n) < distractor_prob
    other = (labels + rng.integers(1, len(LABEL_NAMES), n)) % len(LABEL_NAMES)
    d_radius = np.maximum(radius * rng.uniform(*DISTRACTOR_SCALE, n), 0.06 * s)
    d_position = (position + rng.integers(1, len(POSITIONS), n)) % len(POSITIONS)
    d_center = _place(rng, d_position, d_radius, s)
    clear = _apart(center, radius, d_center, d_radius)
    opposite = _place(rng, len(POSITIONS) - 1 - position, d_radius, s)
    d_center = np.where(clear[:, None], d_center, opposite)
    has &= _apart(center, radius, d_center, d_radius)
    d_rgb = np.clip(base[other // len(SHAPES)] + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1,
                                                             (n, 3)), 0, 255)
    rotation = np.deg2rad(_ROTATION_DEGREES)
    return Scenes(
        label=labels, colour=colour, shape=shape, size=size, position=position,
        background=background, radius=radius, center=center,
        angle=rng.uniform(-rotation, rotation, n), rgb=rgb, background_rgb=background_rgb,
        texture=texture, noise=noise, distractor_label=np.where(has, other, -1),
        distractor_radius=d_radius, distractor_center=d_center,
        distractor_angle=rng.uniform(-rotation, rotation, n), distractor_rgb=d_rgb)


def _place(rng: np.random.Generator, position: np.ndarray, radius: np.ndarray,
           s: float) -> np.ndarray:
    """Centres in the given 3 x 3 grid cells, jittered, with the whole shape inside the image."""
    n = len(position)
    cell = np.stack([position % 3, position // 3], axis=1)
    center = (cell + 0.5) * s / 3 + rng.uniform(-s / 12, s / 12, (n, 2))
    margin = (_EXTENT * radius + 1.0)[:, None]
    return np.clip(center, margin, s - margin)


def _apart(c1: np.ndarray, r1: np.ndarray, c2: np.ndarray, r2: np.ndarray) -> np.ndarray:
    return np.linalg.norm(c1 - c2, axis=1) > _EXTENT * (r1 + r2) + 2.0


def render(scenes: Scenes, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [B, S, S, 3] images of the scenes."""
    n, s = len(scenes.label), image_size
    grid = np.arange(s, dtype=np.float32) + 0.5
    ys, xs = grid[None, :, None], grid[None, None, :]
    image = _background(scenes, xs, ys, rng)
    idx = np.flatnonzero(scenes.distractor_label >= 0)
    if len(idx):
        coverage = _coverage(scenes.distractor_label[idx] % len(SHAPES),
                             scenes.distractor_center[idx], scenes.distractor_radius[idx],
                             scenes.distractor_angle[idx], xs, ys)
        image[idx] = _paint(image[idx], coverage, scenes.distractor_rgb[idx])
    coverage = _coverage(scenes.shape, scenes.center, scenes.radius, scenes.angle, xs, ys)
    image = _paint(image, coverage, scenes.rgb)
    grain = rng.standard_normal((n, s, s), dtype=np.float32)
    grain *= scenes.noise[:, None, None].astype(np.float32)
    image += grain[..., None]  # luminance grain, one draw per pixel
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def _paint(image: np.ndarray, coverage: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """In place: `image * (1 - coverage) + rgb * coverage`."""
    colour = rgb[:, None, None, :].astype(np.float32)
    image -= colour
    image *= (1.0 - coverage)[..., None]
    image += colour
    return image


def _background(scenes: Scenes, xs: np.ndarray, ys: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Neutral base colour plus one texture per image, each computed only where it is used."""
    n, s = len(scenes.label), xs.shape[-1]
    pattern = np.zeros((n, s, s), np.float32)
    for k, name in enumerate(BACKGROUNDS):
        rows = np.flatnonzero(scenes.background == k)
        if not len(rows) or name == "plain":
            continue
        orientation, period, phase = (
            scenes.texture[rows, k, None, None].astype(np.float32) for k in (1, 2, 3))
        if name == "noisy":
            pattern[rows] = 0.6 * rng.standard_normal((len(rows), s, s), dtype=np.float32)
        elif name == "checkered":
            checker = np.sin(np.pi * xs / period + phase) * np.sin(np.pi * ys / period + phase)
            pattern[rows] = np.clip(3.0 * checker, -1.0, 1.0)
        else:
            along = xs * np.cos(orientation) + ys * np.sin(orientation)
            if name == "gradient":
                pattern[rows] = along / s * 2.0 - 1.0
            else:
                pattern[rows] = np.clip(3.0 * np.sin(2 * np.pi * along / period + phase), -1.0, 1.0)
    amplitude = scenes.texture[:, 0, None, None].astype(np.float32)
    base = scenes.background_rgb[:, None, None, :].astype(np.float32)
    return base + (amplitude * pattern)[..., None]


def _coverage(shape: np.ndarray, center: np.ndarray, radius: np.ndarray, angle: np.ndarray,
              xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Antialiased [B, S, S] coverage of each image's shape, from its signed distance."""
    cx, cy = (center[:, k, None, None].astype(np.float32) for k in range(2))
    cos = np.cos(angle)[:, None, None].astype(np.float32)
    sin = np.sin(angle)[:, None, None].astype(np.float32)
    u = (xs - cx) * cos + (ys - cy) * sin
    v = -(xs - cx) * sin + (ys - cy) * cos
    r = radius[:, None, None].astype(np.float32)
    distance = np.zeros(u.shape, np.float32)
    for k, name in enumerate(SHAPES):
        rows = np.flatnonzero(shape == k)
        if len(rows):
            distance[rows] = _SDF[name](u[rows], v[rows], r[rows])
    return np.clip(0.5 - distance, 0.0, 1.0)


def _box(u: np.ndarray, v: np.ndarray, half_w: np.ndarray, half_h: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u) - half_w, np.abs(v) - half_h)


def _triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Equilateral, apex up (image y grows downwards), circumradius 1.15 r."""
    inradius = 0.575 * r
    c = np.float32(np.sqrt(3) / 2)
    return np.maximum.reduce([v, -c * u - 0.5 * v, c * u - 0.5 * v]) - inradius


def _star(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Five points, one up; outer radius 1.15 r, inner radius 0.45 of that."""
    outer, inner = 1.15 * r, 0.5175 * r
    sector = np.float32(2 * np.pi / 5)
    phi = np.mod(np.arctan2(u, -v), sector)
    psi = np.abs(phi - sector / 2)
    rho = np.hypot(u, v)
    qx, qy = rho * np.cos(psi), rho * np.sin(psi)
    ox, oy = outer * np.cos(sector / 2), outer * np.sin(sector / 2)
    nx, ny = oy, inner - ox  # outward normal of the edge from the inner to the outer vertex
    return ((qx - inner) * nx + qy * ny) / np.hypot(nx, ny)


_SDF = {
    "circle": lambda u, v, r: np.hypot(u, v) - r,
    "square": lambda u, v, r: _box(u, v, 0.85 * r, 0.85 * r),
    "triangle": _triangle,
    "diamond": lambda u, v, r: (np.abs(u) + np.abs(v) - 1.15 * r) * np.float32(np.sqrt(0.5)),
    "star": _star,
    "cross": lambda u, v, r: np.minimum(_box(u, v, r, 0.34 * r), _box(u, v, 0.34 * r, r)),
}


def captions(scenes: Scenes, per_image: int, rng: np.random.Generator) -> list[list[str]]:
    """`per_image` different captions for every scene."""
    n = len(scenes.label)
    if per_image > len(_TEMPLATES):
        raise ValueError(f"captions_per_image={per_image} exceeds the {len(_TEMPLATES)} templates.")
    templates = np.argsort(rng.random((n, len(_TEMPLATES))), axis=1)[:, :per_image]
    words = rng.integers(0, 3, (n, per_image, 4))
    extra = rng.random((n, per_image)) < 0.5
    extra_phrase = rng.integers(0, len(_DISTRACTOR_PHRASES), (n, per_image))
    names = list(COLOURS)
    out = []
    for i in range(n):
        colour, shape = names[scenes.colour[i]], SHAPES[scenes.shape[i]]
        grey = scenes.background_rgb[i].mean()
        tone = "dark" if grey < 100 else "light" if grey > 160 else "gray"
        texts = []
        for c in range(per_image):
            w = words[i, c]
            size = _SIZE_WORDS[scenes.size[i]][w[0]]
            texture = _BACKGROUND_WORDS[scenes.background[i]][w[3]]
            text = _TEMPLATES[templates[i, c]].format(
                size=size, a_size=_article(size), colour=colour, a_colour=_article(colour),
                shape=shape, where=_POSITION_PHRASES[scenes.position[i]][w[1]],
                place=_POSITION_NOUNS[scenes.position[i]][w[2]],
                background=f"{_article(texture)} {texture} {tone} background")
            d = scenes.distractor_label[i]
            if d >= 0 and extra[i, c]:
                d_colour = names[d // len(SHAPES)]
                text += _DISTRACTOR_PHRASES[extra_phrase[i, c]].format(
                    a=_article(d_colour), colour=d_colour, shape=SHAPES[d % len(SHAPES)])
            texts.append(text)
        out.append(texts)
    return out
