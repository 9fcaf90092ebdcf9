"""CLIP image preprocessing in NumPy, bit-exact with Hugging Face's `CLIPImageProcessor`.

`preprocess` is the user-facing transform (`clip_jax.data.preprocess`): resize the shortest side to
the model resolution with antialiased bicubic filtering, centre crop, scale to [0, 1] and
normalise with the model's mean and std, giving float32 NHWC batches for the image tower.

Bicubic resizing is not one algorithm: Pillow, torch and TensorFlow differ in the filter
support, the fixed-point arithmetic and the intermediate rounding, by one uint8 level on a few
per mille of the pixels. `transformers.CLIPImageProcessor` (the torchvision backend since
transformers 5) resizes uint8 images with torch's antialiased uint8 kernel: per-axis weights of
the Keys cubic (a = -0.5) computed in float64, quantised to int16 with a per-axis precision,
integer accumulation, a horizontal pass rounded to uint8, then a vertical pass. This module
reproduces that kernel exactly in integer arithmetic, so the outputs match to float32
rounding. `clip_jax.data.tf_preprocess` runs the same arithmetic inside tf.data.

Images are converted to RGB first (`image.convert("RGB")` for PIL modes, dropping alpha by
default), then resized: with the default options the output equals `CLIPImageProcessor`'s on
`image.convert("RGB")` for every 8-bit PIL mode (16-bit images are rescaled where Pillow
clips: `to_rgb_uint8`). OpenAI's original pipeline and open_clip's (torchvision on PIL images)
differ in three ways. Pillow's resampler is off by one uint8 level (0.0152 after
normalisation) on about 0.4 % of the values; for some sizes (300 x 1000 to 224 or 288 px) it
also runs the vertical pass before the horizontal one, and as each pass clips to uint8,
hard-edged content whose bicubic overshoot the first pass clips then differs by up to 15
levels on about a quarter of the values (photos do not: 0.2-0.6 % at one level). torchvision's
`CenterCrop` rounds the crop offset half to even where transformers (and we) round down: when
the long side exceeds the crop by m pixels with m % 4 == 3 (about a quarter of the sizes of
arbitrary photos), their crop starts one pixel further along it, so their whole image is
shifted by one pixel against ours. And they resize in the image's own mode and convert to RGB
afterwards, which agrees with converting first (to the level above) for RGB, L and CMYK images
only: Pillow resizes RGBA and LA with 8-bit premultiplied alpha, so fully transparent areas
come out black whatever colour they store and partly transparent ones lose precision the lower
their alpha (measured: up to 4 levels at alpha 128, 44 at alpha 8); P (palette) and 1
(bilevel) images with nearest neighbour; YCbCr and HSV per channel in that colour space.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Union

import numpy as np
from PIL import Image, ImageColor, ImageOps, features

from clip_jax.errors import ConfigError, MissingFileError, UnreadableImageError
from clip_jax.models.config import CLIPConfig, normalization_constants
from clip_jax.models.presets import get_preset
from clip_jax.runtime.logs import warn_once

log = logging.getLogger(__name__)

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]

# Phones' photo formats that Pillow decodes only with a plugin (pillow-heif) or a codec its
# build may lack (AVIF: in Pillow's wheels from 11.3 on): why not, and the fix; their
# extensions (.hif: Canon's HEIF; .heics / .avifs: sequences) and ISO-BMFF `ftyp` brands.
_PLUGIN_FORMATS = {
    "HEIF": "HEIF photo: Pillow decodes it only with the pillow-heif plugin; convert it to JPEG",
    "AVIF": "AVIF photo: this Pillow has no AVIF codec; upgrade Pillow (its wheels have one "
            "from 11.3) or convert it to JPEG"}
_PLUGIN_EXTENSIONS = {".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF", ".heics": "HEIF",
                      ".avif": "AVIF", ".avifs": "AVIF"}
_PLUGIN_BRANDS = {**dict.fromkeys((b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis",
                                   b"hevm", b"hevs", b"mif1", b"msf1"), "HEIF"),
                  b"avif": "AVIF", b"avis": "AVIF"}
# The formats of torchvision's ImageFolder's extensions (netpbm's .ppm / .pgm included) and
# GIF, under every extension Pillow registers for them (JPEG's .jfif and .jpe, as Windows and
# browsers save photos, APNG, netpbm's .pbm / .pnm / .pfm), then those of `_PLUGIN_EXTENSIONS`
# this Pillow decodes.
_FOLDER_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
_REGISTERED = Image.registered_extensions()  # ".jfif" -> "JPEG", ...
IMAGE_EXTENSIONS = tuple(sorted(
    (ext for ext, kind in _REGISTERED.items() if kind in _FOLDER_FORMATS),
    key=lambda ext: (_FOLDER_FORMATS.index(_REGISTERED[ext]), ext))) + tuple(
    ext for ext, kind in _PLUGIN_EXTENSIONS.items()
    if (features.check("avif") if kind == "AVIF" else ext in _REGISTERED))
# The kinds of `_PLUGIN_FORMATS` this Pillow decodes (no reason to give for them).
_DECODED_KINDS = {kind for ext, kind in _PLUGIN_EXTENSIONS.items() if ext in IMAGE_EXTENSIONS}
# Errors that mean "this file is not a readable image"; anything else is a bug and propagates.
# What Pillow raises for a file it cannot read (shared with the folder and table readers).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_reason(error: Exception) -> str:
    """Why an image of DECODE_ERRORS could not be read, in one line; Pillow's refusal of a huge
    image ("could be decompression bomb DOS attack") also says the fix, which it lacked
    (trial BF): downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS from Python for trusted
    images (Pillow refuses any image over twice that limit)."""
    text = getattr(error, "reason", None) or str(error)  # the file is named already
    message = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, Image.DecompressionBombError):
        message += (f" (Pillow refuses images over 2 x PIL.Image.MAX_IMAGE_PIXELS = "
                    f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels: downscale it, or raise that limit "
                    "from Python for trusted images)")
    return message


def undecodable_format(name: str, head: bytes = b"") -> str:
    """For a file in a phone photo format this Pillow cannot decode, the one-line reason and
    fix, else "": by the `ftyp` brand in its first 12 bytes `head` where given (a HEIF photo
    named .jpg), else by its extension."""
    ext = os.path.splitext(name)[1].lower()
    kind = (_PLUGIN_BRANDS.get(head[8:12], "") if head[4:8] == b"ftyp"
            else _PLUGIN_EXTENSIONS.get(ext, ""))
    return "" if kind in _DECODED_KINDS else _PLUGIN_FORMATS.get(kind, "")


# The last axis of one [H, W, C] image array: grey, grey + alpha, RGB, RGBA.
_CHANNELS = (1, 2, 3, 4)
# A 3-D array whose last axis is 5 to this is refused, not read as greyscale images of that
# width: it is a multi-band array or a mistake far more often than a batch of 5-8 px images.
_MAX_BANDS = 8

# torch's antialiased bicubic: Keys cubic with a = -0.5 (as Pillow), support 2 input pixels at
# scale 1, widened by the downscaling factor.
_CUBIC_SUPPORT = 2.0
_MAX_PRECISION = 22  # weights are quantised with at most this many fractional bits (int16 range)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel (a = -0.5), written in torch's operation order."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def cubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's antialiased bicubic weights (`F.interpolate(mode="bicubic", antialias=True,
    align_corners=False)`) for resizing one axis from `in_size` to `out_size` samples, in
    float64: `(first, weights)`, output `i` = sum_j in[first[i] + j] * weights[i, j], each
    row summing to 1. Taps past a row's support have weight 0 (their index is clamped when
    gathered)."""
    scale = in_size / out_size
    support = _CUBIC_SUPPORT * scale if scale >= 1.0 else _CUBIC_SUPPORT
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    count = np.clip(np.minimum((center + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
    weights = np.zeros((out_size, taps), np.float64)
    total = np.zeros(out_size, np.float64)
    for j in range(taps):  # sequential sum, as torch accumulates it
        w = np.where(j < count, _cubic(((first + j).astype(np.float64) - center + 0.5) * invscale), 0.0)
        weights[:, j] = w
        total = total + w
    nonzero = total != 0.0
    return first, np.where(nonzero[:, None], weights / np.where(nonzero, total, 1.0)[:, None],
                           weights)


def resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """torch's int16 weights for resizing one axis of a uint8 image from `in_size` to
    `out_size` pixels (`cubic_taps` quantised as torch quantises them).

    Returns `(first, weights, precision)`: output pixel `i` is
    `(2**(precision-1) + sum_j in[first[i] + j] * weights[i, j]) >> precision`, clipped to
    [0, 255]. Taps past a row's support have weight 0 (their index is clamped when gathered).
    """
    first, weights = cubic_taps(in_size, out_size)
    nonzero = weights.any(axis=1)
    w_max = float(weights[nonzero].max()) if nonzero.any() else 0.0
    precision = 0
    while precision < _MAX_PRECISION and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    quantised = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return first, quantised, precision


def _resize_axis(image: np.ndarray, axis: int, out_size: int, start: int, count: int) -> np.ndarray:
    """Output pixels `start .. start+count` of a one-axis resize of a uint8 image."""
    in_size = image.shape[axis]
    first, weights, precision = resize_weights(in_size, out_size)
    first, weights = first[start:start + count], weights[start:start + count]
    sums = _tap_matmul if count * weights.shape[1] * (image.size // in_size) >= _MATMUL_MACS \
        else _tap_loop
    acc = sums(image, axis, np.minimum(first[:, None] + np.arange(weights.shape[1]),
                                       in_size - 1), weights)
    return np.clip((acc + (1 << (precision - 1))) >> precision, 0, 255).astype(np.uint8)


# A pass with at least this many multiply-adds runs as matmuls (`_tap_matmul`): a 12-MP
# photo's horizontal pass to 224 px took 355 -> 157 ms, 1600 x 1200 53 -> 21 ms; below it the
# per-tap loop is faster (thumbnails: ~1 ms against ~2 ms).
_MATMUL_MACS = 2_000_000
_BLOCK = 32  # output pixels per matmul: their taps span ~ 32 x the scale + the filter support


def _tap_loop(image: np.ndarray, axis: int, taps: np.ndarray, weights: np.ndarray
              ) -> np.ndarray:
    """sum_j image[taps[:, j]] * weights[:, j] along `axis` (int32), one tap at a time."""
    shape = [1] * image.ndim
    shape[axis] = len(taps)
    acc = np.zeros([len(taps) if a == axis else n for a, n in enumerate(image.shape)], np.int32)
    for j in range(weights.shape[1]):
        acc += np.take(image, taps[:, j], axis=axis).astype(np.int32) * weights[:, j].reshape(shape)
    return acc


def _tap_matmul(image: np.ndarray, axis: int, taps: np.ndarray, weights: np.ndarray
                ) -> np.ndarray:
    """`_tap_loop`'s sums (int64) as float matmuls of blocks of outputs against the span of
    input pixels they read. Exact: each int16 weight is split as 256 * high + low (|high| <=
    128, 0 <= low < 256), so every product and partial sum is an integer below 2**24, which
    float32 holds exactly (float64 when a filter is too wide for that: downscaling > ~60x)."""
    dtype = np.float32 if weights.shape[1] * 255 * 255 < 1 << 24 else np.float64
    x = np.moveaxis(image, axis, -1)
    out = np.empty((*x.shape[:-1], len(taps)), np.int64)
    for b0 in range(0, len(taps), _BLOCK):
        block = slice(b0, b0 + _BLOCK)
        lo, hi = int(taps[block].min()), int(taps[block].max()) + 1
        dense = np.zeros((hi - lo, len(taps[block])), np.int64)
        np.add.at(dense, (taps[block] - lo, np.arange(dense.shape[1])[:, None]), weights[block])
        high, low = np.divmod(dense, 256)
        span = x[..., lo:hi].astype(dtype).reshape(-1, hi - lo)
        sums = ((span @ high.astype(dtype)).astype(np.int64) * 256
                + (span @ low.astype(dtype)).astype(np.int64))
        out[..., block] = sums.reshape(*x.shape[:-1], -1)
    return np.moveaxis(out, -1, axis)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shortest side to `size`, as transformers computes it."""
    if width <= height:
        return size * height // width, size
    return size, size * width // height


def shortest_side(size: int, resize: int | None) -> int:
    """The side the shortest one is resized to before the centre `size` crop: `resize`, or
    `size` when it is None. ValueError when it is below `size` (the crop would be cut short:
    a 7 x 7 image asked for 24 x 24)."""
    side = size if resize is None else resize
    if isinstance(side, bool) or not isinstance(side, numbers.Integral):
        raise ValueError(f"resize={resize!r} is not a whole number of pixels; give an int >= "
                         f"{size} (or None for the crop size).")
    if side < size:
        raise ValueError(f"resize={resize} is below the crop size {size}: the shortest side is "
                         f"resized first and must hold the crop; give resize >= {size} (or "
                         "None for the crop size).")
    return side


def resize_and_center_crop(image: np.ndarray, size: int, resize: int | None = None
                           ) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: shortest side to `resize` (default `size`),
    then the centre `size` x `size` crop. ValueError when `resize` < `size` (`shortest_side`).

    Only the pixels inside the crop are computed; each equals the full resize's pixel because
    every output pixel depends only on its own weights.
    """
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, shortest_side(size, resize))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    if new_w != width:  # horizontal pass first, as torch does
        image = _resize_axis(image, 1, new_w, left, size)
    else:
        image = image[:, left:left + size]
    if new_h != height:
        image = _resize_axis(image, 0, new_h, top, size)
    else:
        image = image[top:top + size]
    return image


ALPHA_DROP = "drop"
EXIF_ORIENTATION = 0x0112  # EXIF tag; 1 = upright, 2-8 = mirrored and/or rotated


def background_colour(alpha: str | Sequence[int]) -> tuple[int, int, int] | None:
    """The RGB colour transparent pixels are composited onto, or None to drop alpha.

    `alpha` is `"drop"` (discard the alpha channel and keep the colours stored under it:
    `image.convert("RGB")`, as transformers' `load_image` and so its pipelines do; OpenAI and
    open_clip convert after resizing, which turns fully transparent areas black: see the
    module docstring), a Pillow colour name or `#rrggbb` (`"white"` is what
    `CLIPImageProcessor` does when handed an RGBA image), or an (r, g, b) tuple of 0..255.
    Raises ValueError otherwise, and for a colour that is not opaque (`rgba(...)`, `#rrggbbaa`
    with alpha below 255): a background shows through nothing, so its own alpha has no
    meaning and reading it as opaque would hide the mistake.
    """
    if isinstance(alpha, str):
        if alpha == ALPHA_DROP:
            return None
        try:
            colour = ImageColor.getrgb(alpha)
        except ValueError:
            colour = None
        if colour is not None:
            if len(colour) == 4 and colour[3] != 255:
                raise ValueError(f"alpha={alpha!r} is a colour with alpha {colour[3]}; the "
                                 "background must be opaque: give its RGB alone, e.g. "
                                 f"'#{colour[0]:02x}{colour[1]:02x}{colour[2]:02x}'.")
            return tuple(colour[:3])  # type: ignore[return-value]
    elif len(alpha) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in alpha):
        return tuple(alpha)  # type: ignore[return-value]
    raise ValueError(f"alpha={alpha!r} is neither 'drop' nor a background colour; use 'drop' "
                     "(keep the stored colours), a colour such as 'white' or '#808080', or an "
                     "(r, g, b) tuple.")


def exif_orientation(image: Image.Image) -> int:
    """The orientation Pillow's `getexif` finds (1 = upright, 2-8 = mirrored and/or rotated;
    0 or 1 when none): the EXIF block, a PNG's eXIf chunk before or after the pixels (a PNG
    loads them to look), ImageMagick's raw EXIF profile in a PNG text chunk, or XMP's
    tiff:Orientation, which `ImageOps.exif_transpose` turns by too."""
    return image.getexif().get(EXIF_ORIENTATION, 1)


def exif_transposed(image: Image.Image) -> Image.Image:
    """`image` turned upright by its EXIF Orientation tag, as browsers, Pillow's
    `ImageOps.exif_transpose` and transformers' `load_image` do; unchanged without one."""
    if exif_orientation(image) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def _uint8_hint(dtype: np.dtype) -> str:
    """How to turn pixels of `dtype` into uint8 0..255: floats are often in [0, 1], where a
    plain clip-and-cast would give a nearly black image."""
    if np.issubdtype(dtype, np.floating):
        return ("(x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1], "
                "np.clip(x, 0, 255).round().astype(np.uint8) for floats in 0..255")
    if dtype == np.bool_:
        return "x.astype(np.uint8) * 255"
    if dtype == np.uint16:
        return "(x / 257).round().astype(np.uint8) for 16-bit data (0..65535)"
    return "np.clip(x, 0, 255).astype(np.uint8)"


def to_rgb_uint8(image: ImageLike, *, exif_transpose: bool = True,
                 alpha: str | Sequence[int] = ALPHA_DROP) -> np.ndarray:
    """A PIL image, array (numpy, jax or any array-like) or image file path as uint8
    [H, W, 3] RGB.

    `exif_transpose` turns photos upright by their EXIF orientation (files and PIL images;
    arrays carry none). `alpha` says what happens to transparency (`background_colour`), for
    RGBA and LA images and [H, W, 4] and [H, W, 2] (grey + alpha) arrays alike: by default it
    is dropped (`image.convert("RGB")`). Grayscale is replicated; 16-bit images are rescaled
    to 8 bits. Arrays: TypeError unless uint8, ValueError unless [H, W] or [H, W, 1|2|3|4].
    """
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise MissingFileError(f"No image file at {os.fspath(image)!r}" + (
                f": it is a broken link (to {os.readlink(image)!r})." if os.path.islink(image)
                else "."))
        if os.path.isdir(image):
            raise UnreadableImageError(os.fspath(image), "a folder, not an image file")
        if os.path.getsize(image) == 0:  # as the folder readers say
            raise UnreadableImageError(os.fspath(image), "empty file (0 bytes)")
        path = os.fspath(image)
        try:
            with Image.open(path) as opened:
                return to_rgb_uint8(opened, exif_transpose=exif_transpose, alpha=alpha)
        except Image.UnidentifiedImageError:
            with open(path, "rb") as f:
                head = f.read(12)
            raise UnreadableImageError(path, undecodable_format(path, head)
                                       or "not an image PIL can identify") from None
        except ConfigError:
            raise
        except (OSError, SyntaxError, ValueError) as error:  # "image file is truncated"
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UnreadableImageError(path, f"cannot decode: {text}") from error
    if isinstance(image, Image.Image):
        if exif_transpose:
            image = exif_transposed(image)
        return np.asarray(pil_to_rgb(image, alpha), np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"Image arrays must be uint8 (0..255), got {array.dtype}; convert with "
                        f"{_uint8_hint(array.dtype)}, or pass a PIL image.")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _CHANNELS:
        raise ValueError(f"Image arrays must be [H, W] or [H, W, C] with C in 1..4 (grey, "
                         f"grey + alpha, RGB, RGBA), got shape {array.shape}.")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] in (2, 4):  # through PIL, so that `alpha` applies as to PIL images
        mode = "LA" if array.shape[2] == 2 else "RGBA"
        return np.asarray(pil_to_rgb(Image.fromarray(array, mode), alpha), np.uint8)
    return array


# Pillow's modes of 16-bit greyscale: the I;16 family (16-bit PNGs and TIFFs; I;16N in native
# byte order) and I, which 16-bit PGM / PPM files open as, spread over 0..65535 whatever their
# maxval. The scale comes from the mode, never from the pixels: a rule by the brightest value
# (8-bit when it is 255 or less) made a dark 16-bit image 255 times brighter than one a level
# lighter (trial W).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _keyed(image: Image.Image) -> bool:
    """Whether an RGB, greyscale or palette image has one transparent colour or palette entry
    (a PNG's tRNS key, a GIF's transparent index: Pillow's `info["transparency"]`)."""
    return image.mode in ("RGB", "L", "P") and "transparency" in image.info


def has_transparency(image: Image.Image) -> bool:
    """Whether `alpha` (`background_colour`) can change how `image` reads: an alpha channel,
    or a transparent colour or palette entry (`_keyed`); known from the header alone."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or _keyed(image)


def pil_to_rgb(image: Image.Image, alpha: str | Sequence[int] = ALPHA_DROP) -> Image.Image:
    """Any PIL mode as 8-bit RGB: alpha dropped or composited (`background_colour`), CMYK and
    palettes converted, `SIXTEEN_BIT_MODES` scaled by v * 255 / 65535 (a 32-bit `I` image
    holding 8-bit values: `image.convert("L")` first), float (`F`) images as Pillow converts
    them, values 0..255 clipped (what the references see). Transparency is an alpha channel,
    a palette's transparent entries, or an RGB or greyscale PNG's one transparent colour (its
    tRNS key, Pillow's `info["transparency"]`)."""
    background = background_colour(alpha)
    keyed = _keyed(image)
    if image.mode == "RGB" and not (keyed and background is not None):
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, np.float64)
        if 0 < values.max(initial=0) <= 255:  # 8-bit values in a 16- or 32-bit image?
            warn_once(log, "An integer (Pillow mode %s) image whose values all lie in 0..255 "
                      "is read as 16-bit data (v * 255 / 65535: nearly black); if it holds "
                      "8-bit values, pass image.convert('L') (a 16-bit image this dark reads "
                      "right).", image.mode)
        gray = np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if has_transparency(image) and background is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "PA":  # Pillow has no direct PA -> RGB conversion
        image = image.convert("RGBA")
    with warnings.catch_warnings():  # Pillow suggests RGBA for palettes with transparency
        warnings.simplefilter("ignore", UserWarning)
        return image.convert("RGB")


def is_array(x: object) -> bool:
    """numpy arrays, jax.Arrays and other array-likes (`__array__` and `shape`)."""
    return isinstance(x, np.ndarray) or (hasattr(x, "__array__") and hasattr(x, "shape"))


def _channels_first(shape: tuple[int, ...], fix: str) -> str:
    return (f"Image arrays are channels-last ([H, W, C]); shape {shape} looks channels-first "
            f"(PyTorch's layout): transpose it with {fix}.")


def _one_image(image: object, where: str) -> ImageLike:
    """`image` if it is one image (array-likes as numpy arrays), else the error saying why."""
    if isinstance(image, (Image.Image, str, os.PathLike)):
        return image
    if not is_array(image):
        raise TypeError(f"{where} is a {type(image).__name__}, not an image: each image is a PIL "
                        "image, a file path or an array ([H, W] or [H, W, C]); pass pixel values "
                        "as np.asarray(x, np.uint8).")
    array = np.asarray(image)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in _CHANNELS):
        return array
    if array.ndim == 3 and array.shape[0] in _CHANNELS:
        raise ValueError(f"{where}: " + _channels_first(array.shape, "np.transpose(x, (1, 2, 0))"))
    raise ValueError(f"{where} has shape {array.shape}, not one image ([H, W] or [H, W, C] with "
                     "C in 1..4).")


def image_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    """The images in `images`, one per list item (array-likes as numpy arrays): the one rule
    for "one image or a batch" that `preprocess` and `Encoder.embed_images` share.

    One image: a PIL image, a path, an [H, W] array or an [H, W, C] array with C in 1..4
    (grey, grey + alpha, RGB, RGBA). A batch: an [N, H, W, C] array, an [N, H, W] array of
    greyscale images, a list or tuple, or an iterator (a generator); every item must be one
    image. A 3-D array with a last axis over 4 and a first axis of 2, 3 or 4 is refused
    rather than read as 2 to 4 greyscale images: it looks channels-first (PyTorch's
    [C, H, W]), an easy mistake that would silently embed each colour channel as an image;
    so is an [N, C, H, W] batch. Both raise ValueError saying how to transpose them. A 3-D
    array with a last axis of 5 to 8 (a multi-band image such as [40, 40, 5]) is refused too:
    read as [N, H, W] it would silently become N greyscale images 5 to 8 px wide. Arrays of
    other shapes and items that are not one image raise ValueError as well, other types
    (None, a dict, bytes) TypeError.
    """
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return [images]
    if is_array(images):
        array = np.asarray(images)
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in _CHANNELS):
            return [array]
        if array.ndim == 3 and array.shape[0] in (2, 3, 4):
            raise ValueError(_channels_first(array.shape, "np.transpose(x, (1, 2, 0))") + (
                " For a batch of 2 to 4 greyscale images pass an [N, H, W, 1] array "
                "(x[..., None]) or a list."))
        if array.ndim == 3 and 4 < array.shape[2] <= _MAX_BANDS:
            raise ValueError(f"Image arrays have 1 to 4 channels, got shape {array.shape}: not "
                             "one image [H, W, C], and too narrow to be a batch of greyscale "
                             "images [N, H, W]; pass [H, W, C] with C in 1..4 (e.g. x[..., :3]) "
                             "or, for narrow greyscale images, [N, H, W, 1] (x[..., None]).")
        if array.ndim == 3:  # [N, H, W]: greyscale images
            return list(array)
        if array.ndim == 4 and array.shape[3] in _CHANNELS:
            return list(array)
        if array.ndim == 4 and array.shape[1] in _CHANNELS:
            raise ValueError(_channels_first(array.shape, "np.transpose(x, (0, 2, 3, 1))"))
        raise ValueError(f"Image arrays must be [H, W] or [H, W, C] (one image) or [N, H, W] or "
                         f"[N, H, W, C] (a batch), C in 1..4, got shape {array.shape}.")
    if isinstance(images, Iterator) or (
            isinstance(images, Sequence) and not isinstance(images, (bytes, bytearray))):
        return [_one_image(image, f"images[{n}]") for n, image in enumerate(images)]
    raise TypeError("images must be a PIL image, an image file path, a uint8 array ([H, W] or "
                    "[H, W, C] for one image, [N, H, W] or [N, H, W, C] for a batch; C in 1..4) "
                    f"or a list or iterator of images, got {type(images).__name__}.")


def _model_config(config: CLIPConfig | str) -> CLIPConfig:
    if isinstance(config, str) and os.path.exists(config):
        raise ConfigError(f"config={config!r} is a path; pass the loaded model's config: "
                          f"module, variables = clip_jax.load({config!r}), then "
                          "config=module.config (a model's statistics and size are in it).")
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(getattr(config, "config", None), CLIPConfig):  # the module itself
        return config.config
    if not isinstance(config, CLIPConfig):
        raise TypeError("config must be the model's CLIPConfig (module.config) or a preset name "
                        f"such as 'ViT-B/32', got {type(config).__name__}.")
    return config


def preprocess(images: ImageLike | Iterable[ImageLike], config: CLIPConfig | str, *,
               exif_transpose: bool = True,
               alpha: str | Sequence[int] = ALPHA_DROP) -> np.ndarray:
    """Images -> float32 [N, S, S, 3] model input (S = `config.image_size`; the shortest side
    is first resized to `config.resize_shortest_side`). `config` is the model's CLIPConfig
    (`module.config`; the module itself does too) or a preset name (`"ViT-B/32"`;
    `clip_jax.list_models()`).

    Accepts one image or a batch (`image_list` says which): PIL images, uint8 arrays (numpy,
    jax or other array-likes) or file paths. Matches `transformers.CLIPImageProcessor`
    configured with the same size, mean and std to float32 rounding, for every 8-bit PIL
    mode on `image.convert("RGB")` (see the module docstring). Photos are first turned upright by
    their EXIF orientation (`exif_transpose=False` to keep the stored pixel order) and
    transparency is dropped, keeping the colours stored under it (`alpha`: see
    `background_colour`; `alpha="white"` is what `CLIPImageProcessor` does with an RGBA
    image; OpenAI and open_clip differ here, as the module docstring says).
    Raises ConfigError for an unknown preset name (or a path: load the model first),
    TypeError for a `config` that is neither,
    ValueError for a bad `alpha` and `image_list`'s errors before reading any image;
    then, per image, MissingFileError for a path with no file,
    `clip_jax.errors.UnreadableImageError` (an OSError) naming the file and why for a folder
    or a file that is empty, not an image or cannot be decoded (truncated), as
    `Encoder.embed_images` says them, PIL's DecompressionBombError for one over twice
    `PIL.Image.MAX_IMAGE_PIXELS` (raise that limit for trusted huge scans), TypeError for an
    array that is not uint8 and ValueError for an image with no pixels (zero height or
    width).
    """
    config = _model_config(config)
    mean, std = normalization_constants(config)
    pixels = preprocess_pixels(images, config, exif_transpose=exif_transpose, alpha=alpha)
    return ((pixels.astype(np.float32) - mean) / std).astype(np.float32)


def preprocess_pixels(images: ImageLike | Iterable[ImageLike], config: CLIPConfig | str, *,
                      exif_transpose: bool = True, alpha: str | Sequence[int] = ALPHA_DROP,
                      first: int = 0) -> np.ndarray:
    """`preprocess`'s pixels before they are normalised: uint8 [N, S, S, 3], resized and
    centre-cropped. `CLIP.encode_image` normalises uint8 on the device (within 2 ulp of
    `preprocess`), so the inference paths (`Encoder.embed_images`, `clip-jax index`,
    `zero-shot`, `search --image`) ship these: a quarter of float32's bytes. The same inputs,
    options and errors as `preprocess`; `first` is the index of the first image in the
    caller's list, for the errors' `images[n]` (a batch of a longer list)."""
    config = _model_config(config)
    background_colour(alpha)
    images = image_list(images)
    out = np.empty((len(images), config.image_size, config.image_size, 3), np.uint8)
    for n, image in enumerate(images):
        rgb = to_rgb_uint8(image, exif_transpose=exif_transpose, alpha=alpha)
        if 0 in rgb.shape[:2]:
            raise ValueError(f"images[{first + n}] has zero height or width (shape {rgb.shape} "
                             "as RGB): there is nothing to resize; leave it out.")
        out[n] = resize_and_center_crop(rgb, config.image_size, config.resize_shortest_side)
    return out
