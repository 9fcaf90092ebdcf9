"""A labelled image set (`labelled.LabelledImages`) as the eval batches the evaluators embed.

Each image is checked on the host before the tf.data graph decodes it (`read_checked_image`):
a decode error inside the graph cannot be caught per image, so one damaged file would stop a
whole evaluation. Whole JPEGs and PNGs still go to TensorFlow's decoder (outside the GIL); what
it cannot take whole (other formats, EXIF-turned photos, 16-bit images) is decoded here; an
unreadable image is masked out with a warning naming it (`report_dropped` names those that
failed inside the decoder), never dropped silently.
"""

from __future__ import annotations

import functools
import io
import logging
import os

import numpy as np
from PIL import Image

from clip_jax.data import shifts
from clip_jax.data import tf_preprocess
from clip_jax.data._tf import tf
from clip_jax.data.eval_pipeline import (EvalIterable, ProcessSlice, batch_eval_examples,
                                         mask_padding)
from clip_jax.data.labelled import LabelledImages
from clip_jax.data.options import check_shift
from clip_jax.data.preprocess import (ALPHA_DROP, DECODE_ERRORS, background_colour,
                                      decode_reason, exif_orientation, has_transparency,
                                      normalization_constants, to_rgb_uint8,
                                      undecodable_format)
from clip_jax.data.tf_data import graph
from clip_jax.models.config import CLIPConfig

log = logging.getLogger(__name__)


def read_image_bytes(path: bytes, offset: np.int64, length: np.int64) -> bytes:
    """The encoded bytes of one image of a `LabelledImages`: the whole file (`offset` -1) or
    `length` bytes from `offset` inside a tar shard."""
    with tf.io.gfile.GFile(path, "rb") as f:  # bytes: a name need not be UTF-8
        if offset < 0:
            return f.read()
        f.seek(int(offset))
        return f.read(int(length))


_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)
_TURNED = range(2, 9)  # EXIF orientations other than upright (1): mirrored and/or turned
# Where an orientation that Pillow's `getexif` finds can sit (`preprocess.exif_orientation`):
# an EXIF block (a JPEG's APP1 segment), a PNG's eXIf chunk (before or after the pixels),
# ImageMagick's raw EXIF profile in a PNG text chunk, XMP (a PNG's iTXt chunk, a JPEG's APP1).
# The whole file is searched, a fast byte scan; a chance match in the pixels costs a header
# parse (JPEG) or a decode on the host (PNG), never a wrong image.
_ORIENTATION_MARKS = (b"Exif\x00\x00", b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp",
                      b"http://ns.adobe.com/xap/1.0/")
_REPORTED: set[tuple[bytes, int]] = set()  # unreadable images already named in a warning
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # markers without a length field (TEM, RSTn, SOI)


def jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG's segments lead to a scan that an end-of-image marker closes (a file cut
    off inside its entropy-coded data has none): `jpeg_header`'s first answer."""
    return jpeg_header(data)[0]


# Start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC, which share their range).
_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header(data: bytes) -> tuple[bool, tuple[int, int] | None]:
    """`(complete, size)` of a JPEG from one walk of its header segments: whether they lead
    to a scan that an end-of-image marker closes (inside scan data every 0xFF byte is
    stuffed, so FF D9 there is the real marker; an EXIF thumbnail's own markers sit in a
    segment the walk skips by its length), and the (width, height) of its frame header
    (None if none is found). The size lets a whole JPEG, which goes to TensorFlow's decoder
    (no pixel limit) without Pillow opening it, meet Pillow's decompression-bomb limit as
    every other image does (trial BH: `clip-jax eval` decoded a JPEG `clip-jax index`
    refused)."""
    if data[:2] != b"\xff\xd8":
        return False, None
    size, i = None, 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF or marker in _JPEG_STANDALONE:
            i += 1 if marker == 0xFF else 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_FRAMES and size is None:
            size = (int.from_bytes(data[i + 7:i + 9], "big"),
                    int.from_bytes(data[i + 5:i + 7], "big"))
        if marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", end) >= 0, size
        i = end
    return False, size


def read_checked_image(path: bytes, offset: np.int64, length: np.int64,
                       exif_transpose: bool = True, alpha: str = ALPHA_DROP
                       ) -> tuple[bytes, np.ndarray, bool]:
    """One image of a `LabelledImages`, checked before the pipeline decodes it, as
    (encoded, pixels, readable):

    * a whole JPEG (`jpeg_is_complete`) or a PNG whose chunks pass their CRCs, stored upright
      (no orientation `preprocess.exif_orientation` finds, or `exif_transpose` False) and, for
      a PNG, 8-bit with nothing for `alpha` to composite (`alpha` "drop", or no transparency):
      (its bytes, a placeholder, True), decoded by TensorFlow outside the GIL, as every eval
      source is;
    * anything else PIL reads whole (TIFF, WebP, GIF, BMP, 16-bit greyscale PNG, a photo
      with an EXIF orientation, ...): (b"", uint8 [H, W, 3], True), decoded here as
      `clip_jax.preprocess` reads it with the same `exif_transpose` and `alpha`
      (`to_rgb_uint8`): RGB, turned upright by its orientation (as the dataset builders store
      training images, `data.build.exif_transpose`; torchvision's `ImageFolder`, and so
      CLIP_benchmark, does not turn it), transparency dropped or composited (as the builders
      store it, `data.build.alpha`), 16-bit and float images rescaled to 8 bits (Pillow's
      convert("RGB") clips them at 255);
    * an empty file, not an image, one cut off in its pixel data, or a file that cannot be
      read (a broken link, no permission): (b"", a 1x1 placeholder, False) with a warning
      naming the file; the pipeline masks it out of the results.

    Checking here is what keeps one damaged file from stopping a whole evaluation: a decode
    error inside the tf.data graph cannot be caught per image."""
    try:
        data = read_image_bytes(path, offset, length)
        if not data:
            raise ValueError("empty file (0 bytes)")
        complete, size = jpeg_header(data)
        if complete and size is not None:  # Pillow's own limit and words, as at its open
            Image._decompression_bomb_check(size, error_only=True)
        may_turn = exif_transpose and any(mark in data for mark in _ORIENTATION_MARKS)
        if complete and not may_turn:
            return data, _PLACEHOLDER, True  # no orientation to turn by: no header parse
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            if image.format == "PNG":
                # Pillow's way where it reads otherwise than TensorFlow's decoder: a PNG's
                # orientation (its `getexif` loads the pixels: an eXIf chunk may follow them),
                # transparency to composite, 16-bit greyscale (Pillow's I;16 / I: TensorFlow
                # keeps the high byte, `clip_jax.preprocess` rescales v * 255 / 65535).
                if not (may_turn or image.mode.startswith("I")
                        or (background_colour(alpha) is not None and has_transparency(image))):
                    image.verify()
                    return data, _PLACEHOLDER, True
            elif complete and exif_orientation(image) not in _TURNED:
                return data, _PLACEHOLDER, True
            return b"", to_rgb_uint8(image, exif_transpose=exif_transpose, alpha=alpha), True
    except Image.UnidentifiedImageError:
        reason = (undecodable_format(os.fsdecode(path), data[:12])
                  or "not an image PIL can identify")
    except DECODE_ERRORS as error:
        reason = decode_reason(error)
    except tf.errors.NotFoundError:
        reason = "no such file (a broken link, or removed after the folder was listed)"
    except tf.errors.OpError as error:  # permission denied, an unreadable remote file, ...
        reason = " ".join(error.message.split()) or type(error).__name__
    where = f" (bytes {offset}+{length})" if offset >= 0 else ""
    if (path, int(offset)) not in _REPORTED:  # once per process, not at every periodic eval
        _REPORTED.add((path, int(offset)))
        log.warning("skipped unreadable image %s%s: %s", os.fsdecode(path), where, reason)
    return b"", _PLACEHOLDER, False


def make_iterable(images: LabelledImages, model_config: CLIPConfig, *, batch_size: int,
                  shift: str = "", prefetch_batches: int = 2, process_index: int | None = None,
                  process_count: int | None = None, exif_transpose: bool = True,
                  alpha: str = ALPHA_DROP) -> EvalIterable:
    """Eval batches (`images`, `mask`, `index`, `label`) of this process's slice of `images`,
    in order, padded with `mask` False so every process yields the same number of batches
    (`clip_jax.data.eval_pipeline`'s slicing, padding and batching). An unreadable image
    (`read_checked_image`) is masked out like padding, with a warning naming it; one whose
    data is damaged inside a whole file (TensorFlow's decoder fails on it, which no error
    handler inside the graph can catch per image) is dropped, its slot made up by padding,
    and named by `report_dropped` once the split is read. Photos are turned upright by their
    EXIF orientation unless `exif_transpose` is False, and transparency is dropped or
    composited as `alpha` says (`read_checked_image`, as `clip_jax.preprocess` reads them)."""
    shift = check_shift(shift)
    n = len(images)
    piece = ProcessSlice.of(n, batch_size, process_index, process_count)
    index = np.arange(piece.first, piece.last, dtype=np.int64)
    size = model_config.image_size
    mean, std = normalization_constants(model_config)
    table = {"file": np.asarray([os.fsencode(f) for f in images.files], dtype=object),
             "offset": images.offsets,
             "length": images.lengths, "label": images.labels}
    columns = {k: tf.constant(v[index]) for k, v in table.items()}

    def example(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        encoded, pixels, readable = tf.numpy_function(
            functools.partial(read_checked_image, exif_transpose=exif_transpose, alpha=alpha),
            [item["file"], item["offset"], item["length"]],
            (tf.string, tf.uint8, tf.bool), stateful=False)
        encoded = tf.ensure_shape(encoded, [])
        pixels = tf.cond(tf.strings.length(encoded) > 0,
                         lambda: tf_preprocess.decode_rgb(encoded),
                         lambda: tf.ensure_shape(pixels, [None, None, 3]))
        image = tf_preprocess.resize_and_center_crop(pixels, size,
                                                     model_config.resize_shortest_side)
        image = tf_preprocess.normalize(shifts.apply(shift, image, item["index"]), mean, std)
        image = tf.ensure_shape(image, [size, size, 3])
        return mask_padding({"images": image, "label": item["label"]},
                            tf.ensure_shape(readable, []), item["index"])

    dataset = tf.data.Dataset.from_tensor_slices({**columns, "index": tf.constant(index)})
    dataset = dataset.map(graph(example), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors()
    return batch_eval_examples(dataset, piece, prefetch_batches, list(images.class_names), n)


def report_dropped(images: LabelledImages, read: np.ndarray, process_index: int | None = None,
                   process_count: int | None = None) -> None:
    """Names, in one warning each, the images of this process's slice of `images` (processes
    as `make_iterable` takes them) whose index is not in `read` (int [M], the indices that
    reached the model, gathered from every process) and that no check has named already: the
    ones TensorFlow's decoder failed on. Another process's slice is its own to name: its
    unreadable images, named there with their reason, were named here again as damaged."""
    piece = ProcessSlice.of(len(images), 1, process_index, process_count)
    for i in np.setdiff1d(np.arange(piece.first, piece.last), read):
        path, offset = os.fsencode(images.files[i]), int(images.offsets[i])
        if (path, offset) not in _REPORTED:
            _REPORTED.add((path, offset))
            where = f" (bytes {offset}+{int(images.lengths[i])})" if offset >= 0 else ""
            log.warning("skipped unreadable image %s%s: its data is damaged (TensorFlow "
                        "could not decode it)", images.files[i], where)
