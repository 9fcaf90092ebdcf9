"""Synthetic distribution shifts (`clip_jax.data.shifts`) against their definitions computed
independently with PIL, colorsys, scipy.ndimage and numpy."""

import colorsys
import io

import numpy as np
import pytest
from PIL import Image, ImageOps
pytest.importorskip("scipy")  # the test extra; without it these tests skip
from scipy import ndimage

from clip_jax.data._tf import tf
from clip_jax.data import shifts

SIZE = 32


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    smooth = ndimage.zoom(rng.integers(0, 256, (8, 8, 3)).astype(float), (4, 4, 1), order=1)
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


def shifted(name, image, index=0):
    return shifts.apply(name, tf.constant(image), tf.constant(index, tf.int64)).numpy()


def test_greyscale_and_invert_equal_pil(image):
    grey = np.asarray(Image.fromarray(image).convert("L").convert("RGB"))
    np.testing.assert_array_equal(shifted("greyscale", image), grey)
    np.testing.assert_array_equal(shifted("invert", image),
                                  np.asarray(ImageOps.invert(Image.fromarray(image))))


def test_hue_rotation_matches_colorsys(image):
    want = np.empty_like(image)
    for (y, x), _ in np.ndenumerate(image[..., 0]):
        h, s, v = colorsys.rgb_to_hsv(*(image[y, x] / 255.0))
        want[y, x] = np.round(np.array(colorsys.hsv_to_rgb((h + 0.5) % 1.0, s, v)) * 255)
    assert np.abs(shifted("hue_rotate", image).astype(int) - want).max() <= 1


def test_blur_matches_scipy_gaussian(image):
    sigma = shifts.blur_sigma(SIZE)
    radius = max(1, int(np.ceil(3 * sigma)))
    want = ndimage.gaussian_filter(image.astype(float), sigma=(sigma, sigma, 0), mode="reflect",
                                   truncate=radius / sigma)
    got = shifted("blur", image).astype(float)
    assert np.abs(got - np.round(want)).max() <= 1
    assert np.abs(got - image).mean() > 3  # it did blur


def test_sketch_is_the_inverted_sobel_magnitude_of_pil_luma(image):
    luma = np.asarray(Image.fromarray(image).convert("L"), float)
    magnitude = np.hypot(ndimage.sobel(luma, axis=1, mode="reflect"),
                         ndimage.sobel(luma, axis=0, mode="reflect"))
    want = np.round(255 - np.clip(magnitude, 0, 255))
    got = shifted("sketch", image)
    assert np.abs(got[..., 0].astype(float) - want).max() <= 1
    assert (got == got[..., :1]).all()


def test_downscale_upscale_equals_pil_box_then_nearest(image):
    small = Image.fromarray(image).resize((SIZE // 4, SIZE // 4), Image.BOX)
    want = np.asarray(small.resize((SIZE, SIZE), Image.NEAREST)).astype(int)
    assert np.abs(shifted("downscale_upscale", image).astype(int) - want).max() <= 1


def test_jpeg_is_close_to_pil_at_the_same_quality(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=shifts.JPEG_QUALITY)
    pil = np.asarray(Image.open(buffer).convert("RGB")).astype(float)
    got = shifted("jpeg", image).astype(float)
    assert np.abs(got - pil).mean() < 3  # encoders differ slightly (rounding, DCT)
    assert np.abs(got - image).mean() > 3  # and it is lossy


def test_noise_is_deterministic_per_example_with_the_documented_spread():
    grey = np.full((SIZE, SIZE, 3), 128, np.uint8)
    a, b = shifted("noise", grey, 5), shifted("noise", grey, 6)
    np.testing.assert_array_equal(a, shifted("noise", grey, 5))
    assert (a != b).mean() > 0.5
    residual = a.astype(float) - 128
    assert residual.mean() == pytest.approx(0, abs=1.5)
    assert residual.std() == pytest.approx(shifts.NOISE_STD, rel=0.08)


def test_occlusion_covers_one_quarter_square_and_nothing_else(image):
    got = [shifted("occlusion", image, i) for i in range(4)]
    side = SIZE // 2
    corners = set()
    for out in got:
        changed = np.argwhere((out != image).any(-1))
        top, left = changed.min(0)
        box = out[top:top + side, left:left + side]
        assert (box == shifts.OCCLUSION_FILL).all()
        rest = out.copy()
        rest[top:top + side, left:left + side] = image[top:top + side, left:left + side]
        np.testing.assert_array_equal(rest, image)
        corners.add((top, left))
    assert len(corners) > 1  # placed per example


def test_registry_names_and_errors():
    from clip_jax.data import options

    assert options.SHIFT_NAMES == tuple(shifts.SHIFTS)  # flags are checked from the names
    assert options.parse_shifts("all") == list(shifts.SHIFTS)
    assert options.parse_shifts("blur, noise") == ["blur", "noise"]
    with pytest.raises(ValueError, match="Unknown shift 'fog'; use one of greyscale"):
        options.parse_shifts("blur,fog")
