"""clip_jax.data.preprocess and the tf.data image transforms vs transformers' CLIPImageProcessor."""

import io

import numpy as np
import pytest
from PIL import Image
pytest.importorskip("transformers")  # the test extra; without it these tests skip
from transformers import CLIPImageProcessor

from clip_jax.data._tf import tf
from clip_jax.data.preprocess import normalization_constants, preprocess, to_rgb_uint8
from images import TO_STORED, with_orientation
from clip_jax.data import tf_preprocess as tp
from clip_jax.models.presets import get_preset
from clip_jax.models.clip import CLIP
from clip_jax.errors import ConfigError

# (height, width): landscape, portrait, square, upscaling, one side already at the target,
# extreme aspect ratios and a large downscale.
SHAPES = [(480, 640), (640, 427), (300, 300), (100, 150), (224, 301), (500, 224), (37, 400),
          (1200, 90), (1700, 1300), (225, 226)]


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth structure plus noise: exercises every tap of the resampling filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / (7 + c) + c) * np.cos(y / (11 + c)) * 100 + 128 for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def reference(config, images) -> np.ndarray:
    """transformers' CLIPImageProcessor configured like the model, as NHWC."""
    processor = CLIPImageProcessor(
        size={"shortest_edge": config.resize_shortest_side},
        crop_size={"height": config.image_size, "width": config.image_size},
        image_mean=list(config.image_mean), image_std=list(config.image_std))
    return processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def vit_b16():
    return get_preset("ViT-B/16")


@pytest.fixture(scope="module")
def images():
    return [photo(h, w, seed) for seed, (h, w) in enumerate(SHAPES)]


def test_numpy_preprocess_matches_clip_image_processor(vit_b16, images):
    ours = preprocess(images, vit_b16)
    assert ours.shape == (len(images), 224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference(vit_b16, [Image.fromarray(a) for a in images]),
                               rtol=0, atol=1e-5)


def test_other_resolution_and_statistics():
    config = get_preset("test-vit").replace(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    arrays = [photo(h, w, 7) for h, w in [(64, 96), (20, 30), (32, 32)]]
    np.testing.assert_allclose(preprocess(arrays, config),
                               reference(config, [Image.fromarray(a) for a in arrays]),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("size, shape", [
    (32, (2400, 2600)),  # a 75x downscale: 301-tap filters, summed in float64
    (64, (2000, 2600)),  # 31x: 125 taps, float32 (every partial sum below 2**24)
    (224, (1500, 4000)),  # a wide photo: both passes as matmuls
    (224, (600, 1000)),  # the horizontal pass a matmul, the vertical a tap loop
])
def test_large_downscales_match_clip_image_processor_exactly(size, shape):
    """Large passes run as float matmuls of split int16 weights (`_tap_matmul`, 4x faster on
    a 12-MP photo than a loop over taps): still exactly torch's integer arithmetic, which
    `CLIPImageProcessor` runs, as long and wide as the filter gets (a 32-px model indexing
    photos)."""
    config = get_preset("test-vit").replace(vision={"image_size": size, "patch_size": 8})
    arrays = [photo(*shape, 3)]
    np.testing.assert_allclose(preprocess(arrays, config),
                               reference(config, [Image.fromarray(a) for a in arrays]),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("resize", [256, 225, 300])
def test_resize_then_crop_matches_clip_image_processor(images, resize):
    """A processor resizing the shortest side beyond the crop (256 then 224, ImageNet-style)
    was only warned about, its pixels off by up to 4.4 (normalised units); `resize_size` is
    that resize, in numpy and in the tf.data eval transform alike."""
    config = get_preset("ViT-B/16", resize_size=resize)
    arrays = images[:6]
    expected = reference(config, [Image.fromarray(a) for a in arrays])
    np.testing.assert_allclose(preprocess(arrays, config), expected, rtol=0, atol=1e-5)
    transform = tf.function(lambda data: tp.resize_and_center_crop(data, 224, resize))
    mean, std = normalization_constants(config)
    ours = [tp.normalize(transform(tf.constant(a)), mean, std).numpy() for a in arrays]
    np.testing.assert_allclose(np.stack(ours), expected, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="resize_size=200; use None or at least "
                                          "vision.image_size=224"):
        get_preset("ViT-B/16", resize_size=200)


@pytest.mark.parametrize("resize", [0, 10, 223])
def test_a_resize_below_the_crop_is_refused_not_cut_short(images, resize):
    """`resize_and_center_crop(image, 24, resize=10)` returned a 7 x 7 image (trial BX); the
    numpy and the tf.data functions now refuse a resize below the crop (0 was read as None)."""
    from clip_jax.data.preprocess import resize_and_center_crop

    message = rf"^resize={resize} is below the crop size 224: .* give resize >= 224"
    with pytest.raises(ValueError, match=message):
        resize_and_center_crop(images[0], 224, resize)
    with pytest.raises(ValueError, match=message):
        tp.resize_and_center_crop(tf.constant(images[0]), 224, resize)
    assert resize_and_center_crop(images[0], 224, 224).shape == (224, 224, 3)
    with pytest.raises(ValueError, match=r"^resize=230\.5 is not a whole number of pixels"):
        resize_and_center_crop(images[0], 224, 230.5)  # a bare TypeError (trial BZ)


def test_pil_modes_and_paths(vit_b16, tmp_path):
    rgb = photo(300, 410, 3)
    rgba = np.concatenate([rgb, np.linspace(0, 255, 410, dtype=np.uint8)[None, :, None]
                           .repeat(300, 0)], axis=-1)
    pil_images = [Image.fromarray(rgb[..., 0], "L"), Image.fromarray(rgba, "RGBA"),
                  Image.fromarray(rgb).convert("P"), Image.fromarray(rgb).convert("CMYK")]
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    # CLIPImageProcessor composites transparency onto white: alpha="white" is that choice.
    ours = preprocess(pil_images + [str(path)], vit_b16, alpha="white")
    expected = reference(vit_b16, pil_images + [Image.open(path)])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def transparent_images() -> dict[str, Image.Image]:
    """RGBA, LA, PA and palette images with transparency. Fully transparent pixels store
    black (what open_clip's Pillow resize, which premultiplies alpha, makes of them), partly
    transparent ones keep their colours."""
    rgb = photo(90, 120, 5)
    alpha = np.zeros((90, 120), np.uint8)
    alpha[:, 40:] = np.linspace(1, 255, 80, dtype=np.uint8)[None]
    alpha[60:, 100:] = 255
    rgb = np.where(alpha[..., None] == 0, 0, rgb).astype(np.uint8)
    palette = Image.fromarray(rgb).quantize(64)
    palette.info["transparency"] = 3  # one palette entry transparent
    palette_bytes = Image.fromarray(rgb).quantize(64)
    palette_bytes.info["transparency"] = bytes(range(0, 256, 4))  # per-entry alpha
    keyed = rgb.copy()  # an RGB / greyscale PNG's one transparent colour (its tRNS chunk)
    keyed[:30, :50] = (10, 200, 30)
    rgb_key = Image.fromarray(keyed)
    rgb_key.info["transparency"] = (10, 200, 30)
    grey = np.where(alpha == 0, 7, rgb[..., 1]).astype(np.uint8)
    grey_key = Image.fromarray(grey, "L")
    grey_key.info["transparency"] = 7
    return {"RGBA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
            "LA": Image.fromarray(np.dstack([rgb[..., 1], alpha]), "LA"),
            "PA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("PA"),
            "P+transparency": palette, "P+alpha bytes": palette_bytes,
            "RGB+key": rgb_key, "L+key": grey_key}


@pytest.mark.parametrize("name", ["RGBA", "LA", "PA", "P+transparency", "P+alpha bytes",
                                  "RGB+key", "L+key"])
def test_transparency_is_dropped_by_default_as_the_references_do(vit_b16, name, tmp_path):
    """Default: alpha dropped exactly like `image.convert("RGB")` (transformers' load_image,
    i.e. its pipelines; OpenAI and open_clip convert after resizing, tested below), also from
    a PNG file; a colour composites onto it."""
    image = transparent_images()[name]
    dropped = image.convert("RGBA").convert("RGB") if image.mode == "PA" else image.convert("RGB")
    np.testing.assert_array_equal(to_rgb_uint8(image), np.asarray(dropped))
    if image.mode != "PA":  # PNG cannot store PA
        path = tmp_path / "transparent.png"
        image.save(path)
        np.testing.assert_array_equal(to_rgb_uint8(str(path)),
                                      np.asarray(Image.open(path).convert("RGB")))
    # The whole transform: the processor on convert("RGB")'s pixels, exactly (as an array:
    # Pillow keeps a palette's transparent index as an RGB colour key in `info`, which the
    # processor would composite onto white again).
    np.testing.assert_allclose(preprocess(image, vit_b16),
                               reference(vit_b16, [np.asarray(dropped)]), rtol=0, atol=1e-5)
    # A background colour: out = a * colour + (1 - a) * background (first principles).
    rgba = np.asarray(image.convert("RGBA"), np.float64)
    a = rgba[..., 3:] / 255
    assert (a == 0).any()  # Pillow reads the transparency, whatever its form
    over = rgba[..., :3] * a + np.array([128, 64, 0]) * (1 - a)
    got = to_rgb_uint8(image, alpha="#804000").astype(np.float64)
    assert np.abs(got - over).max() <= 1
    np.testing.assert_array_equal(to_rgb_uint8(image, alpha=(128, 64, 0)), got)
    with pytest.raises(ValueError, match="neither 'drop' nor a background colour"):
        preprocess(image, vit_b16, alpha="transparent-ish")
    # A background with its own alpha is refused (it would be read as opaque); alpha 255 is
    # the same colour.
    for spelling in ("rgba(128, 64, 0, 0)", "#80400080", "#8408"):
        with pytest.raises(ValueError, match="background must be opaque"):
            preprocess(image, vit_b16, alpha=spelling)
    np.testing.assert_array_equal(to_rgb_uint8(image, alpha="#804000ff"), got)


def open_clip_transform(config):
    """open_clip's eval transform (OpenAI's too): Pillow resize and crop, then RGB, as NHWC."""
    import open_clip
    import torch

    transform = open_clip.image_transform(config.image_size, is_train=False,
                                          mean=config.image_mean, std=config.image_std)

    def apply(image: Image.Image) -> np.ndarray:
        with torch.no_grad():
            return transform(image).numpy().transpose(1, 2, 0)

    return apply


@pytest.mark.parametrize("name,hidden", [("RGBA", 0), ("RGBA", 255), ("LA", 0), ("LA", 255)])
def test_open_clip_resizes_transparent_images_before_dropping_alpha(vit_b16, name, hidden):
    """open_clip (like OpenAI) resizes with Pillow, which premultiplies alpha, and drops it
    after: fully transparent areas come out black whatever colour they store (white in a
    typical logo), where ours, the processor on convert("RGB"), keeps that colour; opaque
    areas agree within one uint8 level (the README and the module docstring)."""
    rgb = photo(90, 120, 6)  # resized to 224 x 298, cropped from column 37 (no crop shift)
    alpha = np.full((90, 120), 255, np.uint8)
    alpha[:, :40] = 0  # columns 0..62 of the output; 0..50 away from the edge's taps
    rgb[alpha == 0] = hidden
    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    if name == "LA":
        image = Image.fromarray(np.dstack([rgb[..., 1], alpha]), "LA")
    ours = preprocess(image, vit_b16)[0]
    np.testing.assert_allclose(ours, reference(vit_b16, [image.convert("RGB")])[0], rtol=0,
                               atol=1e-5)
    mean, std = np.asarray(vit_b16.image_mean), np.asarray(vit_b16.image_std)
    theirs = open_clip_transform(vit_b16)(image)
    np.testing.assert_allclose(theirs[:, :50], np.broadcast_to(-mean / std, (224, 50, 3)),
                               atol=1e-5)  # black
    np.testing.assert_allclose(ours[:, :50], np.broadcast_to((hidden / 255 - mean) / std,
                                                             (224, 50, 3)), atol=1e-5)
    levels = np.abs(ours - theirs)[:, 75:] * std * 255
    assert levels.max() <= 1 + 1e-3 and np.mean(levels > 0.5) < 0.01


@pytest.mark.parametrize("alpha,most", [(128, 4), (8, 44)])
def test_open_clip_loses_precision_on_partly_transparent_pixels(vit_b16, alpha, most):
    """Pillow's 8-bit premultiplied resize: the lower the alpha, the coarser the colours it
    gives back (the documented figures, on a uniformly translucent photo)."""
    image = Image.fromarray(np.dstack([photo(300, 410, 2), np.full((300, 410), alpha, np.uint8)]))
    ours = preprocess(image, vit_b16)[0]
    levels = np.abs(ours - open_clip_transform(vit_b16)(image)) * np.asarray(
        vit_b16.image_std) * 255
    assert most - 1 < levels.max() <= most + 1e-3, levels.max()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P", "1", "YCbCr", "HSV"])
def test_open_clip_agrees_within_a_level_only_for_rgb_l_and_cmyk(vit_b16, mode):
    """Every mode is the processor on convert("RGB"). open_clip resizes in the image's own
    mode: for RGB, L and CMYK that is a level or two on under 1 % of the values (Pillow's
    resampler); P and 1 are resized nearest-neighbour, YCbCr and HSV per channel, and differ
    by more than a level on over 1 % (the README and the module docstring say so)."""
    image = Image.fromarray(photo(300, 410, 8)).convert(mode)  # no crop shift at 224
    ours = preprocess(image, vit_b16)[0]
    np.testing.assert_allclose(ours, reference(vit_b16, [image.convert("RGB")])[0], rtol=0,
                               atol=1e-5)
    levels = np.abs(ours - open_clip_transform(vit_b16)(image)) * np.asarray(
        vit_b16.image_std) * 255
    if mode in ("RGB", "L", "CMYK"):
        assert levels.max() <= 2 + 1e-3 and np.mean(levels > 0.5) < 0.01
    else:
        assert np.mean(levels > 1.5) > 0.01, np.mean(levels > 1.5)


def sawtooth(width: int, height: int) -> np.ndarray:
    """Gradients, a wrapping 0-255 sawtooth and noise: edges whose bicubic overshoot a first
    resampling pass clips to uint8."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 3 % 256], -1)
    return np.clip(rgb + np.random.default_rng(0).integers(-30, 30, rgb.shape), 0, 255
                   ).astype(np.uint8)


@pytest.mark.parametrize("size, passes_alike", [((300, 1000), False), ((1000, 300), True),
                                                ((380, 500), True)])
def test_open_clip_differs_widely_on_hard_edges_where_pillow_resizes_vertically_first(
        size, passes_alike):
    """A tall image's hard edges differed from open_clip's by up to 15 levels on 29 % of the
    values (trial BJ), against the level or two the README promised. Pillow runs the vertical
    pass first at that size (its resize equals vertical-then-horizontal there), torch and we
    the horizontal one, and each pass clips to uint8; where Pillow's order is ours, the
    README's bound holds on the same pattern."""
    config = get_preset("RN50x4")  # 288 px
    image = Image.fromarray(sawtooth(*size))
    ours = preprocess(image, config)[0]
    np.testing.assert_allclose(ours, reference(config, [image])[0], rtol=0, atol=1e-5)
    levels = np.abs(ours - open_clip_transform(config)(image)) * np.asarray(
        config.image_std) * 255
    width, height = size
    new = (288, 288 * height // width) if width < height else (288 * width // height, 288)
    full = np.asarray(image.resize(new, Image.BICUBIC))
    vertical_first = np.asarray(image.resize((width, new[1]), Image.BICUBIC).resize(
        new, Image.BICUBIC))
    assert np.array_equal(full, vertical_first) is not passes_alike
    if passes_alike:
        assert levels.max() <= 1 + 1e-3 and np.mean(levels > 0.5) < 0.01
    else:
        assert levels.max() > 10 and np.mean(levels > 0.5) > 0.2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured(vit_b16, orientation, tmp_path):
    """All 8 orientations: upright pixels as PIL.ImageOps.exif_transpose, transformers'
    load_image (its pipelines) and the EXIF definition give them; the switch keeps them."""
    from PIL import ImageOps
    from transformers.image_utils import load_image

    upright = photo(40, 70, orientation)
    png = tmp_path / "photo.png"
    png.write_bytes(with_orientation(upright, orientation, "PNG"))
    np.testing.assert_array_equal(to_rgb_uint8(str(png)), upright)  # lossless: first principles
    np.testing.assert_array_equal(to_rgb_uint8(Image.open(png)), upright)
    np.testing.assert_array_equal(to_rgb_uint8(str(png), exif_transpose=False),
                                  TO_STORED[orientation](upright))
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(with_orientation(upright, orientation, "JPEG"))
    np.testing.assert_array_equal(to_rgb_uint8(str(jpeg)),
                                  np.asarray(ImageOps.exif_transpose(Image.open(jpeg))))
    np.testing.assert_allclose(preprocess([str(jpeg), str(png)], vit_b16),
                               reference(vit_b16, [load_image(str(jpeg)), load_image(str(png))]),
                               rtol=0, atol=1e-5)


def test_single_image_and_bad_inputs(vit_b16, tmp_path):
    assert preprocess(photo(50, 60, 1), vit_b16).shape == (1, 224, 224, 3)
    with pytest.raises(TypeError, match="uint8"):
        preprocess(np.zeros((10, 10, 3), np.float32), vit_b16)
    with pytest.raises(FileNotFoundError, match="No image file"):
        preprocess("/nonexistent/image.jpg", vit_b16)
    Image.fromarray(photo(50, 60, 3)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(OSError, match=r"cut.png': .*truncated"):  # the file is named
        preprocess([str(tmp_path / "whole.png"), str(tmp_path / "cut.png")], vit_b16)
    (tmp_path / "empty.jpg").write_bytes(b"")  # PIL: "cannot identify image file"
    with pytest.raises(OSError, match=r"empty.jpg': empty file \(0 bytes\)$"):
        preprocess(str(tmp_path / "empty.jpg"), vit_b16)


def test_config_may_be_a_preset_name_or_the_module(images):
    """A preset name stands for its config (ViT-L/14@336: 336 px, CLIPImageProcessor's own
    configuration of it as the reference), and so does a module (`preprocess(img, module)`
    raised TypeError); other objects are a one-line TypeError."""
    config = get_preset("ViT-L/14@336")
    out = preprocess(list(images[:2]), "ViT-L/14@336")
    assert out.shape == (2, 336, 336, 3)
    np.testing.assert_allclose(out, reference(config, images[:2]), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(preprocess(list(images[:2]), CLIP(config)), out)
    with pytest.raises(ConfigError, match="Unknown model 'ViT-Q/99'"):
        preprocess(images[0], "ViT-Q/99")
    with pytest.raises(TypeError, match="CLIPConfig .* or a preset name.*got dict"):
        preprocess(images[0], {"image_size": 224})


def test_sixteen_bit_images_are_rescaled(vit_b16):
    values = np.random.default_rng(0).integers(0, 65536, (40, 50), dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    expected = np.round(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(image), np.repeat(expected[..., None], 3, -1))
    native = Image.frombytes("I;16N", image.size, values.tobytes())  # was clipped at 255
    np.testing.assert_array_equal(to_rgb_uint8(native), np.repeat(expected[..., None], 3, -1))


def test_the_scale_of_16_bit_and_float_images_comes_from_their_mode_not_their_pixels(
        tmp_path, caplog, monkeypatch):
    """A 16-bit PGM whose brightest value was 255 (of 65535) came out at 255, and one a level
    brighter at 1: 8-bit or 16-bit was guessed from the brightest pixel; floats likewise (0.5
    read as 128 when the brightest was 1.0, as 0 when it was 1.01). 16-bit modes now scale by
    v * 255 / 65535 (numpy below) whatever the values; float images convert as Pillow converts
    them, the references' pixels."""
    for top in (255, 256, 1000, 65535):
        for maxval in (65535, 4095):  # Pillow spreads any maxval over 0..65535
            values = np.array([[0, top // 3, top]], np.int64) * maxval // 65535
            path = tmp_path / f"{top}_{maxval}.pgm"
            path.write_bytes(f"P5 3 1 {maxval}\n".encode() + values.astype(">u2").tobytes())
            with Image.open(path) as image:
                assert image.mode == "I"
                spread = np.asarray(image, np.float64)
                want = np.round(spread * 255 / 65535).astype(np.uint8)
                np.testing.assert_array_equal(to_rgb_uint8(image)[..., 0], want)
            np.testing.assert_array_equal(to_rgb_uint8(path)[..., 0], want)
    # 8-bit values in a 32-bit integer image (Image.fromarray of an int32 array, a 32-bit
    # TIFF) read as 16-bit, nearly black, without a word (trial CJ): still so (the mode
    # decides), but said once, with the conversion that reads them as 8-bit.
    from clip_jax.runtime import logs

    monkeypatch.setattr(logs, "_WARNED", set())  # said once per process: from here
    caplog.clear()
    eight = np.random.default_rng(2).integers(1, 256, (4, 5)).astype(np.int32)
    with caplog.at_level("WARNING"):
        assert to_rgb_uint8(Image.fromarray(eight)).max() <= 1
        to_rgb_uint8(Image.fromarray(eight + 1))
        to_rgb_uint8(Image.fromarray(eight.astype(np.uint16)))  # I;16 too (trial CK)
    assert caplog.text.count("whose values all lie in 0..255 is read as 16-bit data") == 2
    assert "(Pillow mode I) image" in caplog.text and "(Pillow mode I;16) image" in caplog.text
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(eight).convert("L"))[..., 0],
                                  eight)  # what it advises
    for values in ([0.0, 0.5, 1.0], [0.0, 0.5, 1.01], [0.0, 127.6, 300.0]):
        image = Image.fromarray(np.array([values], np.float32))
        assert image.mode == "F"
        np.testing.assert_array_equal(to_rgb_uint8(image), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("encoding", ["png", "jpeg", "jpeg420"])
def test_tf_eval_transform_matches_clip_image_processor(vit_b16, images, encoding):
    """The tf.data eval transform on encoded files vs the processor on Pillow-decoded ones."""
    transform = tf.function(lambda data: tp.eval_image(data, 224))
    mean, std = normalization_constants(vit_b16)
    decoded, ours = [], []
    for array in images:
        buffer = io.BytesIO()
        if encoding == "png":
            Image.fromarray(array).save(buffer, "PNG")
        else:
            Image.fromarray(array).save(buffer, "JPEG", quality=90,
                                        subsampling=2 if encoding == "jpeg420" else 0)
        decoded.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        ours.append(tp.normalize(transform(tf.constant(buffer.getvalue())), mean, std).numpy())
    np.testing.assert_allclose(np.stack(ours), reference(vit_b16, decoded), rtol=0, atol=1e-5)


def test_train_augmentation_crop_windows_follow_the_ranges():
    scale, ratio = (0.3, 0.8), (0.5, 2.0)
    windows = tf.function(lambda k: tp.crop_window(k, 300, 500, scale, ratio))
    for n in range(200):
        top, left, h, w = windows(tf.constant([n, 7], tf.int64)).numpy()
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 500
        assert scale[0] - 0.01 <= h * w / (300 * 500) <= scale[1] + 0.01
        assert ratio[0] - 0.02 <= w / h <= ratio[1] + 0.02
    # Unreachable ranges fall back to the centred crop with the ratio clamped (torchvision).
    top, left, h, w = tp.crop_window(tf.constant([0, 0], tf.int64), 100, 400, (1.0, 1.0),
                                     (1.0, 1.0)).numpy()
    assert (top, left, h, w) == (0, 150, 100, 100)


@pytest.mark.parametrize("encoding", ["JPEG", "PNG"])
def test_train_augmentation_normalises_a_constant_image_exactly(encoding):
    config = get_preset("test-vit")
    colour = np.array([200, 30, 90], np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(colour, (90, 120, 3)).copy()).save(buffer, encoding, quality=100)
    mean, std = normalization_constants(config)
    image = tp.train_image(tf.constant(buffer.getvalue()), tf.constant([1, 2], tf.int64), 32,
                           (0.2, 1.0), (0.75, 4 / 3))
    out = tp.normalize(image, mean, std).numpy()
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))[0, 0]
    expected = (decoded / 255.0 - np.array(config.image_mean)) / np.array(config.image_std)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=2e-2)


@pytest.mark.parametrize("mean,std", [
    ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet (many open_clip models)
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # SigLIP
    ((0.0, 0.9, 0.123), (1.0, 0.05, 0.333)),  # odd statistics: zero mean, tiny std
])
def test_on_device_normalisation_is_within_2_ulp_of_clip_image_processor(mean, std):
    """Every uint8 value in every channel, for the statistics models ship with."""
    import jax

    from clip_jax.models.clip import normalize_images

    config = get_preset("test-vit", image_mean=mean, image_std=std)
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.stack([values, values.T, values[::-1]], axis=-1)  # each channel sees 0..255
    processor = CLIPImageProcessor(do_resize=False, do_center_crop=False, image_mean=list(mean),
                                   image_std=list(std))
    reference = processor(images=[image], return_tensors="np")["pixel_values"][0]
    ours = np.asarray(jax.jit(lambda x: normalize_images(x, config))(image))
    ulp = np.spacing(np.abs(reference).max().astype(np.float32))
    np.testing.assert_allclose(ours, reference.transpose(1, 2, 0), rtol=0, atol=2 * ulp)


def test_centre_crop_offset_rounds_down_where_torchvision_rounds_half_to_even(vit_b16):
    """No resize (the short side is already 224): the crop alone. transformers' offset is
    ours for every margin; torchvision's CenterCrop (OpenAI, open_clip) starts one pixel
    further exactly when the margin is 3 mod 4, as the module docstring says."""
    import torch
    from torchvision.transforms import functional as tvf

    from clip_jax.data.preprocess import resize_and_center_crop

    for margin in range(12):
        for shape in ((224, 224 + margin), (224 + margin, 224)):
            image = photo(*shape, margin)
            ours = resize_and_center_crop(image, 224)
            hf = reference(vit_b16, [image])[0] * np.asarray(vit_b16.image_std) + np.asarray(
                vit_b16.image_mean)
            np.testing.assert_allclose(ours / 255, hf, atol=1e-5)
            tv = tvf.center_crop(torch.from_numpy(image).permute(2, 0, 1), [224, 224])
            tv = tv.permute(1, 2, 0).numpy()
            shift = int(margin % 4 == 3)
            axis = 1 if shape[1] > 224 else 0
            start = margin // 2 + shift
            expected = image[:, start:start + 224] if axis else image[start:start + 224]
            np.testing.assert_array_equal(tv, expected)
            assert np.array_equal(ours, tv) == (shift == 0), margin


def test_a_model_folder_given_as_config_says_to_load_it_first(tmp_path):
    """`preprocess(image, "/path/to/model")` answered "Unknown model '/path/to/model'; choose
    one of [presets]": a path is answered with how to get its config."""
    from clip_jax.errors import ConfigError

    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match=rf"config='{tmp_path}' is a path; .*clip_jax.load\("
                                          rf"'{tmp_path}'\), then config=module.config"):
        preprocess(image, str(tmp_path))
    with pytest.raises(ConfigError, match=r"Unknown model 'ViT-B/33'"):
        preprocess(image, "ViT-B/33")
