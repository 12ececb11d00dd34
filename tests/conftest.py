"""Shared fixtures: the real DSB2018 set, the shipped samples, a Prefect test server, S3 on
loopback."""

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Prefect configures logging when first imported, and that closes the handlers already there.
# TensorFlow's absl handler then closes the stream it holds unless it is still sys.stderr, and in
# a test that stream is pytest's capture from collection time: every later test's output capture
# fails with "I/O operation on closed file". Importing Prefect first, as the CLI does, avoids it
# whichever tests run first (``prefect.flow`` loads ``prefect.main``, which sets up logging).
from prefect import flow  # noqa: E402,F401

from segmodel.training.datasets import DEFAULT_DATA  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "segmodel" / "samples"


@pytest.fixture(scope="session")
def dsb2018():
    """The shared DSB2018 folder, or a skip saying where it was looked for."""
    if not (DEFAULT_DATA / "index.csv").is_file():
        pytest.skip(f"../shared/data/dsb2018 not found (looked in {DEFAULT_DATA}): "
                    "tests on the real annotated set need it beside the repository")
    return DEFAULT_DATA


@pytest.fixture(scope="session")
def own_data(tmp_path_factory, dsb2018):
    """A user's annotated folder: 8 real fluorescence DSB2018 images of at most 320 px (PNG) and
    their instance labels (TIFF), under ``images/`` and ``labels/``."""
    import numpy as np
    import tifffile
    from PIL import Image

    from segmodel.training import datasets

    root = tmp_path_factory.mktemp("own")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    n = 0
    for s in datasets.list_samples(dsb2018):
        if s.modality != "fluorescence":
            continue
        image, labels = s.load()
        if max(image.shape[:2]) > 320:
            continue
        Image.fromarray(image).save(root / "images" / f"{s.id[:8]}.png")
        tifffile.imwrite(root / "labels" / f"{s.id[:8]}.tif", labels.astype(np.uint16))
        n += 1
        if n == 8:
            break
    return root


@pytest.fixture(scope="session")
def own_inputs(own_data, tmp_path_factory):
    """A folder holding the first 3 images of :func:`own_data`, to segment."""
    src = tmp_path_factory.mktemp("in")
    for p in sorted((own_data / "images").iterdir())[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    return src


@pytest.fixture(scope="session")
def samples():
    """The sample images shipped in the package: ``[(path, row of index.csv)]``."""
    with open(SAMPLES / "index.csv", newline="") as f:
        return [(SAMPLES / r["file"], r) for r in csv.DictReader(f)]


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port, timeout=60):
    """Whether a server on the loopback ``port`` accepts a connection within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server (moto in server mode) on a free loopback port."""
    pytest.importorskip("moto")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    if not port_answers(port):
        proc.kill()
        pytest.fail(f"moto server did not start on {endpoint}")
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_options(s3_server):
    """Storage options for s3fs against the loopback server (dummy credentials)."""
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": s3_server, "region_name": "eu-west-1"}}
