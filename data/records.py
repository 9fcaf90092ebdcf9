"""Build-time checks shared by the image-text builders: decode safely, convert, or skip and count.

Web-scale image-text data always holds some broken records. A builder passes every raw image
and caption through `clean_image` / `clean_caption`: records that can be repaired are
converted (to 8-bit RGB, re-encoded when needed) and counted; records that cannot are skipped
with a reason. `BuildReport` keeps the tallies and writes `bad_records.json` next to the
dataset, so a build never dies on one bad record and never loses data silently. A split in
which more than `max_bad_fraction` of the records are bad fails with a clear error instead:
that is a wrong path or column, not bad luck.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import io
import json
import logging
import os
import threading
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from clip_jax.data import tokenizer
from clip_jax.data.preprocess import SIXTEEN_BIT_MODES, exif_transposed, pil_to_rgb
from clip_jax.errors import ConfigError
from clip_jax_data.options import CleanOptions

TOKEN_LENGTH = 77  # tokens are stored at OpenAI's context length; the pipeline fits them
REPORT_FILE = "bad_records.json"
BUILD_OPTIONS_FILE = "build_options.json"
INPUTS_KEY = "inputs"  # in BUILD_OPTIONS_FILE: input file -> fingerprint, apart from the options
_HASH_CHUNK = 8 << 20
_STAT_THREADS = 32
_LISTED_KEYS = 10_000  # skipped keys listed in the report; counts are always complete
_EXAMPLE_KEYS = 20     # example keys listed per conversion kind
# Skipped and counted, but no record, so outside `max_bad_fraction`: a hidden file inside a
# shard (macOS's `._*` beside every file of a tar made on a Mac), and a sample's second member
# of one extension (`k.JPG` beside `k.jpg`; the sample is kept).
HIDDEN_MEMBER = "hidden_member"
DUPLICATE_MEMBER = "duplicate_member"
MEMBER_REASONS = (HIDDEN_MEMBER, DUPLICATE_MEMBER)

log = logging.getLogger(__name__)


class BadRecord(Exception):
    """A record that cannot be used: `reason` is a short category, the message the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def clean_image(data: bytes, options: CleanOptions, name: str = "") -> tuple[bytes, list[str]]:
    """Raw file bytes -> (bytes TensorFlow decodes to 8-bit RGB, conversions applied).

    Upright 8-bit RGB JPEGs and PNGs are kept byte for byte. Anything else that Pillow can
    decode (grayscale, palette, RGBA / LA (alpha dropped by default, `options.alpha`), CMYK,
    16-bit, WebP, GIF, BMP, TIFF, ...) and, with `options.exif_transpose`, photos whose EXIF
    orientation is not upright (turned upright, since decoders downstream ignore EXIF) are
    converted to RGB and re-encoded: PNG sources as PNG (lossless), others as JPEG. Raises `BadRecord` for empty, unrecognised, truncated or oversized images, and for
    anything else Pillow fails on, so that no single file can stop a build.
    """
    try:
        return _clean_image(data, options, name)
    except BadRecord:
        raise
    except Exception as error:
        raise BadRecord("conversion_failed", f"{type(error).__name__}: {error}") from error


_PIL_LIMIT = threading.Lock()


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """`Image.open`, under Pillow's decompression-bomb limit (twice PIL.Image.MAX_IMAGE_PIXELS,
    an error at open) only where `max_pixels` (`build.max_pixels`, checked by the caller) is
    no larger: a build given a higher limit for huge scans had them refused by Pillow's anyway.
    Pillow reads its limit at open, a module global: lifted for this open alone, under a lock
    (the builder's other threads then open with no bomb check, and their images meet the
    caller's `max_pixels` check all the same)."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        pass
    with _PIL_LIMIT:  # read inside: another thread's lift has been undone
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and max_pixels <= 2 * limit:
            return Image.open(io.BytesIO(data))  # Pillow's error again, for the caller
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _clean_image(data: bytes, options: CleanOptions, name: str) -> tuple[bytes, list[str]]:
    if not data:
        raise BadRecord("empty_file", "zero-byte image file")
    conversions: list[str] = []
    try:
        image = _open(data, options.max_pixels)
    except Image.DecompressionBombError as error:
        raise BadRecord("too_large", f"{error} (over max_pixels={options.max_pixels} "
                        "too)") from error
    except Exception as error:  # Pillow raises several types for undecodable data
        # UnidentifiedImageError's message only names the in-memory file object
        cause = "" if isinstance(error, Image.UnidentifiedImageError) else f": {error}"
        signature = _signature_format(data)
        if signature:
            raise BadRecord("corrupt", f"truncated or corrupt image data (a {signature} file "
                                       f"whose header cannot be read{cause})") from error
        raise BadRecord("not_an_image", f"not a recognised image format{cause}") from error
    source_format = image.format or "unknown"
    ext = os.path.splitext(name)[1].lower().lstrip(".")
    if ext and _format_of_extension(ext) not in (None, source_format):
        conversions.append("wrong_extension")  # harmless: decoders sniff the content
    width, height = image.size
    if width < 1 or height < 1:
        raise BadRecord("corrupt", f"a {source_format} image with no pixels ({width}x{height})")
    reencode = source_format not in ("JPEG", "PNG")
    if width * height > options.max_pixels:
        if source_format != "JPEG":
            raise BadRecord("too_large", f"{width}x{height} = {width * height} pixels exceeds "
                                         f"max_pixels={options.max_pixels}")
        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # DCT-domain downscale
        if image.size[0] * image.size[1] > options.max_pixels:
            raise BadRecord("too_large", f"{width}x{height} pixels, still too large at 1/8 scale")
        conversions.append("downscaled")
        reencode = True
    sixteen_bit = any(";16" in str(tile.args) for tile in image.tile)
    try:
        image.load()
    except Exception as error:
        raise BadRecord("corrupt", f"truncated or corrupt image data ({error})") from error
    if sixteen_bit or image.mode in SIXTEEN_BIT_MODES:
        conversions.append("16bit_to_8bit")
        reencode = True
    elif image.mode != "RGB":
        conversions.append(f"{_MODE_NAMES.get(image.mode, image.mode.lower())}_to_rgb")
        reencode = True
    if getattr(image, "n_frames", 1) > 1:
        conversions.append("first_frame_of_animation")
    if options.exif_transpose:
        upright = exif_transposed(image)
        if upright is not image:
            conversions.append("exif_transposed")
            image, reencode = upright, True
    rgb = pil_to_rgb(image, options.alpha)
    if rgb is not image and not reencode:  # an RGB PNG's transparent colour, composited
        conversions.append("transparent_colour_composited")
        reencode = True
    side = options.resize_shortest_side
    if side and min(rgb.size) > side:
        scale = side / min(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale))),
                         Image.BICUBIC, reducing_gap=3.0)
        conversions.append("downscaled")
        reencode = True
    if not reencode:
        return data, sorted(set(conversions))
    out = io.BytesIO()
    if source_format == "PNG":
        rgb.save(out, "PNG")
    else:
        rgb.save(out, "JPEG", quality=options.jpeg_quality, subsampling=0)  # 4:4:4: no chroma loss
        if source_format != "JPEG":
            conversions.append(f"{source_format.lower()}_to_jpeg")
    return out.getvalue(), sorted(set(conversions))


_MODE_NAMES = {"L": "grayscale", "LA": "grayscale_alpha", "1": "bilevel", "P": "palette",
               "PA": "palette_alpha", "RGBA": "rgba", "CMYK": "cmyk", "YCbCr": "ycbcr",
               "F": "float"}


def _signature_format(data: bytes) -> str | None:
    """The image format whose signature `data` starts with (Pillow's own `accept` checks, as
    `Image.open` sniffs it), or None: a file that fails to open is damaged if it has one, not
    an unrecognised file. Formats Pillow tries on any data (no `accept`, e.g. TGA) say
    nothing and are left out."""
    Image.init()
    prefix = data[:16]  # what Image.open hands the `accept` checks
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # noqa: BLE001 - a check that cannot read this prefix: not it
            continue
    return None


def _format_of_extension(ext: str) -> str | None:
    """The Pillow format an extension (`jpg`, `jfif`) names, as Pillow registers them."""
    return Image.registered_extensions().get(f".{ext}")


def clean_caption(raw: bytes | str, options: CleanOptions,
                  missing_values: Collection[str] = ()) -> tuple[str, list[str]]:
    """Raw caption -> (stripped text, conversions). Raises `BadRecord` if empty, undecodable,
    or exactly one of `missing_values` (a table's cells that pandas reads as missing:
    `tables.MISSING_VALUES`; compared before stripping, as pandas keeps " NaN").

    Bytes must be UTF-8 (a BOM is dropped); with `caption_fallback_encoding` set, other bytes
    are decoded with it instead of being skipped.
    """
    conversions = []
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            if not options.caption_fallback_encoding:
                raise BadRecord("caption_not_utf8",
                                f"caption is not UTF-8 (byte {raw[error.start]:#04x} at "
                                f"position {error.start})") from error
            text = raw.decode(options.caption_fallback_encoding, errors="replace")
            conversions.append(f"caption_decoded_as_{options.caption_fallback_encoding}")
    else:
        text = raw
    if text and text in missing_values:
        raise BadRecord("empty_caption", f"caption {text!r}, a missing value as pandas reads "
                        "the table")
    text = text.removeprefix("\ufeff")
    # What the tokenizer reads, unchanged but for what it would drop too (so that the stored
    # caption tokenizes as OpenAI's tokenizer tokenizes the raw one): NULs (ftfy deletes
    # them: "a\x00b" is one word) and surrounding ASCII whitespace. Python's wider strip()
    # also took a leading U+0085, which ftfy reads as "…".
    text = text.replace("\x00", "").strip(" \t\n\r\f\v")
    if not text.strip():
        raise BadRecord("empty_caption", "empty caption")
    return text, conversions


def tokenize(captions: Sequence[str]) -> np.ndarray:
    """int32 [N, TOKEN_LENGTH] OpenAI CLIP tokens; the pipeline fits them to any model length."""
    return tokenizer.tokenize(list(captions), TOKEN_LENGTH)


def absolute_path(path: str) -> str:
    """A local path made absolute (URLs such as gs:// and empty strings unchanged): the same
    file typed two ways is one input, and a relative path means one file wherever a run
    starts."""
    return path if not path or "://" in path else os.path.abspath(path)


def absolute_patterns(patterns: str) -> str:
    """`absolute_path` of each comma-separated part of a shard pattern."""
    return ",".join(absolute_path(part.strip()) for part in patterns.split(",") if part.strip())


def fingerprint(path: str, digest: bool) -> dict[str, Any]:
    """Size, modification time and (with `digest`) the SHA-256 of a build input's bytes;
    `{"missing": True}` for a listed input that is not there (a shard the build reported)."""
    import hashlib

    from clip_jax.data._tf import tf

    if not tf.io.gfile.exists(path):
        return {"missing": True}
    if "://" in path:
        stat = tf.io.gfile.stat(path)
        found: dict[str, Any] = {"size": stat.length, "mtime_ns": stat.mtime_nsec}
    else:  # gfile's local stat has whole seconds: a rewrite within a second would not show
        local = os.stat(path)
        found = {"size": local.st_size, "mtime_ns": local.st_mtime_ns}
    if digest:
        sha = hashlib.sha256()
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                sha.update(chunk)
        found["sha256"] = sha.hexdigest()
    return found


def changed_inputs(recorded: dict[str, dict[str, Any]]) -> list[str]:
    """The recorded build inputs that are gone or hold other bytes now.

    A file with its recorded size and modification time is taken as unchanged (as make and
    git do); otherwise a recorded SHA-256 decides, so a copy or checkout that only touched the
    file is not a change. Inputs recorded without a digest (shards) change with either. The
    files are checked `_STAT_THREADS` at a time (thousands of gs:// shards at every start).
    """
    from concurrent import futures

    with futures.ThreadPoolExecutor(_STAT_THREADS) as pool:
        changed = list(pool.map(lambda item: _has_changed(*item), recorded.items()))
    return [path for path, change in zip(recorded, changed) if change]


def _has_changed(path: str, was: dict[str, Any]) -> bool:
    now = fingerprint(path, digest=False)
    if now.get("missing") or was.get("missing"):
        return now.get("missing", False) != was.get("missing", False)  # vanished, or appeared
    if now["size"] != was["size"]:
        return True
    return now["mtime_ns"] != was["mtime_ns"] and (
        "sha256" not in was or fingerprint(path, digest=True)["sha256"] != was["sha256"])


def build_options(builder_config: Any) -> dict[str, Any]:
    """The options a dataset was built from, as JSON-able values (dataclass fields)."""
    return json.loads(json.dumps({
        f.name: getattr(builder_config, f.name) for f in dataclasses.fields(builder_config)
        if f.name not in ("name", "version", "release_notes", "supported_versions",
                          "description", "tags")}, default=dataclasses.asdict))


# Options that set how fast a dataset is built, never what it holds: a dataset built with other
# values is the same dataset (`build_identity`).
THROUGHPUT_OPTIONS = ("num_threads",)


# Limits that decide only whether a build fails, never what it keeps: a dataset built under a
# limit is the dataset any looser limit builds, so raising one reuses it (`clip_jax.data.sources`)
# while lowering one is a different option (the build might have failed under it).
FAILURE_LIMITS = ("clean.max_bad_fraction",)


def build_identity(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`build_options` flattened to dotted keys (`table.image_column`), without
    `THROUGHPUT_OPTIONS`: what must match for a built dataset to be reused."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if key in THROUGHPUT_OPTIONS:
            continue
        if isinstance(value, dict):
            flat.update(build_identity(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def write_build_options(dataset_dir: str, builder_config: Any, inputs: Iterable[str],
                        digest: bool) -> None:
    """Records the build options and the input files' fingerprints (under `INPUTS_KEY`) next
    to the data, so a later run can detect stale reuse (`changed_inputs`). `digest`: hash the
    inputs' bytes (tables; shards, too large to read twice, are recorded by size and time)."""
    from clip_jax.data._tf import tf

    options = build_options(builder_config)
    options[INPUTS_KEY] = {path: fingerprint(path, digest) for path in inputs}
    with tf.io.gfile.GFile(os.path.join(dataset_dir, BUILD_OPTIONS_FILE), "w") as f:
        json.dump(options, f, indent=1, sort_keys=True)


def module_code_path(cls: type) -> Any:
    """A builder's source file, for TFDS's `code_path` (where it looks for checksums).

    TFDS finds it through `importlib_resources`, which it only installs on Python < 3.9, so
    the lookup fails for any builder outside its own package; this is the path it would find.
    """
    from etils import epath

    return epath.Path(inspect.getfile(cls))


def image_text_features(extra: dict[str, Any] | None = None) -> Any:
    """The schema shared by the image-text builders (TFDS FeaturesDict)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "tokens": tfds.features.Tensor(shape=(None, TOKEN_LENGTH), dtype=np.int32),
        "key": tfds.features.Text(),
        **(extra or {}),
    })


# The fix for a build whose most common skip reason is this one (else: check the paths
# and the column / extension names).
FIXES = {
    "caption_not_utf8": "The captions are not UTF-8: save the table as UTF-8, or name the "
                        "encoding it was saved in with data.build.caption_fallback_encoding "
                        "(e.g. 'cp1252' for Windows Excel, 'latin-1')",
}


class BuildReport:
    """Counts of kept, converted and skipped records of one split, written as JSON."""

    def __init__(self, split: str, options: CleanOptions):
        self.split = split
        self.options = options
        self.total = 0
        self.kept = 0
        self.skipped_by_reason: collections.Counter[str] = collections.Counter()
        self.skipped: list[dict[str, str]] = []
        self.converted_by_kind: collections.Counter[str] = collections.Counter()
        self.converted_examples: dict[str, list[str]] = collections.defaultdict(list)
        self.bad_sources: list[dict[str, Any]] = []
        self.sources: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.fix = ""

    def source_lines(self, accounting: dict[str, Any]) -> None:
        """How a source file's physical lines were used (header, blank, in records), so that
        every line of a table is accounted for next to the per-record counts."""
        self.sources.append(dict(accounting))

    def keep(self, key: str, conversions: Iterable[str]) -> None:
        self.total += 1
        self.kept += 1
        for kind in conversions:
            self.converted_by_kind[kind] += 1
            if len(self.converted_examples[kind]) < _EXAMPLE_KEYS:
                self.converted_examples[kind].append(key)

    def skip(self, key: str, error: BadRecord) -> None:
        self.total += 1
        self.skipped_by_reason[error.reason] += 1
        if len(self.skipped) < _LISTED_KEYS:
            self.skipped.append({"key": key, "reason": error.reason, "detail": str(error)})

    def note(self, text: str, *, fix: bool = False) -> None:
        """A one-line finding about the split as a whole that is not a skipped record (e.g.
        one image on several rows), for `bad_records.json`; every run that opens the dataset
        warns with it (`clip_jax.data.sources`), the run that built it included. With `fix`,
        the finding names the likely cause of the skipped records (a table read with the
        wrong quoting), so it is also the advice of `finish`'s error instead of `FIXES`'."""
        self.notes.append(text)
        if fix:
            self.fix = text

    def bad_source(self, source: str, detail: str, records_read: int) -> None:
        """A whole file (tar shard, CSV) that failed part-way or entirely: never silent."""
        log.warning("%s: %s (after %d records)", source, detail, records_read)
        self.bad_sources.append({"source": source, "detail": detail,
                                 "records_read": records_read})

    def summary(self) -> dict[str, Any]:
        skipped = self.total - self.kept
        return {
            "total": self.total, "kept": self.kept, "skipped": skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "skipped_records": self.skipped,
            "skipped_records_listed": f"{len(self.skipped)} of {skipped}",
            "converted_by_kind": dict(sorted(self.converted_by_kind.items())),
            "converted_examples": dict(sorted(self.converted_examples.items())),
            "bad_sources": self.bad_sources,
            **({"sources": self.sources} if self.sources else {}),
            **({"notes": self.notes} if self.notes else {}),
        }

    def finish(self, dataset_dir: str) -> None:
        """Logs the summary, merges it into `bad_records.json`, enforces `max_bad_fraction` (of
        the records, `MEMBER_REASONS` aside)."""
        from clip_jax.data._tf import tf

        summary = self.summary()
        log.info("%s: kept %d of %d records; skipped %s; converted %s", self.split, self.kept,
                 self.total, summary["skipped_by_reason"], summary["converted_by_kind"])
        path = os.path.join(dataset_dir, REPORT_FILE)
        report = {}
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                report = json.load(f)
        report[self.split] = summary
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(report, f, indent=1)
        members = sum(self.skipped_by_reason[reason] for reason in MEMBER_REASONS)
        records_read, bad = self.total - members, self.total - self.kept - members
        if records_read == 0 or bad > self.options.max_bad_fraction * records_read:
            examples = [s for s in self.skipped if s["reason"] not in MEMBER_REASONS][:3]
            first = "; ".join(f"{s['key']}: {s['detail']}" for s in examples)
            common = max((r for r in self.skipped_by_reason if r not in MEMBER_REASONS),
                         key=self.skipped_by_reason.__getitem__, default="")
            advice = self.fix or FIXES.get(common, "Check the paths and column / extension names")
            aside = {r: n for r, n in summary["skipped_by_reason"].items() if r in MEMBER_REASONS}
            if records_read == 0:  # no limit would keep anything: the data itself is missing
                raise ConfigError(f"Split {self.split!r}: no records found"
                                  f"{f' (only {aside})' if aside else ''}. {advice}.")
            counted = {r: n for r, n in summary["skipped_by_reason"].items() if r not in aside}
            raise ConfigError(
                f"Split {self.split!r}: {bad} of {records_read} records are unusable "
                f"({counted}{f'; also skipped, not counted as records: {aside}' if aside else ''}"
                f"; e.g. {first}). "
                f"{advice}, or raise data.build.max_bad_fraction (now "
                f"{self.options.max_bad_fraction}) if this is expected.")
