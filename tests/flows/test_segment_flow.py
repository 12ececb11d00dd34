"""The segment-images flow through the CLI on real sample images: outputs, reruns, bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from flows.cli import main
from segmodel.inference.measure import INTENSITY_SCHEMA, OBJECT_SCHEMA
from segmodel.pipeline.outputs import FAILURE_SCHEMA, IMAGE_SCHEMA, read_table

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL = ["fluor-3bfd6bb1.png", "fluor-62570c4f.png", "histo-b909aa8f.png"]


@pytest.fixture
def folder(tmp_path, samples):
    """Three real sample images, one in a subfolder, plus a corrupt and an empty file."""
    src = tmp_path / "in"
    (src / "plate2").mkdir(parents=True)
    by_name = {p.name: p for p, _ in samples}
    shutil.copy(by_name[SMALL[0]], src / SMALL[0])
    shutil.copy(by_name[SMALL[1]], src / SMALL[1])
    shutil.copy(by_name[SMALL[2]], src / "plate2" / SMALL[2])
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (src / "empty.tif").write_bytes(b"")
    return src


def _tables(out):
    return {name: pd.read_parquet(out / name)
            for name in ("images", "objects", "intensities", "failures")}


def test_run_writes_masks_and_tables_and_bad_files_become_failures(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(folder), str(out), "--shard-size", "2"]) == 0
    t = _tables(out)
    assert sorted(t["images"]["image_id"]) == sorted([SMALL[0], SMALL[1], f"plate2/{SMALL[2]}"])
    assert list(t["images"].columns) == list(IMAGE_SCHEMA)
    assert list(read_table(str(out), "objects").columns) == list(OBJECT_SCHEMA)
    assert list(t["intensities"].columns) == list(INTENSITY_SCHEMA)
    assert list(t["failures"].columns) == list(FAILURE_SCHEMA)
    assert sorted(t["failures"]["image_id"]) == ["corrupt.png", "empty.tif"]
    assert set(t["failures"]["stage"]) == {"decode"}
    for row in t["images"].itertuples():
        mask = tifffile.imread(out / row.mask_path)
        assert mask.shape == (row.height, row.width) and mask.dtype == np.uint16
        assert mask.max() == row.n_objects
        n = (t["objects"]["image_id"] == row.image_id).sum()
        assert n == row.n_objects
        assert (t["intensities"]["image_id"] == row.image_id).sum() == 3 * n  # RGB(A) samples
    assert (out / "labels" / "plate2" / SMALL[2].replace(".png", ".tif")).is_file()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["counts"]["images"] == 3 and manifest["counts"]["failed"] == 2
    assert 0 < manifest["counts"]["cpu_seconds"]  # the flow's own CPU, and the machine's use
    assert 0 < manifest["counts"]["machine_busy"] <= 1
    waits = manifest["counts"]["model_waits"]  # the model's idle time at the run's two ends
    assert 0 < waits["before_first_call"] and 0 < waits["after_last_call"]
    rounding = 3 * 0.0005 + 0.005  # the three parts are rounded to 3 decimals, the whole to 2
    assert (waits["before_first_call"] + waits["after_last_call"]
            + manifest["counts"]["model_seconds"] <= manifest["counts"]["seconds"] + rounding)
    printed = capsys.readouterr().out
    assert f"5 images, 2 failed: see {out}/failures" in printed


def test_rerun_segments_nothing_and_duplicates_no_row(folder, tmp_path, capsys):
    out = tmp_path / "out"
    main(["run", str(folder), str(out), "--pattern", "*.png"])
    first = _tables(out)
    files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    capsys.readouterr()
    main(["run", str(folder), str(out), "--pattern", "*.png"])
    printed = capsys.readouterr().out
    assert "0 images to segment (4 already done)" in printed
    again = _tables(out)
    assert sorted(p.relative_to(out) for p in out.rglob("*.parquet")) == files
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])


def test_a_changed_image_is_reprocessed_and_its_rows_replaced(folder, tmp_path, samples, capsys):
    out = tmp_path / "out"
    main(["run", str(folder), str(out), "--pattern", "*.png"])
    by_name = {p.name: p for p, _ in samples}
    shutil.copy(by_name["fluor-a1f50f10.png"], folder / SMALL[0])  # new content, same name
    capsys.readouterr()
    main(["run", str(folder), str(out), "--pattern", "*.png"])
    assert "1 images to segment (3 already done)" in capsys.readouterr().out
    t = _tables(out)
    assert t["images"]["image_id"].is_unique and len(t["images"]) == 3
    row = t["images"].set_index("image_id").loc[SMALL[0]]
    objects = t["objects"][t["objects"]["image_id"] == SMALL[0]]
    assert len(objects) == row["n_objects"] and objects["label"].is_unique


def test_a_fixed_file_is_retried_and_its_failure_row_removed(folder, tmp_path, samples):
    out = tmp_path / "out"
    main(["run", str(folder), str(out)])
    shutil.copy(samples[0][0], folder / "corrupt.png")
    main(["run", str(folder), str(out)])
    t = _tables(out)
    assert t["failures"]["image_id"].tolist() == ["empty.tif"]
    assert "corrupt.png" in set(t["images"]["image_id"])


def test_inputs_differing_only_by_extension_keep_separate_masks(tmp_path, samples):
    src = tmp_path / "in"
    src.mkdir()
    from PIL import Image

    arr = np.asarray(Image.open(samples[1][0]))
    Image.fromarray(arr).save(src / "a.png")
    tifffile.imwrite(src / "a.tif", arr[..., :3])
    out = tmp_path / "out"
    assert main(["run", str(src), str(out), "--mask-format", "png"]) == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.png.png", "a.tif.png"]


def test_images_over_the_size_limit_become_failures(folder, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(folder), str(out), "--pattern", "*.png", "--max-pixels", "70000"]) == 0
    failures = pd.read_parquet(out / "failures").set_index("image_id")
    assert "max_pixels=70000" in failures.loc[f"plate2/{SMALL[2]}", "message"]  # 256 x 320
    assert sorted(pd.read_parquet(out / "images")["image_id"]) == [SMALL[0], SMALL[1]]


def test_fail_on_error_exits_non_zero(folder, tmp_path):
    assert main(["run", str(folder), str(tmp_path / "out"), "--fail-on-error"]) == 1


def test_a_run_in_which_every_image_failed_exits_non_zero_naming_the_failures(folder, tmp_path,
                                                                             capsys):
    out = tmp_path / "out"
    assert main(["run", str(folder), str(out), "--channel", "5"]) == 1  # RGB images: no channel 5
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines()[-1] == (
        f"segflow: every image failed (5): see {out}/failures")
    assert len(pd.read_parquet(out / "failures")) == 5 and "5 images, 5 failed" in printed.out


@pytest.mark.parametrize("args, message", [
    (["run", "{missing}", "{out}"], "input not found"),
    (["run", "nope://bucket/x", "{out}"], "input uses an unknown URL scheme 'nope'"),
    (["run", "{input}", "{out}", "--tile-size", "100"], "tile_size must be a positive multiple"),
    (["run", "{input}", "{out}", "--batch-size", "0"], "--batch-size: Input should be greater"),
    (["run", "{input}", "{out}", "--storage-options", "{{bad"], "storage_options must be a JSON"),
    (["run", "{input}", "{out}", "--pattern", "*.czi"], "no images under input"),
    (["run", "{input}", "{out}", "--model", "{missing}/m.keras"], "model file not found"),
    (["run", "{input}", "{out}", "--scale", "big"], "scale must be 'auto' or a number"),
    (["run", "{input}", "{out}", "--scale", "0"], "Received: scale=0.0"),
    (["run", "{input}", "{out}", "--tile-size", "48"], "more than twice the overlap of 32"),
    (["run", "{input}", "{out}", "--tile-size", "0"], "--tile-size: Input should be greater"),
    (["run", "{input}", "{out}", "--pattern", ""], "--pattern: Value error, patterns must"),
    (["run", "{input}", "{out}", "--dask-workers", "0"], "--dask-workers must be at least 1"),
    (["run", "{input}", "{out}", "--model", "{input}/../text.keras"], "not a Keras 3 model file"),
    (["run", "{input}", "{input}/seg"], "is the input or a folder inside it"),
], ids=["missing-input", "unknown-scheme", "tile-size", "batch-size", "bad-json",
        "nothing-matched", "missing-model", "scale-word", "scale-zero", "tile-below-overlap",
        "tile-zero", "empty-pattern", "dask-workers", "not-a-zip", "output-inside-input"])
def test_wrong_parameters_fail_before_any_work_naming_the_parameter(folder, tmp_path, args,
                                                                    message):
    fill = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "out"),
            "input": str(folder)}
    (tmp_path / "text.keras").write_text("not a model")
    with pytest.raises(SystemExit) as err:
        main([a.format(**fill) for a in args])
    assert message in str(err.value)
    assert not (tmp_path / "out" / "images").exists()


def test_an_input_without_images_ends_the_run_failed_with_the_message_alone(tmp_path, capfd,
                                                                           caplog):
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as err:
        main(["run", str(src), str(tmp_path / "out")])
    assert str(err.value).startswith(f"segflow: no images under input={str(src)!r}")
    printed = capfd.readouterr()
    run_logs = [r for r in caplog.records  # the run's logs (Prefect's console under pytest)
                if r.name.startswith(("prefect.flow_runs", "prefect.task_runs"))]
    assert any(r.getMessage().startswith('Finished in state Failed("no images under input')
               for r in run_logs)
    assert all(r.exc_info is None and "Traceback" not in r.getMessage() for r in run_logs)
    assert "Encountered exception" not in printed.out + printed.err
    assert not (tmp_path / "out" / "images").exists()


def test_a_run_while_another_writes_to_the_same_output_stops_and_touches_nothing(folder,
                                                                                tmp_path):
    import os
    import socket
    import time

    from segmodel.storage.lease import LEASE

    out = tmp_path / "out"
    out.mkdir()
    other = {"run": "20261203T000000000000Z", "host": socket.gethostname(),
             "pid": os.getpid(), "started": time.time(), "renewed": time.time()}
    (out / LEASE).write_text(json.dumps(other))  # a live run: this very process
    with pytest.raises(SystemExit) as err:
        main(["run", str(folder), str(out)])
    assert str(err.value).startswith(
        f"segflow: another segflow run is writing to output={str(out)!r}: run "
        f"'20261203T000000000000Z', process {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == [LEASE]
    assert json.loads((out / LEASE).read_text()) == other
    other["renewed"] = time.time() - 3600  # abandoned an hour ago: taken over
    (out / LEASE).write_text(json.dumps(other))
    assert main(["run", str(folder), str(out)]) == 0
    assert len(pd.read_parquet(out / "images")) == 3
    assert not (out / LEASE).exists()  # released at the end


def test_a_configured_server_that_does_not_answer_is_named_before_any_work(folder, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    monkeypatch.setattr("flows.server._EARLY", [])  # as in a new process: no early server
    with pytest.raises(SystemExit) as err:
        main(["run", str(folder), str(tmp_path / "out")])
    assert "PREFECT_API_URL=http://127.0.0.1:9/api does not answer" in str(err.value)
    assert "prefect server start" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_scale_parameter_takes_auto_or_a_number():
    from flows.params import SegmentParams

    assert SegmentParams(input=".", output="o", scale="auto").scale == "auto"
    assert SegmentParams(input=".", output="o", scale=" AUTO ").scale == "auto"
    assert SegmentParams(input=".", output="o", scale="1.5").scale == 1.5
    assert SegmentParams(input=".", output="o", scale=2).scale == 2.0


def test_cpu_workers_give_the_same_outputs_as_in_thread_work(folder, samples, tmp_path):
    """Post-processing and measuring in 2 worker processes: identical masks and table rows,
    and the bad files still become failure rows."""
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        assert main(["run", str(folder), str(out), "--shard-size", "2",
                     "--cpu-workers", str(workers)]) == 0
        runs[workers] = (out, _tables(out))
    (out0, t0), (out2, t2) = runs[0], runs[2]
    keys = {"images": ["image_id"], "objects": ["image_id", "label"], "failures": ["image_id"],
            "intensities": ["image_id", "label", "channel"]}
    for name, cols in keys.items():
        a = t0[name].sort_values(cols).reset_index(drop=True)
        b = t2[name].sort_values(cols).reset_index(drop=True)
        same = [c for c in a.columns if c not in ("seconds", "shard")]
        pd.testing.assert_frame_equal(a[same], b[same])
    hand_count = sum(int(row["nuclei"]) for path, row in samples if path.name in SMALL)  # 51
    assert abs(len(t2["objects"]) - hand_count) <= 0.2 * hand_count
    assert sorted(t2["failures"]["image_id"]) == ["corrupt.png", "empty.tif"]
    for row in t0["images"].itertuples():
        np.testing.assert_array_equal(tifffile.imread(out0 / row.mask_path),
                                      tifffile.imread(out2 / row.mask_path))


def test_a_new_neighbour_never_takes_a_finished_images_mask(samples, tmp_path):
    """``a.png`` and ``a.jpg`` give ``labels/a.png.tif``; with ``a.jpg`` gone and ``a.png.png``
    new, the new image must not be written over ``a.png``'s mask."""
    by_name = {p.name: p for p, _ in samples}
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(by_name[SMALL[0]], src / "a.png")
    shutil.copy(by_name[SMALL[0]], src / "a.jpg")
    assert main(["run", str(src), str(out)]) == 0
    first = tifffile.imread(out / "labels" / "a.png.tif")
    (src / "a.jpg").unlink()
    shutil.copy(by_name[SMALL[1]], src / "a.png.png")
    assert main(["run", str(src), str(out)]) == 0
    images = pd.read_parquet(out / "images").set_index("image_id")
    assert images.loc["a.png", "mask_path"] == "labels/a.png.tif"
    assert images.loc["a.png.png", "mask_path"] != "labels/a.png.tif"
    np.testing.assert_array_equal(tifffile.imread(out / "labels" / "a.png.tif"), first)
    again = tifffile.imread(out / images.loc["a.png.png", "mask_path"])
    assert again.max() == images.loc["a.png.png", "n_objects"] != first.max()


def test_an_image_that_fails_on_a_rerun_loses_its_earlier_mask(samples, tmp_path):
    by_name = {p.name: p for p, _ in samples}
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(by_name[SMALL[0]], src / SMALL[0])
    assert main(["run", str(src), str(out), "--outlines", "geojson"]) == 0
    mask = out / pd.read_parquet(out / "images").mask_path[0]
    assert mask.exists() and list((out / "outlines").iterdir())
    # a smaller --max-pixels is a new configuration: the image is tried again and fails
    assert main(["run", str(src), str(out), "--outlines", "geojson", "--max-pixels", "100"]) == 1
    assert list(pd.read_parquet(out / "failures").image_id) == [SMALL[0]]
    assert len(pd.read_parquet(out / "images")) == 0
    assert not mask.exists() and not list((out / "outlines").iterdir())
