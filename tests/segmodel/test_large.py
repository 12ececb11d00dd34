"""Block-wise segmentation of large TIFFs: whole objects across block borders, unique labels."""

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from skimage.measure import label as connected
from skimage.measure import regionprops, regionprops_table

from segmodel.api import segment_many
from segmodel.inference.blockwise import (
    BlockRun,
    Blocks,
    TiffRegions,
    write_label_tiff,
    write_mosaic_tiff,
)
from segmodel.inference.passes import default_tiling
from segmodel.model.loading import load_model

SIZE, BLOCK = 1536, 768  # 2x2 blocks; the seams cross the middle of mosaic cells


def test_label_tiff_is_tiled_with_pyramid_levels(tmp_path):
    labels = np.arange(700 * 1100, dtype=np.uint32).reshape(700, 1100)
    bands = ((y, labels[y : y + 256]) for y in range(0, 700, 256))
    write_label_tiff(tmp_path / "l.tif", labels.shape, bands, min_level=128)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(700, 1100), (350, 550), (175, 275)]
        np.testing.assert_array_equal(levels[0].asarray(), labels)
        np.testing.assert_array_equal(levels[2].asarray(), labels[::4, ::4])
    with open(tmp_path / "l.tif", "rb") as fh:
        regions = TiffRegions(fh)
        np.testing.assert_array_equal(regions.read(300, 420, 900, 1100)[..., 0],
                                      labels[300:420, 900:1100])
        regions.close()


def test_block_size_must_be_a_multiple_of_the_tile():
    with pytest.raises(ValueError, match="block must be a positive multiple of 256"):
        Blocks(block=1000).validate()


@pytest.fixture(scope="module")
def mosaic(dsb2018, tmp_path_factory):
    """A 1536x1536 tiled TIFF assembled from real fluorescence images of the set."""
    index = pd.read_csv(dsb2018 / "index.csv").sort_values("id")
    ids = index[(index.height == 256) & (index.width == 256)
                & (index.modality == "fluorescence")].id[:20]
    images = [np.asarray(Image.open(dsb2018 / "images" / f"{i}.png")) for i in ids]
    path = tmp_path_factory.mktemp("large") / "mosaic.tif"
    write_mosaic_tiff(path, images, (SIZE, SIZE), offset=128)
    return path


@pytest.mark.slow
def test_blockwise_labels_are_unique_whole_and_equal_to_the_whole_image_run(mosaic, tmp_path):
    model = load_model()
    tiling = default_tiling(model.spec)
    with open(mosaic, "rb") as fh:
        regions = TiffRegions(fh)
        run = BlockRun(regions, model, image_id="m", tiling=tiling, blocks=Blocks(block=BLOCK))
        write_label_tiff(tmp_path / "labels.tif", regions.shape, run.rows())
        regions.close()
    labels = tifffile.imread(tmp_path / "labels.tif")
    whole = segment_many([tifffile.imread(mosaic)], model)[0]

    # labels 1..n, each one connected piece, and the table has one row per label
    assert labels.max() == run.n == len(run.objects) == len(np.unique(labels)) - 1 > 500
    assert connected(labels, connectivity=1, background=0).max() == run.n
    assert sorted(run.objects["label"]) == list(range(1, run.n + 1))

    crossing, far, far_equal = [], 0, 0
    for r in regionprops(labels):
        y0, x0, y1, x1 = r.bbox
        hit = whole[r.slice][r.image]
        ids, counts = np.unique(hit, return_counts=True)
        best = ids[np.argmax(counts)]
        union = r.area + np.count_nonzero(whole == best) - counts.max()
        iou = counts.max() / union if best else 0
        if y0 < BLOCK < y1 or x0 < BLOCK < x1:
            crossing.append(iou)
        elif min(abs(y0 - BLOCK), abs(y1 - BLOCK), abs(x0 - BLOCK), abs(x1 - BLOCK)) > 64:
            far += 1
            far_equal += iou == 1.0
    # objects across block borders come out whole: each matches one object of the whole run
    assert len(crossing) >= 10 and min(crossing) > 0.8
    # away from the seams the objects are exactly those of the whole-image run
    assert far > 500 and far_equal == far
    # the table's positions are in image coordinates
    props = pd.DataFrame(regionprops_table(labels, properties=("label", "centroid", "area")))
    table = run.objects.set_index("label").loc[props["label"]]
    assert (table["image_id"] == "m").all()
    same = np.isclose(table["centroid_y"].to_numpy(), props["centroid-0"].to_numpy())
    assert same.mean() > 0.99


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_flow_routes_tiffs_above_the_threshold_to_the_blockwise_path(mosaic, samples, tmp_path):
    import shutil

    from flows.cli import main

    src = tmp_path / "in"
    src.mkdir()
    crop = tifffile.imread(mosaic)[:768, :1024]
    tifffile.imwrite(src / "slide.tif", crop, tile=(256, 256), compression="zlib")
    small = next(p for p, _ in samples if p.name == "fluor-62570c4f.png")
    shutil.copy(small, src / small.name)
    out = tmp_path / "out"
    assert main(["run", str(src), str(out), "--tiled-above", "500000",
                 "--block-size", "512"]) == 0
    images = pd.read_parquet(out / "images").set_index("image_id")
    assert set(images.index) == {"slide.tif", small.name}
    assert images.loc["slide.tif", "shard"].split("-")[-1].startswith("L")
    # automatic scale measured the slide's central square: nuclei in range, kept as they are
    assert images.loc["slide.tif", "scale"] == 1.0
    assert 10 <= images.loc["slide.tif", "nucleus_diameter"] <= 50
    with tifffile.TiffFile(out / images.loc["slide.tif", "mask_path"]) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].dtype == np.uint32
        labels = tif.pages[0].asarray()
    assert labels.shape == (768, 1024) and labels.max() == images.loc["slide.tif", "n_objects"]
    objects = pd.read_parquet(out / "objects")
    assert (objects["image_id"] == "slide.tif").sum() == labels.max()
    assert main(["run", str(src), str(out), "--tiled-above", "500000",
                 "--block-size", "512"]) == 0  # a rerun skips both
    assert len(pd.read_parquet(out / "images")) == 2


def _tiff_bytes(array, **kwargs):
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, tile=(256, 256), **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("array, kwargs, options, reason", [
    (np.zeros((5, 256, 256), np.uint16), {}, {}, "several planes"),
    (np.zeros((256, 256), np.uint16), {}, {"plane": 2}, "several planes"),
    (np.zeros((256, 256, 3), np.uint8), {}, {"channel": 1}, "--channel 1"),
    (np.zeros((256, 256), np.uint8), {}, {"pyramid_level": 1}, "--pyramid-level 1"),
    (np.zeros((4, 256, 256), np.uint16), {"photometric": "minisblack", "planarconfig": "separate"},
     {}, "4 samples of photometric MINISBLACK"),
    (np.zeros((256, 256), np.uint8), {"photometric": "palette",
                                      "colormap": np.zeros((3, 256), np.uint16)},
     {}, "photometric PALETTE"),
], ids=["stack", "plane", "channel", "level", "4-channel", "palette"])
def test_block_reader_names_what_it_cannot_read(array, kwargs, options, reason):
    import io

    with TiffRegions(io.BytesIO(_tiff_bytes(array, **kwargs)), name="x.tif") as regions:
        assert reason in regions.unsupported(**options)


@pytest.mark.parametrize("array", [np.arange(300 * 400, dtype=np.uint16).reshape(300, 400),
                                   np.full((300, 400, 3), 7, np.uint8),
                                   np.full((300, 400, 4), 7, np.uint8)],
                         ids=["gray", "rgb", "rgba"])
def test_block_reader_reads_gray_and_rgb_from_a_writable_handle(array):
    """An uncompressed TIFF on a writable handle (memory://, BytesIO) reads like any other."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/large/a.tif", _tiff_bytes(array))
    with fs.open("/large/a.tif", "rb") as fh, TiffRegions(fh, name="a.tif") as regions:
        assert regions.unsupported() is None and regions.unsupported(plane=0) is None
        region = regions.read(10, 20, 30, 50)
    expected = array[10:20, 30:50]
    np.testing.assert_array_equal(region, expected[..., None] if array.ndim == 2 else expected)


def test_block_run_refuses_nan_pixels_naming_the_image():
    import io

    from segmodel.inference.preprocess import ImageDecodeError

    array = np.ones((512, 512), np.float32)
    array[300, 301] = np.nan  # off the statistics' sampling grid: found when its block is read
    model = load_model()
    with TiffRegions(io.BytesIO(_tiff_bytes(array)), name="nan.tif") as regions:
        run = BlockRun(regions, model, image_id="nan.tif", tiling=default_tiling(model.spec),
                       blocks=Blocks(block=256))
        with pytest.raises(ImageDecodeError, match="nan.tif: 1 pixel values are NaN"):
            list(run.rows())


def test_a_huge_image_gets_its_scale_from_its_central_square(mosaic, tmp_path):
    """Automatic scale on the block-wise path: measured on the central square, so the
    mosaic at 4x magnification gets the 4x diameter and a scale bringing it back in range."""
    from segmodel.inference.blockwise import estimate_scale
    from segmodel.training.datasets import magnify

    model = load_model()
    tiling = default_tiling(model.spec)
    image = tifffile.imread(mosaic)[:512, :512]
    big = magnify(image, np.zeros(image.shape[:2], np.int32), 4)[0]
    estimates = []
    for name, array in (("one", image), ("four", big)):
        tifffile.imwrite(tmp_path / f"{name}.tif", array, tile=(256, 256))
        with open(tmp_path / f"{name}.tif", "rb") as fh, TiffRegions(fh) as regions:
            estimates.append(estimate_scale(regions, model, tiling=tiling, size=1024))
    one, four = estimates
    assert one.scale == 1.0 and 10 <= one.diameter <= 50
    assert four.diameter / one.diameter == pytest.approx(4, rel=0.25)
    assert four.scale < 1.0 and not four.fallback
    assert 10 <= four.diameter * four.scale <= 50
