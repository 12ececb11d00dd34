"""What a run leaves in the Prefect API: task run names, artifacts, logs, QC flags, Failed runs."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.cli import main
from flows.report import GALLERY_KEY, PROGRESS_KEY, SUMMARY_KEY
from segmodel.pipeline.gallery import escape

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL = ["fluor-3bfd6bb1.png", "fluor-62570c4f.png", "histo-b909aa8f.png"]


@pytest.fixture
def folder(tmp_path, samples):
    """Three real sample images, a blank frame and a corrupt file."""
    src = tmp_path / "in"
    src.mkdir()
    by_name = {p.name: p for p, _ in samples}
    for name in SMALL:
        shutil.copy(by_name[name], src / name)
    Image.fromarray(np.full((256, 256), 40, np.uint8)).save(src / "blank.png")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    return src


def _summary(artifact):
    return {row["metric"]: row["value"] for row in json.loads(artifact.data)}


def test_a_run_publishes_progress_summary_and_qc_gallery(folder, tmp_path, flow_run_record,
                                                          capsys):
    out = tmp_path / "out"
    assert main(["run", str(folder), str(out), "--shard-size", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {out}/report.html"
    record = flow_run_record()
    assert record["state"] == "COMPLETED"
    # one task run per shard (read, segment and write in it), not one per stage
    assert [t for t in record["task_runs"] if t.startswith("shard ")] == [
        f"shard {k}/3" for k in (1, 2, 3)]
    assert "report and QC gallery" in record["task_runs"]

    images = pd.read_parquet(out / "images").set_index("image_id")
    assert images.loc["blank.png", "qc_flags"] == "no_objects;flat;scale_fallback"
    assert images.loc[SMALL[0], "qc_flags"] == ""
    # automatic scale: the estimate beside the scale used; none for the blank image
    assert np.isnan(images.loc["blank.png", "nucleus_diameter"])
    assert images.loc[SMALL[0], "nucleus_diameter"] > 5 and images.loc[SMALL[0], "scale"] > 0

    artifacts = record["artifacts"]
    assert set(artifacts) == {PROGRESS_KEY, SUMMARY_KEY, GALLERY_KEY}
    assert float(artifacts[PROGRESS_KEY].data) == 100.0
    summary = _summary(artifacts[SUMMARY_KEY])
    assert summary["run"] == record["name"]
    assert (summary["images segmented"], summary["failures"], summary["skipped (already done)"],
            summary["flagged by QC"]) == (4, 1, 0, 1)
    assert summary["objects"] == images["n_objects"].sum()
    assert summary["qc: flat"] == 1 and summary["qc: no_objects"] == 1

    gallery = artifacts[GALLERY_KEY].data
    thumbs = re.findall(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", gallery)
    assert thumbs[0][0] == "blank.png"  # flagged first
    assert sorted(name for name, _ in thumbs) == sorted(["blank.png", *SMALL])
    for _, data in thumbs:
        assert max(Image.open(io.BytesIO(base64.b64decode(data))).size) <= 256
    assert escape(f"{out}/labels/{SMALL[0].replace('.png', '.tif')}") in gallery
    failed = gallery[gallery.index("## Failed images"):]
    assert "| corrupt.png | decode | ImageDecodeError: corrupt.png" in failed

    page = (out / "report.html").read_text()  # the same thumbnails as the gallery's
    assert all(f'src="data:image/png;base64,{data}"' in page for _, data in thumbs)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["prefect_flow_run"] == {"id": str(record["run"].id), "name": record["name"]}
    assert f"/runs/flow-run/{record['run'].id}" in page

    logs = [m for _, m in record["logs"]]
    assert sum(m.startswith("shard ") for m in logs) == 3  # one line per shard
    warnings = [m for level, m in record["logs"] if level == 30]
    assert any(m.startswith("failed corrupt.png at decode") for m in warnings)


def test_odd_file_names_keep_the_gallery_tables_whole(samples, tmp_path, flow_run_record):
    src = tmp_path / "in"
    src.mkdir()
    by_name = {p.name: p for p, _ in samples}
    odd = ["two\nlines.png", "a|b*c*.png"]
    for name in odd:
        shutil.copy(by_name[SMALL[0]], src / name)
    (src / "bad|<b>.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    assert main(["run", str(src), str(tmp_path / "out")]) == 0
    gallery = flow_run_record()["artifacts"][GALLERY_KEY].data
    tables = [line for line in gallery.split("\n") if line.startswith("|")]
    widths = {len(re.split(r"(?<!\\)\|", line)) - 2 for line in tables}
    assert widths == {5, 3}  # thumbnails: 5 columns; failed images: 3; no row split or merged
    for name in odd:
        assert f"| {escape(name)} | " in gallery
    assert f"| {escape('bad|<b>.png')} | decode | " in gallery


def test_a_rerun_with_nothing_new_says_so_in_the_gallery(folder, tmp_path, flow_run_record,
                                                         capsys):
    out = tmp_path / "out"
    main(["run", str(folder), str(out)])
    page = (out / "report.html").read_bytes()
    capsys.readouterr()
    main(["run", str(folder), str(out)])
    assert (out / "report.html").read_bytes() == page  # nothing segmented: left as it was
    assert "report:" not in capsys.readouterr().out
    record = flow_run_record()
    summary = _summary(record["artifacts"][SUMMARY_KEY])
    assert (summary["images segmented"], summary["skipped (already done)"]) == (0, 5)
    assert "No image was segmented in this run." in record["artifacts"][GALLERY_KEY].data
    assert float(record["artifacts"][PROGRESS_KEY].data) == 100.0


def test_too_many_failures_end_the_run_failed(folder, tmp_path, flow_run_record, capsys):
    (folder / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["run", str(folder), str(out), "--max-failure-fraction", "0.2"])
    assert code == 1
    assert "2 of 6 images failed (33.3%), more than max_failure_fraction=0.2" in \
        capsys.readouterr().err
    record = flow_run_record()
    assert record["state"] == "FAILED"
    assert SUMMARY_KEY in record["artifacts"]  # still published before failing
    assert "Failed images (2)" in (out / "report.html").read_text()  # and the page written


def test_a_failure_fraction_under_the_limit_completes(folder, tmp_path, flow_run_record):
    out = tmp_path / "out"
    assert main(["run", str(folder), str(out), "--max-failure-fraction", "0.25"]) == 0
    assert flow_run_record()["state"] == "COMPLETED"


def test_max_failure_fraction_out_of_range_is_refused(folder, tmp_path):
    with pytest.raises(SystemExit, match="--max-failure-fraction"):
        main(["run", str(folder), str(tmp_path / "out"), "--max-failure-fraction", "2"])


def test_evaluation_publishes_its_table(dsb2018, samples, tmp_path, flow_run_record):
    src, truth = tmp_path / "in", tmp_path / "truth"
    src.mkdir()
    truth.mkdir()
    for path, row in samples[:2]:
        shutil.copy(path, src / path.name)
        shutil.copy(dsb2018 / "labels" / f"{row['dsb2018_id']}.png", truth / path.name)
    main(["run", str(src), str(tmp_path / "out")])
    assert main(["evaluate", str(tmp_path / "out"), str(truth)]) == 0
    record = flow_run_record()
    rows = json.loads(record["artifacts"]["segflow-evaluation"].data)
    assert rows[0]["group"] == "all" and rows[0]["images"] == 2
    assert 0.2 < rows[0]["ap50"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["{missing}", "{here}"], "PRED not found"),
    (["{here}", "{missing}"], "TRUTH not found"),
    (["{here}", "{here}", "--groups", "{missing}.csv"], "--groups file not found"),
    (["{here}", "{here}", "--storage-options", "[1]"], "--storage-options must be a JSON object"),
], ids=["pred", "truth", "groups", "storage-options"])
def test_evaluate_names_a_missing_folder_or_bad_option_before_any_run(tmp_path, args, message,
                                                                       capsys):
    fill = {"missing": str(tmp_path / "missing"), "here": str(tmp_path)}
    with pytest.raises(SystemExit) as err:
        main(["evaluate", *[a.format(**fill) for a in args]])
    assert message in str(err.value)
    assert "Traceback" not in capsys.readouterr().err


def test_progress_is_sent_at_most_once_a_second_and_always_at_the_end():
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    from flows.report import ProgressArtifact

    def shown(progress):
        with get_client(sync_client=True) as client:
            (artifact,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[progress.artifact])))
        return float(artifact.data)

    @flow(name="progress-throttle")
    def shards(interval):
        progress = ProgressArtifact()
        progress.min_interval = interval
        progress.start(4, 0)
        seen = []
        for _ in range(4):
            progress.update({"images": 1, "failed": 0})
            seen.append(shown(progress))
        return seen

    assert shards(60.0) == [0.0, 0.0, 0.0, 100.0]  # within the interval: only the last one
    assert shards(0.0) == [25.0, 50.0, 75.0, 100.0]
