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

OpenAI's original pipeline and open_clip's (torchvision on PIL images) differ in two ways.
Pillow's resampler is off by one uint8 level (0.0152 after normalisation) on about 0.4 % of
the values. And torchvision's `CenterCrop` rounds the crop offset half to even where
transformers (and we) round down: when the long side exceeds the crop by m pixels with
m % 4 == 3 (about a quarter of the sizes of arbitrary photos), their crop starts one pixel
further along it, so their whole image is shifted by one pixel against ours.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np
from PIL import Image, ImageColor, ImageOps

from clip_jax.errors import MissingFileError
from clip_jax.models.config import CLIPConfig, normalization_constants

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]

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


def resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """torch's int16 weights for resizing one axis from `in_size` to `out_size` pixels.

    Returns `(first, weights, precision)`: output pixel `i` is
    `(2**(precision-1) + sum_j in[first[i] + j] * weights[i, j]) >> precision`, clipped to
    [0, 255]. Taps past a row's support have weight 0 (their index is clamped when gathered).
    """
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
    weights = np.where(nonzero[:, None], weights / np.where(nonzero, total, 1.0)[:, None], weights)
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
    shape = [1] * image.ndim
    shape[axis] = count
    acc = np.full([count if a == axis else n for a, n in enumerate(image.shape)],
                  1 << (precision - 1), np.int32)
    for j in range(weights.shape[1]):
        taps = np.take(image, np.minimum(first + j, in_size - 1), axis=axis).astype(np.int32)
        acc += taps * weights[:, j].reshape(shape)
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shortest side to `size`, as transformers computes it."""
    if width <= height:
        return size * height // width, size
    return size, size * width // height


def resize_and_center_crop(image: np.ndarray, size: int, resize: int | None = None
                           ) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: shortest side to `resize` (default `size`,
    >= `size`), then the centre `size` x `size` crop.

    Only the pixels inside the crop are computed; each equals the full resize's pixel because
    every output pixel depends only on its own weights.
    """
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, resize or size)
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
_EXIF_ORIENTATION = 0x0112  # EXIF tag; 1 = upright, 2-8 = mirrored and/or rotated


def background_colour(alpha: str | Sequence[int]) -> tuple[int, int, int] | None:
    """The RGB colour transparent pixels are composited onto, or None to drop alpha.

    `alpha` is `"drop"` (discard the alpha channel, keep the stored colours: OpenAI's and
    open_clip's `image.convert("RGB")`, and transformers' pipelines, whose `load_image` does
    the same), a Pillow colour name or `#rrggbb` (`"white"` is what `CLIPImageProcessor` does
    when handed an RGBA image), or an (r, g, b) tuple of 0..255. Raises ValueError otherwise.
    """
    if isinstance(alpha, str):
        if alpha == ALPHA_DROP:
            return None
        try:
            return tuple(ImageColor.getrgb(alpha)[:3])  # type: ignore[return-value]
        except ValueError:
            pass
    elif len(alpha) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in alpha):
        return tuple(alpha)  # type: ignore[return-value]
    raise ValueError(f"alpha={alpha!r} is neither 'drop' nor a background colour; use 'drop' "
                     "(as OpenAI / open_clip), a colour such as 'white' or '#808080', or an "
                     "(r, g, b) tuple.")


def exif_transposed(image: Image.Image) -> Image.Image:
    """`image` turned upright by its EXIF Orientation tag, as browsers, Pillow's
    `ImageOps.exif_transpose` and transformers' `load_image` do; unchanged without one."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


class UnreadableImageError(OSError):
    """An image file PIL opens but cannot decode (cut off, damaged): the message names the
    file, `reason` is PIL's own words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path!r}: {reason}")
        self.reason = reason


def to_rgb_uint8(image: ImageLike, *, exif_transpose: bool = True,
                 alpha: str | Sequence[int] = ALPHA_DROP) -> np.ndarray:
    """A PIL image, array or image file path as uint8 [H, W, 3] RGB.

    `exif_transpose` turns photos upright by their EXIF orientation (files and PIL images;
    arrays carry none). `alpha` says what happens to transparency (`background_colour`): by
    default it is dropped, as the references preprocess. Grayscale is replicated; 16-bit
    images are rescaled to 8 bits.
    """
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise MissingFileError(f"No image file at {os.fspath(image)!r}.")
        if os.path.isfile(image) and os.path.getsize(image) == 0:  # as the folder readers say
            raise UnreadableImageError(os.fspath(image), "empty file (0 bytes)")
        try:
            with Image.open(image) as opened:
                return to_rgb_uint8(opened, exif_transpose=exif_transpose, alpha=alpha)
        except Image.UnidentifiedImageError:
            raise  # its message names the file
        except OSError as error:  # "image file is truncated": name the file it is about
            raise UnreadableImageError(os.fspath(image), str(error)) from error
    if isinstance(image, Image.Image):
        if exif_transpose:
            image = exif_transposed(image)
        return np.asarray(pil_to_rgb(image, alpha), np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"Image arrays must be uint8 (0..255), got {array.dtype}; convert with "
                        "np.clip(x, 0, 255).astype(np.uint8) or pass a PIL image.")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"Image arrays must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got shape {array.shape}.")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        return np.asarray(pil_to_rgb(Image.fromarray(array, "RGBA"), alpha), np.uint8)
    return array


def pil_to_rgb(image: Image.Image, alpha: str | Sequence[int] = ALPHA_DROP) -> Image.Image:
    """Any PIL mode as 8-bit RGB: alpha dropped or composited (`background_colour`), 16/32-bit
    scaled, CMYK and palettes converted."""
    background = background_colour(alpha)
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, np.float64)
        peak = values.max(initial=0.0)
        if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
            top = 65535.0  # 16-bit data (Pillow opens 16-bit grayscale PNGs as I;16 or I)
        elif image.mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha and background is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "PA":  # Pillow has no direct PA -> RGB conversion
        image = image.convert("RGBA")
    with warnings.catch_warnings():  # Pillow suggests RGBA for palettes with transparency
        warnings.simplefilter("ignore", UserWarning)
        return image.convert("RGB")


def preprocess(images: ImageLike | Sequence[ImageLike], config: CLIPConfig, *,
               exif_transpose: bool = True,
               alpha: str | Sequence[int] = ALPHA_DROP) -> np.ndarray:
    """Images -> float32 [N, S, S, 3] model input (S = `config.image_size`; the shortest side
    is first resized to `config.resize_shortest_side`).

    Accepts one image or a sequence: PIL images, uint8 arrays ([H, W], [H, W, 1|3|4]) or file
    paths. Matches `transformers.CLIPImageProcessor` configured with the same size, mean and
    std to float32 rounding (see the module docstring). Photos are first turned upright by
    their EXIF orientation (`exif_transpose=False` to keep the stored pixel order) and
    transparency is dropped as OpenAI and open_clip do (`alpha`: see `background_colour`;
    `alpha="white"` is what `CLIPImageProcessor` does with an RGBA image).
    Raises ValueError for a bad `alpha` before reading any image; then, per image,
    MissingFileError for a path with no file, PIL's UnidentifiedImageError for a file that is
    not an image, OSError naming the file for one that is empty or cannot be decoded
    (truncated), TypeError for an array that is not uint8 and ValueError for one of another
    shape.
    """
    background_colour(alpha)
    if isinstance(images, (Image.Image, str, os.PathLike)) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8
            and (images.ndim == 2 or images.shape[-1] in (1, 3, 4))):
        images = [images]
    mean, std = normalization_constants(config)
    out = np.empty((len(images), config.image_size, config.image_size, 3), np.float32)
    for n, image in enumerate(images):
        rgb = to_rgb_uint8(image, exif_transpose=exif_transpose, alpha=alpha)
        crop = resize_and_center_crop(rgb, config.image_size, config.resize_shortest_side)
        out[n] = (crop.astype(np.float32) - mean) / std
    return out
