"""clip_jax.preprocess and the tf.data image transforms vs transformers' CLIPImageProcessor."""

import io

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessor

from clip_jax._tf import tf
from clip_jax.preprocess import normalization_constants, preprocess, to_rgb_uint8
from clip_jax import tf_preprocess as tp
from clip_jax.models.presets import get_preset

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
        size={"shortest_edge": config.image_size},
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


def test_pil_modes_and_paths(vit_b16, tmp_path):
    rgb = photo(300, 410, 3)
    rgba = np.concatenate([rgb, np.linspace(0, 255, 410, dtype=np.uint8)[None, :, None]
                           .repeat(300, 0)], axis=-1)
    pil_images = [Image.fromarray(rgb[..., 0], "L"), Image.fromarray(rgba, "RGBA"),
                  Image.fromarray(rgb).convert("P"), Image.fromarray(rgb).convert("CMYK")]
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    ours = preprocess(pil_images + [str(path)], vit_b16)
    expected = reference(vit_b16, pil_images + [Image.open(path)])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_single_image_and_bad_inputs(vit_b16):
    assert preprocess(photo(50, 60, 1), vit_b16).shape == (1, 224, 224, 3)
    with pytest.raises(TypeError, match="uint8"):
        preprocess(np.zeros((10, 10, 3), np.float32), vit_b16)
    with pytest.raises(FileNotFoundError, match="No image file"):
        preprocess("/nonexistent/image.jpg", vit_b16)


def test_sixteen_bit_images_are_rescaled(vit_b16):
    values = np.random.default_rng(0).integers(0, 65536, (40, 50), dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    expected = np.round(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(image), np.repeat(expected[..., None], 3, -1))


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
