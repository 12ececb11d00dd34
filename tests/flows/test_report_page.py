"""OUTPUT/report.html as users get it: written by a run, opened by a browser, rebuilt by
``segflow report``, bounded in size."""

import csv
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from segmodel.inference.measure import measure_objects
from segmodel.pipeline import outputs, qc
from segmodel.pipeline.report import HTML_LISTED, REPORT_BYTES, REPORT_FILE
from segmodel.storage.io import Store


def _fluorescence(dsb2018, n):
    """``n`` DSB2018 fluorescence images of 256x256 or more: ``(image, true labels)`` paths."""
    with open(dsb2018 / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["modality"] == "fluorescence"
                and min(int(r["height"]), int(r["width"])) >= 256 and int(r["nuclei"]) >= 10]
    return [(dsb2018 / "images" / f"{r['id']}.png", dsb2018 / "labels" / f"{r['id']}.png")
            for r in rows[:n]]


def _sources(dsb2018, n):
    """The first ``n`` DSB2018 images (every modality and size), measured and flagged by
    segflow's own code on their true labels: ``(image path, labels path, objects, flags)``."""
    with open(dsb2018 / "index.csv", newline="") as f:
        ids = [r["id"] for r in csv.DictReader(f)][:n]
    out = []
    for id_ in ids:
        image_path = dsb2018 / "images" / f"{id_}.png"
        label_path = dsb2018 / "labels" / f"{id_}.png"
        image = np.asarray(Image.open(image_path))[..., :3]
        labels = np.asarray(Image.open(label_path)).astype(np.int32)
        out.append((image_path, label_path, measure_objects(labels, id_),
                    qc.join_flags(qc.image_flags(image, labels)), labels.shape))
    return out


def build_output(dsb2018, base, n_images, n_failures, shards=10):
    """An output of ``n_images`` segmented images and ``n_failures`` failed ones, cheaply.

    The page's size and content depend on the tables' rows and on the few images it shows, not
    on how the masks were made: real DSB2018 images (hard links, up to 80 distinct ones, full
    size, so the thumbnails are as large as a run's) stand for the inputs, and their true
    labels for the masks, measured and flagged by segflow's own code (:func:`measure_objects`,
    :func:`qc.image_flags`). A model run over 1,000 images would take many minutes on this
    machine and change nothing the page depends on.
    """
    import pandas as pd

    src, store = base / "in", Store(str(base / "out"))
    stamp = "20261207T120000000000Z"
    sources = _sources(dsb2018, min(n_images, 80))
    for k in range(shards):
        images, objects = [], []
        shard = f"{stamp}-{k:05d}"
        for i in range(k, n_images, shards):
            image_path, label_path, table, flags, (h, w) = sources[i % len(sources)]
            image_id = f"plate{i // 100}/well {i}.png" if i % 7 else f"plate{i // 100}/<b>{i}.png"
            mask = f"labels/{image_id}"
            for target, origin in ((src / image_id, image_path), (base / "out" / mask, label_path)):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(origin, target)
            objects.append(table.assign(image_id=image_id))
            images.append({"image_id": image_id, "uri": f"file://{src / image_id}",
                           "height": h, "width": w, "n_objects": len(table),
                           "mean_object_area": float(table["area"].mean()),
                           "foreground_fraction": float(table["area"].sum() / (h * w)),
                           "scale": 1.0, "nucleus_diameter": np.nan, "model_name": "true-labels",
                           "model_fingerprint": "0" * 16, "segflow_version": "test",
                           "seconds": 0.01, "mask_path": mask, "fingerprint": "f",
                           "config_key": "k", "shard": shard, "pixel_size_um": np.nan,
                           "qc_flags": flags})
        failures = [{"image_id": f"broken <i>{j}</i>.png", "uri": f"file://{src}/broken{j}",
                     "stage": "decode", "error_type": "ImageDecodeError",
                     "message": f"not an image <script>{j}</script>", "fingerprint": "f",
                     "config_key": "k", "shard": shard} for j in range(k, n_failures, shards)]
        outputs.write_shard(store, shard, {
            "objects": pd.concat(objects, ignore_index=True), "intensities":
            outputs.table("intensities", []), "failures": outputs.table("failures", failures),
            "images": outputs.table("images", images)})
    counts = {"found": n_images + n_failures, "skipped": 0, "images": n_images,
              "failed": n_failures, "objects": 0, "seconds": 1.0, "images_per_second": 1.0}
    store.write_json(f"runs/{stamp}.json", {
        "parameters": {"input": str(src), "output": str(base / "out"), "scale": 1.0},
        "run_stamp": stamp, "model": {"name": "true-labels", "fingerprint": "0" * 16},
        "segflow_version": "test", "counts": counts})
    return base / "out"


def test_segflow_report_writes_the_page_from_the_tables_alone(dsb2018, tmp_path, capsys):
    out = build_output(dsb2018, tmp_path, n_images=8, n_failures=3, shards=2)
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out == f"report: {out}/{REPORT_FILE}\n"
    page = (out / REPORT_FILE).read_text()
    assert "Failed images (3)" in page
    assert page.count('src="data:image/png;base64,') == 8 + 2  # thumbnails, two plots
    assert html.escape("plate0/<b>7.png") in page and "plate0/<b>7.png" not in page
    assert not list(out.glob(".*"))  # written atomically: no temporary left behind


@pytest.mark.parametrize("target, message", [
    ("{tmp}/missing", "segflow: OUTPUT not found: '{tmp}/missing'"),
    ("{tmp}", "segflow: OUTPUT holds no segflow tables (images/, failures/, runs/). "
              "Received: '{tmp}'"),
], ids=["missing", "not-an-output"])
def test_segflow_report_refuses_what_is_no_output_in_one_line(tmp_path, target, message,
                                                               capsys):
    with pytest.raises(SystemExit) as err:
        main(["report", target.format(tmp=tmp_path)])
    assert str(err.value).startswith(message.format(tmp=tmp_path))
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_page_of_1000_images_stays_under_its_bound(dsb2018, tmp_path, capsys):
    out = build_output(dsb2018, tmp_path, n_images=1000, n_failures=300)
    assert main(["report", str(out)]) == 0
    page = (out / REPORT_FILE).read_text()
    size = len(page.encode())
    print(f"report.html of 1,000 images: {size} bytes")
    assert 500_000 < size < REPORT_BYTES
    assert "Failed images (300)" in page and f"... and {300 - HTML_LISTED} more" in page
    assert page.count('src="data:image/png;base64,') > 10  # the thumbnails' cap, then plots
    assert "images segmented</td><td class=\"n\">1000<" in page


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); "
                    ".ci/run installs it")
    return path


def _open_offline(page, screenshot, profile):
    """The page's DOM after Chromium opened it from disk with the network cut off."""
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={profile}", "--window-size=1300,3400",
              "--proxy-server=127.0.0.1:9", '--host-resolver-rules=MAP * ~NOTFOUND']
    url = page.as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True,
                   timeout=120, check=True)
    return dom


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_browser_shows_the_page_of_a_run_offline(dsb2018, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for image, _ in _fluorescence(dsb2018, 5):
        shutil.copy(image, src / image.name)
    Image.fromarray(np.full((200, 200), 40, np.uint8)).save(src / "blank.png")  # flagged
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)  # fails
    out = tmp_path / "out"
    assert main(["run", str(src), str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {out}/{REPORT_FILE}"
    record = json.loads((out / "run.json").read_text())
    dom = _open_offline(out / REPORT_FILE, tmp_path / "report.png", tmp_path / "profile")
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<style.*?</style>|<[^>]+>", " ", dom,
                                                    flags=re.DOTALL)))
    counts = record["counts"]
    assert (counts["images"], counts["failed"]) == (6, 1)
    assert f"images segmented {counts['images']} objects {counts['objects']} failed images 1" \
        in text
    assert f"images found 7 images segmented 6 objects {counts['objects']} failures 1" in text
    assert "corrupt.png decode ImageDecodeError" in text and "blank.png" in text
    assert f"flow run {record['prefect_flow_run']['name']}" in text
    assert dom.count('src="data:image/png;base64,') == 6 + 3  # thumbnails and plots shown
    assert not re.search(r"""(src|href)=["']?https?:""", dom) and "@import" not in dom
    assert (tmp_path / "report.png").stat().st_size > 50_000
    print(f"screenshot: {tmp_path / 'report.png'}")
