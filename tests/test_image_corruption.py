import numpy as np
import pytest
from PIL import Image

from trl_extras.image_corruption import ImageCorruption, corrupt_image, sample_crop_box, sample_mask

NO_CROP = {"crop_min_area": 1.0, "crop_max_area": 1.0}


def textured_image(size=(64, 48), seed=0, mode="RGB"):
    """Random pixels in 1..255, so no pixel is 0 before masking."""
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    return Image.fromarray(np.random.default_rng(seed).integers(1, 256, shape, dtype=np.uint8))


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("min_area, max_area", [(0.01, 0.2), (0.2, 0.5), (0.5, 0.5)])
def test_crop_box_keeps_the_configured_fraction_of_the_area(min_area, max_area):
    width, height = 400, 300
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(300):
        left, top, right, bottom = sample_crop_box(width, height, rng, min_area, max_area)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        ratio = (right - left) / (bottom - top)
        assert 3 / 4 - 0.02 <= ratio <= 4 / 3 + 0.02
        fractions.append((right - left) * (bottom - top) / (width * height))
    fractions = np.array(fractions)
    # whole-pixel rounding moves the area by well under 2% at this size
    assert fractions.min() >= min_area * 0.98 and fractions.max() <= max_area * 1.02
    if max_area > min_area:  # uniform over the range: its spread is used, its mean is the middle
        assert abs(fractions.mean() - (min_area + max_area) / 2) < 0.05 * max_area
        assert fractions.max() - fractions.min() > 0.8 * (max_area - min_area)


def test_same_seed_same_pixels_other_seed_other_pixels():
    image = textured_image()
    options = {"mask_fraction": 0.25, "noise_std": 0.05}
    first, again = corrupt_image(image, 7, **options), corrupt_image(image, 7, **options)
    other = corrupt_image(image, 8, **options)
    np.testing.assert_array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_generator_draws_fresh_corruptions_in_sequence():
    image, corruption = textured_image(), ImageCorruption()
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    seq_a = [pixels(corruption(image, rng_a)) for _ in range(3)]
    seq_b = [pixels(corruption(image, rng_b)) for _ in range(3)]
    for a, b in zip(seq_a, seq_b):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(seq_a[0], seq_a[1])


def test_default_crop_changes_pixels_keeps_size_and_mode_and_leaves_the_input_alone():
    image = textured_image()
    before = pixels(image).copy()
    corrupted = corrupt_image(image, 0)
    assert corrupted.size == image.size and corrupted.mode == "RGB"
    np.testing.assert_array_equal(pixels(image), before)
    # a crop of <= 20% of random pixels blown back up is nothing like the original
    assert np.abs(pixels(corrupted) - before).mean() > 30


def test_crop_is_the_resized_box():
    image = textured_image(size=(40, 40))
    corruption = ImageCorruption(crop_min_area=0.1, crop_max_area=0.2)
    box = sample_crop_box(40, 40, np.random.default_rng(5), 0.1, 0.2)
    expected = image.crop(box).resize((40, 40), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(pixels(corruption(image, np.random.default_rng(5))), pixels(expected))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_mask_blacks_out_the_configured_fraction(fraction):
    image = textured_image(size=(64, 48))  # multiples of the 8x8 grid: exact fractions
    corrupted = corrupt_image(image, 1, mask_fraction=fraction, **NO_CROP)
    masked = (pixels(corrupted) == 0).all(axis=-1)
    assert masked.mean() == pytest.approx(fraction)
    untouched = ~masked
    np.testing.assert_array_equal(pixels(corrupted)[untouched], pixels(image)[untouched])


def test_mask_cells_follow_the_grid():
    mask = sample_mask(16, 16, np.random.default_rng(0), fraction=0.5, grid=4)
    cells = mask.reshape(4, 4, 4, 4).transpose(0, 2, 1, 3).reshape(16, 16)
    assert set(cells.all(axis=1) | ~cells.any(axis=1)) == {True}  # each 4x4 cell is all masked or all clear
    assert cells.all(axis=1).sum() == 8


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_noise_has_the_configured_std(std):
    grey = Image.new("RGB", (128, 128), (128, 128, 128))
    corrupted = corrupt_image(grey, 2, noise_std=std, **NO_CROP)
    diff = pixels(corrupted) - 128
    assert abs(diff.mean()) < 0.5
    assert diff.std() == pytest.approx(std * 255, rel=0.05)


def test_noise_is_clipped_to_the_pixel_range():
    black = Image.new("L", (32, 32), 0)
    corrupted = corrupt_image(black, 0, noise_std=0.5, **NO_CROP)
    values = pixels(corrupted)
    assert values.min() == 0 and values.max() <= 255 and (values > 0).mean() > 0.3


@pytest.mark.parametrize("mode, expected", [("L", "L"), ("RGBA", "RGBA"), ("P", "RGB")])
def test_modes(mode, expected):
    image = textured_image(mode="RGB").convert(mode) if mode == "P" else textured_image(mode=mode)
    assert corrupt_image(image, 0, mask_fraction=0.1, noise_std=0.01).mode == expected


@pytest.mark.parametrize(
    "options, message",
    [
        ({"crop_min_area": 0.0}, "crop_min_area"),
        ({"crop_min_area": 0.5, "crop_max_area": 0.2}, "crop_min_area"),
        ({"crop_max_area": 1.5}, "crop_max_area"),
        ({"crop_aspect_ratio": (2.0, 1.0)}, "crop_aspect_ratio"),
        ({"mask_fraction": 1.5}, "mask_fraction"),
        ({"mask_grid": 0}, "mask_grid"),
        ({"mask_value": 300}, "mask_value"),
        ({"noise_std": -0.1}, "noise_std"),
    ],
)
def test_bad_options_name_the_field(options, message):
    with pytest.raises(ValueError, match=message):
        ImageCorruption(**options)


def test_non_image_input_is_refused():
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        ImageCorruption()("not an image", np.random.default_rng(0))
