"""Microscopy inputs through the whole segment-images flow, on files built from real images.

One folder holds the same real fluorescence image as a PNG, a 16-bit TIFF, a float32 TIFF, a
4-channel OME-TIFF (DAPI = the image, GFP = 3x, RFP = 255 - it, Cy5 constant; 0.5 µm pixels), a
3-page stack (the image is plane 1) and a 2-level OME-Zarr (DAPI, GFP = 2x; 0.3 µm pixels).
"""

import json
import re
import shutil

import numpy as np
import pytest
import tifffile
from microscopy import fluorescence_gray, write_ngff, write_ome_tiff
from PIL import Image

from flows.cli import main
from flows.report import GALLERY_KEY
from segmodel.inference.measure import OBJECT_SCHEMA
from segmodel.pipeline.outputs import IMAGE_SCHEMA, read_table

pytestmark = pytest.mark.usefixtures("prefect_server")

FLAT = ["a.png", "a16.tif", "f32.tif"]


@pytest.fixture(scope="module")
def gray(dsb2018):
    return fluorescence_gray(dsb2018)[0]


@pytest.fixture(scope="module")
def folder(gray, tmp_path_factory):
    src = tmp_path_factory.mktemp("micro") / "in"
    src.mkdir()
    g16 = gray.astype(np.uint16)
    Image.fromarray(gray).save(src / "a.png")
    tifffile.imwrite(src / "a16.tif", g16 * 257)
    tifffile.imwrite(src / "f32.tif", (gray / 255.0).astype(np.float32))
    write_ome_tiff(src / "ome.ome.tif", np.stack([g16, g16 * 3, 255 - g16, np.full_like(g16, 7)]),
                   "CYX", names=["DAPI", "GFP", "RFP", "Cy5"], pixel_size=0.5)
    tifffile.imwrite(src / "stack.tif", np.stack([np.zeros_like(gray), gray, gray // 3]),
                     photometric="minisblack")
    write_ngff(src / "img.ome.zarr", np.stack([g16, g16 * 2]), names=["DAPI", "GFP"],
               pixel_size=0.3)
    return src


def _run(src, out, *args):
    assert main(["run", str(src), str(out), "--shard-size", "2", *args]) == 0
    return {name: read_table(str(out), name)
            for name in ("images", "objects", "intensities", "failures")}


def _channel(t, image_id, stat):
    """One statistic of an image's objects, a column per channel name, a row per label."""
    values = t["intensities"][t["intensities"]["image_id"] == image_id]
    return values.pivot(index="label", columns="channel_name", values=stat)


def _mask(out, images, image_id):
    return tifffile.imread(out / images.set_index("image_id").loc[image_id, "mask_path"])


def _same_objects(a, b):
    """Masks of the same nuclei: nearly the same count and foreground."""
    na, nb = int(a.max()), int(b.max())
    overlap = ((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum())
    return abs(na - nb) <= max(1, 0.05 * na) and overlap > 0.97


def test_microscopy_inputs_channels_planes_and_units_end_to_end(folder, gray, tmp_path, capsys):
    out = tmp_path / "out"
    # 1. no choices: gray images as before; many channels, 2 channels and stacks fail clearly
    t = _run(folder, out)
    images, failures = t["images"].set_index("image_id"), t["failures"].set_index("image_id")
    assert sorted(images.index) == FLAT
    assert sorted(failures.index) == ["img.ome.zarr", "ome.ome.tif", "stack.tif"]
    assert list(t["images"].columns) == list(IMAGE_SCHEMA)
    assert list(t["objects"].columns) == list(OBJECT_SCHEMA)
    assert "--channel" in failures.loc["ome.ome.tif", "message"]
    assert "0='DAPI', 1='GFP', 2='RFP', 3='Cy5'" in failures.loc["ome.ome.tif", "message"]
    assert "--channel" in failures.loc["img.ome.zarr", "message"]
    stack = failures.loc["stack.tif", "message"]
    assert "out of scope" in stack and "--plane" in stack and "3 planes" in stack
    reference = _mask(out, t["images"], "a.png")
    assert images.loc["a.png", "n_objects"] >= 15
    for image_id in FLAT[1:]:  # 16-bit and float32 TIFFs: the same nuclei as the PNG
        assert _same_objects(_mask(out, t["images"], image_id), reference), image_id
    assert images["pixel_size_um"].isna().all()
    objects = t["objects"][t["objects"]["image_id"] == "a.png"].set_index("label")
    assert objects["area_um2"].isna().all()
    means = _channel(t, "a.png", "mean")
    assert list(means.columns) == ["0"] and list(means.index) == list(objects.index)
    mask = _mask(out, t["images"], "a.png")
    for label in means.index[:5]:
        assert means.loc[label, "0"] == pytest.approx(gray[mask == label].mean())

    # 2. --channel DAPI --plane 1: a new configuration, so every image is done again
    capsys.readouterr()
    t = _run(folder, out, "--channel", "DAPI", "--plane", "1")
    assert "6 images to segment (0 already done)" in capsys.readouterr().out
    images, failures = t["images"].set_index("image_id"), t["failures"].set_index("image_id")
    assert sorted(images.index) == ["img.ome.zarr", "ome.ome.tif"]
    for image_id in FLAT + ["stack.tif"]:  # no channel named DAPI there
        message = failures.loc[image_id, "message"]
        assert "channel='DAPI' (--channel)" in message and "0='0'" in message
    for image_id in ("ome.ome.tif", "img.ome.zarr"):
        assert _same_objects(_mask(out, t["images"], image_id), reference), image_id
    dapi_ome = _mask(out, t["images"], "ome.ome.tif")
    ome = t["objects"][t["objects"]["image_id"] == "ome.ome.tif"].set_index("label")
    assert len(ome) == images.loc["ome.ome.tif", "n_objects"] > 0
    mean, low, high = (_channel(t, "ome.ome.tif", s) for s in ("mean", "min", "max"))
    assert list(mean.index) == list(ome.index)
    np.testing.assert_allclose(mean["GFP"], 3 * mean["DAPI"])
    np.testing.assert_allclose(high["GFP"], 3 * high["DAPI"])
    np.testing.assert_allclose(low["RFP"], 255 - high["DAPI"])
    assert (mean["Cy5"] == 7).all()
    for label in ome.index[:5]:  # the values of the pixels of each object
        pixels = gray[dapi_ome == label]
        assert mean.loc[label, "DAPI"] == pytest.approx(pixels.mean())
        assert low.loc[label, "DAPI"] == pixels.min()
    assert images.loc["ome.ome.tif", "pixel_size_um"] == pytest.approx(0.5)
    np.testing.assert_allclose(ome["area_um2"], ome["area"] * 0.25)
    zarr_objects = t["objects"][t["objects"]["image_id"] == "img.ome.zarr"]
    zarr_means = _channel(t, "img.ome.zarr", "mean")
    np.testing.assert_allclose(zarr_means["GFP"], 2 * zarr_means["DAPI"])
    np.testing.assert_allclose(zarr_objects["area_um2"], zarr_objects["area"] * 0.09)
    assert images.loc["img.ome.zarr", "pixel_size_um"] == pytest.approx(0.3)

    # 3. --channel 0 --plane 1: every file works; channel 0 is DAPI, so the same labels
    t = _run(folder, out, "--channel", "0", "--plane", "1")
    images = t["images"].set_index("image_id")
    assert len(images) == 6 and t["failures"].empty
    np.testing.assert_array_equal(_mask(out, t["images"], "ome.ome.tif"), dapi_ome)
    assert _same_objects(_mask(out, t["images"], "stack.tif"), reference)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["parameters"]["channel"] == 0 and manifest["parameters"]["plane"] == 1


def test_ome_zarr_pyramid_level_is_segmented_at_its_resolution(folder, tmp_path,
                                                                flow_run_record):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copytree(folder / "img.ome.zarr", src / "img.ome.zarr")
    out = tmp_path / "out"
    t = _run(src, out, "--channel", "GFP", "--pyramid-level", "1")
    row = t["images"].iloc[0]
    assert (row["height"], row["width"]) == (128, 128)
    assert row["pixel_size_um"] == pytest.approx(0.6) and row["n_objects"] > 0
    objects = t["objects"]
    np.testing.assert_allclose(objects["area_um2"], objects["area"] * 0.36)
    assert not list((out / "labels").rglob("*.zarr"))  # the mask is a TIFF beside the others
    assert (out / row["mask_path"]).is_file()
    gallery = flow_run_record()["artifacts"][GALLERY_KEY].data  # the level and channel shown
    assert re.search(r"!\[img\.ome\.zarr\]\(data:image/png;base64,", gallery)
