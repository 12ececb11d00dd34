"""--mask-format ome-zarr and --outlines geojson through the CLI on real sample images."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from PIL import Image
from skimage.draw import polygon as fill_polygon
from viewers import check_geojson, check_ome_zarr

from flows.cli import main
from segmodel.storage import export
from segmodel.storage.io import Store

pytestmark = pytest.mark.usefixtures("prefect_server")

# 256x256 (one level), 256x320 (two levels), 520x696 (three levels)
NAMES = ["fluor-3bfd6bb1.png", "histo-b909aa8f.png", "fluor-43cf6b2e.png"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, samples):
    """The same three images segmented once with TIFF masks, once as OME-Zarr + GeoJSON."""
    root = tmp_path_factory.mktemp("export")
    src = root / "in"
    (src / "plate").mkdir(parents=True)
    by_name = {p.name: p for p, _ in samples}
    for i, name in enumerate(NAMES):
        shutil.copy(by_name[name], src / ("plate" if i else "") / name)
    assert main(["run", str(src), str(root / "tif")]) == 0
    args = ["run", str(src), str(root / "zarr"), "--mask-format", "ome-zarr",
            "--outlines", "geojson"]
    assert main(args) == 0
    return {"src": src, "tif": root / "tif", "zarr": root / "zarr", "args": args}


def _images(out):
    return pd.read_parquet(out / "images").set_index("image_id").sort_index()


def test_ome_zarr_labels_equal_the_tiff_masks_with_a_halving_pyramid(runs):
    tif, zrr = _images(runs["tif"]), _images(runs["zarr"])
    assert list(zrr.index) == list(tif.index) and len(zrr) == 3
    levels = set()
    for image_id, row in zrr.iterrows():
        assert row.mask_path.endswith(".ome.zarr")
        group = zarr.open_group(str(runs["zarr"] / row.mask_path), mode="r")  # plain zarr
        mask = tifffile.imread(runs["tif"] / tif.loc[image_id, "mask_path"])
        np.testing.assert_array_equal(group["labels/nuclei/0"][:], mask)
        assert group["labels/nuclei/0"].dtype == mask.dtype
        datasets = group["labels/nuclei"].attrs["multiscales"][0]["datasets"]
        for k, d in enumerate(datasets):
            level = group[f"labels/nuclei/{d['path']}"]
            assert level.shape == (-(-row.height // 2**k), -(-row.width // 2**k))
            assert set(np.unique(level[:])) <= set(np.unique(mask))
            assert group[d["path"]].shape[1:] == level.shape  # image level of the same size
        levels.add(len(datasets))
        ms = group.attrs["multiscales"][0]
        assert ms["version"] == "0.4" and ms["name"] == image_id
        assert group["labels"].attrs["labels"] == ["nuclei"]
        assert group["labels/nuclei"].attrs["image-label"]["source"] == {"image": "../../"}
        assert row.n_objects == int(mask.max())
    assert levels == {1, 2, 3}


def _ring_mask(rings, shape):
    out = np.zeros(shape, bool)
    for i, ring in enumerate(rings):
        xy = np.asarray(ring)
        rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
        hit = np.zeros(shape, bool)
        hit[rr, cc] = True
        out = out | hit if i == 0 else out & ~hit
    return out


def test_geojson_outlines_match_each_object_of_the_mask(runs):
    zrr = _images(runs["zarr"])
    objects = pd.read_parquet(runs["zarr"] / "objects")
    for image_id, row in zrr.iterrows():
        mask = export.read_labels(Store(str(runs["zarr"])), row.mask_path)
        path = runs["zarr"] / export.outline_path(row.mask_path)
        assert path.name == image_id.rsplit("/", 1)[-1].replace(".png", ".geojson")
        doc = json.loads(path.read_text())
        assert doc["type"] == "FeatureCollection"
        mine = objects[objects["image_id"] == image_id].set_index("label")
        assert sorted(f["id"] for f in doc["features"]) == sorted(mine.index)
        for f in doc["features"]:
            assert f["properties"]["area"] == mine.loc[f["id"], "area"]
            polys = f["geometry"]["coordinates"]
            if f["geometry"]["type"] == "Polygon":
                polys = [polys]
            drawn = np.zeros(mask.shape, bool)
            for rings in polys:
                drawn |= _ring_mask(rings, mask.shape)
            obj = mask == f["id"]
            assert (drawn & obj).sum() / (drawn | obj).sum() > 0.9, (image_id, f["id"])


def test_napari_s_reader_opens_every_store_with_its_image_levels_and_labels(runs):
    """ome-zarr-py's Reader (napari-ome-zarr's) on each written store: the image node with
    every level (the input's pixels, then 2x2 means), the nuclei labels through its labels
    group, equal to the TIFF mask of the same images and to the objects table's labels."""
    zrr, tif = _images(runs["zarr"]), _images(runs["tif"])
    objects = pd.read_parquet(runs["zarr"] / "objects")
    for image_id, row in zrr.iterrows():
        pixels = np.asarray(Image.open(runs["src"] / image_id))[..., :3]  # RGBA: the model's RGB
        mask = tifffile.imread(runs["tif"] / tif.loc[image_id, "mask_path"])
        check_ome_zarr(runs["zarr"] / row.mask_path, pixels, mask,
                       objects.loc[objects["image_id"] == image_id, "label"].tolist())


def test_every_outline_file_is_valid_geojson_for_shapely_and_qupath(runs):
    zrr = _images(runs["zarr"])
    objects = pd.read_parquet(runs["zarr"] / "objects")
    files = sorted(p.relative_to(runs["zarr"]).as_posix()
                   for p in (runs["zarr"] / "outlines").rglob("*") if p.is_file())
    assert files == sorted(export.outline_path(p) for p in zrr.mask_path)  # one per image
    for image_id, row in zrr.iterrows():
        mask = export.read_labels(Store(str(runs["zarr"])), row.mask_path)
        check_geojson((runs["zarr"] / export.outline_path(row.mask_path)).read_text(), mask,
                      objects.loc[objects["image_id"] == image_id, "label"].tolist())


def test_a_rerun_skips_and_rewrites_nothing(runs, capsys):
    out = runs["zarr"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(runs["args"]) == 0
    assert "0 images to segment (3 already done)" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [p for p in before if after[p] != before[p] and p.name != "run.json"]
    assert changed == []


def test_a_partial_store_is_not_taken_as_done(runs, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(runs["zarr"], out)
    images = _images(out)
    victim = images.index[1]
    store_dir = out / images.loc[victim, "mask_path"]
    expected = zarr.open_group(str(store_dir), mode="r")["labels/nuclei/0"][:]
    # a killed rewrite: the shard never committed, the store lost its root metadata and holds
    # a stray chunk; plus a partial store of an image that is gone from the input
    for part in (out / "images").glob("*.parquet"):
        part.unlink()
    (store_dir / ".zattrs").unlink()
    (store_dir / "labels" / "nuclei" / "0" / "9").mkdir()
    (store_dir / "labels" / "nuclei" / "0" / "9" / "9").write_bytes(b"junk")
    orphan = out / "labels" / "gone.ome.zarr"
    (orphan / "0").mkdir(parents=True)
    (orphan / "0" / ".zarray").write_text("{}")
    capsys.readouterr()
    assert main([*runs["args"][:2], str(out), *runs["args"][3:]]) == 0
    assert "3 images to segment (0 already done)" in capsys.readouterr().out
    assert not orphan.exists()
    assert not (store_dir / "labels" / "nuclei" / "0" / "9").exists()
    group = export.open_ome_zarr(Store(str(out)), images.loc[victim, "mask_path"])
    np.testing.assert_array_equal(group["labels/nuclei/0"][:], expected)


def test_outlines_with_tiff_masks_and_the_parameter_check(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(runs["src"] / "plate"), str(out), "--outlines", "geojson"]) == 0
    assert sorted(p.name for p in (out / "outlines").iterdir()) == \
        ["fluor-43cf6b2e.geojson", "histo-b909aa8f.geojson"]
    with pytest.raises(SystemExit):
        main(["run", str(runs["src"]), str(out), "--outlines", "shp"])
    assert "--outlines: invalid choice: 'shp'" in capsys.readouterr().err


def test_ome_zarr_on_s3_round_trip(runs, s3_options, capsys):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdir("export-in")
    fs.mkdir("export-out")
    name = NAMES[1]
    fs.pipe_file(f"export-in/{name}", (runs["src"] / "plate" / name).read_bytes())
    opts = json.dumps(s3_options)
    args = ["run", "s3://export-in", "s3://export-out/run", "--storage-options", opts,
            "--mask-format", "ome-zarr", "--outlines", "geojson"]
    try:
        assert main(args) == 0
        out = Store("s3://export-out/run", s3_options)
        row = pd.read_parquet("s3://export-out/run/images", storage_options=s3_options).iloc[0]
        labels = export.read_labels(out, row.mask_path)
        local = _images(runs["zarr"]).loc[f"plate/{name}"]
        expected = export.read_labels(Store(str(runs["zarr"])), local.mask_path)
        np.testing.assert_array_equal(labels, expected)
        assert export.read_labels(out, row.mask_path, 1).shape == (128, 160)
        doc = json.loads(out.read_text(export.outline_path(row.mask_path)))
        assert len(doc["features"]) == row.n_objects
        capsys.readouterr()
        assert main(args) == 0
        assert "0 images to segment (1 already done)" in capsys.readouterr().out
    finally:
        fs.rm("export-in", recursive=True)
        fs.rm("export-out", recursive=True)


@pytest.mark.slow
def test_large_images_write_ome_zarr_and_outlines_block_by_block(runs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    from PIL import Image

    pixels = np.asarray(Image.open(runs["src"] / "plate" / NAMES[2]))[..., :3]  # 520x696
    tifffile.imwrite(src / "slide.tif", pixels, tile=(256, 256), compression="zlib")
    common = ["--tiled-above", "300000", "--block-size", "512", "--outlines", "geojson"]
    assert main(["run", str(src), str(tmp_path / "tif"), *common]) == 0
    assert main(["run", str(src), str(tmp_path / "zarr"), *common,
                 "--mask-format", "ome-zarr"]) == 0
    row = _images(tmp_path / "zarr").loc["slide.tif"]
    assert row.shard.split("-")[-1].startswith("L")  # the block-wise path
    group = export.open_ome_zarr(Store(str(tmp_path / "zarr")), row.mask_path)
    tif_row = _images(tmp_path / "tif").loc["slide.tif"]
    with tifffile.TiffFile(tmp_path / "tif" / tif_row.mask_path) as tif:
        mask = tif.pages[0].asarray()
    np.testing.assert_array_equal(group["labels/nuclei/0"][:], mask)
    assert [group[f"labels/nuclei/{k}"].shape for k in range(3)] == \
        [(520, 696), (260, 348), (130, 174)]
    np.testing.assert_array_equal(np.moveaxis(group["0"][:], 0, -1), pixels)
    objects = pd.read_parquet(tmp_path / "zarr" / "objects")
    check_ome_zarr(tmp_path / "zarr" / row.mask_path, pixels, mask, objects["label"].tolist())
    for out in ("tif", "zarr"):
        check_geojson((tmp_path / out / "outlines" / "slide.geojson").read_text(), mask)
        doc = json.loads((tmp_path / out / "outlines" / "slide.geojson").read_text())
        assert sorted(f["id"] for f in doc["features"]) == sorted(set(np.unique(mask)) - {0})
        for f in doc["features"]:
            polys = f["geometry"]["coordinates"]
            polys = [polys] if f["geometry"]["type"] == "Polygon" else polys
            drawn = np.zeros(mask.shape, bool)
            for rings in polys:
                drawn |= _ring_mask(rings, mask.shape)
            obj = mask == f["id"]
            assert (drawn & obj).sum() / (drawn | obj).sum() > 0.9


def test_large_tiffs_block_by_block_a_stack_fails_and_a_calibrated_slide_has_its_units(
        runs, tmp_path):
    """Above --tiled-above: a 5-plane stack is a row in the failures table naming why and
    what to do (the run does not crash); an OME-TIFF gives its pixel size and areas in µm²."""
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "stack.tif", np.zeros((5, 600, 600), np.uint16), tile=(256, 256))
    pixels = np.asarray(Image.open(runs["src"] / "plate" / NAMES[2]))[..., :3]  # 520x696
    tifffile.imwrite(src / "slide.ome.tif", pixels, tile=(256, 256), ome=True,
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    out = tmp_path / "out"
    assert main(["run", str(src), str(out), "--tiled-above", "300000"]) == 0
    failures = pd.read_parquet(out / "failures")
    assert list(failures.image_id) == ["stack.tif"]
    (row,) = failures.itertuples()
    assert (row.stage, row.error_type) == ("decode", "ImageDecodeError")
    assert "several planes" in row.message and "--tiled-above" in row.message
    images = _images(out)
    assert list(images.index) == ["slide.ome.tif"] and images.pixel_size_um.iloc[0] == 0.5
    assert images.shard.iloc[0].split("-")[-1].startswith("L")  # the block-wise path
    objects = pd.read_parquet(out / "objects")
    assert len(objects) > 10
    np.testing.assert_allclose(objects.area_um2, objects.area * 0.25)
