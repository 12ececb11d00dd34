"""``segflow run`` on storage it cannot use, and on inputs with symbolic links: one line each."""

import json
import logging
import os
import shutil
import socket
import time

import pandas as pd
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


def test_a_folder_link_leading_outside_is_named_and_followed_on_request(tmp_path, samples,
                                                                       caplog, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_name = {p.name: p for p, _ in samples}
    shutil.copy(by_name["fluor-3bfd6bb1.png"], elsewhere)
    src = tmp_path / "in"
    src.mkdir()
    (src / "batch2").symlink_to(elsewhere)
    line = _exit_line(["run", str(src), str(tmp_path / "out")])
    assert line == (f"segflow: no images under input={str(src)!r} match patterns="
                    "['*.png', '*.jpg', '*.jpeg', '*.tif', '*.tiff', '*.bmp', '*.zarr']; skipped "
                    "under the input: 1 link leading outside the input "
                    "(--follow-external-links follows them).")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped under the input: 1 link leading outside the input" in " ".join(warned)
    capsys.readouterr()
    assert main(["run", str(src), str(tmp_path / "out"), "--follow-external-links"]) == 0
    images = pd.read_parquet(tmp_path / "out" / "images")
    assert images["image_id"].tolist() == ["batch2/fluor-3bfd6bb1.png"]
