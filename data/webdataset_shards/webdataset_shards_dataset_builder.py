"""`webdataset_shards`: img2dataset's webdataset tar shards, built once into TFDS storage.

img2dataset writes `NNNNN.tar` shards whose members are grouped by key: `key.jpg` (or another
image extension), `key.txt` (the caption) and `key.json` (metadata, ignored here). Shards are
named by glob (`/data/*.tar`) or brace patterns (`/data/{00000..00099}.tar`, comma-separated
lists allowed) on any filesystem `tf.io.gfile` reads. Shards are streamed in order, images and
captions repaired or skipped (`clip_jax_data.records`), hidden members (`._*`, `.DS_Store`)
and links skipped and counted, and a shard that is missing, not a tar or truncated is reported
in `bad_records.json` with the number of records read from it, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from concurrent import futures
from typing import Any

from clip_jax.data._tf import file_problem, tf, unreadable_scheme
from clip_jax.errors import ConfigError, MissingFileError
import tensorflow_datasets as tfds

from clip_jax_data import records
from clip_jax_data.local_info import LocalDatasetInfo
from clip_jax_data.options import CleanOptions, WebdatasetOptions

_SPLIT_FIELDS = {"train": "train_shards", "validation": "validation_shards",
                 "test": "test_shards"}
_BATCH = 256
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclasses.dataclass
class WebdatasetConfig(tfds.core.BuilderConfig):
    shards: WebdatasetOptions = WebdatasetOptions()
    clean: CleanOptions = CleanOptions()


def make_config(shards: Any, clean: Any) -> WebdatasetConfig:
    """A builder config from the data config's `webdataset` and `build` sections."""
    shards = shards if isinstance(shards, WebdatasetOptions) else WebdatasetOptions(**dict(shards))
    clean = clean if isinstance(clean, CleanOptions) else CleanOptions(**dict(clean))
    if not shards.name:
        raise ConfigError("data.webdataset.name is empty; name the dataset, e.g. 'laion_subset'.")
    shards = dataclasses.replace(shards, **{
        field: records.absolute_patterns(getattr(shards, field))
        for field in _SPLIT_FIELDS.values()})
    return WebdatasetConfig(name=shards.name, description=f"Built from {shards}",
                            shards=shards, clean=clean)


def expand_shards(pattern: str) -> list[str]:
    """Shard paths of a pattern: comma-separated parts, `{000..099}` ranges, then globs."""
    paths: list[str] = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        if unreadable_scheme(part):
            raise ConfigError(f"Shards {part!r}: TensorFlow reads no {unreadable_scheme(part)}:// "
                              "files; download the shards (or mount their bucket) and give "
                              "local or gs:// paths.")
        for expanded in _expand_braces(part):
            if any(ch in expanded for ch in "*?["):
                paths += sorted(tf.io.gfile.glob(expanded))
            else:
                paths.append(expanded)
    return paths


def split_shards(options: WebdatasetOptions) -> dict[str, list[str]]:
    """Split -> the shards its pattern (`data.webdataset.<split>_shards`) matches now; splits
    without a pattern are left out."""
    return {split: expand_shards(getattr(options, field))
            for split, field in _SPLIT_FIELDS.items() if getattr(options, field)}


def _expand_braces(pattern: str) -> list[str]:
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    low, high = match.group(1), match.group(2)
    width = len(low)
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [expanded for n in range(int(low), int(high) + 1)
            for expanded in _expand_braces(f"{head}{n:0{width}d}{tail}")]


class WebdatasetShards(tfds.core.GeneratorBasedBuilder):
    """Image-caption pairs from img2dataset webdataset shards; see the module docstring."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Captions stored as OpenAI's tokenizer reads them (NULs dropped, "
                              "only ASCII whitespace stripped); an RGB PNG's transparent colour "
                              "composited onto build.alpha."}
    BUILDER_CONFIG_CLASS = WebdatasetConfig
    code_path = tfds.core.utils.classproperty(classmethod(records.module_code_path))

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(builder=self, description=__doc__,
                                features=records.image_text_features())

    def build_inputs(self) -> list[str]:
        """Every shard the config's patterns match now, split by split: what a build reads,
        compared at each reuse with what the build read (`clip_jax.data.sources`), so that a
        shard that appeared under an unchanged glob is not silently left out."""
        return [shard for shards in split_shards(self.builder_config.shards).values()
                for shard in shards]

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # shards are read where they are
        options = self.builder_config.shards
        splits, inputs = {}, []
        for split, shards in split_shards(options).items():
            field = _SPLIT_FIELDS[split]
            if not shards:
                raise MissingFileError(f"data.webdataset.{field}={getattr(options, field)!r} "
                                       "matches no files.")
            # A range names shards one by one: img2dataset leaves out a shard that failed
            # (a bad source, counted), but most of them missing is a typo in the range.
            missing = [shard for shard in shards if file_problem(shard) == "missing"]
            limit = self.builder_config.clean.max_bad_fraction
            if len(missing) > limit * len(shards):
                raise MissingFileError(
                    f"data.webdataset.{field}: {len(missing)} of the {len(shards)} shards it "
                    f"names do not exist ({', '.join(missing[:3])}"
                    f"{', ...' if len(missing) > 3 else ''}), more than "
                    f"data.build.max_bad_fraction={limit}; fix the range, or name the shards "
                    "that are there with a glob (*.tar).")
            splits[split] = self._generate_examples(split, shards)
            inputs += shards
        if not splits:
            raise ConfigError("No shards to build: set data.webdataset.train_shards.")
        records.write_build_options(self.data_dir, self.builder_config, inputs, digest=False)
        return splits

    def _generate_examples(self, split: str, shards: list[str]
                           ) -> Iterator[tuple[str, dict[str, Any]]]:
        config = self.builder_config
        report = records.BuildReport(split, config.clean)
        image_exts = [extension(e) for e in config.shards.image_extensions.split(",")]
        caption_ext = extension(config.shards.caption_extension)
        repeated: list[str] = []
        with futures.ThreadPoolExecutor(config.shards.num_threads) as pool:
            for number, shard in enumerate(shards):
                samples = _samples(shard, report, repeated)
                while batch := list(itertools.islice(samples, _BATCH)):
                    cleaned = pool.map(
                        lambda sample: _clean_sample(sample, image_exts, caption_ext,
                                                     config.clean), batch)
                    ready = []
                    for (position, key, _), outcome in zip(batch, cleaned):
                        name = f"{os.path.basename(shard)}/{key}"
                        if isinstance(outcome, records.BadRecord):
                            report.skip(name, outcome)
                            continue
                        image, caption, conversions = outcome
                        report.keep(name, conversions)
                        ready.append((f"{number}/{position}", name, image, caption))
                    tokens = records.tokenize([caption for *_, caption in ready])
                    for (example_key, name, image, caption), row in zip(ready, tokens):
                        yield example_key, {"image": image, "captions": [caption],
                                            "tokens": row[None], "key": name}
        if repeated:
            report.note(_apart_note(repeated), fix=True)
        report.finish(self.data_dir)


def _apart_note(repeated: list[str]) -> str:
    """The finding for samples whose key comes back later in its shard (`shard/key` each)."""
    return (f"{len(repeated)} sample key(s) appear again later in their shard, after other "
            f"samples (e.g. {', '.join(repeated[:3])}): a webdataset sample is its adjacent "
            "members only, so each part was read as a sample of its own (kept with an image and "
            "a caption, else skipped as missing_image / missing_caption). Put each sample's "
            "files together in the tar (e.g. create it from a name-sorted file list)")


def _samples(shard: str, report: records.BuildReport, repeated: list[str]
             ) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """`(position, key, {extension: bytes})` per sample of a shard, streaming.

    Members of a sample are consecutive in a webdataset tar; a key met again after other
    samples starts a sample of its own, as webdataset reads it, and is appended to `repeated`
    (`shard/key`) for the split's note. A read error ends the shard: the
    samples read so far are kept and the error is reported. So does every stop that `tarfile`
    takes quietly for the end of the archive: a shard cut off between two members or inside a
    header, or a header block that is not a header. A whole tar ends with a block of zeros
    (its end-of-archive marker); `_header_blocks` sees the last block read, so anything else
    is reported.
    """
    read = 0
    key, files, seen = None, {}, set()
    headers = _header_blocks()
    try:
        with tf.io.gfile.GFile(shard, "rb") as f, \
                tarfile.open(fileobj=f, mode="r|*", tarinfo=headers) as tar:
            for member in tar:
                if member.isdir():
                    continue
                skipped = _not_a_sample(member)
                if skipped:
                    report.skip(f"{os.path.basename(shard)}/{member.name}", skipped)
                    continue
                directory, base = os.path.split(member.name)
                stem, _, ext = base.partition(".")
                ext = ext.lower()  # k.jpg and k.JPG are one member kind
                member_key = os.path.join(directory, stem)
                if member_key != key:
                    if key is not None:
                        yield read, key, files
                        read += 1
                    if member_key in seen:
                        repeated.append(f"{os.path.basename(shard)}/{member_key}")
                    key, files = member_key, {}
                    seen.add(member_key)
                if ext in files:  # one sample cannot hold both
                    report.skip(f"{os.path.basename(shard)}/{member.name}", records.BadRecord(
                        records.DUPLICATE_MEMBER, f"sample {key!r} already has a '.{ext}' "
                        "member (extensions compare without case); the first one is kept"))
                    continue
                files[ext] = tar.extractfile(member).read()
        if key is not None:
            yield read, key, files
            read += 1
        if headers.last != bytes(tarfile.BLOCKSIZE):
            raise tarfile.ReadError(
                "no end-of-archive marker: the shard ends between members or inside a header, "
                f"or holds a damaged header (last block read: {len(headers.last)} bytes)")
    except (tarfile.TarError, EOFError, OSError, zlib.error, tf.errors.OpError) as error:
        report.bad_source(shard, f"{type(error).__name__}: {error}", read)


def _not_a_sample(member: tarfile.TarInfo) -> records.BadRecord | None:
    """Why a member (not a folder) is no part of a sample, if it is not: hidden files (macOS's
    `._*` and `.DS_Store`, added when a Mac makes the tar, or anything under a hidden folder,
    as the labelled-folder reader skips them) and links or special files."""
    if any(part.startswith(".") for part in member.name.split("/") if part not in ("", ".")):
        return records.BadRecord(records.HIDDEN_MEMBER,
                                 "hidden file (its name or a folder's starts with '.')")
    if not member.isfile():
        kind = ("symbolic link" if member.issym() else "hard link" if member.islnk()
                else "special file")
        return records.BadRecord("not_a_regular_file", f"a {kind}, not a file with data")
    return None


def _header_blocks() -> type[tarfile.TarInfo]:
    """A TarInfo class (one per shard read) keeping, as `last`, the last header block the
    reader took: `tarfile` ends a stream quietly on a zero block (the end-of-archive
    marker), a short block, an empty read or an invalid header alike, and only this block
    tells them apart."""

    class HeaderBlocks(tarfile.TarInfo):
        last = b""

        @classmethod
        def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
            cls.last = buf
            return super().frombuf(buf, encoding, errors)

    return HeaderBlocks


def extension(text: str) -> str:
    """A member extension as the options may spell it (`.JPG`, ` jpg`) as a sample keys it:
    `jpg`."""
    return text.strip().lower().lstrip(".")


def _clean_sample(sample: tuple[int, str, dict[str, bytes]], image_exts: list[str],
                  caption_ext: str, clean: CleanOptions
                  ) -> tuple[bytes, str, list[str]] | records.BadRecord:
    _, key, files = sample
    try:
        image_ext = next((ext for ext in image_exts if ext in files), None)
        dotted = [f"{key}.{ext}" for ext in sorted(files) if "." in ext]
        hint = (f" (a sample's key ends at the first dot of a member's name, as webdataset "
                f"reads it: {dotted[0]!r} is key {key!r}; rename such members)" if dotted else "")
        if image_ext is None:
            raise records.BadRecord(
                "missing_image", f"no image ({', '.join(image_exts)}) among {sorted(files)}"
                + hint)
        if caption_ext not in files:
            metadata = (" (its .json, img2dataset's metadata, is not read for a caption, even "
                        "one under a 'caption' key: write captions as .txt members)"
                        if "json" in files and not hint else "")
            raise records.BadRecord("missing_caption", f"no .{caption_ext} caption among "
                                    f"{sorted(files)}{hint}{metadata}")
        caption, caption_conversions = records.clean_caption(files[caption_ext], clean)
        image, conversions = records.clean_image(files[image_ext], clean, name=f"{key}.{image_ext}")
    except records.BadRecord as error:
        return error
    return image, caption, conversions + caption_conversions
