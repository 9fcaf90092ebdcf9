"""Synthetic distribution shifts for any eval image source, applied in the tf.data pipeline.

Each shift maps a uint8 image [S, S, 3] (after the eval resize and centre crop, before
normalisation) to another uint8 image of the same shape. Random shifts (noise, occlusion)
draw from a stateless RNG keyed by the example's index in its split, so every evaluation of a
split sees the same shifted pixels, on any number of processes. The strengths are fixed (one
severity, in the spirit of ImageNet-C's middle levels) so numbers compare across runs:

  greyscale            ITU-R 601-2 luma (PIL's `convert("L")`) in all three channels
  invert               255 - x (PIL's `ImageOps.invert`)
  hue_rotate           hue turned by 180 degrees in HSV (saturation and value kept)
  blur                 Gaussian blur, sigma = max(1, S / 112) px (2 at 224 px), reflected
                       borders
  noise                additive Gaussian noise, sigma 25 (of 255), clipped
  jpeg                 JPEG re-encoding at quality 10
  sketch               inverted Sobel edge magnitude of the luma: dark lines on white
  occlusion            a mid-grey square of side S / 2 (a quarter of the area), random place
  downscale_upscale    box downscale by 4, nearest-neighbour upscale back to S
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

from clip_jax.data._tf import tf
from clip_jax.data.options import check_shift

Shift = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (uint8 [S, S, 3], key int64 [2]) -> uint8
_SEED = 14
_RNG = "philox"


def _luma(image: tf.Tensor) -> tf.Tensor:
    """uint8 [S, S, 3] -> int32 [S, S]: PIL's fixed-point L = (19595 R + 38470 G + 7471 B) / 2^16."""
    x = tf.cast(image, tf.int32)
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) // 65536


def _grey3(luma: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.repeat(tf.clip_by_value(luma, 0, 255)[..., None], 3, axis=-1), tf.uint8)


def _round_u8(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def greyscale(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """ITU-R 601-2 luma in all three channels, as PIL's `convert("L")`."""
    del key
    return _grey3(_luma(image))


def invert(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """255 - x in every channel, as PIL's `ImageOps.invert`."""
    del key
    return 255 - image


def hue_rotate(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Hue turned by 180 degrees in HSV; saturation and value kept."""
    del key
    hsv = tf.image.rgb_to_hsv(tf.cast(image, tf.float32) / 255.0)
    hue = tf.math.floormod(hsv[..., 0] + 0.5, 1.0)
    rgb = tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))
    return _round_u8(rgb * 255.0)


def _separable(x: tf.Tensor, kernel: tf.Tensor, radius: int) -> tf.Tensor:
    """float [S, S, C] filtered along both axes by 1-D `kernel` [2r+1], reflected borders
    (d c b a | a b c d, scipy.ndimage's 'reflect')."""
    x = tf.pad(x, [[radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    x = tf.transpose(x, [2, 0, 1])[..., None]  # [C, H, W, 1]
    x = tf.nn.conv2d(x, tf.reshape(kernel, [-1, 1, 1, 1]), 1, "VALID")
    x = tf.nn.conv2d(x, tf.reshape(kernel, [1, -1, 1, 1]), 1, "VALID")
    return tf.transpose(x[..., 0], [1, 2, 0])


def blur_sigma(size: int) -> float:
    """Gaussian sigma in pixels at image side `size`: 2 at 224 px, at least 1."""
    return max(1.0, size / 112)


def blur(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Gaussian blur of sigma `blur_sigma(S)` px, reflected borders."""
    del key
    sigma = blur_sigma(image.shape[0])
    radius = max(1, math.ceil(3 * sigma))
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * (t / sigma) ** 2)
    kernel /= tf.reduce_sum(kernel)
    return _round_u8(_separable(tf.cast(image, tf.float32), kernel, radius))


NOISE_STD = 25.0


def noise(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Additive Gaussian noise of sigma `NOISE_STD` (of 255), drawn from `key`, clipped."""
    z = tf.random.stateless_normal(tf.shape(image), key, alg=_RNG)
    return _round_u8(tf.cast(image, tf.float32) + NOISE_STD * z)


JPEG_QUALITY = 10


def jpeg(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Re-encoded as JPEG at quality `JPEG_QUALITY`."""
    del key
    return tf.image.adjust_jpeg_quality(image, JPEG_QUALITY)


def sketch(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Inverted Sobel edge magnitude of the luma: dark lines on white, in grey."""
    del key
    luma = tf.cast(_luma(image), tf.float32)[..., None]
    smooth = tf.constant([1.0, 2.0, 1.0])
    diff = tf.constant([-1.0, 0.0, 1.0])
    padded = tf.pad(luma, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")[None]  # [1, S+2, S+2, 1]
    kx = tf.reshape(smooth[:, None] * diff[None, :], [3, 3, 1, 1])  # d/dx, smoothed over y
    ky = tf.reshape(diff[:, None] * smooth[None, :], [3, 3, 1, 1])
    gx = tf.nn.conv2d(padded, kx, 1, "VALID")[0, ..., 0]
    gy = tf.nn.conv2d(padded, ky, 1, "VALID")[0, ..., 0]
    edges = tf.clip_by_value(tf.sqrt(gx * gx + gy * gy), 0.0, 255.0)
    return _grey3(tf.cast(tf.round(255.0 - edges), tf.int32))


OCCLUSION_FILL = 128


def occlusion_box(size: int, key: tf.Tensor) -> tf.Tensor:
    """int32 [2]: top, left of the occluding square of side size // 2."""
    side = size // 2
    return tf.random.stateless_uniform([2], key, 0, size - side + 1, dtype=tf.int32, alg=_RNG)


def occlusion(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """A grey (`OCCLUSION_FILL`) square of side S // 2 at a place drawn from `key`."""
    size = image.shape[0]
    side = size // 2
    corner = occlusion_box(size, key)
    rows = tf.range(size)
    inside_y = (rows >= corner[0]) & (rows < corner[0] + side)
    inside_x = (rows >= corner[1]) & (rows < corner[1] + side)
    inside = inside_y[:, None, None] & inside_x[None, :, None]
    return tf.where(inside, tf.constant(OCCLUSION_FILL, tf.uint8), image)


DOWNSCALE = 4


def downscale_upscale(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Box downscale by `DOWNSCALE`, nearest-neighbour upscale back to S."""
    del key
    size = image.shape[0]
    small_size = max(1, size // DOWNSCALE)
    small = tf.image.resize(tf.cast(image, tf.float32), [small_size, small_size], method="area")
    small = tf.clip_by_value(tf.round(small), 0.0, 255.0)
    return tf.cast(tf.image.resize(small, [size, size], method="nearest"), tf.uint8)


SHIFTS: dict[str, Shift] = {
    "greyscale": greyscale,
    "invert": invert,
    "hue_rotate": hue_rotate,
    "blur": blur,
    "noise": noise,
    "jpeg": jpeg,
    "sketch": sketch,
    "occlusion": occlusion,
    "downscale_upscale": downscale_upscale,
}


def example_key(name: str, index: tf.Tensor) -> tf.Tensor:
    """The stateless RNG key of example `index` under shift `name` (int64 [2])."""
    base = tf.constant([_SEED, zlib.crc32(name.encode())], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64), alg=_RNG)


def apply(name: str, image: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Shift `name` ("" = none) of uint8 `image` [S, S, 3], the example at `index`."""
    if not name:
        return image
    out = SHIFTS[check_shift(name)](image, example_key(name, index))
    return tf.ensure_shape(out, image.shape)
