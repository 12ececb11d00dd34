"""``segflow run`` on storage it cannot use: one line each, before any work."""

import json
import os
import shutil
import socket
import time

import pytest

from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server")


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_line(argv):
    with pytest.raises(SystemExit) as err:
        main(argv)
    text = str(err.value)
    assert err.value.code != 0 and "\n" not in text and "Traceback" not in text
    return text


def test_an_unreachable_endpoint_is_one_line_within_seconds(tmp_path):
    options = json.dumps({"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": f"http://127.0.0.1:{_closed_port()}"}})
    t0 = time.perf_counter()
    line = _exit_line(["run", "s3://lab/raw", str(tmp_path / "out"), "--storage-options",
                       options])
    assert time.perf_counter() - t0 < 20
    assert line.startswith("segflow: cannot reach the storage of input='s3://lab/raw' (")
    assert '"secret"' not in line and "'s'" not in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_output_is_one_line(tmp_path, samples):
    (tmp_path / "in").mkdir()
    shutil.copy(samples[0][0], tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        line = _exit_line(["run", str(tmp_path / "in"), str(out)])
    finally:
        out.chmod(0o755)
    assert line == (f"segflow: output={str(out)!r} is not writable (Permission denied: "
                    f"{str(out)!r}). Fix the folder's permissions, or choose a folder you can "
                    "write to.")
