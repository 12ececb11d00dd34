"""The pipeline in the engine, without Prefect: configuration, planning, a whole run."""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import tifffile

import segmodel
from segmodel.api import read_table, run
from segmodel.pipeline import runtime
from segmodel.pipeline.config import configure
from segmodel.pipeline.options import RunOptions
from segmodel.pipeline.plan import plan_run

SAMPLES = pathlib.Path(segmodel.__file__).parent / "samples"


def test_the_model_warm_up_traces_each_batch_shape_of_a_run_once_per_process(tmp_path):
    import keras

    config, _ = configure(RunOptions(input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                     batch_size=3, tile_size=128))
    shapes = [(3, 128, 128, 3)]
    if keras.backend.backend() == "tensorflow":  # a shard's last batch: any size, one trace
        shapes.append((1, 128, 128, 3))
    assert runtime.warm_up(config) == shapes
    assert runtime.warm_up(config) == []  # already traced in this process


def test_the_config_key_changes_with_what_changes_results_and_only_with_that(tmp_path):
    def key(**options):
        config, _ = configure(RunOptions(input=str(tmp_path / "in"), output=str(tmp_path / "o"),
                                         **options))
        return config.config_key

    base = key()
    assert key(shard_size=7, batch_size=2, cpu_workers=1, retry_failed=True) == base
    assert len({base, key(scale=1.0), key(tile_size=128), key(mask_format="png"),
                key(tta=True), key(channel=0), key(outlines="geojson")}) == 7


def test_a_plan_cuts_the_images_into_shards_of_the_chosen_size(tmp_path):
    config, _ = configure(RunOptions(input=str(SAMPLES), output=str(tmp_path / "o"),
                                     shard_size=3))
    plan = plan_run(config, "stamp")
    n = len(list(SAMPLES.glob("*.png")))
    assert (plan.found, plan.skipped, plan.to_segment) == (n, 0, n)
    assert [len(j.refs) for j in plan.jobs] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    assert [j.index for j in plan.jobs] == list(range(1, len(plan.jobs) + 1))
    assert plan.jobs[0].name == "stamp-00000" and not plan.large_jobs


def test_a_folder_runs_end_to_end_without_prefect_and_a_rerun_skips_it(tmp_path):
    out = tmp_path / "out"
    summary = run(str(SAMPLES), str(out), shard_size=4)
    n = len(list(SAMPLES.glob("*.png")))
    assert (summary["found"], summary["images"], summary["failed"]) == (n, n, 0)
    images, objects = read_table(str(out), "images"), read_table(str(out), "objects")
    assert len(images) == n and images["n_objects"].sum() == len(objects) > 0
    mask = tifffile.imread(out / images["mask_path"].iloc[0])
    assert mask.max() == images["n_objects"].iloc[0]
    assert json.loads((out / "run.json").read_text())["counts"]["images"] == n
    again = run(str(SAMPLES), str(out), shard_size=4)
    assert (again["skipped"], again["images"]) == (n, 0)
    pd.testing.assert_frame_equal(read_table(str(out), "objects"), objects)


def test_a_run_with_a_bad_option_fails_before_any_work_naming_it(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="shard_size"):
        run(str(tmp_path / "in"), str(tmp_path / "out"), shard_size=0)
    assert not (tmp_path / "out").exists()


def test_an_empty_folder_is_an_error_naming_the_input(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(FileNotFoundError, match="no images under input="):
        run(str(tmp_path / "in"), str(tmp_path / "out"))
    assert np.all([not p.name.endswith(".parquet") for p in tmp_path.rglob("*")])


@pytest.mark.parametrize("output", ["{src}", "{src}/seg", "{src}/./seg/", "{link}/seg"],
                         ids=["same", "inside", "unnormalised", "through-a-link"])
def test_an_output_in_the_input_is_refused_before_any_work(tmp_path, output):
    """Each rerun would otherwise segment the masks the previous one wrote there."""
    src = tmp_path / "in"
    src.mkdir()
    (tmp_path / "link").symlink_to(src)
    out = output.format(src=src, link=tmp_path / "link")
    with pytest.raises(ValueError, match=r"is the input or a folder inside it.*Choose an output"):
        run(str(src), out)
    assert list(src.iterdir()) == []


def test_store_containment_is_by_path_components_and_file_system():
    from segmodel.storage.io import Store

    assert Store("memory://a").contains(Store("memory://a/b"))
    assert not Store("memory://a").contains(Store("memory://ab"))  # a sibling, not inside
    assert not Store("memory://a/b").contains(Store("memory://a"))
    assert not Store("/a").contains(Store("memory://a/b"))


def _mixed_channels(src):
    """Gray, RGB and RGBA PNGs, a gray TIFF for the block-wise path and a broken file."""
    from PIL import Image

    src.mkdir()
    Image.open(SAMPLES / "fluor-3bfd6bb1.png").convert("L").save(src / "gray.png")
    Image.open(SAMPLES / "histo-b909aa8f.png").convert("RGB").save(src / "rgb.png")
    Image.open(SAMPLES / "fluor-62570c4f.png").save(src / "rgba.png")
    big = np.asarray(Image.open(SAMPLES / "fluor-43cf6b2e.png").convert("L"))
    tifffile.imwrite(src / "big.tif", big, tile=(256, 256))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return {"gray.png": 1, "rgb.png": 3, "rgba.png": 3, "big.tif": 1}


def test_every_table_reads_whole_with_pandas_over_images_with_different_channels(tmp_path):
    import pyarrow.parquet as pq
    from PIL import Image

    from segmodel.pipeline.outputs import SCHEMAS

    channels = _mixed_channels(tmp_path / "in")
    out = tmp_path / "out"
    summary = run(str(tmp_path / "in"), str(out), shard_size=1, tiled_above=300_000,
                  block_size=256)
    assert (summary["images"], summary["failed"], summary["large"]) == (4, 1, 1)
    tables = {}
    for name in ("objects", "intensities", "images", "failures"):
        parts = sorted((out / name).glob("*.parquet"))
        assert len(parts) == 5  # a part per shard, the failed image's shard too
        schemas = {str(pq.read_schema(p).remove_metadata()) for p in parts}
        assert len(schemas) == 1, f"{name}: the parts' columns differ"
        tables[name] = pd.read_parquet(out / name)  # plain pandas, the folder of parts
        assert list(tables[name].columns) == list(SCHEMAS[name]), name
    images = tables["images"].set_index("image_id")
    values = tables["intensities"]
    assert tables["failures"]["image_id"].tolist() == ["broken.png"]
    for image_id, n_channels in channels.items():
        n = images.loc[image_id, "n_objects"]
        assert n > 0 and (tables["objects"]["image_id"] == image_id).sum() == n
        mine = values[values["image_id"] == image_id]
        assert len(mine) == n * n_channels  # every object, every channel but an alpha
        assert sorted(set(mine["channel"])) == list(range(n_channels))
        assert set(mine["channel_name"]) == {str(c) for c in range(n_channels)}
        # the values of one object, from the image and its mask
        pixels = np.asarray(Image.open(tmp_path / "in" / image_id)) if image_id != "big.tif" \
            else tifffile.imread(tmp_path / "in" / image_id)
        pixels = pixels.reshape(*pixels.shape[:2], -1)
        mask = tifffile.imread(out / images.loc[image_id, "mask_path"])
        label = int(mine["label"].iloc[len(mine) // 2])
        for c in range(n_channels):
            row = mine[(mine["label"] == label) & (mine["channel"] == c)].iloc[0]
            inside = pixels[..., c][mask == label]
            assert (row["mean"], row["min"], row["max"]) == pytest.approx(
                (inside.mean(), inside.min(), inside.max())), (image_id, label, c)
    assert read_table(str(out), "intensities").shape == values.shape


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() or p.name.endswith(".zarr"))


def test_a_changed_mask_format_removes_the_masks_it_supersedes(tmp_path):
    import shutil

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("fluor-3bfd6bb1.png", "fluor-62570c4f.png"):
        shutil.copy(SAMPLES / name, src / name)
    run(str(src), str(out), mask_format="tif", outlines="geojson")
    assert _files(out / "labels") == ["fluor-3bfd6bb1.tif", "fluor-62570c4f.tif"]
    (src / "fluor-62570c4f.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # now broken
    summary = run(str(src), str(out), mask_format="png", outlines="geojson")
    assert (summary["images"], summary["failed"]) == (1, 1)
    # the new mask replaces the other format's; a failed image keeps no mask of either
    assert _files(out / "labels") == ["fluor-3bfd6bb1.png"]
    assert _files(out / "outlines") == ["fluor-3bfd6bb1.geojson"]
    run(str(src), str(out), mask_format="ome-zarr", outlines="geojson")
    assert [p.name for p in (out / "labels").iterdir()] == ["fluor-3bfd6bb1.ome.zarr"]
    images = read_table(str(out), "images")
    assert images["mask_path"].tolist() == ["labels/fluor-3bfd6bb1.ome.zarr"]
    run(str(src), str(out), mask_format="tif")  # back again: the OME-Zarr folder goes whole
    assert _files(out / "labels") == ["fluor-3bfd6bb1.tif"]
    assert tifffile.imread(out / "labels" / "fluor-3bfd6bb1.tif").max() == \
        read_table(str(out), "images")["n_objects"].iloc[0]


def test_only_an_images_own_earlier_mask_is_superseded():
    from segmodel.pipeline.plan import superseded_masks

    masks = {"a": "labels/a.png", "b": "labels/b.png", "c": "labels/c.png",
             "d": "labels/d.tif", "e": "labels/e.png", "f": "labels/x.png"}
    recorded = {"a": "labels/a.tif", "b": "labels/b.png", "c": "labels/d.tif",
                "d": "labels/d.tif", "e": "labels/x.png"}
    # b keeps its path; c's and d's record the same path; e's is f's new mask
    assert superseded_masks(["a", "b", "c", "e", "f"], masks, recorded) == {"a": "labels/a.tif"}


def test_every_run_keeps_its_record_and_run_json_is_the_last_that_segmented(tmp_path):
    import shutil

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "fluor-3bfd6bb1.png", src / "a.png")
    run(str(src), str(out))
    first = (out / "run.json").read_bytes()
    assert run(str(src), str(out))["images"] == 0  # nothing to do
    assert (out / "run.json").read_bytes() == first  # the segmenting run's record stays
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 2 and records[0].read_bytes() == first
    noop = json.loads(records[1].read_text())
    assert noop["counts"]["images"] == 0 and noop["counts"]["skipped"] == 1
    assert records[1].name == f"{noop['run_stamp']}.json" and records[0].name < records[1].name
    images = read_table(str(out), "images")
    assert images["shard"].iloc[0].startswith(json.loads(first)["run_stamp"])
    shutil.copy(SAMPLES / "fluor-62570c4f.png", src / "b.png")
    run(str(src), str(out))
    latest = json.loads((out / "run.json").read_text())
    assert latest["counts"]["images"] == 1 and len(list((out / "runs").glob("*.json"))) == 3
    assert (out / "runs" / f"{latest['run_stamp']}.json").read_text() == \
        (out / "run.json").read_text()
