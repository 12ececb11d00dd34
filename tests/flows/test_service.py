"""segflow as a service: a real Prefect server, ``segflow serve``, runs triggered through the
API, new-files-only reruns, and the UI pages in headless Chromium."""

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from flows.report import GALLERY_KEY, PROGRESS_KEY, SUMMARY_KEY
from segmodel.pipeline.gallery import escape

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "segment-images/service-test"
FIRST = ["fluor-3bfd6bb1.png", "fluor-62570c4f.png"]
LATER = "histo-b909aa8f.png"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home, api_url=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _stop(proc, timeout=30):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_serve_without_a_server_says_how_to_start_one(tmp_path, samples):
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve", str(samples[0][0].parent), str(tmp_path),
         "--cron", "0 * * * *"], cwd=REPO, env=_env(tmp_path / "home"), capture_output=True,
        text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "prefect server start --host 127.0.0.1 --port 4200" in proc.stderr
    assert "export PREFECT_API_URL=http://127.0.0.1:4200/api" in proc.stderr


@pytest.mark.parametrize("options, message", [
    (["--cron", "bogus"], "--cron must be a cron expression of 5 fields"),
    (["--task-runner", "dask"], "does not take --task-runner"),
    (["--storage-options", '{"anon": true}'], "FSSPEC_S3="),
    (["--interval", "3600"], "does not answer"),
], ids=["bad-cron", "dask", "storage-options", "server-down"])
def test_serve_refuses_what_it_cannot_honour_before_any_work(tmp_path, samples, options,
                                                             message):
    """Nothing listens on port 9: every check before the server's own is made without it, and
    the last one says the server does not answer instead of a connection traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve", str(samples[0][0].parent), str(tmp_path),
         *options], cwd=REPO, env=_env(tmp_path / "home", "http://127.0.0.1:9/api"),
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real ``prefect server start`` on a free loopback port, stopped with SIGTERM."""
    home = tmp_path_factory.mktemp("server-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _env(home)
    env["PREFECT_UI_API_URL"] = url  # the UI's JavaScript calls this API
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        _stop(proc)
        pytest.fail(f"prefect server did not become healthy: see {home / 'server.log'}")
    yield url
    _stop(proc)
    log.close()


@pytest.fixture(scope="module")
def served(prefect_api, tmp_path_factory, samples, flow_run_record):
    """``segflow serve`` over a folder; two runs triggered through the API, with a new image
    dropped in between. Returns what the tests check."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = tmp_path_factory.mktemp("service")
    src, out = base / "in", base / "out"
    src.mkdir()
    by_name = {p.name: p for p, _ in samples}
    for name in FIRST:
        shutil.copy(by_name[name], src / name)
    log = open(base / "serve.log", "w")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", str(src), str(out), "--cron", "0 0 1 1 *",
         "--name", DEPLOYMENT.split("/")[1], "--shard-size", "1"],
        cwd=REPO, env=_env(base / "home", prefect_api), stdout=log, stderr=subprocess.STDOUT)
    try:
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            deployment = _wait_for_deployment(serve, base)
            first = run_deployment(DEPLOYMENT, timeout=300)
            shutil.copy(by_name[LATER], src / LATER)
            second = run_deployment(DEPLOYMENT, timeout=300)
            _create_automation(prefect_api, base)
            (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
            strict = {**deployment.parameters["params"], "max_failure_fraction": 0.2}
            third = run_deployment(DEPLOYMENT, parameters={"params": strict}, timeout=300)
            paused = _wait_for_pause()
            records = [flow_run_record(r.id) for r in (first, second, third)]
    finally:
        _stop(serve)
        log.close()
    return {"deployment": deployment, "records": records, "out": out, "base": base,
            "paused_by_automation": paused,
            "serve_log": (base / "serve.log").read_text()}


def _wait_for_deployment(serve, base):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if serve.poll() is not None:
                pytest.fail(f"segflow serve exited: {(base / 'serve.log').read_text()}")
            try:
                return client.read_deployment_by_name(DEPLOYMENT)
            except Exception:  # noqa: BLE001 - not registered yet
                time.sleep(1)
    pytest.fail(f"no deployment {DEPLOYMENT} after 120 s: {(base / 'serve.log').read_text()}")


def _create_automation(api_url, base):
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "automation", "create", "--from-file",
         str(REPO / "automations" / "segflow-run-failed.yaml")],
        cwd=REPO, env=_env(base / "home", api_url), capture_output=True, text=True, timeout=120,
        check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wait_for_pause(timeout=60):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if client.read_deployment_by_name(DEPLOYMENT).paused:
                return True
            time.sleep(1)
    return False


def _summary(record):
    return {r["metric"]: r["value"] for r in json.loads(record["artifacts"][SUMMARY_KEY].data)}


@pytest.mark.slow
def test_serve_registers_a_scheduled_deployment(served):
    deployment = served["deployment"]
    assert [s.schedule.cron for s in deployment.schedules] == ["0 0 1 1 *"]
    params = deployment.parameters["params"]
    assert params["output"] == str(served["out"]) and params["shard_size"] == 1


@pytest.mark.slow
def test_a_triggered_run_completes_with_named_tasks_artifacts_and_logs(served):
    record = served["records"][0]
    assert record["state"] == "COMPLETED"
    assert [t for t in record["task_runs"] if t.startswith("shard ")] == ["shard 1/2", "shard 2/2"]
    assert {"ingest: list input, plan shards", "report and QC gallery"} <= set(
        record["task_runs"])
    assert set(record["artifacts"]) == {PROGRESS_KEY, SUMMARY_KEY, GALLERY_KEY}
    assert float(record["artifacts"][PROGRESS_KEY].data) == 100.0
    images = pd.read_parquet(served["out"] / "images")
    summary = _summary(record)
    assert summary["run"] == record["name"]
    assert (summary["images segmented"], summary["failures"], summary["skipped (already done)"]) \
        == (2, 0, 0)
    first_objects = images[images["image_id"].isin(FIRST)]["n_objects"].sum()
    assert summary["objects"] == first_objects > 0
    assert record["artifacts"][GALLERY_KEY].data.count("data:image/png;base64,") == 2
    messages = [m for _, m in record["logs"]]
    assert sum(m.startswith("shard ") for m in messages) == 2
    assert "2 images found, 0 already done, 2 to segment in 2 shards, 0 block-wise" in messages


@pytest.mark.slow
def test_the_next_run_segments_only_the_new_image(served):
    record = served["records"][1]
    assert record["state"] == "COMPLETED"
    summary = _summary(record)
    assert (summary["images segmented"], summary["skipped (already done)"]) == (1, 2)
    assert [t for t in record["task_runs"] if t.startswith("shard ")] == ["shard 1/1"]
    gallery = record["artifacts"][GALLERY_KEY].data
    assert escape(LATER) in gallery and escape(FIRST[0]) not in gallery
    images = pd.read_parquet(served["out"] / "images")
    assert sorted(images["image_id"]) == sorted([*FIRST, LATER])


@pytest.mark.slow
def test_a_run_past_max_failure_fraction_fails_and_the_automation_pauses_it(served):
    record = served["records"][2]
    assert record["state"] == "FAILED"
    assert "1 of 1 images failed (100.0%), more than max_failure_fraction=0.2" in \
        record["run"].state.message
    summary = _summary(record)
    assert (summary["failures"], summary["skipped (already done)"]) == (1, 3)
    assert served["paused_by_automation"]


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); "
                    ".ci/run installs it")
    return path


def _browse(chromium, url, screenshot, profile):
    """The rendered page's visible text (after its JavaScript ran), and a screenshot."""
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={profile}", "--window-size=1400,1600",
              "--virtual-time-budget=20000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True,
                   timeout=120, check=True)
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.DOTALL)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return re.sub(r"\s+", " ", text), dom


@pytest.mark.slow
def test_the_ui_shows_the_run_its_summary_and_the_gallery(served, prefect_api):
    chromium = _chromium()
    ui = prefect_api[: -len("/api")]
    record = served["records"][0]
    shots = served["base"] / "screenshots"
    shots.mkdir()
    profile = served["base"] / "chromium-profile"

    text, _ = _browse(chromium, f"{ui}/runs/flow-run/{record['run'].id}",
                      shots / "flow-run.png", profile)
    assert f"Flow Run: {record['name']}" in text
    assert "Completed" in text and "segment-images" in text and "service-test" in text

    summary = _summary(record)
    text, _ = _browse(chromium, f"{ui}/artifacts/artifact/{record['artifacts'][SUMMARY_KEY].id}",
                      shots / "summary.png", profile)
    assert f"images segmented {summary['images segmented']}" in text
    assert f"objects {summary['objects']}" in text
    assert f"run {record['name']}" in text

    text, dom = _browse(chromium,
                        f"{ui}/artifacts/artifact/{record['artifacts'][GALLERY_KEY].id}",
                        shots / "gallery.png", profile)
    assert f"QC gallery: {record['name']}" in text
    assert dom.count('src="data:image/png;base64,') == 2  # thumbnails rendered as <img>
    for name in ("flow-run", "summary", "gallery"):
        assert (shots / f"{name}.png").stat().st_size > 20_000
    print(f"screenshots: {shots}")
