"""The webdataset_shards builder on generated img2dataset-style tars, including broken shards."""

import io
import json
import os
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from clip_jax.data._tf import tf  # noqa: F401  (hides accelerators before TFDS starts TensorFlow)
from clip_jax.data import eval_pipeline
from clip_jax.data import sources
from clip_jax.data import train_pipeline
from clip_jax.data import options as data_options
from clip_jax.errors import ConfigError
import tensorflow_datasets as tfds  # after clip_jax.data._tf: TF must not see accelerators
from clip_jax.data import tokenizer
from clip_jax.models.presets import get_preset
from clip_jax_data.webdataset_shards import expand_shards


def jpeg(seed: int, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def write_tar(path: str, samples: list[tuple[str, dict[str, bytes]]]) -> list[int]:
    """Writes a webdataset tar; returns the byte offset of each sample's first member data."""
    buffer = io.BytesIO()
    offsets = []
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, files in samples:
            offsets.append(buffer.tell() + tarfile.BLOCKSIZE)
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return offsets


def sample(key: str, seed: int, caption: bytes, image_ext: str = "jpg") -> tuple[str, dict]:
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_ext]
    meta = json.dumps({"key": key, "caption": caption.decode(errors="replace")}).encode()
    return key, {image_ext: jpeg(seed, fmt), "txt": caption, "json": meta}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    good = [sample(f"00000{i:04d}", i, f"caption number {i}".encode()) for i in range(5)]
    good.append(sample("000000005", 5, b"a png image", "png"))
    write_tar(os.path.join(root, "00000.tar"), good)
    mixed = [
        ("000010000", {"jpg": jpeg(10), "json": b"{}"}),                   # no caption
        ("000010001", {"txt": b"a caption without an image"}),             # no image
        ("000010002", {"jpg": jpeg(12)[:1000], "txt": b"truncated jpeg"}),  # corrupt image
        ("000010003", {"jpg": jpeg(13), "txt": b"na\xefve latin-1"}),       # not UTF-8
        sample("000010004", 14, b"good one"),
        sample("000010005", 15, b"good two", "webp"),
    ]
    write_tar(os.path.join(root, "00001.tar"), mixed)
    with tarfile.open(os.path.join(root, "00001.tar"), "a") as tar:  # members of no sample
        for name in ("._000010004.jpg", ".DS_Store", ".ipynb_checkpoints/000010004.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"Bud1"))
        link = tarfile.TarInfo("000010006.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "000010004.jpg"
        tar.addfile(link)
    truncated = [sample(f"00002{i:04d}", 20 + i, f"shard two {i}".encode()) for i in range(4)]
    offsets = write_tar(os.path.join(root, "00002.tar"), truncated)
    with open(os.path.join(root, "00002.tar"), "r+b") as f:
        f.truncate(offsets[2] + 100)  # inside the third sample's image
    # Cut exactly where the third sample's first header begins: no member is partial, only
    # tar's end-of-archive marker is missing (tarfile itself ends such a stream quietly).
    cut = [sample(f"00005{i:04d}", 30 + i, f"shard five {i}".encode()) for i in range(4)]
    offsets = write_tar(os.path.join(root, "00005.tar"), cut)
    with open(os.path.join(root, "00005.tar"), "r+b") as f:
        f.truncate(offsets[2] - tarfile.BLOCKSIZE)
    with open(os.path.join(root, "00003.tar"), "wb") as f:
        f.write(b"not a tar archive at all" * 50)
    return root, good, mixed


@pytest.fixture(scope="module")
def built(shards, tmp_path_factory):
    root, _, _ = shards
    config = data_options.default_config()
    config.dataset = "webdataset_shards"
    config.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.label_key = ""
    config.webdataset.name = "generated"
    config.webdataset.train_shards = os.path.join(root, "{00000..00005}.tar")  # 00004 is missing
    config.webdataset.validation_shards = os.path.join(root, "00000.tar")
    builder = sources.prepare(config)
    source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    examples = {source[i]["key"].decode(): source[i] for i in range(len(source))}
    with open(os.path.join(builder.data_dir, "bad_records.json")) as f:
        report = json.load(f)
    return config, builder, examples, report


def test_samples_kept_and_bad_ones_reported(built):
    _, builder, examples, report = built
    expected = ([f"00000.tar/00000{i:04d}" for i in range(6)]
                + ["00001.tar/000010004", "00001.tar/000010005"]
                + ["00002.tar/000020000", "00002.tar/000020001"]
                + ["00005.tar/000050000", "00005.tar/000050001"])
    assert sorted(examples) == expected
    train = report["train"]
    # Every member is accounted for: hidden ones and links are skipped records of their own.
    assert train["kept"] == 12 and train["skipped"] == 8 and train["total"] == 20
    assert train["skipped_by_reason"] == {"caption_not_utf8": 1, "corrupt": 1,
                                          "hidden_member": 3, "missing_caption": 1,
                                          "missing_image": 1, "not_a_regular_file": 1}
    assert {r["key"] for r in train["skipped_records"]} == {
        *(f"00001.tar/00001000{i}" for i in range(4)), "00001.tar/._000010004.jpg",
        "00001.tar/.DS_Store", "00001.tar/.ipynb_checkpoints/000010004.jpg",
        "00001.tar/000010006.jpg"}
    sources = {os.path.basename(s["source"]): s["records_read"] for s in train["bad_sources"]}
    assert sources == {"00002.tar": 2, "00003.tar": 0, "00004.tar": 0, "00005.tar": 2}
    (reason,) = [s["detail"] for s in train["bad_sources"] if s["source"].endswith("00005.tar")]
    assert "no end-of-archive marker" in reason
    assert train["converted_by_kind"] == {"webp_to_jpeg": 1}
    assert report["validation"]["kept"] == 6 and builder.info.splits["validation"].num_examples == 6


def test_unreadable_shards_are_in_the_start_warning(built, caplog):
    """The four shards cut off, damaged or missing hold records no skip count can include:
    every start says how many there are and where they are listed."""
    config, _, _, report = built
    sources._report_skipped.cache_clear()  # once per process and dataset: this start again
    with caplog.at_level("WARNING", logger="clip_jax.data.sources"):
        sources.prepare(config)
    (message,) = [r.getMessage() for r in caplog.records
                  if "could not be read, or not to the end" in r.getMessage()]
    first = report["train"]["bad_sources"][0]
    assert " train: 4 source(s)" in message and "bad_records.json" in message
    assert f"(first: {first['source']}, {first['records_read']} record(s) read" in message


def test_images_and_captions_are_stored_faithfully(built, shards):
    _, _, examples, _ = built
    _, good, mixed = shards
    for key, files in good + [mixed[4]]:
        shard = "00000.tar" if key.startswith("00000") else "00001.tar"
        example = examples[f"{shard}/{key}"]
        assert example["image"] == files.get("jpg", files.get("png"))
        assert [c.decode() for c in example["captions"]] == [files["txt"].decode()]
        np.testing.assert_array_equal(example["tokens"],
                                      tokenizer.tokenize([files["txt"].decode()], 77))


def test_training_and_eval_from_the_shards(built):
    config, _, _, _ = built
    model = get_preset("test-vit")
    batch = next(train_pipeline.make_train_iterator(config, model, global_batch_size=4, seed=1,
                                        process_index=0, process_count=1))
    assert batch["images"].shape == (4, 32, 32, 3) and batch["tokens"].shape == (4, 16)
    batches = list(eval_pipeline.make_eval_iterable(config, model, batch_size=4, process_index=0,
                                         process_count=1))
    assert len(batches) == 2 and sum(b["mask"].sum() for b in batches) == 6
    assert batches[0]["captions_mask"].sum(axis=1).tolist() == [1, 1, 1, 1]


def test_shard_patterns(shards):
    root, _, _ = shards
    assert [os.path.basename(p) for p in expand_shards(os.path.join(root, "{00000..00002}.tar"))] \
        == ["00000.tar", "00001.tar", "00002.tar"]
    assert len(expand_shards(os.path.join(root, "*.tar"))) == 5  # 00000-00003 and 00005
    both = expand_shards(f"{root}/00003.tar, {root}/{{00000..00001}}.tar")
    assert [os.path.basename(p) for p in both] == ["00003.tar", "00000.tar", "00001.tar"]


def test_shards_at_web_urls_are_one_error():
    with pytest.raises(ConfigError, match=r"Shards 'https://host/\{000..009\}.tar': TensorFlow "
                                          r"reads no https:// files; download the shards"):
        expand_shards("/data/a.tar, https://host/{000..009}.tar")


def test_pattern_matching_nothing_is_an_error(tmp_path):
    config = data_options.default_config()
    config.dataset = "webdataset_shards"
    config.data_dir = str(tmp_path)
    config.webdataset.name = "empty"
    config.webdataset.train_shards = str(tmp_path / "*.tar")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        sources.prepare(config)


def test_extensions_may_be_spelt_with_a_dot_and_in_capitals(shards, tmp_path):
    """`image_extensions=".JPG, .png"` kept its dots, so no `jpg` member matched and the build
    failed with every sample unusable: the options read as extensions however spelt. Every
    sample of the shard with a jpg or png image and a txt caption (counted from the tar
    itself) is kept."""
    root = shards[0]
    with tarfile.open(os.path.join(root, "00000.tar")) as tar:
        members = {}
        for name in tar.getnames():
            key, _, ext = name.partition(".")
            members.setdefault(key, set()).add(ext)
    expected = sorted(k for k, exts in members.items() if "txt" in exts and exts & {"jpg", "png"})
    config = data_options.default_config()
    config.dataset = "webdataset_shards"
    config.data_dir = str(tmp_path)
    config.webdataset.update(name="dots", train_shards=os.path.join(root, "00000.tar"),
                             image_extensions=".JPG, .png", caption_extension=".TXT")
    source = sources.prepare(config).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    kept = sorted(source[i]["key"].decode().split("/")[1] for i in range(len(source)))
    assert kept == expected and len(expected) == 6


def test_a_range_naming_shards_that_do_not_exist_is_an_error(tmp_path, shards):
    """`{00000..00005}.tar` with two of the six there built and trained on a third of the data
    with a warning only. A shard img2dataset left out stays a counted bad source (the fixture's
    range misses one of six), but more than `max_bad_fraction` of a range missing is an
    error naming how many and which, before anything is read."""
    import glob
    import shutil

    there = sorted(glob.glob(os.path.join(shards[0], "*.tar")))
    for i, path in enumerate(there[:2]):
        shutil.copy(path, tmp_path / f"{i:05d}.tar")
    config = data_options.default_config()
    config.dataset = "webdataset_shards"
    config.data_dir = str(tmp_path / "tfds")
    config.webdataset.name = "range"
    config.webdataset.train_shards = str(tmp_path / "{00000..00005}.tar")
    absent = [str(tmp_path / f"{i:05d}.tar") for i in range(6) if not os.path.exists(
        tmp_path / f"{i:05d}.tar")]
    assert len(absent) == 4
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"data.webdataset.train_shards: 4 of the 6 shards it names do not exist "
            f"({', '.join(absent[:3])}, ...), more than data.build.max_bad_fraction=0.5; fix the "
            "range")):
        sources.prepare(config)


@pytest.mark.parametrize("cut, compress", [
    ("after the first sample", False), ("after the last member", False),
    ("after the first sample", True), ("after a caption, before its sample's json", False),
    ("inside a header", False), ("inside a header", True), ("a damaged header", False)])
def test_shard_cut_between_members_is_a_bad_source(tmp_path, cut, compress):
    """More cuts of the class: wherever a shard stops where `tarfile` ends quietly (a member
    boundary, 100 bytes into a header, plain or gzip; a header block of garbage), the
    samples before the cut are read and the shard is reported with their count."""
    import gzip

    from clip_jax_data.options import CleanOptions
    from clip_jax_data.records import BuildReport
    from clip_jax_data.webdataset_shards import webdataset_shards_dataset_builder as builder

    samples = [sample(f"00000{i:04d}", i, f"caption {i}".encode()) for i in range(3)]
    path = str(tmp_path / "shard.tar")
    offsets = write_tar(path, samples)
    data = open(path, "rb").read()
    members = [m.offset for m in tarfile.open(path)]  # header offsets, 3 members per sample
    end = {"after the first sample": offsets[1] - tarfile.BLOCKSIZE,
           "after the last member": members[-1] + tarfile.BLOCKSIZE + -(-len(
               samples[-1][1]["json"]) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE,
           "after a caption, before its sample's json": members[5],
           "inside a header": members[5] + 100, "a damaged header": len(data)}[cut]
    data = data[:end]
    if cut == "a damaged header":  # sample 1's first header: garbage, so no valid checksum
        data = data[:members[3]] + b"A" * tarfile.BLOCKSIZE + data[members[3] + tarfile.BLOCKSIZE:]
    if compress:
        path += ".gz"
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)
    report = BuildReport("train", CleanOptions())
    read = list(builder._samples(path, report, []))
    expected = {"after the first sample": 1, "after the last member": 3,
                "after a caption, before its sample's json": 2, "inside a header": 2,
                "a damaged header": 1}[cut]
    assert len(read) == expected
    assert [(s["records_read"], "no end-of-archive marker" in s["detail"])
            for s in report.bad_sources] == [(expected, True)]
    whole = str(tmp_path / "whole.tar")
    write_tar(whole, samples)
    report = BuildReport("train", CleanOptions())
    assert len(list(builder._samples(whole, report, []))) == 3 and not report.bad_sources


def test_hidden_members_are_counted_but_split_no_sample_nor_fail_a_build(tmp_path):
    """macOS's `._KEY.jpg` between a sample's members (a tar made on a Mac has one beside
    every file) leaves the sample whole, is skipped and counted, and does not count towards
    max_bad_fraction: two samples and six hidden members build; three bad records of five
    fail, naming a bad record, not a hidden one."""
    from clip_jax_data.options import CleanOptions
    from clip_jax_data.records import BadRecord, BuildReport
    from clip_jax_data.webdataset_shards import webdataset_shards_dataset_builder as builder

    path = str(tmp_path / "mac.tar")
    with tarfile.open(path, "w") as tar:
        for key in ("000000000", "000000001"):
            for name, data in ((f"{key}.jpg", jpeg(0)), (f"._{key}.jpg", b"\0\5\26\7"),
                               (f"{key}.txt", b"a caption"), (f"._{key}.txt", b"\0\5\26\7"),
                               (".DS_Store", b"Bud1")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    report = BuildReport("train", CleanOptions(max_bad_fraction=0.5))
    read = list(builder._samples(path, report, []))
    assert [(key, sorted(files)) for _, key, files in read] == [
        ("000000000", ["jpg", "txt"]), ("000000001", ["jpg", "txt"])]
    for _, key, _ in read:
        report.keep(key, [])
    assert report.skipped_by_reason == {"hidden_member": 6} and report.total == 8
    report.finish(str(tmp_path))
    for key in ("bad1", "bad2", "bad3"):
        report.skip(key, BadRecord("corrupt", "truncated"))
    with pytest.raises(ConfigError, match=r"3 of 5 records are unusable \(\{'corrupt': 3\}; "
                                          r"also skipped, not counted as records: "
                                          r"\{'hidden_member': 6\}; e\.g\. bad1: "):
        report.finish(str(tmp_path))
    # Only AppleDouble members: no limit would keep anything, so the limit is not offered
    # ("0 of 0 records are unusable ... or raise data.build.max_bad_fraction", trial Y).
    report = BuildReport("train", CleanOptions(max_bad_fraction=0.5))
    _tar_of_members(str(tmp_path / "hidden.tar"), [("._a.jpg", b"\0"), ("._a.txt", b"\0")])
    assert not list(builder._samples(str(tmp_path / "hidden.tar"), report, []))
    with pytest.raises(ConfigError, match=r"^Split 'train': no records found \(only "
                                          r"\{'hidden_member': 2\}\)\. [^,]*\.$"):
        report.finish(str(tmp_path))


def test_a_member_repeating_an_extension_in_another_case_is_counted(tmp_path):
    """`k.jpg` and `k.JPG` in one sample: the later one silently replaced the earlier one.
    The first is kept, as read, and the other is a counted skip naming both."""
    from clip_jax_data.options import CleanOptions
    from clip_jax_data.records import BuildReport
    from clip_jax_data.webdataset_shards import webdataset_shards_dataset_builder as builder

    path = str(tmp_path / "dup.tar")
    members = [("a.jpg", jpeg(1)), ("a.JPG", jpeg(2)), ("a.txt", b"one"), ("a.Txt", b"two"),
               ("b.jpg", jpeg(3)), ("b.txt", b"three")]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = BuildReport("train", CleanOptions(max_bad_fraction=0.1))
    read = {key: files for _, key, files in builder._samples(path, report, [])}
    assert read == {"a": {"jpg": jpeg(1), "txt": b"one"}, "b": {"jpg": jpeg(3), "txt": b"three"}}
    assert report.skipped_by_reason == {"duplicate_member": 2}
    assert [s["key"] for s in report.skipped] == ["dup.tar/a.JPG", "dup.tar/a.Txt"]
    assert "sample 'a' already has a '.jpg' member" in report.skipped[0]["detail"]
    for key in read:
        report.keep(key, [])
    report.finish(str(tmp_path))  # members, not records: 2 of 4 skipped is no bad fraction


def test_rewritten_or_appearing_shards_are_not_reused(tmp_path, monkeypatch):
    """A relative pattern and its absolute form are one dataset; a shard rewritten with other
    contents (another size), or a listed shard that was missing at build time and now exists,
    makes reuse under the same name an error instead of a silently stale dataset."""
    write_tar(str(tmp_path / "00000.tar"), [sample("000000000", 0, b"first")])
    config = data_options.default_config()
    config.dataset, config.label_key = "webdataset_shards", ""
    config.data_dir = str(tmp_path / "tfds")
    config.webdataset.name = "rewritten"
    config.webdataset.train_shards = "{00000..00001}.tar"  # 00001 is missing
    monkeypatch.chdir(tmp_path)
    assert len(sources.prepare(config).as_data_source("train")) == 1
    config.webdataset.train_shards = str(tmp_path / "{00000..00001}.tar")
    sources.prepare(config)
    write_tar(str(tmp_path / "00001.tar"), [sample("000010000", 1, b"late")])
    with pytest.raises(ConfigError, match=r"00001.tar, which was missing at the build and "
                                          r"exists now"):  # not "has changed": never read
        sources.prepare(config)
    os.remove(tmp_path / "00001.tar")
    sources.prepare(config)
    write_tar(str(tmp_path / "00000.tar"), [sample("000000000", 0, b"first"),
                                            sample("000000001", 2, b"second")])
    with pytest.raises(ConfigError, match=r"00000.tar, which has changed since"):
        sources.prepare(config)


def test_shards_appearing_under_a_glob_are_not_left_out(tmp_path):
    """A dataset built from `train/*.tar` and `val/{0..1}.tar`: a shard that later matches
    either pattern makes reuse an error naming it (the dataset would silently miss it); a file
    the patterns do not match does not."""
    os.makedirs(tmp_path / "train")
    os.makedirs(tmp_path / "val")
    write_tar(str(tmp_path / "train" / "a.tar"), [sample("000000000", 0, b"first")])
    write_tar(str(tmp_path / "val" / "0.tar"), [sample("000000001", 1, b"held out")])
    config = data_options.default_config()
    config.dataset, config.label_key = "webdataset_shards", ""
    config.data_dir = str(tmp_path / "tfds")
    config.webdataset.name = "growing"
    config.webdataset.train_shards = str(tmp_path / "train" / "*.tar")
    config.webdataset.validation_shards = str(tmp_path / "val" / "{0..1}.tar")
    assert len(sources.prepare(config).as_data_source("train")) == 1
    write_tar(str(tmp_path / "train" / "b.tgz"), [sample("000000002", 2, b"other ext")])
    (tmp_path / "train" / "notes.txt").write_text("not a shard")
    sources.prepare(config)
    write_tar(str(tmp_path / "train" / "b.tar"), [sample("000000003", 3, b"late")])
    with pytest.raises(ConfigError, match=r"built from 3 input files, and 1 more match its "
                                          r"patterns now \(\S*train/b.tar\)"):
        sources.prepare(config)
    os.remove(tmp_path / "train" / "b.tar")
    sources.prepare(config)
    write_tar(str(tmp_path / "val" / "1.tar"), [sample("000000004", 4, b"late val")])
    with pytest.raises(ConfigError, match=r"val/1.tar, which was missing at the build and "
                                          r"exists now"):
        sources.prepare(config)


def _tar_of_members(path: str, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _adjacent_groups(path: str) -> list[tuple[str, list[str]]]:
    """The samples webdataset's rule makes of a tar (consecutive members sharing a key),
    straight from tarfile's listing."""
    groups: list[tuple[str, list[str]]] = []
    for name in tarfile.open(path).getnames():
        key, ext = name.split(".", 1)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(ext)
        else:
            groups.append((key, [ext]))
    return groups


def test_a_samples_members_apart_in_the_tar_are_named_as_the_cause(tmp_path):
    """A tar holding every image, then every caption (members of a sample not adjacent) was
    reported as missing_caption and missing_image records, and a key repeated later in a
    shard was kept without a word. Both are now one note naming the keys and the fix, in
    bad_records.json, the build's warning and the error of a build that fails on it."""
    os.makedirs(tmp_path / "wds")
    apart = str(tmp_path / "wds" / "apart.tar")
    _tar_of_members(apart, [("a.jpg", jpeg(1)), ("b.jpg", jpeg(2)), ("a.txt", b"one"),
                            ("b.txt", b"two"), ("c.jpg", jpeg(3)), ("c.txt", b"three"),
                            ("d.jpg", jpeg(4)), ("d.txt", b"four"),
                            ("c.jpg", jpeg(5)), ("c.txt", b"three again")])
    groups = _adjacent_groups(apart)
    complete = [key for key, exts in groups if sorted(exts) == ["jpg", "txt"]]
    config = data_options.default_config()
    config.dataset, config.label_key = "webdataset_shards", ""
    config.data_dir = str(tmp_path / "tfds")
    config.webdataset.name = "apart"
    config.webdataset.train_shards = apart
    config.build.max_bad_fraction = 0.5
    with pytest.raises(ConfigError, match=r"4 of 7 records are unusable .*3 sample key\(s\) "
                                          r"appear again later in their shard, after other "
                                          r"samples \(e.g. apart.tar/a, apart.tar/b, apart.tar/c\)"
                                          r".*Put each sample's files together in the tar"):
        sources.prepare(config)
    config.build.max_bad_fraction = 1.0
    config.webdataset.name = "apart_kept"
    builder = sources.prepare(config)
    source = builder.as_data_source("train")
    assert sorted(source[i]["key"].decode() for i in range(len(source))) == sorted(
        f"apart.tar/{key}" for key in complete)
    with open(os.path.join(builder.data_dir, "bad_records.json")) as f:
        report = json.load(f)["train"]
    assert report["skipped_by_reason"] == {"missing_caption": 2, "missing_image": 2}
    assert report["notes"][0].startswith("3 sample key(s) appear again later")


def test_a_dotted_member_name_is_explained_when_it_loses_its_sample(tmp_path):
    """`photo.v2.jpg` / `photo.v2.txt` is key `photo` with extensions `v2.jpg` / `v2.txt`, as
    webdataset's own reader splits it at the first dot: the skip said only "no image (jpg,
    ...) among ['v2.jpg', 'v2.txt']" (trial Y). It now says where the key ends."""
    from clip_jax_data.options import CleanOptions
    from clip_jax_data.records import BadRecord, BuildReport
    from clip_jax_data.webdataset_shards import webdataset_shards_dataset_builder as builder

    path = str(tmp_path / "dots.tar")
    _tar_of_members(path, [("photo.v2.jpg", jpeg(0)), ("photo.v2.txt", b"a dotted name"),
                           ("plain.jpg", jpeg(1)), ("plain.txt", b"fine")])
    reference = [("photo", ["v2.jpg", "v2.txt"]), ("plain", ["jpg", "txt"])]  # webdataset's
    report = BuildReport("train", CleanOptions(max_bad_fraction=0.5))
    read = list(builder._samples(path, report, []))
    assert [(key, sorted(files)) for _, key, files in read] == reference
    cleaned = [builder._clean_sample(s, ["jpg", "png"], "txt", CleanOptions()) for s in read]
    assert isinstance(cleaned[0], BadRecord) and cleaned[0].reason == "missing_image"
    assert str(cleaned[0]).endswith(
        "(a sample's key ends at the first dot of a member's name, as webdataset reads it: "
        "'photo.v2.jpg' is key 'photo'; rename such members)")
    assert not isinstance(cleaned[1], BadRecord)


def test_a_sample_with_its_caption_only_in_json_metadata_is_told_why(tmp_path):
    """img2dataset writes a .json of metadata beside each sample; a sample whose caption is
    only there (under "caption") was skipped as "no .txt caption among ['jpg', 'json']",
    with no word that the .json is not read (trial BG). The skip now says so and the fix;
    a sample without a .json is skipped as before."""
    from clip_jax_data.options import CleanOptions
    from clip_jax_data.records import BadRecord, BuildReport
    from clip_jax_data.webdataset_shards import webdataset_shards_dataset_builder as builder

    path = str(tmp_path / "meta.tar")
    _tar_of_members(path, [("a.jpg", jpeg(0)), ("a.json", b'{"caption": "a red car"}'),
                           ("b.jpg", jpeg(1))])
    read = list(builder._samples(path, BuildReport("train", CleanOptions()), []))
    assert [(key, sorted(files)) for _, key, files in read] == [("a", ["jpg", "json"]),
                                                                ("b", ["jpg"])]
    with_json, bare = (builder._clean_sample(s, ["jpg"], "txt", CleanOptions()) for s in read)
    assert isinstance(with_json, BadRecord) and with_json.reason == "missing_caption"
    assert "its .json, img2dataset's metadata, is not read for a caption" in str(with_json)
    assert isinstance(bare, BadRecord) and "json" not in str(bare)
