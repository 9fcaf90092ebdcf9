"""What counts as one image or a batch (`clip_jax.data.preprocess.image_list`), shared by
`preprocess` and `Encoder.embed_images`, and the pixel dtypes `encode_image` takes.

References: transformers' `CLIPImageProcessor` on PIL images built from the same arrays (in
the mode each layout stands for: L, LA, RGB, RGBA), embedded with `Encoder.embed_pixels`
where embeddings are compared, and numpy's stacking and normalisation for `encode_image`.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
pytest.importorskip("transformers")  # the test extra; without it these tests skip
from transformers import CLIPImageProcessor

from clip_jax.data.preprocess import image_list, preprocess
from clip_jax.errors import ConfigError
from clip_jax.inference.encoder import Encoder
from clip_jax.models.clip import create_model
from clip_jax.models.presets import get_preset

CONFIG = get_preset("test-vit")  # 32 px


def pixels(*shape: int, seed: int = 0) -> np.ndarray:
    """Random uint8 pixels: every image and channel differs, so a misread layout shows."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def reference(images: list[Image.Image], config=CONFIG) -> np.ndarray:
    """CLIPImageProcessor configured like the model, NHWC float32."""
    processor = CLIPImageProcessor(
        size={"shortest_edge": config.resize_shortest_side},
        crop_size={"height": config.image_size, "width": config.image_size},
        image_mean=list(config.image_mean), image_std=list(config.image_std))
    return processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)


def pil(array: np.ndarray) -> Image.Image:
    """One image array as the PIL image it stands for, converted to RGB (alpha dropped)."""
    if array.ndim == 2 or array.shape[2] == 1:
        return Image.fromarray(array.reshape(array.shape[:2]), "L").convert("RGB")
    return Image.fromarray(array, {2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]).convert("RGB")


@pytest.fixture(scope="module")
def encoder():
    return Encoder(*create_model("test-vit", rng=1), batch_size=8)


@pytest.mark.parametrize("n", [1, 5, 7, 12])
def test_greyscale_batches_give_one_embedding_per_image(encoder, n):
    """[N, H, W] is N greyscale images for preprocess and embed_images alike (embed_images
    returned one embedding for any 3-D array), as numpy or jax arrays."""
    batch = pixels(n, 40, 50, seed=n)
    expected = reference([Image.fromarray(image, "L").convert("RGB") for image in batch])
    for images in (batch, jnp.asarray(batch)):
        np.testing.assert_allclose(preprocess(images, CONFIG), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(encoder.embed_images(images), encoder.embed_pixels(expected),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1), (40, 50, 2), (40, 50, 3), (40, 50, 4),
                                   (3, 40, 50, 3), (6, 40, 50, 2), (6, 40, 50)])
def test_jax_arrays_are_read_as_numpy_arrays(encoder, shape):
    """One image or a batch by the same rule for jax.Arrays (a jax [H, W, 3] image was read as
    H greyscale rows), in preprocess and embed_images."""
    array = pixels(*shape, seed=len(shape))
    one = len(shape) == 2 or (len(shape) == 3 and shape[2] <= 4)
    expected = reference([pil(array)] if one else [pil(image) for image in array])
    for images in (array, jnp.asarray(array)):
        assert [np.shape(image) for image in image_list(images)] == (
            [shape] if one else [shape[1:]] * shape[0])
        np.testing.assert_allclose(preprocess(images, CONFIG), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(encoder.embed_images(jnp.asarray(array)),
                               encoder.embed_pixels(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grey_alpha_arrays_are_la_images(seed):
    """[H, W, 2] is one grey + alpha image (it was H images), handled as a PIL "LA" image:
    alpha dropped by default as convert("RGB"), composited for a colour as the processor
    does onto white."""
    array = pixels(30 + seed, 45, 2, seed=seed)
    array[:, :10, 1] = 0  # transparent, with grey stored under it
    la = Image.fromarray(array, "LA")
    np.testing.assert_allclose(preprocess(array, CONFIG), reference([la.convert("RGB")]),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(preprocess(array, CONFIG, alpha="white"), reference([la]),
                               rtol=0, atol=1e-5)
    np.testing.assert_array_equal(preprocess(array, CONFIG, alpha=(10, 200, 30)),
                                  preprocess(la, CONFIG, alpha=(10, 200, 30)))


@pytest.mark.parametrize("shape,fix", [
    ((3, 40, 50), "np.transpose(x, (1, 2, 0))"), ((4, 40, 50), "np.transpose(x, (1, 2, 0))"),
    ((2, 40, 50), "np.transpose(x, (1, 2, 0))"), ((5, 3, 40, 50), "np.transpose(x, (0, 2, 3, 1))"),
    ((2, 1, 40, 50), "np.transpose(x, (0, 2, 3, 1))")])
def test_channels_first_arrays_are_refused_with_the_fix(encoder, shape, fix):
    """PyTorch's [C, H, W] (and [N, C, H, W]) layout was read as C greyscale images (or one
    image of the red channel in embed_images); now ValueError naming the transpose, which
    gives the processor's result."""
    array = pixels(*shape, seed=sum(shape))
    one = array if len(shape) == 3 else array[0]  # a channels-first image
    for images, message in ((array, fix), (jnp.asarray(array), fix),
                            ([pixels(40, 50, 3), one], r"images[1]: ")):
        with pytest.raises(ValueError, match="looks channels-first") as error:
            preprocess(images, CONFIG)
        assert message in str(error.value)
        with pytest.raises(ValueError, match="looks channels-first"):
            encoder.embed_images(images)
    fixed = np.transpose(array, (1, 2, 0) if len(shape) == 3 else (0, 2, 3, 1))
    expected = reference([pil(fixed)] if len(shape) == 3 else [pil(image) for image in fixed])
    np.testing.assert_allclose(preprocess(fixed, CONFIG), expected, rtol=0, atol=1e-5)
    if len(shape) == 3:  # 2 to 4 greyscale images: the other fixes the message names
        with pytest.raises(ValueError, match=re.escape("[N, H, W, 1] array (x[..., None]) or a "
                                                       "list")):
            preprocess(array, CONFIG)
        grey = reference([pil(image) for image in array])
        np.testing.assert_allclose(preprocess(array[..., None], CONFIG), grey, rtol=0, atol=1e-5)
        np.testing.assert_allclose(preprocess(list(array), CONFIG), grey, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bands", [5, 8])
def test_arrays_of_5_to_8_bands_are_refused_not_read_as_greyscale_rows(encoder, bands):
    """[40, 40, 5] was read as 40 greyscale images 5 px wide; now ValueError naming the shape,
    whose two fixes give the processor's results. A last axis of 9 stays a greyscale batch."""
    array = pixels(40, 50, bands, seed=bands)
    for images in (array, jnp.asarray(array)):
        for call in (lambda x: preprocess(x, CONFIG), encoder.embed_images):
            with pytest.raises(ValueError, match=re.escape(
                    f"Image arrays have 1 to 4 channels, got shape (40, 50, {bands}): not one "
                    "image [H, W, C]")):
                call(images)
    np.testing.assert_allclose(preprocess(array[..., :3], CONFIG), reference([pil(array[..., :3])]),
                               rtol=0, atol=1e-5)
    narrow = reference([pil(image) for image in array])
    np.testing.assert_allclose(preprocess(array[..., None], CONFIG), narrow, rtol=0, atol=1e-5)
    nine = pixels(40, 50, 9)
    np.testing.assert_allclose(preprocess(nine, CONFIG), reference([pil(i) for i in nine]),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("image", [
    np.zeros((0, 0, 3), np.uint8), np.zeros((0, 7, 3), np.uint8), np.zeros((5, 0), np.uint8),
    np.zeros((6, 0, 9), np.uint8), Image.new("RGB", (0, 4)), Image.new("L", (4, 0))])
def test_images_without_pixels_are_refused(image):
    """Zero height or width: ValueError naming the shape (was ZeroDivisionError)."""
    with pytest.raises(ValueError, match=r"images\[0\] has zero height or width \(shape \("):
        preprocess(image, CONFIG)


def test_inputs_that_are_not_images():
    """None and other types: TypeError naming what is accepted (was "has no len()");
    iterators are read as lists; every item of a batch must be one image."""
    arrays = [pixels(40, 50, 3, seed=s) for s in range(3)]
    expected = reference([pil(a) for a in arrays])
    for batch in ((Image.fromarray(a) for a in arrays), iter(arrays), map(jnp.asarray, arrays),
                  tuple(arrays)):
        np.testing.assert_allclose(preprocess(batch, CONFIG), expected, rtol=0, atol=1e-5)
    for bad in (None, 3, {"image": arrays[0]}, b"\x89PNG"):
        with pytest.raises(TypeError, match="images must be a PIL image, an image file path, a "
                                            "uint8 array .* or a list or iterator of images"):
            preprocess(bad, CONFIG)
    with pytest.raises(TypeError, match=r"images\[1\] is a NoneType, not an image"):
        preprocess([arrays[0], None], CONFIG)
    with pytest.raises(TypeError, match=r"images\[0\] is a list, not an image.*np.asarray"):
        preprocess(arrays[0].tolist(), CONFIG)
    for shape in [(5,), (2, 3, 40, 50, 3)]:
        with pytest.raises(ValueError, match=rf"got shape \({shape[0]},"):
            preprocess(np.zeros(shape, np.uint8), CONFIG)
    with pytest.raises(ValueError, match=r"images\[1\] has shape \(6, 40, 50, 3\), not one "
                                         r"image"):
        preprocess([arrays[0], np.zeros((6, 40, 50, 3), np.uint8)], CONFIG)


@pytest.mark.parametrize("dtype,hint", [
    (np.float32, "(x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]"),
    (np.float64, "(x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]"),
    (np.bool_, "x.astype(np.uint8) * 255"),
    (np.uint16, "(x / 257).round().astype(np.uint8)")])
def test_non_uint8_arrays_get_a_conversion_that_fits_their_dtype(dtype, hint):
    """Floats in [0, 1] (the usual float image) need * 255: a clip-and-cast gives black."""
    image = pixels(20, 30, 3)
    x = (image / 255).astype(dtype)
    with pytest.raises(TypeError, match=rf"got {np.dtype(dtype)}; convert with .*"
                                        + re.escape(hint)):
        preprocess(x, CONFIG)
    if np.issubdtype(dtype, np.floating):  # the hint gives back the image, processed as it is
        restored = (x * 255).round().clip(0, 255).astype(np.uint8)
        np.testing.assert_allclose(preprocess(restored, CONFIG), reference([pil(image)]),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int8, np.bool_, np.uint32])
def test_encode_image_refuses_integer_pixels_other_than_uint8(encoder, dtype):
    """int32 pixels 0..255 were taken as normalised floats (cosine 0.95 against uint8); the
    check reads the static dtype, so it holds under jit too."""
    module, variables = encoder.module, encoder.variables
    images = pixels(2, 32, 32, 3).astype(dtype)
    encode = lambda x: module.apply(variables, x, method=module.encode_image)  # noqa: E731
    for fn in (encode, jax.jit(encode)):
        with pytest.raises(TypeError, match=rf"uint8 \(0..255, normalised here\) or floats "
                                            rf"already normalised .*got {np.dtype(dtype)}; cast"):
            fn(images)


def test_encode_image_stacks_lists_of_images(encoder):
    """A list of uint8 or normalised images is one batch (was AttributeError on .dtype),
    normalised as numpy does; images it cannot stack: TypeError pointing at preprocess."""
    module, variables = encoder.module, encoder.variables
    images = pixels(2, 32, 32, 3)
    mean, std = np.asarray(CONFIG.image_mean), np.asarray(CONFIG.image_std)
    normalised = ((images / 255.0 - mean) / std).astype(np.float32)
    encode = lambda x: module.apply(variables, x, method=module.encode_image)  # noqa: E731
    expected = encode(normalised)
    for batch in (list(images), [jnp.asarray(image) for image in normalised]):
        np.testing.assert_allclose(encode(batch), expected, rtol=0, atol=2e-5)
    ragged = [Image.fromarray(images[0]), Image.fromarray(pixels(40, 50, 3))]
    with pytest.raises(TypeError, match=r"encode_image takes an image array .* got a list "
                                        r"that is not one .*clip_jax.preprocess\(images, config\)"):
        encode(ragged)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_an_encoder_batch_size_below_one_is_refused(encoder, batch_size):
    """`Encoder(..., batch_size=-1)` embedded 3 texts as a (0, E) array, silently (0: a
    ZeroDivision-like `range()` error); the API now refuses what `--batch-size` refuses."""
    with pytest.raises(ConfigError, match=rf"Encoder batch_size={batch_size!r}: give a whole "
                                          r"number of rows per call, 1 or more"):
        Encoder(encoder.module, encoder.variables, batch_size=batch_size)
    assert Encoder(encoder.module, encoder.variables, batch_size=np.int64(2)).embed_texts(
        ["a", "b", "c"]).shape == (3, encoder.module.config.embed_dim)


def test_bad_image_files_raise_the_same_errors_through_preprocess_and_encoder(tmp_path, encoder):
    """`Encoder.embed_images` raised ConfigError for a file `preprocess` raised an OSError for,
    so `except OSError` skipped a bad file in one and crashed in the other; a folder given as
    an image said "[Errno 21] Is a directory". The built-in error types are the reference: a
    missing path is a FileNotFoundError, a folder or an undecodable file an OSError, each also
    a ConfigError (one line at the command line) naming the path."""
    good = tmp_path / "good.png"
    Image.fromarray(pixels(40, 30, 3)).save(good)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    (tmp_path / "not_image.jpg").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    cases = {"missing.jpg": FileNotFoundError, "link.jpg": FileNotFoundError,
             "folder.jpg": OSError, "cut.png": OSError, "not_image.jpg": OSError,
             "empty.jpg": OSError}
    for name, expected in cases.items():
        path = str(tmp_path / name)
        said = set()  # preprocess raised PIL's own error for a file that is no image (trial G)
        for read in (lambda: preprocess(path, CONFIG), lambda: encoder.embed_images([good, path])):
            with pytest.raises(expected, match=re.escape(path)) as raised:
                read()
            assert isinstance(raised.value, ConfigError), name
            said.add((type(raised.value), str(raised.value)))
        assert len(said) == 1, said
    with pytest.raises(OSError, match="a folder, not an image file"):
        preprocess(tmp_path / "folder.jpg", CONFIG)


def test_embed_images_reads_a_batch_at_a_time_and_ships_uint8(monkeypatch, tmp_path):
    """`embed_images` preprocessed every image into float32 before embedding any (trial CT:
    +1.3 GB for 1,000 files at 224 px; the memory of a whole photo collection) and sent them
    as float32. Now each call of the compiled function has read at most the images it embeds,
    crosses as uint8, and the embeddings are those of `CLIPImageProcessor`'s pixels; an
    unreadable file deep in the list is named by its place in it."""
    from clip_jax.data import preprocess as preprocessing

    encoder = Encoder(*create_model("test-vit", rng=1), batch_size=4)
    arrays = [pixels(30 + k, 41, 3, seed=k) for k in range(11)]
    paths = []
    for k, array in enumerate(arrays):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.fromarray(array).save(paths[-1])
    read, shipped = [], []
    to_rgb, images = preprocessing.to_rgb_uint8, encoder._images
    monkeypatch.setattr(preprocessing, "to_rgb_uint8",  # a file: called again on its image
                        lambda image, **k: read.extend([image] * isinstance(image, str))
                        or to_rgb(image, **k))

    def embed(variables, batch):
        shipped.append((batch.dtype, len(read)))
        return images(variables, batch)

    monkeypatch.setattr(encoder, "_images", embed)
    got = encoder.embed_images(paths)
    assert shipped == [(np.uint8, 4), (np.uint8, 8), (np.uint8, 11)]
    expected = reference([Image.fromarray(a) for a in arrays])
    monkeypatch.setattr(encoder, "_images", images)
    np.testing.assert_allclose(got, encoder.embed_pixels(expected), rtol=0, atol=1e-5)
    (tmp_path / "9.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="9.png"):
        encoder.embed_images(paths)
    with pytest.raises(ValueError, match=r"images\[6\] has zero height or width"):
        encoder.embed_images([*arrays[:6], np.zeros((0, 5, 3), np.uint8)])
