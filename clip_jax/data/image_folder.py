"""Streaming image-folder reader: find images (optionally recursively), decode and preprocess
them in fixed-size batches on a few threads, and skip unreadable files with a reason.

Used by `clip-jax zero-shot` and `clip-jax index` (and their Python counterparts), so that a
folder of any size is read with bounded memory (one batch being decoded, one being embedded)
and one broken file costs one line in a report instead of the run.

Order is deterministic: inputs in the order given, each folder's images sorted by their path
components relative to that folder (so a subfolder's images stay together).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from clip_jax.errors import MissingFileError, UnreadableImageError
from clip_jax.models.config import CLIPConfig
from clip_jax.data.preprocess import (DECODE_ERRORS, IMAGE_EXTENSIONS, decode_reason,
                                      preprocess_pixels, undecodable_format)

log = logging.getLogger(__name__)
@dataclasses.dataclass(frozen=True)
class SkippedImage:
    """A file that was not embedded, and why (one line)."""

    path: str
    reason: str


@dataclasses.dataclass
class ImageBatch:
    """`images` uint8 [n, S, S, 3] (resized and cropped, `preprocess_pixels`: the model
    normalises them on the device) for `paths` [n]; the files of this batch that failed to
    decode are in `skipped`."""

    paths: list[str]
    images: np.ndarray
    skipped: list[SkippedImage]


def find_images(inputs: Sequence[str], recursive: bool = False) -> tuple[list[str], int]:
    """(image paths, number of other files ignored) for files and folders.

    A file given explicitly is kept whatever its extension; a folder contributes its files
    with an image extension (`IMAGE_EXTENSIONS`, case-insensitive), with `recursive` those of
    every subfolder too (symlinked folders followed, as torchvision's `ImageFolder` follows
    them, each real folder entered once: `walk_once`); without it, a warning names the
    subfolders left out. Hidden files in a folder (`.DS_Store`, a Mac's `._photo.jpg` beside
    every photo) are ignored and hidden folders (`.git`) not searched, as the eval reader
    (`clip_jax.data.labelled`) leaves them out. The count returned is of the files ignored.
    Raises FileNotFoundError for a missing input or a folder without images.
    """
    check_inputs(inputs)
    paths, ignored = [], 0
    for item in inputs:
        if os.path.isdir(item):
            found, other = _folder_images(item, recursive)
            if not found:
                deep = "" if recursive else " (pass --recursive / recursive=True for subfolders)"
                raise MissingFileError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                                       f"folder {item!r}{deep}.")
            paths += found
            ignored += other
        else:
            paths.append(item)
    return paths, ignored


def check_inputs(inputs: Sequence[str]) -> None:
    """MissingFileError naming the first input that is neither a file nor a folder: the
    cheap check a command makes before loading a model (`find_images` walks the folders)."""
    for item in inputs:
        if not (os.path.isdir(item) or os.path.isfile(item)):
            raise MissingFileError(f"No image file or folder at {item!r}.")


def walk_once(top: str, revisits: list[str],
              walk: Callable[[str], Iterable[tuple[str, list[str], list[str]]]] = functools.partial(
                  os.walk, followlinks=True), seen: set[str] | None = None
              ) -> Iterator[tuple[str, list[str], list[str]]]:
    """`walk`'s top-down (folder, subfolders, files), following symlinked folders, with every
    subfolder pruned before it is yielded, and appended to `revisits` for the caller to
    report, whose real path was already entered (a second link to a folder would repeat its
    images), is a folder under `top` that the walk reaches without links (a link to it is
    pruned, whichever sorts first, so files keep their own paths), or holds the folder being
    walked (a link to an ancestor, above `top` too: it would loop forever, or walk the classes
    beside a class folder under that class). `walk`: `os.walk` with links followed, or
    `tf.io.gfile.walk` (which follows them; `gs://` paths have none). `seen`: real paths
    entered or owned elsewhere (other class folders of one image folder), updated."""
    top_real = real_path(top)
    seen = set() if seen is None else seen
    seen.add(top_real)
    for root, dirs, files in walk(top):
        keep, here = [], real_path(root)
        for name in sorted(dirs):  # the first of two paths to a folder is kept, every time
            path = os.path.join(root, name.rstrip("/"))
            target = real_path(path)
            linked_own = os.path.islink(path) and _reached_without_links(target, top_real)
            if target in seen or linked_own or here.startswith(target.rstrip("/") + "/"):
                revisits.append(path)
            else:
                seen.add(target)
                keep.append(name)
        dirs[:] = keep
        yield root, dirs, files


def real_path(path: str) -> str:
    """A local path with its links resolved; a `scheme://` path as it is (no links)."""
    return path if "://" in path else os.path.realpath(path)


def _reached_without_links(target: str, top: str) -> bool:
    """Whether the walk of real folder `top` reaches real folder `target` without a link:
    `target` lies under `top` through no hidden folder (both readers leave those out). A real
    path has no link in it, so being under `top` is the whole test: no second walk needed."""
    rel = os.path.relpath(target, top)
    parts = rel.split(os.sep)
    return rel != os.curdir and parts[0] != os.pardir and not any(
        p.startswith(".") for p in parts)


def first_few(names: Sequence[str]) -> str:
    """'a, b, c, ...': the first three of `names`, for a warning that counts them all."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def warn_revisits(folder: str, revisits: list[str]) -> None:
    """One warning naming the folders `walk_once` did not enter again."""
    if revisits:
        log.warning("%s: %d linked folder(s) not searched: each leads to a folder searched "
                    "under another path or to one above it (a second link, a loop): %s",
                    folder, len(revisits), first_few(revisits))


def _folder_images(folder: str, recursive: bool) -> tuple[list[str], int]:
    relative, ignored, revisits, hidden, other = [], 0, [], [], []
    for root, dirs, files in walk_once(folder, revisits):
        hidden += [os.path.join(root, d) for d in dirs if d.startswith(".")]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if not recursive:
            unsearched = list(dirs)  # hidden ones are out already
            if unsearched:
                log.warning("%s: %d subfolder(s) not searched (%s); pass --recursive "
                            "(recursive=True) to include them", folder, len(unsearched),
                            first_few(sorted(unsearched)))
            dirs.clear()
        for name in files:
            path = os.path.join(root, name)
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                relative.append(os.path.relpath(path, folder))
            else:
                ignored += 1
                if not name.startswith("."):  # hidden ones are the OS's (.DS_Store, ._x.jpg)
                    other.append(os.path.relpath(path, folder))
    warn_revisits(folder, revisits)
    other.sort(key=lambda rel: rel.split(os.sep))
    reasons = [undecodable_format(rel) for rel in other]
    photos = [rel for rel, reason in zip(other, reasons) if reason]
    if photos:
        log.warning("%s: %d photo(s) ignored (%s): %s", folder, len(photos), first_few(photos),
                    next(filter(None, reasons)))
    other = [rel for rel, reason in zip(other, reasons) if not reason]
    if other:
        log.warning("%s: %d file(s) without an image extension ignored (%s); give a file "
                    "explicitly to read it whatever its name", folder, len(other),
                    first_few(other))
    if hidden and recursive:
        log.warning("%s: %d hidden folder(s) not searched (%s)", folder, len(hidden),
                    first_few(hidden))
    relative.sort(key=lambda rel: rel.split(os.sep))
    return [os.path.join(folder, rel) for rel in relative], ignored


def read_image(path: str, config: CLIPConfig, **image_options) -> np.ndarray | SkippedImage:
    """uint8 [S, S, 3] model input for one file (`preprocess_pixels`), or why it cannot be
    read; `image_options` are `clip_jax.data.preprocess`'s (`exif_transpose`, `alpha`)."""
    return _attempt(path, lambda: preprocess_pixels(path, config, **image_options)[0])


def check_image(path: str) -> SkippedImage | None:
    """Why `path` cannot be decoded (`read_image`'s reasons), or None: the check a command
    makes on a query image before it loads a model."""

    def decode() -> None:
        with Image.open(path) as image:
            image.load()

    failed = _attempt(path, decode)
    return failed if isinstance(failed, SkippedImage) else None


def _attempt(path: str, read: Callable[[], Any]) -> Any:
    """`read()`, or the SkippedImage saying why `path` could not be read."""
    try:
        if not os.path.isfile(path):
            return SkippedImage(path, "a folder, not an image file" if os.path.isdir(path)
                                else "a broken link" if os.path.islink(path) else "no such file")
        if os.path.getsize(path) == 0:
            return SkippedImage(path, "empty file (0 bytes)")
        return read()
    except UnreadableImageError as error:  # `preprocess` said why, in these words
        return SkippedImage(path, error.reason)
    except Image.UnidentifiedImageError:
        with open(path, "rb") as f:
            head = f.read(12)
        return SkippedImage(path, undecodable_format(path, head)
                            or "not an image PIL can identify")
    except DECODE_ERRORS as error:
        return SkippedImage(path, f"cannot decode: {decode_reason(error)}")


def iter_batches(paths: Sequence[str], config: CLIPConfig, batch_size: int = 64,
                 workers: int | None = None, **image_options) -> Iterator[ImageBatch]:
    """Batches of up to `batch_size` readable images of `paths`, in order.

    `workers` threads decode and resize (Pillow and NumPy release the GIL); the next batch is
    decoded while the caller works on the current one, so at most two batches are in memory.
    A batch may hold fewer images than `batch_size` (skipped files, the last batch) and even
    none, when every file of its slice failed; its `skipped` says which and why.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    workers = workers or min(8, os.cpu_count() or 1)
    shape = (config.image_size, config.image_size, 3)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        def submit(start: int) -> list[concurrent.futures.Future]:
            return [pool.submit(read_image, p, config, **image_options) for p in paths[start:start + batch_size]]

        pending = submit(0)
        for start in range(0, len(paths), batch_size):
            current, pending = pending, submit(start + batch_size)
            results = [f.result() for f in current]
            batch_paths = paths[start:start + batch_size]
            good = [(p, r) for p, r in zip(batch_paths, results) if not isinstance(r, SkippedImage)]
            images = np.stack([r for _, r in good]) if good else np.zeros((0, *shape), np.uint8)
            yield ImageBatch([p for p, _ in good], images,
                             [r for r in results if isinstance(r, SkippedImage)])
