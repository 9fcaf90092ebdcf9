"""Image transforms inside tf.data: decoding, CLIP's train augmentation and eval transform.

The eval transform resizes with the same integer arithmetic as `clip_jax.data.preprocess` (torch's
antialiased uint8 bicubic, which `transformers.CLIPImageProcessor` uses), so it is bit-exact
with both. Train augmentation is open_clip's: RandomResizedCrop (torchvision's sampling: ten
attempts, then a centre crop clamped to the ratio range), bicubic.
All randomness is stateless, drawn from a per-example key, so an example's augmentation never
depends on the order in which tf.data's threads process examples.

Eval decodes JPEGs with the accurate integer IDCT (what Pillow uses, so decoded pixels match
too); training decodes only the crop window of a JPEG, downscaled in the DCT domain when large.
"""

from __future__ import annotations

import math
from typing import Any

from clip_jax.data._tf import tf
from clip_jax.data.preprocess import shortest_side

_CUBIC_SUPPORT = 2.0
_MAX_PRECISION = 22
_CROP_ATTEMPTS = 10
_RNG = "philox"


def _cubic(x: tf.Tensor) -> tf.Tensor:
    """Keys cubic convolution kernel (a = -0.5), written in torch's operation order."""
    x = tf.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def resize_weights(in_size: tf.Tensor, out_size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`clip_jax.data.preprocess.resize_weights` for dynamic sizes: (first, int32 weights, precision)."""
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.cast(out_size, tf.float64)
    downscale = scale >= 1.0
    support = tf.where(downscale, _CUBIC_SUPPORT * scale, tf.constant(_CUBIC_SUPPORT, tf.float64))
    taps = tf.cast(tf.math.ceil(support), tf.int64) * 2 + 1
    invscale = tf.where(downscale, 1.0 / scale, tf.constant(1.0, tf.float64))
    center = scale * (tf.range(tf.cast(out_size, tf.int64), dtype=tf.float64) + 0.5)
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int64), 0)
    count = tf.clip_by_value(
        tf.minimum(tf.cast(center + support + 0.5, tf.int64), tf.cast(in_size, tf.int64)) - first,
        0, taps)
    j = tf.range(taps)
    x = (tf.cast(first[:, None] + j[None, :], tf.float64) - center[:, None] + 0.5) * invscale
    weights = tf.where(j[None, :] < count[:, None], _cubic(x), tf.zeros_like(x))
    # torch sums the taps left to right; foldl keeps that order (and so the rounding).
    total = tf.foldl(lambda acc, column: acc + column, tf.transpose(weights),
                     initializer=tf.zeros_like(center))
    nonzero = total != 0.0
    weights = tf.where(nonzero[:, None], weights / tf.where(nonzero, total, 1.0)[:, None], weights)
    w_max = tf.reduce_max(tf.where(nonzero[:, None], weights, tf.zeros_like(weights)))
    steps = tf.constant([float(1 << (k + 1)) for k in range(_MAX_PRECISION)], tf.float64)
    fits = tf.math.floor(0.5 + w_max * steps) < float(1 << 15)
    precision = tf.reduce_sum(tf.cast(fits, tf.int32))  # `fits` is monotone: True..True False..
    scaled = weights * tf.pow(tf.constant(2.0, tf.float64), tf.cast(precision, tf.float64))
    # The cast truncates towards zero, as C's (int) does after torch's +-0.5.
    quantised = tf.cast(tf.where(scaled < 0, scaled - 0.5, scaled + 0.5), tf.int32)
    return tf.cast(first, tf.int32), quantised, precision


def _resize_rows(image: tf.Tensor, out_size: tf.Tensor, start: tf.Tensor | int,
                 count: tf.Tensor | int) -> tf.Tensor:
    """Rows `start .. start+count` of resizing axis 0 of int32 [in, M] to `out_size` rows.

    The resized axis is the leading one so that every tap gathers whole contiguous rows
    (gathers along an inner axis are several times slower in TensorFlow).
    """
    in_size = tf.shape(image)[0]
    first, weights, precision = resize_weights(in_size, out_size)
    first = first[start:start + count]
    weights = weights[start:start + count]
    taps = tf.shape(weights)[1]

    def add_tap(j: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        rows = tf.gather(image, tf.minimum(first + j, in_size - 1))
        return j + 1, acc + rows * weights[:, j:j + 1]

    acc = tf.fill([tf.size(first), tf.shape(image)[1]], tf.bitwise.left_shift(1, precision - 1))
    _, acc = tf.while_loop(lambda j, _: j < taps, add_tap, (tf.constant(0), acc))
    return tf.clip_by_value(tf.bitwise.right_shift(acc, precision), 0, 255)


def resize_and_center_crop(image: tf.Tensor, size: int, resize: int | None = None
                           ) -> tf.Tensor:
    """uint8 [H, W, 3] -> uint8 [size, size, 3], bit-exact with `clip_jax.data.preprocess`.

    Shortest side to `resize` (default `size`) with torch's antialiased uint8 bicubic
    (horizontal pass first), then the centre crop; only the pixels inside it are computed.
    ValueError when `resize` < `size` (`preprocess.shortest_side`), as the graph is traced.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = shortest_side(size, resize)
    new_h = tf.where(width <= height, short * height // width, short)
    new_w = tf.where(width <= height, short, short * width // height)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    columns = tf.reshape(tf.transpose(tf.cast(image, tf.int32), [1, 0, 2]), [width, height * 3])
    columns = tf.cond(new_w != width, lambda: _resize_rows(columns, new_w, left, size),
                      lambda: columns[left:left + size])
    rows = tf.reshape(tf.transpose(tf.reshape(columns, [size, height, 3]), [1, 0, 2]),
                      [height, size * 3])
    rows = tf.cond(new_h != height, lambda: _resize_rows(rows, new_h, top, size),
                   lambda: rows[top:top + size])
    return tf.cast(tf.reshape(rows, [size, size, 3]), tf.uint8)


def normalize(image: tf.Tensor, mean: Any, std: Any) -> tf.Tensor:
    """[..., 3] in 0..255 -> float32 `(x / 255 - mean) / std`, fused as transformers computes it.

    `mean` and `std` are in uint8 units (`clip_jax.data.preprocess.normalization_constants`).
    """
    return (tf.cast(image, tf.float32) - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Float pixels in 0..255 -> uint8, rounded and saturated (what a PIL resize returns).

    Batches cross host -> device as uint8, 4x fewer bytes than float32; the model normalises
    them on the device (`clip_jax.models.clip.normalize_images`).
    """
    return tf.saturate_cast(tf.round(image), tf.uint8)


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG / PNG / GIF / BMP / WebP bytes -> uint8 [H, W, 3]."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.ensure_shape(
            tf.io.decode_image(encoded, channels=3, expand_animations=False), [None, None, 3]))


def eval_image(encoded: tf.Tensor, size: int, resize: int | None = None) -> tf.Tensor:
    """Encoded image -> uint8 [size, size, 3]: decode, shortest side to `resize` (default
    `size`), centre crop."""
    return resize_and_center_crop(decode_rgb(encoded), size, resize)


def crop_window(key: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                scale: tuple[float, float], ratio: tuple[float, float]) -> tf.Tensor:
    """torchvision's RandomResizedCrop window `[top, left, crop_h, crop_w]` (int32).

    Ten attempts at an area fraction in `scale` and a log-uniform aspect ratio in `ratio`; the
    first that fits wins; otherwise the whole image centre-cropped to the ratio range. All ten
    attempts are drawn at once from the stateless `key`.
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    u = tf.random.stateless_uniform([4, _CROP_ATTEMPTS], key, dtype=tf.float64, alg=_RNG)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    crop_w = tf.round(tf.sqrt(area * aspect))
    crop_h = tf.round(tf.sqrt(area / aspect))
    fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    top = tf.floor(u[2] * (h - crop_h + 1))
    left = tf.floor(u[3] * (w - crop_w + 1))
    pick = tf.argmax(tf.cast(fits, tf.int32))
    sampled = tf.stack([top[pick], left[pick], crop_h[pick], crop_w[pick]])
    in_ratio = w / h
    fb_w = tf.where(in_ratio < ratio[0], w,
                    tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]),
                    tf.where(in_ratio > ratio[1], h, h))
    fallback = tf.stack([tf.floor((h - fb_h) / 2), tf.floor((w - fb_w) / 2), fb_h, fb_w])
    return tf.cast(tf.where(tf.reduce_any(fits), sampled, fallback), tf.int32)


def train_image(encoded: tf.Tensor, key: tf.Tensor, size: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tf.Tensor:
    """Encoded image -> float32 [size, size, 3] in 0..255: random resized crop (open_clip's).

    A JPEG decodes only its crop window, at 1/2, 1/4 or 1/8 scale in the DCT domain when the
    window is still at least `size` pixels on its short side at that scale (large photos), with
    the fast integer IDCT. Other formats decode whole, then crop. The crop is resized with
    TensorFlow's antialiased Keys bicubic (the eval transform's filter, in float without the
    uint8 rounding; three times faster than the bit-exact integer kernel, which training does
    not need). `key` is a stateless RNG seed (int64 [2]) unique to this example and epoch.
    """
    def jpeg() -> tf.Tensor:
        shape = tf.io.extract_jpeg_shape(encoded)
        window = crop_window(key, shape[0], shape[1], scale, ratio)
        shortest = tf.minimum(window[2], window[3])
        scales = (1, 2, 4, 8)
        branch = tf.reduce_sum(tf.cast(shortest >= [s * size for s in scales[1:]], tf.int32))

        def decode(factor: int) -> Any:
            return lambda: tf.io.decode_and_crop_jpeg(
                encoded, window // factor, channels=3, ratio=factor, dct_method="INTEGER_FAST")

        return tf.switch_case(branch, [decode(factor) for factor in scales])

    def other() -> tf.Tensor:
        image = tf.ensure_shape(
            tf.io.decode_image(encoded, channels=3, expand_animations=False), [None, None, 3])
        shape = tf.shape(image)
        window = crop_window(key, shape[0], shape[1], scale, ratio)
        return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]

    crop = tf.ensure_shape(tf.cond(tf.io.is_jpeg(encoded), jpeg, other), [None, None, 3])
    image = tf.image.resize(crop, [size, size], method="bicubic", antialias=True)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [size, size, 3])
