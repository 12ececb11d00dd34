"""``--task-runner dask``: refused without a Prefect server; on a real server and a real
``distributed.LocalCluster`` of 2 worker processes its outputs equal the default runner's."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[2]
NAMES = ["fluor-3bfd6bb1.png", "fluor-62570c4f.png", "histo-b909aa8f.png", "fluor-a1f50f10.png",
         "histo-b0e35e06.png"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_dask_without_a_prefect_server_is_refused_with_how_to_start_one(tmp_path, samples):
    proc = _cli(["run", str(samples[0][0].parent), str(tmp_path / "out"), "--task-runner",
                 "dask"], _env(PREFECT_HOME=str(tmp_path / "home")), timeout=120)
    assert proc.returncode != 0
    assert "--task-runner dask needs a Prefect server" in proc.stderr
    assert "prefect server start" in proc.stderr and "PREFECT_API_URL" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real ``prefect server start`` on a free loopback port."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = _env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    import httpx

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail("prefect server start exited")
        time.sleep(1)
    else:
        proc.terminate()
        pytest.fail(f"prefect server did not become healthy on {url}")
    yield url, home
    proc.terminate()
    proc.wait(30)


@pytest.mark.slow
def test_dask_runner_outputs_equal_the_default_runners(prefect_api, samples, tmp_path,
                                                         monkeypatch):
    from distributed import LocalCluster

    url, home = prefect_api
    src = tmp_path / "in"
    src.mkdir()
    for path, _ in samples:
        if path.name in NAMES:
            shutil.copy(path, src / path.name)
    (src / "broken.png").write_bytes(b"not an image")
    env = _env(PREFECT_API_URL=url, PREFECT_HOME=str(home))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the worker processes inherit these
    monkeypatch.setenv("PREFECT_API_URL", url)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        proc = _cli(["run", str(src), str(tmp_path / "dask"), "--shard-size", "2",
                     "--task-runner", "dask", "--dask-address", cluster.scheduler_address], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(cluster.workers) == 2
    proc = _cli(["run", str(src), str(tmp_path / "threads"), "--shard-size", "2"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    tables = {}
    for name in ("dask", "threads"):
        out = tmp_path / name
        tables[name] = {t: pd.read_parquet(out / t).drop(columns=["shard", "seconds", "message"],
                                                         errors="ignore")
                        .sort_values([c for c in ("image_id", "label") if c in
                                      pd.read_parquet(out / t).columns])
                        .reset_index(drop=True) for t in ("images", "objects", "failures")}
    for t in ("images", "objects", "failures"):
        pd.testing.assert_frame_equal(tables["dask"][t], tables["threads"][t])
    assert len(tables["dask"]["images"]) == len(NAMES)
    assert list(tables["dask"]["failures"]["image_id"]) == ["broken.png"]
    for mask in sorted((tmp_path / "threads" / "labels").rglob("*.tif")):
        other = tmp_path / "dask" / mask.relative_to(tmp_path / "threads")
        np.testing.assert_array_equal(tifffile.imread(other), tifffile.imread(mask))
    # one task run per shard with either runner, recorded by the real server
    import httpx

    runs = httpx.post(f"{url}/task_runs/filter", json={"limit": 200}).json()
    names = [r["name"] for r in runs]
    assert sorted(n for n in names if n.startswith("shard ")) == sorted(
        [f"shard {k}/3" for k in (1, 2, 3)] * 2)  # 6 images in shards of 2, in each run
