"""Decoding, normalisation, pyramids and tiling."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from segmodel.inference.preprocess import (
    ImageDecodeError,
    Normalization,
    NormStats,
    Tiling,
    apply_normalization,
    decode_image,
    estimate_normalization,
    extract_tile,
    owned_region,
    pyramid,
    tile_origins,
    to_channels,
)


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


def _tiff(array):
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 255, (20, 30), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65535, (20, 30), dtype=np.uint16)
RGB8 = RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)
RGBA8 = RNG.integers(0, 255, (20, 30, 4), dtype=np.uint8)


@pytest.mark.parametrize("data, dtype, channels", [
    (_png(GRAY8), np.uint8, 1), (_png(GRAY16), np.uint16, 1), (_png(RGB8), np.uint8, 3),
    (_png(RGBA8), np.uint8, 4), (_jpeg(RGB8), np.uint8, 3), (_tiff(GRAY16), np.uint16, 1),
    (_tiff(RGB8), np.uint8, 3),
], ids=["png-gray8", "png-gray16", "png-rgb", "png-rgba", "jpeg-rgb", "tiff-gray16", "tiff-rgb"])
def test_decode_gives_hwc_with_the_file_dtype(data, dtype, channels):
    image = decode_image(data)
    assert image.shape == (20, 30, channels)
    assert image.dtype == dtype


def test_decode_keeps_16_bit_values_exactly():
    np.testing.assert_array_equal(decode_image(_png(GRAY16))[..., 0], GRAY16)
    np.testing.assert_array_equal(decode_image(_tiff(GRAY16))[..., 0], GRAY16)


@pytest.mark.parametrize("data, match", [
    (b"", "empty"), (b"not an image at all", "not a readable image"),
    (_png(RGB8)[:100], "not a readable image"), (b"II*\x00garbage", "not a readable TIFF"),
], ids=["empty", "text", "truncated-png", "broken-tiff"])
def test_bad_bytes_raise_a_decode_error_naming_the_file(data, match):
    with pytest.raises(ImageDecodeError, match=match) as err:
        decode_image(data, name="plate1/a.png")
    assert "plate1/a.png" in str(err.value)


def test_images_over_max_pixels_are_refused():
    with pytest.raises(ImageDecodeError, match="max_pixels=100"):
        decode_image(_png(GRAY8), max_pixels=100)


def test_max_pixels_governs_pillow_too(monkeypatch):
    """Pillow refuses images over twice its own limit at open (179 MP by default): a raised
    max_pixels must let them through, and a lower one still refuses."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600-pixel image: over twice that
    np.testing.assert_array_equal(decode_image(_png(GRAY8), max_pixels=1000)[..., 0], GRAY8)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(ImageDecodeError, match="max_pixels=500"):
        decode_image(_png(GRAY8), max_pixels=500)


def test_to_channels_repeats_gray_and_drops_alpha():
    assert to_channels(GRAY8[..., None], 3).shape == (20, 30, 3)
    np.testing.assert_array_equal(to_channels(RGBA8, 3), RGBA8[..., :3])


def test_flat_image_normalises_to_finite_zeros():
    flat = np.full((16, 16, 3), 7, np.uint16)
    out = apply_normalization(flat, estimate_normalization(flat))
    assert np.isfinite(out).all() and (out == 0).all()


def test_16_bit_image_normalises_to_unit_range():
    image = np.linspace(0, 60000, 100 * 100).reshape(100, 100, 1).astype(np.uint16)
    out = apply_normalization(image, estimate_normalization(image, Normalization(1, 99)))
    assert out.dtype == np.float32
    assert out[50, 50, 0] == pytest.approx(0.5, abs=0.01)
    assert out.min() >= -0.5 and out.max() <= 1.5


def test_bright_background_is_inverted_so_nuclei_are_bright():
    image = np.full((64, 64, 3), 220, np.uint8)
    image[20:30, 20:30] = 40  # a dark nucleus on a light stained background
    out = apply_normalization(image, estimate_normalization(image))
    assert out[25, 25].mean() > 0.9 and out[5, 5].mean() < 0.1


def test_normalisation_statistics_equal_numpy_percentiles_on_real_images(dsb2018):
    """The histogram percentiles of 8/16-bit images are exactly numpy's, and the inversion
    decision is the one the sorted median gives, on real images of every modality."""
    from segmodel.inference.preprocess import estimate_normalization
    from segmodel.training.datasets import list_samples

    inverted = 0
    for sample in list_samples(dsb2018, "val")[::3]:
        image = to_channels(sample.load()[0], 3)
        for im in (image, image.astype(np.uint16) * 257):
            x = im.astype(np.float32)
            low, high = np.percentile(x, [1, 99.8])
            stats = estimate_normalization(im)
            assert (stats.low, stats.high) == (float(low), float(high))
            assert stats.invert == bool(np.median((x.mean(-1) - low) / (high - low)) > 0.5)
        inverted += stats.invert
    assert 0 < inverted < 26  # both kinds of background were met


def test_normalisation_does_not_modify_its_input():
    image = RGB8.copy()
    apply_normalization(image, estimate_normalization(image))
    np.testing.assert_array_equal(image, RGB8)
    floats = RGB8.astype(np.float32)
    apply_normalization(floats, estimate_normalization(floats))
    np.testing.assert_array_equal(floats, RGB8.astype(np.float32))


def test_normalisation_in_place_equals_the_formula_on_real_images(dsb2018):
    """Bit for bit ``clip((1 -) (x - low) / (high - low), -0.5, 1.5)`` in float32, on real
    images with and without inversion."""
    from segmodel.training.datasets import list_samples

    inverted = 0
    for sample in list_samples(dsb2018, "val")[::4]:
        image = to_channels(sample.load()[0], 3)
        stats = estimate_normalization(image)
        x = (image.astype(np.float32) - stats.low) / (stats.high - stats.low)
        expected = np.clip(1.0 - x if stats.invert else x, -0.5, 1.5)
        out = apply_normalization(image, stats)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)
        inverted += stats.invert
    assert inverted  # the inverting branch was met


@pytest.mark.parametrize("invert", [False, True])
def test_16_bit_normalisation_through_its_lookup_table_equals_the_formula(invert):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 65536, (300, 400, 3)).astype(np.uint16)  # over 4 pixels per value
    stats = NormStats(1234.0, 50321.5, invert)
    x = (image.astype(np.float32) - stats.low) / (stats.high - stats.low)
    expected = np.clip(1.0 - x if invert else x, -0.5, 1.5)
    out = apply_normalization(image, stats)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)
    flat = apply_normalization(image, NormStats(7.0, 7.0, invert))
    assert flat.dtype == np.float32 and not flat.any()


def test_pyramid_halves_until_min_size_and_stops():
    levels = pyramid(np.zeros((256, 200, 3), np.float32), min_size=32)
    assert [lv.shape[:2] for lv in levels] == [(256, 200), (128, 100), (64, 50)]
    assert len(pyramid(np.zeros((20, 20, 1)), min_size=32)) == 1


def test_tiles_cover_the_image_and_stay_inside_it():
    tiling = Tiling(tile=64, overlap=8)
    origins = tile_origins((150, 100), tiling)
    covered = np.zeros((150, 100), bool)
    for y, x in origins:
        assert 0 <= y <= 150 - 64 and 0 <= x <= 100 - 64
        covered[y : y + 64, x : x + 64] = True
    assert covered.all()


def test_tile_larger_than_image_is_padded_with_zeros():
    tile = extract_tile(np.ones((10, 12, 1), np.float32), (0, 0), 32)
    assert tile.shape == (32, 32, 1)
    assert tile[:10, :12].sum() == 120 and tile.sum() == 120


@pytest.mark.parametrize("tile, overlap, match", [
    (100, 8, "multiple of 16"), (0, 0, "multiple of 16"), (64, 32, "overlap"),
])
def test_bad_tiling_names_the_parameter_and_value(tile, overlap, match):
    with pytest.raises(ValueError, match=match) as err:
        Tiling(tile, overlap).validate(16)
    assert "Received" in str(err.value)


@pytest.mark.parametrize("shape", [(100, 77), (20, 300), (256, 256), (520, 696), (257, 1000)])
@pytest.mark.parametrize("tile, overlap", [(32, 0), (32, 8), (64, 16), (256, 32)])
def test_owned_regions_cover_the_image_with_context_around_every_pixel(shape, tile, overlap):
    tiling = Tiling(tile, overlap)
    owner = np.full(shape, -1)
    origins = tile_origins(shape, tiling)
    for k, origin in enumerate(origins):
        rows, cols = owned_region(shape, origin, tiling)
        assert rows.start < rows.stop and cols.start < cols.stop
        owner[rows, cols] = k
    assert (owner >= 0).all()  # every pixel is filled
    # the tile a pixel is finally taken from saw `overlap` pixels around it, or the border
    oy = np.array([o[0] for o in origins])[owner]
    ox = np.array([o[1] for o in origins])[owner]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for pos, start, n in ((yy, oy, shape[0]), (xx, ox, shape[1])):
        assert ((pos - start >= overlap) | (start == 0)).all()
        assert ((start + tile - 1 - pos >= overlap) | (start + tile >= n)).all()
        assert ((pos >= start) & (pos < start + tile)).all()  # inside the tile itself


def test_channel_mean_percentiles_equal_numpy_on_real_images(dsb2018):
    """The histogram path (8/16-bit) gives numpy's percentiles of the float channel mean."""
    from segmodel.inference.preprocess import channel_mean_percentiles
    from segmodel.training.datasets import list_samples

    qs = [1.0, 50.0, 99.8]
    for sample in list_samples(dsb2018, "val")[::7]:
        image = sample.load()[0]
        image = image[..., None] if image.ndim == 2 else image
        for im in (image, image.astype(np.uint16) * 257, image.astype(np.float32) / 7):
            want = np.percentile(im.astype(np.float64).mean(axis=-1), qs)
            np.testing.assert_allclose(channel_mean_percentiles(im, qs), want, rtol=1e-5)


def test_percentiles_of_strided_8_bit_views_equal_numpy():
    """RGB views of RGBA pixels and subsamples are counted by blocks of rows, never copied."""
    from segmodel.inference.preprocess import _percentiles

    rng = np.random.default_rng(1)
    for shape in [(300, 400, 4), (1040, 1388, 4), (7, 5, 4), (1, 3, 4)]:
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)[..., :3]
        assert not rgb.flags.c_contiguous
        for view in (rgb, rgb[::3, ::2]):
            expected = np.percentile(view.astype(np.float32), [0.5, 1, 50, 99.8])
            np.testing.assert_allclose(_percentiles(view, [0.5, 1, 50, 99.8]), expected,
                                       rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape, chosen", [
    ((2048, 2048), 512),  # 121 tiles of 256 (7.9 MP computed) or 25 of 512 (6.6 MP)
    ((1040, 1388), 512),  # 42 of 256 (2.8 MP) or 9 of 512 (2.4 MP)
    ((520, 696), 256),    # 12 of 256 (0.8 MP) or 4 of 512 (1.0 MP)
    ((256, 320), 256),
    ((100, 100), 256),
])
def test_the_large_tile_is_used_where_it_computes_fewer_pixels(shape, chosen):
    from segmodel.inference.preprocess import computed_pixels

    tiling = Tiling(256, 32, 512)
    assert tiling.for_shape(shape) == Tiling(chosen, 32)
    small, large = computed_pixels(shape, Tiling(256, 32)), computed_pixels(shape, Tiling(512, 32))
    assert (large < small) == (chosen == 512)
    assert Tiling(256, 32).for_shape(shape) == Tiling(256, 32)  # no large size: one class


def test_a_large_tile_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ValueError, match="large must be 0 or a multiple of 16 above tile_size. "
                                         "Received: large=500 with tile_size=256"):
        Tiling(256, 32, 500).validate(16)
    with pytest.raises(ValueError, match="Received: large=256 with tile_size=256"):
        Tiling(256, 32, 256).validate(16)
