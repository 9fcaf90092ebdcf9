"""Image folders, index and search (`clip_jax.data.image_folder`, `clip_jax.inference.image_index`, the
`clip-jax index / search / zero-shot` commands), checked against a brute-force NumPy ranking of
the model's embeddings computed directly, PIL's own verdict on bad files, and pandas / json
reading the command outputs."""

import io
import json
import os
import re
import shutil
import time
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import clip_jax  # noqa: E402
from clip_jax import cli
from clip_jax.data import image_folder
from clip_jax.data.preprocess import normalization_constants
from clip_jax.inference import image_index# noqa: E402
from clip_jax.convert import hf_export  # noqa: E402
from clip_jax.inference.encoder import Encoder  # noqa: E402

GOOD = ["a.png", "b/c.jpg", "b/d/e.png", "b/d/f.webp", "b0.png", "z.JPG", "b/g.bmp"]
BAD = ["empty.jpg", "b/text.jpg", "trunc.jpg"]


def write_folder(root, rng):
    for i, rel in enumerate(GOOD):
        os.makedirs(os.path.dirname(root / rel) or root, exist_ok=True)
        pixels = rng.integers(0, 256, (30 + 3 * i, 44, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / rel, format=Image.registered_extensions()[
            os.path.splitext(rel)[1].lower()])
    (root / "empty.jpg").write_bytes(b"")
    (root / "b" / "text.jpg").write_text("not a picture, just a misnamed text file")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "trunc.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    (root / "b" / "notes.txt").write_text("ignored")


def pil_reads(path):
    try:
        with Image.open(path) as image:
            image.convert("RGB")
        return True
    except Exception:  # PIL's verdict, whatever it raises
        return False


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_folder(root, np.random.default_rng(0))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    module, variables = clip_jax.create_model("test-vit", rng=3)
    path = tmp_path_factory.mktemp("model") / "hf"
    hf_export.export_hf(module.config, variables, str(path))
    return str(path), module, variables


def reference_embeddings(module, variables, paths):
    x = np.asarray(module.apply(variables, clip_jax.preprocess(paths, module.config),
                                method=module.encode_image), np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_text(module, variables, text):
    t = np.asarray(module.apply(variables, clip_jax.tokenize([text], module.config.context_length),
                                method=module.encode_text), np.float64)[0]
    return t / np.linalg.norm(t)


def interrupted_at(call):
    """An Encoder class whose `call`-th batch is interrupted (Ctrl-C)."""

    class Interrupted(Encoder):
        calls = 0

        def embed_pixels(self, pixels):
            Interrupted.calls += 1
            if Interrupted.calls == call:
                raise KeyboardInterrupt
            return super().embed_pixels(pixels)

    return Interrupted


def test_find_images_order_recursion_and_counts(folder, tmp_path, caplog):
    paths, ignored = image_folder.find_images([str(folder)], recursive=True)
    expected = sorted(GOOD + BAD, key=lambda rel: rel.split("/"))
    assert paths == [os.path.join(str(folder), rel) for rel in expected]
    assert ignored == 1
    assert "not searched" not in caplog.text
    flat, ignored = image_folder.find_images([str(folder)])
    assert flat == [os.path.join(str(folder), rel) for rel in expected if "/" not in rel]
    assert ignored == 0
    subfolders = sorted({rel.split("/")[0] for rel in expected if "/" in rel})
    assert f"{len(subfolders)} subfolder(s) not searched ({', '.join(subfolders)})" in caplog.text
    (tmp_path / "only" / "nested").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "nested" / "x.png")
    with pytest.raises(FileNotFoundError, match="--recursive"):
        image_folder.find_images([str(tmp_path / "only")])
    assert image_folder.find_images([str(tmp_path / "only")], recursive=True)[0] == [
        str(tmp_path / "only" / "nested" / "x.png")]
    with pytest.raises(FileNotFoundError, match="No image file or folder"):
        image_folder.find_images([str(tmp_path / "absent")])


def test_hidden_files_and_folders_are_left_out_as_the_eval_reader_leaves_them(tmp_path, caplog):
    """A Mac's `._photo.jpg` beside every photo (AppleDouble metadata, not an image) was tried
    as an image by `clip-jax index` and listed as unreadable, while `clip-jax eval` skipped it
    as hidden; `.git` was searched. Both readers now leave hidden entries out."""
    from clip_jax.data import labelled

    for name in ("cat", "dog"):
        (tmp_path / name / ".git").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name / "photo.jpg")
        (tmp_path / name / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
        (tmp_path / name / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        Image.new("RGB", (8, 8)).save(tmp_path / name / ".git" / "icon.png")
    with caplog.at_level("WARNING"):
        paths, ignored = image_folder.find_images([str(tmp_path)], recursive=True)
    assert paths == [str(tmp_path / name / "photo.jpg") for name in ("cat", "dog")]
    assert ignored == 4
    assert "2 hidden folder(s) not searched" in caplog.text
    assert "without an image extension" not in caplog.text  # hidden files are not named
    assert labelled.read(str(tmp_path)).files == paths


def test_files_without_an_image_extension_are_named(tmp_path, caplog, model):
    """`clip-jax zero-shot` / `index` on a folder counted the files they ignored but never
    named them; iPhone photos (.heic), which Pillow cannot decode without a plugin, were then
    said to lack an image extension, with advice (pass them explicitly) that failed too. AVIF
    photos, which this Pillow decodes, were ignored."""
    from PIL import features

    assert features.check("avif")  # Pillow's wheels decode AVIF (constraints.txt pins one)
    for rel in ("b/IMG_2.HEIC", "a/IMG_1.heic", "a/notes.txt", "a/.DS_Store", "readme",
                "c/d/e.jpeg.bak", "b/IMG_3.hif", "heif_named.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "a").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a" / "cat.jpg")
    Image.new("RGB", (8, 8), (10, 200, 10)).save(tmp_path / "a" / "dog.AVIF", "AVIF")
    with caplog.at_level("WARNING"):
        paths, ignored = image_folder.find_images([str(tmp_path)], recursive=True)
    assert paths == [str(tmp_path / "a" / "cat.jpg"), str(tmp_path / "a" / "dog.AVIF"),
                     str(tmp_path / "heif_named.jpg")]
    assert ignored == 7
    heif, other = (", ".join(os.path.join(*rel) for rel in rels) for rels in (
        (("a", "IMG_1.heic"), ("b", "IMG_2.HEIC"), ("b", "IMG_3.hif")),
        (("a", "notes.txt"), ("c", "d", "e.jpeg.bak"), ("readme",))))
    assert (f"{tmp_path}: 3 photo(s) ignored ({heif}): HEIF photo: Pillow decodes it only "
            "with the pillow-heif plugin; convert it to JPEG") in caplog.text
    assert f"{tmp_path}: 3 file(s) without an image extension ignored ({other});" in caplog.text
    config = model[1].config
    pixels = image_folder.read_image(paths[1], config)
    assert pixels.dtype == np.uint8  # normalised on the device
    assert pixels[..., 1].mean() > pixels[..., 0].mean() + 100  # green
    for name in ("b/IMG_2.HEIC", "heif_named.jpg"):  # by extension, by its ftyp brand
        assert image_folder.read_image(str(tmp_path / name), config).reason == (
            "HEIF photo: Pillow decodes it only with the pillow-heif plugin; convert it to JPEG")
    (tmp_path / "text.jpg").write_bytes(b"not a picture at all")
    assert image_folder.read_image(str(tmp_path / "text.jpg"), config).reason == (
        "not an image PIL can identify")


def test_a_folder_link_sorting_before_its_folder_is_the_one_left_out(tmp_path, caplog):
    """`album -> photos` beside `photos`: the link sorted first, so the walk entered it and
    pruned the real folder, and the index stored every file under the link's path (trial
    s43V); a link deeper in the tree to a folder walked later did the same. The link is now
    the second path, whatever the order, and the warning names it."""
    for rel in ("photos/x.jpg", "photos/sub/y.png", "c/z.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    os.symlink("photos", tmp_path / "album")
    (tmp_path / "a").mkdir()
    os.symlink(os.path.join("..", "c"), tmp_path / "a" / "link_to_c")
    with caplog.at_level("WARNING"):
        paths, _ = image_folder.find_images([str(tmp_path)], recursive=True)
    assert paths == [os.path.realpath(p) for p in paths]  # every file under its own path
    assert sorted(paths) == sorted(str(tmp_path / rel) for rel in (
        "photos/x.jpg", "photos/sub/y.png", "c/z.jpg"))
    left_out = f"{tmp_path / 'album'}, {tmp_path / 'a' / 'link_to_c'}"  # in walk order
    assert f"2 linked folder(s) not searched: each leads to a folder searched under another " \
           f"path or to one above it (a second link, a loop): {left_out}" in caplog.text
    paths, _ = image_folder.find_images([str(tmp_path / "album")], recursive=True)
    assert paths == [str(tmp_path / "album" / "sub" / "y.png"), str(tmp_path / "album" / "x.jpg")]


def test_batches_skip_what_pil_cannot_read(folder, model):
    _, module, _ = model
    paths, _ = image_folder.find_images([str(folder)], recursive=True)
    batches = list(image_folder.iter_batches(paths, module.config, batch_size=3, workers=2))
    assert [len(b.paths) + len(b.skipped) for b in batches] == [3, 3, 3, 1]
    read = [p for b in batches for p in b.paths]
    skipped = {s.path: s.reason for b in batches for s in b.skipped}
    assert read == [p for p in paths if pil_reads(p)]
    assert sorted(skipped) == sorted(p for p in paths if not pil_reads(p))
    assert skipped[str(folder / "empty.jpg")] == "empty file (0 bytes)"
    assert "truncated" in skipped[str(folder / "trunc.jpg")]
    images = np.concatenate([b.images for b in batches])
    assert images.dtype == np.uint8  # a quarter of float32's bytes to the device
    mean, std = normalization_constants(module.config)
    np.testing.assert_array_equal(((images.astype(np.float32) - mean) / std).astype(np.float32),
                                  clip_jax.preprocess(read, module.config))


def test_top_k_matches_numpy_ranking_with_ties():
    rng = np.random.default_rng(1)  # small integers: many rows alike or at equal angles
    raw = rng.integers(-2, 3, (50, 8)).astype(np.float64)
    raw[[3, 7, 30, 41]] = [2, -2, 2, 1, -1, 1, 1, 0]
    raw[raw.any(1) == 0, 0] = 1
    raw[[5, 6]] = [raw[9], 2 * raw[9]]  # one direction at two lengths
    embeddings = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    index = image_index.ImageIndex(embeddings, [f"{i}.png" for i in range(50)])
    queries = np.concatenate([embeddings[3:4], rng.integers(-2, 3, (4, 8))]).astype(np.float32)
    for k in (1, 4, 50, 80):
        scores, indices = index.top_k(queries, k)
        for q, srow, irow in zip(queries, scores, indices):
            # numpy's float64 cosine of the stored rows and the query, rounded to float32
            rows, unit = embeddings.astype(np.float64), q.astype(np.float64)
            cosine = ((rows @ unit) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(unit))
                      ).astype(np.float32)
            order = np.lexsort((np.arange(50), -cosine))[:k]
            np.testing.assert_array_equal(irow, order)
            np.testing.assert_allclose(srow, cosine[order], rtol=0, atol=1.2e-7)
    # an image searched by its own embedding scores 1 (float32 unit rows scored 1.0000001)
    own, _ = index.top_k(embeddings, 1)
    assert (own[:, 0] == 1.0).all(), own[own[:, 0] != 1.0]


def test_index_and_search_match_brute_force(folder, model, tmp_path):
    path, module, variables = model
    out = str(tmp_path / "photos.npz")
    report = image_index.build_index([str(folder)], Encoder(module, variables), out,
                                     batch_size=4, save_every=2, model_name=path, progress=False)
    paths, _ = image_folder.find_images([str(folder)], recursive=True)
    good = [p for p in paths if pil_reads(p)]
    assert (report.embedded, report.reused, len(report.skipped), report.ignored) == (7, 0, 3, 1)
    assert not os.path.exists(out + ".partial")

    index = image_index.ImageIndex.load(out)
    assert index.paths == [os.path.abspath(p) for p in good]
    reference = reference_embeddings(module, variables, good)
    np.testing.assert_allclose(index.embeddings, reference, atol=2e-6)
    assert {s["path"] for s in index.meta["skipped"]} == {str(folder / b) for b in BAD}

    text = reference_text(module, variables, "a red car")
    expected = np.argsort(-(reference @ text), kind="stable")[:5]
    matches = image_index.search(index, "a red car", Encoder(module, variables), k=5)
    assert [m.path for m in matches] == [index.paths[i] for i in expected]
    np.testing.assert_allclose([m.score for m in matches], (reference @ text)[expected], atol=2e-6)


def test_search_normalises_embeddings_warns_of_paths_and_refuses_another_model(folder, model,
                                                                                tmp_path):
    """The trial's traps: an unnormalised float embedding scored 7.85 (called a cosine), a
    path given as a str was silently searched as text, k=-1 said "negative dimensions", and
    another model's encoder got meaningless scores; against NumPy's cosine similarities."""
    import pathlib

    import jax.numpy as jnp

    from clip_jax.errors import ConfigError

    _, module, variables = model
    encoder = Encoder(module, variables)
    index = image_index.build_index([str(folder)], encoder, tmp_path / "i.npz",
                                    progress=False).index
    reference = reference_embeddings(module, variables, index.paths)
    raw = np.asarray(module.apply(variables, clip_jax.preprocess(index.paths[2], module.config),
                                  method=module.encode_image))[0]
    assert np.linalg.norm(raw) > 1.5  # unnormalised, as encode_image returns it
    cosine = reference @ (raw / np.linalg.norm(raw.astype(np.float64)))
    expected = np.argsort(-cosine, kind="stable")[:4]
    for query in (raw, jnp.asarray(raw)):
        matches = image_index.search(index, query, encoder, k=4)
        assert [m.path for m in matches] == [index.paths[i] for i in expected]
        np.testing.assert_allclose([m.score for m in matches], cosine[expected], atol=2e-6)
    with pytest.raises(ValueError, match="all zeros"):
        image_index.search(index, np.zeros_like(raw), encoder)

    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"k={k!r}: ask for at least one match"):
            image_index.search(index, "a red car", encoder, k=k)
    with pytest.raises(ValueError, match=r"k=0: ask for at least one match"):
        index.top_k(reference[:1], k=0)

    image = index.paths[2]
    text = reference_text(module, variables, image)  # a str is a text, whatever it names
    with pytest.warns(UserWarning, match=r"searched as text, though it names an image file.*"
                      r"pathlib\.Path"):
        matches = image_index.search(index, image, encoder, k=3)
    np.testing.assert_allclose([m.score for m in matches],
                               np.sort(reference @ text)[::-1][:3], atol=2e-6)
    with warnings.catch_warnings():  # a caller that says so itself turns the warning off
        warnings.simplefilter("error")
        quiet = image_index.search(index, image, encoder, k=3, warn_image_name=False)
    assert [m.path for m in quiet] == [m.path for m in matches]
    matches = image_index.search(index, pathlib.Path(image), encoder, k=1)
    assert matches[0].path == image and matches[0].score == pytest.approx(1.0, abs=2e-6)

    other = Encoder(*clip_jax.create_model("test-vit", rng=4))  # same width, other weights
    for query in ("a red car", pathlib.Path(image)):
        with pytest.raises(ConfigError, match=r"The index was built with another model "
                           r"\(fingerprint [0-9a-f]{16}\) than the encoder's"):
            image_index.search(index, query, other)


def test_a_duplicate_image_ranks_after_its_first_copy_in_any_batch():
    """Two bit-identical rows scored 0.2337056100 and 0.2337056249 in one batched matrix
    product (OpenBLAS puts them in different blocks), and a later copy ranked before its first
    in 45 of 200 batched queries (trial AD). Every row duplicated: each pair scores alike, the
    first copy first, whether the queries come as one batch or one by one, and the ranking
    is numpy's float64 cosine order with ties to the lower index."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((289, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    embeddings = np.concatenate([base, base])  # row i and row 289 + i are one image
    index = image_index.ImageIndex(embeddings, [f"{i}.png" for i in range(len(embeddings))])
    queries = rng.standard_normal((200, 64)).astype(np.float32)
    batched = index.top_k(queries, 20)
    single = [index.top_k(q, 20) for q in queries]
    for q, (scores, indices), (one_scores, one_indices) in zip(queries, zip(*batched), single):
        np.testing.assert_array_equal(indices, one_indices[0])
        np.testing.assert_array_equal(scores, one_scores[0])
        assert np.all(indices[0::2] < 289) and np.all(indices[1::2] == indices[0::2] + 289)
        np.testing.assert_array_equal(scores[0::2], scores[1::2])
        cosine = base.astype(np.float64) @ (q / np.linalg.norm(q.astype(np.float64)))
        np.testing.assert_array_equal(indices[0::2], np.argsort(-cosine, kind="stable")[:10])
        np.testing.assert_allclose(scores[0::2], cosine[indices[0::2]], rtol=0, atol=1e-7)


def test_search_takes_exactly_one_query_and_names_what_is_wrong_with_it(model):
    """The trial's traps: a [Q, E] float query and a batch of images silently searched row 0
    only, a list of texts was read as one image ("images[0] is a list"), NaN was called "all
    zeros", float32 values near the maximum gave all-zero scores (the norm overflowed), and
    a query of another width ended with "()" for an index recording no model name. Against
    NumPy's cosine ranking of the same vectors."""
    import jax.numpy as jnp

    from clip_jax.errors import ConfigError

    _, module, variables = model
    encoder = Encoder(module, variables)
    rng = np.random.default_rng(5)
    dim = module.config.embed_dim
    embeddings = rng.standard_normal((6, dim))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    index = image_index.ImageIndex(embeddings.astype(np.float32), [f"{i}.png" for i in range(6)])

    def ranking(query, k=6):
        cosine = embeddings @ (query / np.linalg.norm(query))
        order = np.argsort(-cosine, kind="stable")[:k]
        return [index.paths[i] for i in order], cosine[order]

    def check(matches, query, k=6):
        paths, scores = ranking(np.asarray(query, np.float64).reshape(-1), k)
        assert [m.path for m in matches] == paths
        np.testing.assert_allclose([m.score for m in matches], scores, rtol=0, atol=2e-6)

    queries = rng.standard_normal((2, dim)).astype(np.float32)
    for query in (queries[:1], jnp.asarray(queries[1:]), np.full(dim, 3e38, np.float32)):
        check(image_index.search(index, query, encoder), query)
    for many in (queries, jnp.asarray(queries), queries[None]):
        with pytest.raises(ValueError, match=re.escape(
                f"search takes one query embedding, [E] or [1, E], got shape {many.shape} "
                "(image arrays are uint8); for several queries use index.top_k(embeddings, k)")):
            image_index.search(index, many, encoder)
    # An empty text was searched from Python (ranking by the embedding of nothing) while
    # `clip-jax search ""` refused it (trial AD)
    for empty in ("", "   "):
        with pytest.raises(ValueError, match=r"^The text query is empty; give the words to "
                                             r"search for\.$"):
            image_index.search(index, empty, encoder)
    # An embedding of another dtype was read as an image ("Image arrays must be [H, W] ...")
    for ints in (np.ones(dim, np.int32), jnp.ones(dim, jnp.int8), np.ones(dim, np.uint8)):
        with pytest.raises(ValueError, match=re.escape(
                f"search got a 1-D {ints.dtype} array of {dim}: an embedding query is float")):
            image_index.search(index, ints, encoder)
    # top_k takes unnormalised rows too (open_clip's encode_text features): each row is
    # normalised, so the scores are numpy's cosines whatever the row's scale
    scaled = np.concatenate([queries * [[7.5], [0.01]], np.full((1, dim), 3e38)]).astype(np.float32)
    for row, (srow, irow) in zip(scaled, zip(*index.top_k(scaled, 6))):
        paths, scores = ranking(row.astype(np.float64))
        assert [index.paths[i] for i in irow] == paths
        np.testing.assert_allclose(srow, scores, rtol=0, atol=2e-6)
    # float64 rows far beyond float32's range are directions too (were all-zero scores, or
    # refused as "all zeros")
    for scale in (1e-200, 1e200):
        (srow,), (irow,) = index.top_k(queries[:1].astype(np.float64) * scale, 6)
        paths, scores = ranking(queries[0].astype(np.float64))
        assert [index.paths[i] for i in irow] == paths
        np.testing.assert_allclose(srow, scores, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match=r"^Query embeddings are \[E\] or \[Q, E\], got shape "
                                         r"\(1, 2, \d+\)"):
        index.top_k(queries[None], 2)
    # complex rows would lose their imaginary part in the cast; strings would fail in numpy
    for bad in (queries[:1] + 1j * queries[1:2], queries[:1].astype(str)):
        with pytest.raises(TypeError, match=rf"^Query embeddings must be real numbers, got "
                                            rf"dtype {bad.dtype}"):
            index.top_k(bad, 2)
    # a bf16 model's features (ml_dtypes' bfloat16, numpy kind "V") are numbers
    (srow,), (irow,) = index.top_k(jnp.asarray(queries[:1], jnp.bfloat16), 3)
    assert [index.paths[i] for i in irow] == ranking(
        np.asarray(jnp.asarray(queries[0], jnp.bfloat16), np.float64))[0][:3]
    # integer rows are directions too (an int embedding from a hashed feature, say)
    (srow,), (irow,) = index.top_k(np.sign(queries[:1]).astype(np.int8), 3)
    assert [index.paths[i] for i in irow] == ranking(np.sign(queries[0]).astype(np.float64))[0][:3]
    for bad, problem in ((np.nan, "holds NaN or Inf"), (0.0, "is all zeros")):
        rows = scaled.copy()
        rows[1] = rows[1] * 0 + bad
        with pytest.raises(ValueError, match=rf"^Query row 1 \(of 3\) {problem}"):
            index.top_k(rows, 2)
    for bad in (np.nan, np.inf, -np.inf):
        query = queries[0].copy()
        query[3] = bad
        with pytest.raises(ValueError, match=r"^The query embedding holds NaN or Inf"):
            image_index.search(index, query, encoder)

    for query in (["a cat", "a dog"], ("a cat",), None, {"text": "a cat"}):
        with pytest.raises(TypeError) as error:
            image_index.search(index, query, encoder)
        assert str(error.value) == (
            "search takes one query, a str (text), a pathlib.Path, a PIL image, an image array "
            f"or an embedding, got a {type(query).__name__}; for several texts use "
            "index.top_k(encoder.embed_texts([...]), k).")
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for query in (image, image[None], jnp.asarray(image)):
        check(image_index.search(index, query, encoder, k=3),
              reference_embeddings(module, variables, [image])[0], k=3)
    with pytest.raises(ValueError, match=re.escape(
            "search takes one image, got an array of 2 (shape (2, 40, 50, 3)); for several use "
            "index.top_k(encoder.embed_images(images), k).")):
        image_index.search(index, np.stack([image, image]), encoder)

    narrow = queries[0, :dim // 2]
    with pytest.raises(ConfigError, match=rf"index {dim}-d: search with the index's model\.$"):
        image_index.search(index, narrow, encoder)
    index.meta["model"] = "ViT-Q"
    with pytest.raises(ConfigError, match=r"search with the index's model \(ViT-Q\)\.$"):
        image_index.search(index, narrow, encoder)


def test_load_refuses_what_is_not_an_index(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    for name in ("garbage.npz", "other.npz"):
        with pytest.raises(ValueError, match="is not a clip_jax image index") as error:
            image_index.ImageIndex.load(str(tmp_path / name))
        assert len(str(error.value).splitlines()) == 1
    with pytest.raises(FileNotFoundError, match="clip-jax index"):
        image_index.ImageIndex.load(str(tmp_path / "absent.npz"))


def test_interrupted_index_resumes_without_re_embedding(folder, model, tmp_path, capsys):
    _, module, variables = model
    out = str(tmp_path / "resume.npz")

    with pytest.raises(KeyboardInterrupt):
        image_index.build_index([str(folder)], interrupted_at(3)(module, variables), out,
                                batch_size=2, save_every=1, progress=False)
    assert not os.path.exists(out) and os.path.isdir(out + ".partial")

    embedded = []

    class Counting(Encoder):
        def embed_pixels(self, pixels):
            embedded.append(len(pixels))
            return super().embed_pixels(pixels)

    # A model.json cut short (a full disk, trial AL) failed every rerun with a JSONDecodeError:
    # it is skipped with a warning, and its parts, of a model it no longer names, go too
    shutil.copytree(out + ".partial", tmp_path / "kept.partial")
    (tmp_path / "resume.npz.partial" / "model.json").write_text("")
    report = image_index.build_index([str(folder)], Counting(module, variables), out,
                                     batch_size=2, progress=False)
    assert (report.reused, report.embedded, sum(embedded)) == (0, 7, 7)
    assert "skipping the unreadable progress file" in capsys.readouterr().err
    os.remove(out)
    shutil.copytree(tmp_path / "kept.partial", out + ".partial")
    embedded.clear()
    report = image_index.build_index([str(folder)], Counting(module, variables), out,
                                     batch_size=2, progress=False)
    # saved before the interruption: batches [a.png, b/c.jpg] and [b/d/e.png, b/d/f.webp]
    assert (report.reused, report.embedded, sum(embedded)) == (4, 3, 3)
    paths, _ = image_folder.find_images([str(folder)], recursive=True)
    good = [p for p in paths if pil_reads(p)]
    np.testing.assert_allclose(image_index.ImageIndex.load(out).embeddings,
                               reference_embeddings(module, variables, good), atol=2e-6)

    os.utime(good[-1], ns=(1, 1))  # a changed file is embedded again; the rest is reused
    embedded.clear()
    report = image_index.build_index([str(folder)], Counting(module, variables), out,
                                     progress=False)
    assert (report.reused, report.embedded, sum(embedded)) == (6, 1, 1)

    other = Encoder(*clip_jax.create_model("test-vit", rng=4))
    os.makedirs(out + ".partial")
    with open(out + ".partial/model.json", "w") as f:
        json.dump({"fingerprint": image_index.model_fingerprint(Counting(module, variables))}, f)
    with pytest.raises(ValueError, match="another model"):
        image_index.build_index([str(folder)], other, out, progress=False)
    with open(out + ".partial/model.json", "w") as f:  # a record naming no model: not "(None)"
        json.dump({}, f)
    with pytest.raises(ValueError, match=r"another model \(its model\.json names none\)"):
        image_index.build_index([str(folder)], other, out, progress=False)
    shutil.rmtree(out + ".partial")  # a finished index of another model: embedded again, said
    capsys.readouterr()
    report = image_index.build_index([str(folder)], other, out, progress=False)
    assert (report.reused, report.embedded) == (0, 7)
    assert re.search(rf"^note: the index {re.escape(out)} was built with another model "
                     r"\([0-9a-f]{16}\), so none of its 7 embeddings is reused",
                     capsys.readouterr().err)  # built by the API: no model name, its fingerprint
    # Other weights under the model name the index records (a run that trained on) read "was
    # built with another model (/path)", the path of the model given now (trial AD)
    image_index.build_index([str(folder)], other, out, progress=False, model_name="/m")
    capsys.readouterr()
    image_index.build_index([str(folder)], Counting(module, variables), out, progress=False,
                            model_name="/m")
    assert f"note: the index {out} was built with other weights at the same path (/m), so " in (
        capsys.readouterr().err)


def test_an_interruption_keeps_the_batches_embedded_since_the_last_save(folder, model,
                                                                        tmp_path):
    """Trial H: Ctrl-C between saves (default every 4096 images) lost every batch embedded
    since the last one, while the message said they were kept."""
    _, module, variables = model
    out = str(tmp_path / "kept.npz")
    with pytest.raises(KeyboardInterrupt):
        image_index.build_index([str(folder)], interrupted_at(3)(module, variables), out,
                                batch_size=2, save_every=1000, progress=False)
    report = image_index.build_index([str(folder)], Encoder(module, variables), out,
                                     batch_size=2, progress=False)
    assert (report.reused, report.embedded) == (4, 3)  # the two batches before the third


def test_index_records_its_image_options_reuses_only_equal_ones_and_search_reads_by_them(
        model, tmp_path, capsys):
    path, module, variables = model
    rng = np.random.default_rng(7)
    photos = tmp_path / "photos"
    photos.mkdir()
    rgba = rng.integers(0, 256, (40, 52, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(52) < 26, 0, 255)  # left half transparent
    Image.fromarray(rgba, "RGBA").save(photos / "logo.png")
    Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(photos / "p.png")
    logo = Image.open(photos / "logo.png")
    on_white = Image.alpha_composite(Image.new("RGBA", logo.size, "white"), logo).convert("RGB")
    references = {"white": reference_embeddings(module, variables, [on_white])[0],
                  "drop": reference_embeddings(module, variables, [logo.convert("RGB")])[0]}
    assert references["white"] @ references["drop"] < 0.999  # the option matters
    out = str(tmp_path / "logos.npz")
    errors = []

    def index(*flags):
        assert cli.main(["index", str(photos), "--model", path, "--output", out, *flags]) == 0
        loaded = image_index.ImageIndex.load(out)
        captured = capsys.readouterr()
        errors.append(captured.err)
        return captured.out, loaded, loaded.paths.index(str(photos / "logo.png"))

    summary, loaded, i = index("--alpha", "white")
    assert "(2 embedded, 0 reused)" in summary
    assert loaded.meta["image_options"] == {"exif_transpose": True, "alpha": [255, 255, 255]}
    np.testing.assert_allclose(loaded.embeddings[i], references["white"], atol=2e-6)
    assert "(0 embedded, 2 reused)" in index("--alpha", "#FFFFFF")[0]  # the same colour
    # One image with other options: the index's other image is left out, and counted
    # (trial H: the summary said nothing of it).
    shutil.copy(out, tmp_path / "one.npz")
    assert cli.main(["index", str(photos / "p.png"), "--model", path, "--output",
                     str(tmp_path / "one.npz"), "--alpha", "drop"]) == 0
    assert "1 file(s) of the previous index left out" in capsys.readouterr().out
    assert cli.main(["search", out, "--image", str(photos / "logo.png"), "--output", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert table["path"][0] == str(photos / "logo.png")
    np.testing.assert_allclose(table["score"][0], 1.0, atol=1e-5)  # read on white, as indexed
    # The Python search too, whatever the encoder's options (trial H: it read the query with
    # the encoder's, alpha dropped, and the logo did not find itself).
    (top,) = image_index.search(loaded, photos / "logo.png", Encoder(module, variables), k=1)
    assert top.path == str(photos / "logo.png")
    np.testing.assert_allclose(top.score, 1.0, atol=1e-5)

    summary, loaded, i = index("--alpha", "drop", "--no-exif-transpose")
    assert "(2 embedded, 0 reused)" in summary  # other options: nothing reused, and said
    assert (f"note: the index {out} was built with other image options (--alpha #ffffff "
            "--exif-transpose, now --alpha drop --no-exif-transpose), so none of its 2 "
            "embeddings is reused: the images given are embedded again.") in errors[-1]
    np.testing.assert_allclose(loaded.embeddings[i], references["drop"], atol=2e-6)

    os.makedirs(out + ".partial")
    with open(out + ".partial/model.json", "w") as f:
        json.dump({"fingerprint": loaded.meta["fingerprint"]}, f)  # the defaults, implied
    assert cli.main(["index", str(photos), "--model", path, "--output", out, "--alpha",
                     "#808080", "--no-exif-transpose"]) == 2
    assert ("holds an unfinished index read with other image options (--alpha drop "
            "--exif-transpose, now --alpha #808080 --no-exif-transpose); rerun with those"
            ) in capsys.readouterr().err


def test_progress_into_a_log_file_is_one_line_per_save(folder, model, tmp_path, capsys):
    """stderr not a terminal (a job's log): tqdm's redraws filled it with carriage-return
    lines; each save is now one plain line with the count so far, the rate and what is left."""
    _, module, variables = model
    paths, _ = image_folder.find_images([str(folder)], recursive=True)
    image_index.build_index([str(folder)], Encoder(module, variables), tmp_path / "p.npz",
                            batch_size=2, save_every=2)
    err = capsys.readouterr().err
    assert "\r" not in err
    counts = [(int(m[1]), int(m[2])) for m in re.finditer(
        r"^index: (\d+)/(\d+) files read( \([\d.]+ files/s"
        r"(, (\d+s|\d+m\d\ds|\d+h\d\dm) to go)?\))?, saved$", err, re.M)]
    assert len(counts) >= 3 and counts[-1] == (len(paths), len(paths))
    assert [c for c, _ in counts] == sorted({c for c, _ in counts})  # growing, one per save


@pytest.mark.parametrize("read,total,seconds,left", [
    (4096, 10000, 100.0, ", 2m24s to go"), (95, 100, 95.0, ", 5s to go"),
    (100, 100, 80.0, ""), (1, 20_000, 1.0, ", 5h33m to go")])
def test_a_progress_line_says_what_is_left_in_the_units_it_needs(read, total, seconds, left):
    """Near the end it read '0.1 min to go' (and '0.0 min to go')."""
    rate = read / seconds
    assert image_index._progress_line(read, total, rate) == (
        f"index: {read}/{total} files read ({rate:.1f} files/s{left}), saved")


def test_the_index_rate_leaves_out_the_first_batchs_start_up_and_compile():
    """The rate counted from the start, its first batch's compile spread over the run: "9s to
    go" where 2.2 s were left (trial CT). It runs from the first batch's end, and is not
    given until a second batch has ended."""
    from clip_jax.runtime.logs import steady_rate

    assert steady_rate(1064, 11.0, (64, 10.0)) == 1000.0
    # At the first batch's own line, no rate yet (trial CU: "36s to go" with 0.4 s left).
    assert steady_rate(64, 10.0, (64, 10.0)) is None and steady_rate(0, 0.0, None) is None
    assert image_index._progress_line(16, 400, None) == "index: 16/400 files read, saved"


def test_cli_index_search_and_zero_shot_outputs(folder, model, tmp_path, capsys, monkeypatch,
                                                caplog):
    path, module, variables = model
    out = str(tmp_path / "cli.npz")
    # --batch-size is the model's batch too: the image tower was compiled at the Encoder's
    # default 32 rows whatever was asked (trial AD)
    padded = []
    batched = Encoder._batched
    monkeypatch.setattr(Encoder, "_batched", lambda self, fn, x: padded.append(
        self.batch_size) or batched(self, fn, x))
    assert cli.main(["index", str(folder), "--model", path, "--output", out,
                     "--batch-size", "5"]) == 0
    assert cli.main(["zero-shot", str(folder), "--model", path, "--labels", "a,b",
                     "--batch-size", "3"]) == 0
    assert set(padded) == {5, 3}, padded
    monkeypatch.undo()
    os.remove(out)
    assert cli.main(["index", str(folder), "--model", path, "--output", out]) == 0
    captured = capsys.readouterr()
    assert "Indexed 7 images" in captured.out and "3 unreadable" in captured.err
    for bad in BAD:
        assert f"skipped {folder / bad}: " in captured.err

    paths, _ = image_folder.find_images([str(folder)], recursive=True)
    good = [os.path.abspath(p) for p in paths if pil_reads(p)]
    reference = reference_embeddings(module, variables, good)
    query = reference[2]  # an indexed image finds itself first
    assert cli.main(["search", out, "--image", good[2], "--top", "3", "--output", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    expected = np.argsort(-(reference @ query), kind="stable")[:3]
    assert list(table["path"]) == [good[i] for i in expected]
    np.testing.assert_allclose(table["score"], (reference @ query)[expected], atol=1e-5)

    # The query after an option (trial AZ: argparse said "unrecognized arguments").
    assert cli.main(["search", out, "--output", "json", "a photo of a dog"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert "context" not in captured.err + caplog.text
    # A query longer than the context is cut, as OpenAI's tokenizer cuts it: said (trial AZ).
    assert cli.main(["search", out, "a photo of a dog " * 20, "--top", "1"]) == 0
    assert (f"fills the model's {module.config.context_length}-token context, so any words "
            "past it are cut" in caplog.text)  # on stderr as "warning: ..." (logs.py)
    text = reference_text(module, variables, "a photo of a dog")
    assert [r["path"] for r in rows] == [good[i] for i in np.argsort(-(reference @ text),
                                                                      kind="stable")]

    # The model at the recorded path changed since (a run that trained on): refused, with or
    # without --model, as the search would compare another model's text with these images
    # (it used to warn and print meaningless scores); the same model elsewhere is searched.
    other = tmp_path / "other"
    shutil.copytree(path, other)
    out_other = str(tmp_path / "other.npz")
    assert cli.main(["index", str(folder), "--model", str(other), "--output", out_other]) == 0
    capsys.readouterr()
    shutil.rmtree(other)
    hf_export.export_hf(module.config, clip_jax.create_model("test-vit", rng=4)[1], str(other))
    for extra in ([], ["--model", str(other)]):
        assert cli.main(["search", out_other, "a photo of a dog", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"error: {other} holds another model now than when {out_other} was built"), extra
    assert cli.main(["search", out, "a photo of a dog", "--model", str(other)]) == 2
    assert f"error: --model {other} is not the model {out} was built with ({path})" in (
        capsys.readouterr().err)
    assert cli.main(["search", out_other, "a photo of a dog", "--model", path,
                     "--output", "json"]) == 0  # the indexed model, moved: its own ranking
    assert [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()] == [
        good[i] for i in np.argsort(-(reference @ text), kind="stable")]

    labels = ["cat", "dog", "red car"]
    assert cli.main(["zero-shot", "--model", path, "--labels", ",".join(labels), "--recursive",
                     "--output", "csv", "--batch-size", "4", str(folder)]) == 0
    captured = capsys.readouterr()
    table = pd.read_csv(io.StringIO(captured.out))
    assert list(table["path"]) == [p for p in paths if pil_reads(p)]
    prompts = np.stack([reference_text(module, variables, f"a photo of a {x}.") for x in labels])
    logits = np.exp(float(variables["params"]["logit_scale"])) * reference @ prompts.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(table[labels].to_numpy(), probs, atol=1e-5)
    assert list(table["label"]) == [labels[k] for k in probs.argmax(1)]
    assert "3 unreadable image file(s) skipped" in captured.err

    assert cli.main(["zero-shot", "--model", path, "--labels", "cat,dog", "--output", "json",
                     str(folder)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [p for p in paths if "/" not in os.path.relpath(
        p, folder) and pil_reads(p)]
    assert cli.main(["zero-shot", "--model", path, "--labels", "cat,dog",
                     str(folder / "empty.jpg")]) == 2
    assert "None of the 1 image file(s) could be read" in capsys.readouterr().err


def test_single_inputs_paths_overlaps_and_unreadable_queries(folder, model, tmp_path, capsys):
    """The trial's inputs: one string is one text / one input (not its characters), a Path
    output, overlapping inputs indexed once, an unreadable image named with its reason, a
    non-npz "index", a damaged progress part, an empty query; against NumPy's embeddings."""
    import pathlib

    path, module, variables = model
    encoder = Encoder(module, variables)
    text = reference_text(module, variables, "a red circle")
    got = encoder.embed_texts("a red circle")
    assert got.shape == (1, module.config.embed_dim)
    np.testing.assert_allclose(got[0], text, atol=2e-6)
    one = str(folder / "a.png")
    np.testing.assert_allclose(encoder.embed_images(one), reference_embeddings(
        module, variables, [one]), atol=2e-6)
    np.testing.assert_allclose(encoder.embed_images(pathlib.Path(one)), encoder.embed_images([one]))
    with pytest.raises(ValueError, match="trunc.jpg.*truncated"):
        encoder.embed_images([one, str(folder / "trunc.jpg")])
    with pytest.raises(FileNotFoundError, match="No image file at '.*absent.png'"):
        encoder.embed_images(str(folder / "absent.png"))
    with pytest.raises(ValueError, match="b': a folder, not an image file"):  # was: no such file
        encoder.embed_images(str(folder / "b"))

    sub = str(folder / "b")
    report = image_index.build_index(sub, encoder, tmp_path / "one.npz", progress=False)
    assert report.index.paths == [os.path.abspath(p) for p in
                                  image_folder.find_images([sub], True)[0] if pil_reads(p)]
    assert "index=" not in repr(report) and "embeddings" not in repr(report)
    overlapping = [str(folder), sub, os.path.join(str(folder), ".", "a.png")]
    report = image_index.build_index(overlapping, encoder, str(tmp_path / "dup.npz"),
                                     progress=False)
    named = image_folder.find_images(overlapping, True)[0]
    distinct = {os.path.abspath(p) for p in named}
    assert len(report.index) == len({p for p in distinct if pil_reads(p)}) == 7
    assert report.duplicates == len(named) - len(distinct) > 0
    assert "indexed once" in report.summary("dup.npz")
    # A file linked by name, beside a folder link reaching it again: indexed once too.
    (tmp_path / "links").mkdir()
    os.symlink(folder / "a.png", tmp_path / "links" / "linked_a.png")
    os.symlink(folder / "b", tmp_path / "links" / "b_again")
    report = image_index.build_index([str(tmp_path / "links"), str(folder / "a.png"), sub],
                                     encoder, str(tmp_path / "links.npz"), progress=False)
    real = [os.path.realpath(p) for p in report.index.paths]
    assert len(real) == len(set(real)) and os.path.realpath(folder / "a.png") in real
    # The file's own path where one reached it (trial s43U: the link's path was kept), in the
    # position of the first path to it; a file reached through links only keeps the first.
    assert report.index.paths[0] == os.path.join(sub, "c.jpg")
    assert str(tmp_path / "links" / "linked_a.png") not in report.index.paths
    assert report.duplicates == 1 + len(image_folder.find_images([sub], True)[0])

    (tmp_path / "table.csv").write_text("filepath,title\na.png,a cat\n")
    with pytest.raises(ValueError, match="not an .npz archive") as error:
        image_index.ImageIndex.load(tmp_path / "table.csv")
    assert "pickle" not in str(error.value)

    def damaged_part(out, damage):
        """An index interrupted after its first part, that part then damaged; the rerun's
        report and stderr."""
        with pytest.raises(KeyboardInterrupt):
            image_index.build_index([str(folder)], interrupted_at(2)(module, variables), out,
                                    batch_size=2, save_every=1, progress=False)
        (part,) = [p for p in os.listdir(out + ".partial") if p.startswith("part-")]
        with open(os.path.join(out + ".partial", part), "r+b") as f:
            damage(f)
        capsys.readouterr()
        report = image_index.build_index([str(folder)], encoder, out, progress=False)
        return part, report, capsys.readouterr().err

    _, report, err = damaged_part(str(tmp_path / "part.npz"), lambda f: f.truncate(100))
    assert "unreadable progress file" in err
    assert (report.reused, report.embedded) == (0, 7)
    # A part that is no .npz at all is said to be so, not with numpy's advice to load it
    # with pickles allowed (trial CO)
    part, _, err = damaged_part(str(tmp_path / "garbage.npz"),
                                lambda f: (f.write(b"garbage\n"), f.truncate()))
    assert f"{part} (not a NumPy .npz file); its images are embedded again." in err, err
    assert "pickle" not in err, err

    index = str(tmp_path / "one.npz")
    for query, message in ((["--image", str(folder / "trunc.jpg")], "cannot be read"),
                           (["--image", str(folder / "b" / "text.jpg")], "cannot be read"),
                           (["   "], "text query is empty")):
        assert cli.main(["search", index, *query, "--model", path]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_ctrl_c_while_indexing_is_one_line_and_exit_130(folder, model, tmp_path, monkeypatch,
                                                         capsys):
    path, _, _ = model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(image_index, "build_index", interrupted)
    out = str(tmp_path / "x.npz")
    assert cli.main(["index", str(folder), "--model", path, "--output", out]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.npz.partial/" in err[0] and "Traceback" not in err[0], err


def test_a_broken_link_in_a_folder_is_skipped_and_named(folder, model, tmp_path):
    """A link whose target is gone stopped `build_index` with FileNotFoundError (no index
    written); it is now skipped with its reason, and a link to an image is indexed."""
    import shutil

    _, module, variables = model
    root = tmp_path / "photos"
    shutil.copytree(folder / "b", root)
    os.symlink(tmp_path / "gone.jpg", root / "broken.jpg")
    os.symlink(folder / "a.png", root / "linked.png")
    report = image_index.build_index(str(root), Encoder(module, variables),
                                     tmp_path / "i.npz", progress=False)
    listed = image_folder.find_images([str(root)], True)[0]
    assert str(root / "broken.jpg") in listed
    assert report.index.paths == [os.path.abspath(p) for p in listed if pil_reads(p)]
    assert str(root / "linked.png") in report.index.paths
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons[str(root / "broken.jpg")] == "a broken link"  # was "no such file" (trial G)


def test_an_index_of_nothing_readable_is_refused_and_not_written(model, tmp_path, capsys):
    """`clip-jax index` of files none of which PIL reads wrote an empty index and exited 0,
    and searching it printed nothing, exit 0 (zero-shot on the same folder said it in one
    line). Now nothing is written and the reasons are named; an empty index an earlier
    version wrote is refused by search."""
    from clip_jax.errors import ConfigError

    path, module, variables = model
    root = tmp_path / "bad"
    root.mkdir()
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    assert not any(pil_reads(str(p)) for p in root.iterdir())
    out = tmp_path / "i.npz"
    with pytest.raises(ValueError, match=r"^build_index got no images to index \(an empty "
                                         r"list\); pass image files or folders\.$"):
        image_index.build_index([], Encoder(module, variables), out, progress=False)
    with pytest.raises(ConfigError, match=r"^None of the 2 image file\(s\) could be read "
                                          r"\(text.jpg: .*; zero.jpg: .*\); no index written"):
        image_index.build_index(str(root), Encoder(module, variables), out, progress=False)
    assert not os.path.exists(out) and not os.path.exists(f"{out}.partial")
    assert cli.main(["index", str(root), "--model", path, "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: None of the 2 image file(s)")
    dim = module.config.embed_dim
    image_index.ImageIndex(np.zeros((0, dim), np.float32), [], np.zeros(0, np.int64),
                           np.zeros(0, np.int64), {"model": path}).save(out)
    assert cli.main(["search", str(out), "a cat"]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_search_after_the_indexs_model_moved_says_to_pass_model(folder, model, tmp_path,
                                                               capsys):
    """The model folder recorded in the index moved: search answered "No checkpoint at
    '<path>': ..." without saying the path came from the index, nor that --model fixes it."""
    import shutil

    path, _, _ = model
    shutil.copytree(path, tmp_path / "model")
    out = str(tmp_path / "i.npz")
    assert cli.main(["index", str(folder / "b"), "--model", str(tmp_path / "model"),
                     "--output", out]) == 0
    (tmp_path / "model").rename(tmp_path / "moved")
    capsys.readouterr()
    assert cli.main(["search", out, "a cat"]) == 2
    assert capsys.readouterr().err == (
        f"error: {out} was built with the model at {tmp_path / 'model'}, which is not there "
        "now; pass --model with where it is (the same weights: the index checks them).\n")
    assert cli.main(["search", out, "a cat", "--model", str(tmp_path / "moved")]) == 0


def test_reindexing_after_files_are_deleted_says_how_many_were_left_out(folder, model,
                                                                       tmp_path):
    """Indexing a folder again after some of its images were deleted left them out of the
    index without a word in the summary."""
    import shutil

    _, module, variables = model
    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    out = str(tmp_path / "i.npz")
    first = image_index.build_index(str(root), Encoder(module, variables), out, progress=False)
    assert first.dropped == 0 and "left out" not in first.summary(out)
    gone = first.index.paths[:2]
    for path in gone:
        os.remove(path)
    again = image_index.build_index(str(root), Encoder(module, variables), out, progress=False)
    assert set(first.index.paths) - set(again.index.paths) == set(gone)
    assert again.dropped == 2 and again.reused == len(again.index)
    assert again.summary(out).endswith("; 2 file(s) of the previous index left out (deleted, "
                                       "or not under these inputs).")


def test_sigterm_while_indexing_keeps_the_batches_and_says_so(folder, model, tmp_path,
                                                              monkeypatch, capsys):
    """SIGTERM (a job scheduler's stop) ended `clip-jax index` with exit 143 and no word; it
    now does what Ctrl-C does: one line saying where the finished batches are, exit 143."""
    import signal

    path, _, _ = model

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the build")

    monkeypatch.setattr(image_index, "build_index", terminated)
    out = str(tmp_path / "x.npz")
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["index", str(folder), "--model", path, "--output", out]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"Terminated: the images embedded so far are kept in {out}.partial/; run "
                   "the same command to go on from there."]
    assert signal.getsignal(signal.SIGTERM) == before


def test_text_output_keeps_one_line_per_image_whatever_the_file_name(model, tmp_path, capsys):
    """A file name with a line break (legal on Linux; a scraper's title) printed over two lines
    of `zero-shot` and `search` text output, so a line no longer was an image. Such a name
    prints quoted and escaped; CSV and JSON keep the name itself (pandas and json read it)."""
    from PIL import Image

    path, _, _ = model
    root = tmp_path / "odd"
    root.mkdir()
    names = ["plain.png", "two\nlines.png", "tab\there.png"]
    rng = np.random.default_rng(1)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name)
    assert cli.main(["zero-shot", "--model", path, "--labels", "cat,dog", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert sorted(line.rsplit(": ", 1)[0] for line in lines) == sorted(
        [str(root / "plain.png"), repr(str(root / "two\nlines.png")),
         repr(str(root / "tab\there.png"))])
    assert cli.main(["zero-shot", "--model", path, "--labels", "cat,dog", "--output", "csv",
                     str(root)]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert sorted(table["path"]) == sorted(str(root / n) for n in names)
    out = str(tmp_path / "odd.npz")
    assert cli.main(["index", str(root), "--model", path, "--output", out]) == 0
    capsys.readouterr()
    assert cli.main(["search", out, "a photo of a dog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and any(repr(str(root / "two\nlines.png")) in x for x in lines)
    assert cli.main(["search", out, "a photo of a dog", "--output", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(os.path.abspath(root / n) for n in names)


def test_an_encoder_built_again_for_the_same_model_compiles_nothing(model):
    """Every `Encoder` jitted its own image and text functions: a zero-shot classifier or an
    index search rebuilt per call (a notebook cell run twice, new weights of the same model)
    compiled both towers again. Their embeddings still follow the variables given."""
    from compile_count import backend_compiles

    _, module, variables = model
    pixels = np.random.default_rng(1).random((3, 32, 32, 3), np.float32)
    tokens = clip_jax.tokenize(["a red car", "a dog"], module.config.context_length)
    Encoder(module, variables).embed_pixels(pixels), Encoder(module, variables).embed_tokens(tokens)
    other = clip_jax.create_model("test-vit", rng=4)[1]
    with backend_compiles() as compiles:
        again = Encoder(clip_jax.models.CLIP(module.config), other, batch_size=32)
        images, texts = again.embed_pixels(pixels), again.embed_tokens(tokens)
    assert compiles == []
    expected = np.asarray(module.apply(other, pixels, method=module.encode_image))
    np.testing.assert_allclose(images, expected / np.linalg.norm(expected, axis=1, keepdims=True),
                               atol=2e-6)
    expected = np.asarray(module.apply(other, tokens, method=module.encode_text))
    np.testing.assert_allclose(texts, expected / np.linalg.norm(expected, axis=1, keepdims=True),
                               atol=2e-6)
