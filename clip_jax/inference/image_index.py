"""Image search: embed a folder into an index file, then rank its images for a text or image.

`build_index` streams a folder through `clip_jax.data.image_folder` (recursive, batched, bad files
skipped with a reason) and the model's image tower, and writes one `.npz` file: L2-normalised
float32 embeddings [N, E], the image paths, each file's size and mtime, and a JSON header
(model fingerprint, skipped files). It is resumable: finished batches are saved every
`save_every` images, and at an interruption (KeyboardInterrupt: Ctrl-C, or SIGTERM as the CLI
maps it), to `<output>.partial/`, and a rerun (after an interruption, or on a folder
that grew) re-embeds only files not already in the partial parts or the previous index, with the
same model, image options (`recorded_image_options`), size and mtime.

Search is exact: cosine similarity against every embedding (one matrix product) and top-k with
ties to the lower index. `benchmarks/image_search.py` compared it with faiss (exact flat index)
and hnswlib (HNSW graph) at 500k x 512: exact NumPy search took 0.55 s for one query and 66 ms
per query in a batch of 64, faiss's flat index was no faster, and HNSW answered in 0.9 ms but
needed an estimated 54 min to build with recall@10 of 0.18 on random vectors (2 shared CPU
cores under heavy load). An interactive search is dominated by loading the model, so exact
search stays and no approximate-search dependency is added.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.inference.encoder import Encoder
from clip_jax.data.image_folder import IMAGE_EXTENSIONS, SkippedImage, find_images, iter_batches
from clip_jax.data.preprocess import (ALPHA_DROP, ImageLike, background_colour, image_list,
                                      is_array, preprocess_pixels)
from clip_jax.runtime.folders import check_writable_dir
from clip_jax.runtime.logs import rate_and_left, steady_rate

FORMAT = "clip_jax.inference.image_index/1"
_SCORE_BLOCK = 1 << 26  # query x image scores computed at once (256 MB of float32)
# How far below the k-th float32 score a row may be and still belong above it exactly: many
# times the float32 rounding of a dot product of unit vectors.
_NOISE = 64 * float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class Match:
    """One search result: the image path and its cosine similarity to the query."""

    path: str
    score: float


@dataclasses.dataclass
class ImageIndex:
    """L2-normalised image embeddings [N, E] float32 with their `paths` [N].

    `sizes` / `mtimes` (int64 [N], bytes and st_mtime_ns) let a rebuild reuse unchanged files;
    `meta` holds the model fingerprint, the skipped files and how the index was built.
    """

    embeddings: np.ndarray
    paths: list[str]
    sizes: np.ndarray | None = None
    mtimes: np.ndarray | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageIndex:
        """Read an index file; FileNotFoundError / ValueError (one line) if it is not one."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise MissingFileError(f"No index file at {path!r}; build one with "
                                   "`clip-jax index IMAGES --model M --output INDEX`.")
        rebuild = "rebuild it with `clip-jax index`"
        if not zipfile.is_zipfile(path):  # np.load would try a pickle and say so
            raise ConfigError(f"{path!r} is not a clip_jax image index (not an .npz archive); "
                              f"pass the file `clip-jax index` wrote, or {rebuild}.")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                if meta.get("format") != FORMAT:
                    raise ConfigError(f"format {meta.get('format')!r}")
                return cls(np.asarray(data["embeddings"], np.float32), _decode(data["paths"]),
                           data["sizes"], data["mtimes"], meta)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ConfigError(f"{path!r} is not a clip_jax image index ({error}); "
                              f"{rebuild}.") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically (a temporary file renamed over `path`)."""
        _save_npz(os.fspath(path), embeddings=self.embeddings.astype(np.float32), paths=_encode(self.paths),
                  sizes=_or_zeros(self.sizes, len(self)), mtimes=_or_zeros(self.mtimes, len(self)),
                  meta=np.frombuffer(json.dumps({**self.meta, "format": FORMAT}).encode(),
                                     np.uint8))

    def top_k(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine top-k: (scores float32 [Q, k'], indices int64 [Q, k']), k' = min(k, N).

        `queries` [E] or [Q, E] are embeddings (`Encoder.embed_texts` / `embed_images`, or
        another library's unnormalised features); each row is L2-normalised here, so scores
        are cosine similarities. Rows are sorted by decreasing score, equal scores by lower
        index. Raises ConfigError when the queries' width differs from the index's (another
        model), ValueError for `k` < 1 (`check_k`) and for a query holding NaN or Inf or all
        zeros (no direction to rank by).
        """
        check_k(k)
        queries = unit_rows(queries)
        if queries.shape[1] != self.embeddings.shape[1]:
            name = self.meta.get("model")  # "" for an index built from Python without one
            raise ConfigError(f"Queries have {queries.shape[1]}-d embeddings, the index "
                             f"{self.embeddings.shape[1]}-d: search with the index's model"
                             f"{f' ({name})' if name else ''}.")
        k = min(k, len(self))
        scores, indices = np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k),
                                                                              np.int64)
        rows = max(1, _SCORE_BLOCK // max(len(self), 1))
        for start in range(0, len(queries), rows):
            block = queries[start:start + rows] @ self.embeddings.T
            for r, row in enumerate(block, start):
                indices[r], scores[r] = _top_k_row(row, k, queries[r], self.embeddings)
        return scores, indices

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Match]]:
        """`top_k` as `Match(path, score)` lists, one per query."""
        scores, indices = self.top_k(queries, k)
        return [[Match(self.paths[i], float(s)) for s, i in zip(srow, irow)]
                for srow, irow in zip(scores, indices)]


def _top_k_row(row: np.ndarray, k: int, query: np.ndarray, embeddings: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the k best of `row` = `embeddings @ query` [N], ties to the lower
    index.

    A matrix product's float32 scores of two identical rows can differ in their last bits by
    where its blocking puts them (a duplicate photo ranked before its first copy in 45 of 200
    batched queries, trial AD). So the rows within float32 noise of the k-th score are scored
    again, each as the same float64 sum over its own elements, and rounded to float32:
    identical rows then score alike wherever they are. That sum is divided by both vectors'
    float64 norms, so a score is a cosine, at most 1: float32 unit vectors are unit only to
    their rounding, and an image searched by itself scored 1.0000001 (trial BI).
    """
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    kth = np.partition(row, len(row) - k)[len(row) - k]
    candidates = np.flatnonzero(row >= kth - _NOISE * max(1.0, abs(float(kth))))
    rows, unit = embeddings[candidates].astype(np.float64), query.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(unit)
    exact = ((rows * unit).sum(axis=1) / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    order = np.lexsort((candidates, -exact))[:k]
    return candidates[order], exact[order]


@dataclasses.dataclass
class BuildReport:
    """What `build_index` did: the index, images embedded now and reused, files skipped (with
    reasons), files ignored (no image extension, or hidden: `find_images`), files named
    again by overlapping inputs (indexed once), and files of the previous index (or of an
    unfinished one) that these inputs no longer reach (`dropped`)."""

    index: ImageIndex = dataclasses.field(repr=False)
    embedded: int
    reused: int
    skipped: list[SkippedImage]
    ignored: int
    duplicates: int = 0
    dropped: int = 0

    def summary(self, output: str) -> str:
        again = (f"; {self.duplicates} file(s) reached by more than one input or link, indexed "
                 "once"
                 if self.duplicates else "")
        gone = (f"; {self.dropped} file(s) of the previous index left out (deleted, or not "
                "under these inputs)" if self.dropped else "")
        return (f"Indexed {len(self.index)} images into {output} ({self.embedded} embedded, "
                f"{self.reused} reused); skipped {len(self.skipped)} unreadable file(s); "
                f"ignored {self.ignored} other file(s) (hidden, or named in a warning above)"
                f"{again}{gone}.")


def model_fingerprint(encoder: Encoder) -> str:
    """A short hash of the architecture and of the first values of every weight: an index is
    only extended, and searched, with embeddings of the same model."""
    digest = hashlib.sha256(json.dumps(encoder.module.config.to_dict(), sort_keys=True,
                                       default=str).encode())
    leaves = jax.tree_util.tree_flatten_with_path(encoder.variables)[0]
    for key, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        # A view of a host array (`clip_jax.load`'s): `search` computes this for every query.
        flat = leaf.reshape(-1) if isinstance(leaf, np.ndarray) else jnp.ravel(leaf)
        head = np.asarray(flat[:1024], np.float32)
        digest.update(jax.tree_util.keystr(key).encode() + str(np.shape(leaf)).encode()
                      + head.tobytes())
    return digest.hexdigest()[:16]


# What an index written before image options were recorded was read with (the defaults then).
_DEFAULT_IMAGE_OPTIONS = {"exif_transpose": True, "alpha": ALPHA_DROP}


def image_options_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The image options an index's (or a partial build's) header records; an index written
    before they were recorded was read with the defaults."""
    return meta.get("image_options", _DEFAULT_IMAGE_OPTIONS)


def recorded_image_options(encoder: Encoder) -> dict[str, Any]:
    """The encoder's image options as an index records them (JSON): `exif_transpose` and
    `alpha`, "drop" or the [r, g, b] background, however it was spelled ('white', '#fff').
    Embeddings made with other options differ (transparent areas, rotated photos), so a
    rebuild reuses only those made with equal options, and `clip-jax search --image` reads
    its query with them."""
    colour = background_colour(encoder.image_options["alpha"])
    return {"exif_transpose": bool(encoder.image_options["exif_transpose"]),
            "alpha": list(colour) if colour else ALPHA_DROP}


def build_index(images: str | os.PathLike | Sequence[str | os.PathLike], encoder: Encoder,
                output: str | os.PathLike, *, recursive: bool = True, batch_size: int = 64,
                save_every: int = 4096, model_name: str = "", progress: bool = True,
                model_options: Mapping[str, Any] | None = None) -> BuildReport:
    """Embed the images of `images` (files and folders; one path is one input) into the index
    file `output`.

    `model_name` and `model_options` (the `clip_jax.load` keywords it was read with, e.g.
    `ema`) are recorded for `clip-jax search` to load the same model. Paths are stored
    absolute, in `find_images` order, each file once however many inputs or links reach it
    (the file's own path where one of them is, with no link on the way, else the first path
    to it; `BuildReport.duplicates` counts the repeats). Resumable:
    see the module docstring. Raises ValueError when `<output>.partial/` was written with
    another model (delete it or choose another output) or `output` is a file other than an
    index (`check_output`) or `images` is an empty list, FileNotFoundError for missing inputs
    or folders without images,
    ConfigError (nothing written) when none of the images found can be read.
    Single-host: the model runs on one process's devices.
    """
    images = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not images:
        raise ValueError("build_index got no images to index (an empty list); pass image "
                         "files or folders.")
    images, output = [os.fspath(i) for i in images], os.fspath(output)
    check_output(output)
    found, ignored = find_images(images, recursive)
    chosen: dict[str, str] = {}  # real file -> its own path, else the first path to reach it
    for p in found:
        real, path = os.path.realpath(p), os.path.abspath(p)
        if real not in chosen or path == real:
            chosen[real] = path
    paths = list(chosen.values())
    fingerprint, options = model_fingerprint(encoder), recorded_image_options(encoder)
    partial = output + ".partial"
    known, previous_paths = _reusable(output, partial, fingerprint, options, model_name)
    stats = {p: _stat(p) for p in paths}
    done = {p: known[p][0] for p in paths if p in known and known[p][1] == stats[p]}
    todo = [p for p in paths if p not in done]
    os.makedirs(partial, exist_ok=True)
    state = os.path.join(partial, "model.json")
    record = {"fingerprint": fingerprint, "model": model_name, "image_options": options}
    _write_atomically(state, lambda f: f.write(json.dumps(record).encode()))

    skipped: list[SkippedImage] = []
    pending_paths, pending = [], []
    part = len(glob.glob(os.path.join(partial, "part-*.npz")))
    # A terminal gets a bar; a log file one line per save (each redraw would be a line there).
    lines = progress and bool(todo) and not sys.stderr.isatty()
    bar = tqdm(total=len(todo), unit="file", disable=not progress or not todo or lines,
               file=sys.stderr, dynamic_ncols=True, desc="index")
    read, first = 0, None

    def flush() -> None:
        nonlocal part, pending_paths, pending
        if pending_paths:
            _save_npz(os.path.join(partial, f"part-{part:06d}.npz"),
                      embeddings=np.concatenate(pending), paths=_encode(pending_paths),
                      stats=np.asarray([stats[p] for p in pending_paths], np.int64))
            part += 1
            for p, e in zip(pending_paths, np.concatenate(pending)):
                done[p] = e
            if lines:
                rate = steady_rate(read, time.monotonic(), first)
                print(_progress_line(read, len(todo), rate), file=sys.stderr, flush=True)
        pending_paths, pending = [], []

    try:
        for batch in iter_batches(todo, encoder.module.config, batch_size,
                                  **encoder.image_options):
            skipped += batch.skipped
            if batch.paths:
                pending.append(encoder.embed_pixels(batch.images))
                pending_paths += batch.paths
            bar.update(len(batch.paths) + len(batch.skipped))
            read += len(batch.paths) + len(batch.skipped)
            first = first or (read, time.monotonic())
            if len(pending_paths) >= save_every:
                flush()
    except KeyboardInterrupt:  # Ctrl-C or a scheduler's stop: keep what was embedded so far
        flush()
        raise
    flush()
    bar.close()

    kept = [p for p in paths if p in done]
    if not kept:  # an index of nothing would make every search answer nothing, silently
        shutil.rmtree(partial)
        reasons = "; ".join(f"{os.path.basename(s.path)}: {s.reason}" for s in skipped[:3])
        raise ConfigError(f"None of the {len(paths)} image file(s) could be read ({reasons}"
                          f"{'; ...' if len(skipped) > 3 else ''}); no index written to "
                          f"{output}.")
    dim = encoder.module.config.embed_dim
    index = ImageIndex(
        np.stack([done[p] for p in kept]), kept,
        np.asarray([stats[p][0] for p in kept], np.int64),
        np.asarray([stats[p][1] for p in kept], np.int64),
        {"model": model_name, "model_options": dict(model_options or {}),
         "fingerprint": fingerprint, "image_options": options, "embed_dim": dim,
         "inputs": [os.path.abspath(i) for i in images], "recursive": recursive,
         "ignored": ignored, "skipped": [dataclasses.asdict(s) for s in skipped]})
    index.save(output)
    shutil.rmtree(partial)
    return BuildReport(index, len(kept) - (len(paths) - len(todo)), len(paths) - len(todo),
                       skipped, ignored, len(found) - len(paths),
                       len((set(known) | set(previous_paths)) - set(paths)))


def _progress_line(read: int, total: int, rate: float | None) -> str:
    """'index: 4096/10000 files read (41.0 files/s, 2m24s to go), saved': a log file's
    progress at `rate` files per second (None: not known yet, `steady_rate`; files: the
    unreadable ones, skipped, count as read)."""
    return f"index: {read}/{total} files read{rate_and_left(read, total, rate, 'files')}, saved"


def check_output(output: str | os.PathLike) -> None:
    """ConfigError unless `output` is new or an image index (whose embeddings are reused or,
    of another model, replaced): a typo must not replace a photo or a folder with an index,
    and a path naming a folder (`newidx/`, `.`) is no file name (every image was embedded,
    then the save failed). A missing folder above it is created. Cheap: `clip-jax index`
    checks it before loading the model."""
    output = os.fspath(output)
    given = f"The index file {output!r} (--output)"  # a flag, or build_index's argument
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    if output.endswith(separators) or os.path.basename(output) in ("", ".", ".."):
        example = os.path.join(output.rstrip("".join(separators)) or os.sep, "images.npz")
        raise ConfigError(f"{given} names a folder, not a file; pass the index file to "
                          f"write, e.g. {example!r} (its folder is created if missing).")
    above = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ConfigError(f"{given} lies under {above!r}, which is a file; pass a path in a "
                          "folder.")
    if os.path.isdir(output):
        raise ConfigError(f"{given} is a folder; pass the index file to write (e.g. "
                          "images.npz).")
    # Its folder takes the file and the unfinished parts beside it (a PermissionError
    # traceback after the model loaded, trial BA).
    check_writable_dir(os.path.dirname(os.path.abspath(output)), "The index file's folder")
    if os.path.exists(output):
        try:
            ImageIndex.load(output)
        except ValueError:
            raise ConfigError(f"{given} exists and is not a clip_jax image index, so it is "
                              "not overwritten; pass a new file name (e.g. images.npz) or "
                              "delete it first.") from None


def _reusable(output: str, partial: str, fingerprint: str, options: dict[str, Any],
              model_name: str = "") -> tuple[dict[str, tuple[np.ndarray, tuple]], list[str]]:
    """path -> (embedding, (size, mtime)) from a previous index and unfinished parts of this
    model and image options, and the previous index's paths (reused or not: those not given
    now are left out, and counted); a partial folder of others is refused, a previous index
    of others is not reused (the images given are embedded again, as a note says)."""
    known, previous_paths = {}, []
    if os.path.isfile(output):  # an index (`check_output`)
        old = ImageIndex.load(output)
        previous_paths = list(old.paths)
        before = image_options_of(old.meta)
        if old.meta.get("fingerprint") == fingerprint and before == options:
            for p, e, s, m in zip(old.paths, old.embeddings, old.sizes, old.mtimes):
                known[p] = (e, (int(s), int(m)))
        else:
            named = old.meta.get("model")
            other = ((f"other weights at the same path ({named})" if named and named == model_name
                      else f"another model ({named or old.meta.get('fingerprint')})")
                     if old.meta.get("fingerprint") != fingerprint else
                     f"other image options ({_describe(before)}, now {_describe(options)})")
            print(f"note: the index {output} was built with {other}, so none of its "
                  f"{len(old.paths)} embeddings is reused: the images given are embedded "
                  "again.", file=sys.stderr)
    state = os.path.join(partial, "model.json")
    previous = None
    if os.path.isfile(state):
        try:
            with open(state, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError) as error:  # an older build's, cut short by a full disk
            stale = glob.glob(os.path.join(partial, "part-*.npz"))
            for name in stale:  # of a model no file says: never to be read as this one's
                os.remove(name)
            print(f"warning: skipping the unreadable progress file {state} "
                  f"({type(error).__name__}: {error}); the {len(stale)} unfinished part(s) "
                  "beside it, of a model it no longer names, are removed and their images "
                  "embedded again.", file=sys.stderr)
            return known, previous_paths
    if previous is not None:
        if previous.get("fingerprint") != fingerprint:
            named = (previous.get("model") or previous.get("fingerprint")
                     or "its model.json names none")  # "(None)" of an empty record
            raise ConfigError(f"{partial!r} holds an unfinished index of another model "
                             f"({named}); delete "
                             "it or choose another index file (--output).")
        if (before := image_options_of(previous)) != options:
            raise ConfigError(f"{partial!r} holds an unfinished index read with other image "
                              f"options ({_describe(before)}, now {_describe(options)}); rerun "
                              "with those, or delete it or choose another index file (--output).")
    for name in sorted(glob.glob(os.path.join(partial, "part-*.npz"))):
        try:
            with np.load(name, allow_pickle=False) as data:
                part = list(zip(_decode(data["paths"]), data["embeddings"], data["stats"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            # Parts are renamed into place whole; a damaged one was damaged afterwards.
            # numpy's reason for a file that is no .npz advises loading it with pickles on
            why = ("not a NumPy .npz file" if "allow_pickle" in str(error)
                   else f"{type(error).__name__}: {error}")
            print(f"warning: skipping the unreadable progress file {name} ({why}); its images "
                  "are embedded again.", file=sys.stderr)
            continue
        for p, e, s in part:
            known[p] = (e, (int(s[0]), int(s[1])))
    return known, previous_paths


def search(index: ImageIndex, query: str | ImageLike | np.ndarray, encoder: Encoder,
           k: int = 10, warn_image_name: bool = True) -> list[Match]:
    """Top-k images of `index` for one query: a text (`str`, tokenized by the encoder's
    `tokenizer`), an image (`pathlib.Path` or other path-like, PIL image, uint8 array [H, W]
    or [H, W, C], or one such image in a batch of one) or a float embedding [E] or [1, E]
    (NumPy or JAX; L2-normalised here, so scores are cosine similarities); at most k `Match`es,
    best first. Several queries go through `index.top_k` / `index.search`, which take
    embeddings [Q, E] (`encoder.embed_texts([...])`, `encoder.embed_images([...])`).

    A `str` is always a text: one naming an existing image file is searched as text with a
    warning saying how to search by the image (`warn_image_name=False` for a caller that
    says so in its own terms, as `clip-jax search` does with `--image`). A text or image
    query is embedded by `encoder`, which must hold the model the index was built with (compared by
    `model_fingerprint` when the index records one: another model's scores are meaningless); an
    image query is read with the image options the index records (`recorded_image_options`:
    EXIF rotation, alpha), as its images were, whatever the encoder's.
    Raises, before anything is embedded: TypeError for anything that is not one query (a
    list of texts would be read as one image), ValueError for `k` < 1, for an empty text (or
    one of spaces alone), for several embeddings
    or images (only the first would be ranked), for a 1-D array that is not float (an
    embedding of ints, read as an image before), for an embedding holding NaN or Inf or all
    zeros (no direction to rank by), and ConfigError for another model than the index's. Then
    ConfigError for an image that cannot be read (the file and the reason) or an embedding
    of another width than the index's.
    """
    check_k(k)
    if isinstance(query, (np.ndarray, jax.Array)) and jnp.issubdtype(query.dtype, jnp.floating):
        embedding = np.asarray(query)
        if embedding.ndim != 1 and embedding.shape[:-1] != (1,):
            raise ValueError(f"search takes one query embedding, [E] or [1, E], got shape "
                             f"{embedding.shape} (image arrays are uint8); for several queries "
                             "use index.top_k(embeddings, k), which ranks each row of [Q, E].")
        return index.search(embedding.reshape(-1), k)[0]
    if is_array(query) and np.ndim(query) == 1:  # no image has one axis: an embedding of ints
        raise ValueError(f"search got a 1-D {np.asarray(query).dtype} array of "
                         f"{np.shape(query)[0]}: an embedding query is float, [E] or [1, E] "
                         "(.astype(np.float32)); image arrays are uint8 [H, W] or [H, W, C].")
    if not isinstance(query, (str, os.PathLike, Image.Image)) and not is_array(query):
        raise TypeError(f"search takes one query, a str (text), a pathlib.Path, a PIL image, an "
                        f"image array or an embedding, got a {type(query).__name__}; for "
                        "several texts use index.top_k(encoder.embed_texts([...]), k).")
    if isinstance(query, str) and not query.strip():  # "" ranked the index by nothing said
        raise ValueError("The text query is empty; give the words to search for.")
    images = None if isinstance(query, str) else image_list(query)
    if images is not None and len(images) != 1:
        raise ValueError(f"search takes one image, got an array of {len(images)} (shape "
                         f"{np.shape(query)}); for several use "
                         "index.top_k(encoder.embed_images(images), k).")
    recorded = index.meta.get("fingerprint")
    if recorded and (ours := model_fingerprint(encoder)) != recorded:
        raise ConfigError(f"The index was built with another model "
                          f"({index.meta.get('model') or 'fingerprint ' + recorded}) than the "
                          f"encoder's (fingerprint {ours}), so scores would compare different "
                          "embeddings; search with the index's model, or rebuild the index "
                          "with this one (build_index).")
    if isinstance(query, str):
        if (warn_image_name and os.path.isfile(query)
                and query.lower().endswith(IMAGE_EXTENSIONS)):
            warnings.warn(f"The query {query!r} is searched as text, though it names an image "
                          f"file; to search by the image, pass pathlib.Path({query!r}) or a "
                          "PIL image.", stacklevel=2)
        embedding = encoder.embed_texts([query])[0]
    else:
        embedding = encoder.embed_pixels(preprocess_pixels(images, encoder.module.config,
                                                           **image_options_of(index.meta)))[0]
    return index.search(embedding, k)[0]


def unit_rows(queries: np.ndarray) -> np.ndarray:
    """Query embeddings [E] or [Q, E] (any float array) as L2-normalised float32 rows [Q, E].

    Computed in float64, each row scaled by its largest entry first (1e-200 and 1e200 alike
    are directions). Raises TypeError for a complex, string or object array (a cast would drop
    or garble it), ValueError for another shape, and naming the query (its row when there are
    several) that holds NaN or Inf or is all zeros: it has no direction.
    """
    given = np.asarray(queries)
    if given.dtype.kind in "cUSOMm":  # bfloat16 is kind "V": numbers, cast exactly
        raise TypeError(f"Query embeddings must be real numbers, got dtype {given.dtype}: pass "
                        "the float array that encode_text / encode_image returned.")
    rows = np.atleast_2d(given.astype(np.float64))
    if rows.ndim != 2:
        raise ValueError(f"Query embeddings are [E] or [Q, E], got shape {rows.shape}.")
    finite = np.isfinite(rows).all(-1)
    largest = np.abs(np.where(finite[:, None], rows, 0.0)).max(-1)
    for problem, bad, fix in (
            ("holds NaN or Inf", ~finite, "check the computation that produced it"),
            ("is all zeros", largest == 0, "pass the embedding of a text or an image")):
        if bad.any():
            which = ("The query embedding" if len(rows) == 1
                     else f"Query row {int(np.argmax(bad))} (of {len(rows)})")
            raise ValueError(f"{which} {problem}, so it has no direction to search by; {fix}.")
    rows = rows / largest[:, None]  # largest entry 1: the norm neither overflows nor underflows
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _describe(options: Mapping[str, Any]) -> str:
    """Image options as the command-line flags that give them."""
    alpha = options["alpha"]
    colour = alpha if isinstance(alpha, str) else "#{:02x}{:02x}{:02x}".format(*alpha)
    exif = "--exif-transpose" if options["exif_transpose"] else "--no-exif-transpose"
    return f"--alpha {colour} {exif}"


def check_k(k: int) -> None:
    """ValueError unless `k`, the number of matches asked for, is an int >= 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}: ask for at least one match, an int >= 1.")


def _stat(path: str) -> tuple[int, int]:
    """(size, modification time in ns); (-1, -1) for a file that cannot be examined (a broken
    link, removed since it was listed): it is then read, and skipped with its reason."""
    try:
        info = os.stat(path)
    except OSError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


def _encode(paths: Sequence[str]) -> np.ndarray:
    """Paths as one uint8 buffer of their NUL-separated bytes (NUL cannot occur in a path): a
    name's undecodable bytes as themselves, the rest in UTF-8, the file system's bytes."""
    return np.frombuffer("\0".join(paths).encode("utf-8", "surrogateescape"), np.uint8)


def _decode(buffer: np.ndarray) -> list[str]:
    """`_encode`'s paths as this process's os functions spell them (`os.fsdecode`): in the C
    locale (LC_ALL=C, PYTHONUTF8=0) a UTF-8 name comes back as os.listdir lists it, so a
    second `clip-jax index` reuses its entry (it embedded them all again) and search's paths
    open."""
    text = os.fsdecode(bytes(buffer))
    return text.split("\0") if text else []


def _or_zeros(x: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, np.int64) if x is None else np.asarray(x, np.int64)


def _save_npz(path: str, **arrays: np.ndarray) -> None:
    _write_atomically(path, lambda f: np.savez(f, **arrays))


def _write_atomically(path: str, write: Callable[[BinaryIO], object]) -> None:
    """`write` to a temporary name, then an atomic rename: never a half-written file (a full
    disk, Ctrl-C, kill -9), so a rerun finds either the whole old file or the whole new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no stray temporary file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
