"""Microscopy formats on real images: TIFF depths, OME-TIFF, stacks, OME-Zarr, channel choice."""

import io

import numpy as np
import pytest
import tifffile
from microscopy import fluorescence_gray, write_ngff, write_ome_tiff
from PIL import Image

from segmodel.inference.measure import measure_objects, with_area_um2
from segmodel.inference.preprocess import ImageDecodeError
from segmodel.storage import formats
from segmodel.storage.io import Store, list_images


@pytest.fixture(scope="module")
def gray(dsb2018):
    """A real fluorescence image as uint16 (room for multiples of it)."""
    return fluorescence_gray(dsb2018)[0].astype(np.uint16)


def _tiff(array, **kw):
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


def _png(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["uint8", "uint16", "uint32", "float32", "float64"])
def test_tiff_depths_keep_their_values(gray, kind):
    array = (gray / 255.0).astype(kind) if kind.startswith("float") else \
        gray.astype(kind) * (257 if kind != "uint8" else 1)
    data = formats.decode(_tiff(array), name="a.tif")
    assert data.image.shape == gray.shape + (1,) and data.image.dtype == array.dtype
    np.testing.assert_array_equal(data.image[..., 0], array)
    assert data.channel_names == ("0",) and data.pixel_size_um is None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_pillow_formats_read_as_before(gray, fmt):
    rgb = np.dstack([gray.astype(np.uint8)] * 3)
    data = formats.decode(_png(rgb, fmt), name=f"a.{fmt.lower()}")
    assert data.image.shape == rgb.shape and data.rgb
    assert formats.model_image(data).shape == rgb.shape
    if fmt != "JPEG":
        np.testing.assert_array_equal(data.image, rgb)


def test_ome_tiff_gives_channel_names_pixel_size_and_every_channel(gray, tmp_path):
    cyx = np.stack([gray, gray * 3, 255 - gray, np.full_like(gray, 7)])
    write_ome_tiff(tmp_path / "a.ome.tif", cyx, "CYX", names=["DAPI", "GFP", "RFP", "Cy5"],
                   pixel_size=0.65)
    data = formats.decode((tmp_path / "a.ome.tif").read_bytes(), name="a.ome.tif")
    assert data.channel_names == ("DAPI", "GFP", "RFP", "Cy5")
    assert data.pixel_size_um == pytest.approx(0.65)
    np.testing.assert_array_equal(np.moveaxis(data.image, -1, 0), cyx)
    by_name = formats.model_image(data, "DAPI", "a")
    by_index = formats.model_image(data, 0, "a")
    assert by_name.shape == gray.shape + (1,)
    np.testing.assert_array_equal(by_name, by_index)
    np.testing.assert_array_equal(formats.model_image(data, "gfp", "a")[..., 0], cyx[1])


def test_many_channels_without_a_choice_ask_for_channel(gray, tmp_path):
    cyx = np.stack([gray] * 4).astype(np.uint16)
    write_ome_tiff(tmp_path / "a.ome.tif", cyx, "CYX", names=["DAPI", "GFP", "RFP", "Cy5"])
    data = formats.decode((tmp_path / "a.ome.tif").read_bytes(), name="a.ome.tif")
    with pytest.raises(ImageDecodeError, match="--channel") as err:
        formats.model_image(data, None, "a.ome.tif")
    assert "4 channels" in str(err.value) and "'DAPI'" in str(err.value)


@pytest.mark.parametrize("channel", ["Hoechst", 4])
def test_an_unknown_channel_names_the_parameter_value_and_the_channels(gray, tmp_path,
                                                                        channel):
    cyx = np.stack([gray] * 4).astype(np.uint16)
    write_ome_tiff(tmp_path / "a.ome.tif", cyx, "CYX", names=["DAPI", "GFP", "RFP", "Cy5"])
    data = formats.decode((tmp_path / "a.ome.tif").read_bytes(), name="a.ome.tif")
    with pytest.raises(ImageDecodeError) as err:
        formats.model_image(data, channel, "a.ome.tif")
    text = str(err.value)
    assert text.startswith("a.ome.tif") and "--channel" in text and repr(channel) in text
    assert "0='DAPI', 1='GFP', 2='RFP', 3='Cy5'" in text


def test_a_stack_needs_plane_and_plane_reads_only_that_plane(gray):
    zyx = np.stack([np.zeros_like(gray), gray, gray // 2])
    data = _tiff(zyx, photometric="minisblack")
    with pytest.raises(ImageDecodeError, match="out of scope") as err:
        formats.decode(data, name="z.tif")
    assert "--plane" in str(err.value) and "3 planes" in str(err.value)
    for k in range(3):
        np.testing.assert_array_equal(formats.decode(data, plane=k).image[..., 0], zyx[k])
    with pytest.raises(ImageDecodeError, match=r"plane=3 \(--plane\) does not exist"):
        formats.decode(data, name="z.tif", plane=3)
    # a 2-D image is its own only plane
    np.testing.assert_array_equal(formats.decode(_tiff(gray), plane=2).image[..., 0], gray)


def test_ome_time_series_of_multichannel_planes(gray, tmp_path):
    tczyx = np.stack([np.stack([np.stack([gray + t, gray // 2 + t])] * 1)
                      for t in range(3)]).astype(np.uint16)  # (T, Z=1, C, Y, X)
    tczyx = np.moveaxis(tczyx, 2, 1)  # (T, C, Z, Y, X)
    write_ome_tiff(tmp_path / "t.ome.tif", tczyx, "TCZYX", names=["DAPI", "GFP"],
                   pixel_size=0.2)
    raw = (tmp_path / "t.ome.tif").read_bytes()
    with pytest.raises(ImageDecodeError, match="--plane"):
        formats.decode(raw, name="t.ome.tif")
    data = formats.decode(raw, name="t.ome.tif", plane=2)
    assert data.channel_names == ("DAPI", "GFP") and data.pixel_size_um == pytest.approx(0.2)
    np.testing.assert_array_equal(data.image[..., 0], gray + 2)
    np.testing.assert_array_equal(data.image[..., 1], gray // 2 + 2)


def test_huge_multichannel_headers_are_refused_before_reading(gray):
    data = _tiff(np.stack([gray] * 3).astype(np.uint16), photometric="minisblack")
    with pytest.raises(ImageDecodeError, match="max_pixels=1000"):
        formats.decode(data, name="a.tif", plane=0, max_pixels=1000)


@pytest.mark.parametrize("zarr_format", [2, 3], ids=["ngff-0.4", "ngff-0.5"])
def test_ome_zarr_levels_channels_and_pixel_size(gray, tmp_path, zarr_format):
    cyx = np.stack([gray, gray * 2])
    write_ngff(tmp_path / "in" / "a.ome.zarr", cyx, names=["DAPI", "GFP"], pixel_size=0.3,
               zarr_format=zarr_format)
    store = Store(str(tmp_path / "in"))
    (ref,) = list_images(store)
    assert ref.image_id == "a.ome.zarr" and ref.size > 0
    full = formats.read_image(store, ref.path, name=ref.image_id)
    assert full.channel_names == ("DAPI", "GFP") and full.pixel_size_um == pytest.approx(0.3)
    np.testing.assert_array_equal(np.moveaxis(full.image, -1, 0), cyx)
    half = formats.read_image(store, ref.path, name=ref.image_id, pyramid_level=1)
    assert half.image.shape == (128, 128, 2) and half.pixel_size_um == pytest.approx(0.6)
    with pytest.raises(ImageDecodeError, match=r"pyramid_level=2 \(--pyramid-level\)"):
        formats.read_image(store, ref.path, name=ref.image_id, pyramid_level=2)


def test_listing_finds_ome_zarr_folders_as_single_images_never_their_chunks(gray, tmp_path):
    src = tmp_path / "in"
    (src / "plate").mkdir(parents=True)
    write_ngff(src / "plate" / "a.ome.zarr", np.stack([gray, gray]), names=["DAPI", "GFP"],
               pixel_size=0.3)
    Image.fromarray(gray).save(src / "b.png")
    (src / "plate" / "a.ome.zarr" / "0" / "notes.png").write_bytes(_png(gray))  # inside: no
    store = Store(str(src))
    refs = list_images(store, ["*"])
    assert [r.image_id for r in refs] == ["b.png", "plate/a.ome.zarr"]
    assert [r.image_id for r in list_images(store, ["*.png"])] == ["b.png"]
    assert [r.image_id for r in list_images(Store(str(src / "plate" / "a.ome.zarr")))] == \
        ["a.ome.zarr"]
    before = refs[1].fingerprint
    write_ngff(src / "plate" / "a.ome.zarr", np.stack([gray, 255 - gray]),
               names=["DAPI", "GFP"], pixel_size=0.3)
    (src / "plate" / "a.ome.zarr" / "0" / "notes.png").write_bytes(_png(gray[:10]))
    assert list_images(store, ["*"])[1].fingerprint != before


@pytest.mark.slow
def test_ome_zarr_on_s3_is_listed_and_read_through_fsspec(gray, tmp_path, s3_options):
    import s3fs

    local = write_ngff(tmp_path / "a.ome.zarr", np.stack([gray, gray * 2]),
                       names=["DAPI", "GFP"], pixel_size=0.3)
    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdir("zarr-in")
    try:
        fs.put(str(local), "zarr-in/plate/a.ome.zarr", recursive=True)
        fs.pipe_file("zarr-in/plate/b.png", _png(gray))
        store = Store("s3://zarr-in/plate", s3_options)
        refs = list_images(store)
        assert [r.image_id for r in refs] == ["a.ome.zarr", "b.png"]
        data = formats.read_image(store, refs[0].path, name=refs[0].image_id, pyramid_level=1)
        assert data.channel_names == ("DAPI", "GFP") and data.image.shape == (128, 128, 2)
        np.testing.assert_array_equal(data.image[..., 1], gray[::2, ::2] * 2)
    finally:
        fs.rm("zarr-in", recursive=True)


def test_every_channel_is_measured_per_object(gray, tmp_path):
    labels = np.zeros(gray.shape, np.int32)
    labels[10:20, 10:30] = 1
    labels[100:140, 50:60] = 2
    cyx = np.stack([gray, gray * 3, 255 - gray])
    write_ome_tiff(tmp_path / "a.ome.tif", cyx, "CYX", names=["DAPI", "GFP 488", "RFP"],
                   pixel_size=0.5)
    data = formats.decode((tmp_path / "a.ome.tif").read_bytes())
    values = formats.measure_channels(labels, data, "a").set_index(["label", "channel_name"])
    assert len(values) == 2 * 3 and (values["image_id"] == "a").all()
    for k, region in enumerate([labels == 1, labels == 2], start=1):
        assert values.loc[(k, "DAPI"), "mean"] == pytest.approx(gray[region].mean())
        assert values.loc[(k, "GFP 488"), "mean"] == pytest.approx(3 * gray[region].mean())
        assert values.loc[(k, "RFP"), "max"] == 255 - gray[region].min()
        assert values.loc[(k, "DAPI"), "min"] == gray[region].min()
        assert values.loc[(k, "RFP"), "channel"] == 2
    table = with_area_um2(measure_objects(labels, "a"), data.pixel_size_um)
    assert table["area_um2"].tolist() == pytest.approx((table["area"] * 0.25).tolist())


def test_an_rgba_pictures_alpha_is_not_measured():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 9, 255
    labels = np.zeros((8, 8), np.int32)
    labels[2:4, 2:4] = 1
    values = formats.measure_channels(labels, formats.ImageData(rgba, ("0", "1", "2", "3")))
    assert values["channel"].tolist() == [0, 1, 2] and values["mean"].tolist() == [9, 0, 0]


def test_channel_is_parsed_as_an_index_or_a_name():
    assert formats.parse_channel("0") == 0 and formats.parse_channel(" 2 ") == 2
    assert formats.parse_channel("DAPI") == "DAPI" and formats.parse_channel(None) is None
    with pytest.raises(ValueError, match="channel must be"):
        formats.parse_channel("")
    with pytest.raises(TypeError, match="Received: a list"):
        formats.parse_channel([0])


def test_imagej_hyperstack_gives_its_calibration(gray):
    zcyx = np.stack([np.stack([gray, gray + 1])] * 3)
    data = _tiff(zcyx, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                 metadata={"axes": "ZCYX", "unit": "um"})
    image = formats.decode(data, name="ij.tif", plane=2)
    assert image.pixel_size_um == pytest.approx(0.4) and image.image.shape == gray.shape + (2,)
    np.testing.assert_array_equal(image.image[..., 1], gray + 1)


def test_pyramidal_tiff_levels(gray, tmp_path):
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(gray, subifds=1, tile=(64, 64))
        tw.write(gray[::2, ::2], subfiletype=1, tile=(64, 64))
    raw = path.read_bytes()
    np.testing.assert_array_equal(formats.decode(raw).image[..., 0], gray)
    np.testing.assert_array_equal(formats.decode(raw, pyramid_level=1).image[..., 0],
                                  gray[::2, ::2])
    with pytest.raises(ImageDecodeError, match="--pyramid-level"):
        formats.decode(raw, name="pyramid.tif", pyramid_level=2)


def test_a_pyramid_levels_pixel_size_is_its_own(gray, tmp_path):
    """OME-TIFF with a 2x sub-resolution: level 1's pixels are twice as wide."""
    path = tmp_path / "pyramid.ome.tif"
    meta = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(gray, subifds=1, tile=(64, 64), metadata=meta)
        tw.write(gray[::2, ::2], subfiletype=1, tile=(64, 64))
    raw = path.read_bytes()
    assert formats.decode(raw).pixel_size_um == pytest.approx(0.5)
    assert formats.decode(raw, pyramid_level=1).pixel_size_um == pytest.approx(1.0)


def test_rectangular_pixels_give_the_edge_of_a_square_of_the_same_area(gray, tmp_path):
    write = tmp_path / "rect.ome.tif"
    tifffile.imwrite(write, gray, ome=True, photometric="minisblack", metadata={
        "axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.8})
    assert formats.decode(write.read_bytes()).pixel_size_um == pytest.approx(0.4)  # 0.2 x 0.8


def test_two_samples_without_an_alpha_are_two_channels(gray):
    yxs = np.stack([gray, gray // 2 + 1], axis=-1)
    data = _tiff(yxs, photometric="minisblack", planarconfig="contig")
    image = formats.decode(data, name="two.tif")
    assert image.image.shape == gray.shape + (2,) and not image.rgb
    np.testing.assert_array_equal(image.image[..., 1], gray // 2 + 1)
    with_alpha = formats.decode(_tiff(yxs, photometric="minisblack", planarconfig="contig",
                                      extrasamples=["unassalpha"]), name="alpha.tif")
    assert with_alpha.image.shape == gray.shape + (1,)  # gray + alpha: the alpha goes
    np.testing.assert_array_equal(formats.model_image(image, 1, "two.tif")[..., 0],
                                  gray // 2 + 1)
