"""Odd and hostile image files through the whole pipeline: a failure row or a correct result.

Every case is built from a real microscopy image (see ``odd_images.py``). None may crash the
run, hang it or allocate the pixels a hostile header declares.
"""

import posixpath
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import tifffile
from odd_images import cases, png_bomb, tiff_bomb
from PIL import Image

from flows.cli import main
from segmodel.inference.preprocess import ImageDecodeError, decode_image
from segmodel.pipeline.outputs import mask_paths, safe_relpath
from segmodel.storage.io import Store

SOURCE = "fluor-3bfd6bb1.png"  # 256 x 256 fluorescence, 38 nuclei


@pytest.fixture(scope="module")
def rgb(samples):
    path = {p.name: p for p, _ in samples}[SOURCE]
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def odd_run(rgb, tmp_path_factory, prefect_server):
    """One segflow run over a folder holding every case; its tables by image id."""
    src = tmp_path_factory.mktemp("odd") / "in"
    src.mkdir()
    expected = {}
    for name, data, expect in cases(rgb):
        (src / name).write_bytes(data)
        expected[name] = expect
    out = src.parent / "out"
    t0 = time.perf_counter()
    assert main(["run", str(src), str(out), "--shard-size", "8"]) == 0
    seconds = time.perf_counter() - t0
    images = pd.read_parquet(out / "images").set_index("image_id")
    failures = pd.read_parquet(out / "failures").set_index("image_id")
    return expected, images, failures, out, seconds


def _case_ids():
    return [name for name, _, _ in cases(np.zeros((64, 64, 3), np.uint8))]


@pytest.mark.parametrize("name", _case_ids())
def test_each_odd_input_gets_a_failure_row_or_a_correct_result(odd_run, name):
    expected, images, failures, out, _ = odd_run
    expect = expected[name]
    assert (name in images.index) != (name in failures.index), "exactly one record per image"
    if isinstance(expect, tuple):
        row = failures.loc[name]
        assert row["stage"] == "decode" and row["error_type"] == "ImageDecodeError"
        assert expect[1] in row["message"] and row["message"].startswith(name)
        return
    row = images.loc[name]
    mask = tifffile.imread(out / row["mask_path"])
    assert mask.shape == (row["height"], row["width"])
    assert int(mask.max()) == row["n_objects"]
    if expect == "empty":
        assert row["n_objects"] == 0
    elif expect == "valid":
        assert row["n_objects"] > 0
    else:  # the same nuclei as the original image, whatever the encoding
        reference = images.loc["name with spaces.png", "n_objects"]
        assert reference >= 20
        assert abs(row["n_objects"] - reference) <= max(3, 0.15 * reference), row["n_objects"]


def test_odd_inputs_neither_hang_the_run_nor_leave_partial_files(odd_run):
    expected, images, failures, out, seconds = odd_run
    assert len(images) + len(failures) == len(expected)
    assert seconds < 300
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    for p in out.rglob("*"):  # every output lies inside OUTPUT
        assert p.resolve().is_relative_to(out.resolve())


@pytest.mark.parametrize("bomb", [png_bomb, tiff_bomb], ids=["png", "tiff"])
def test_a_decompression_bomb_is_refused_from_its_header_without_allocating(bomb):
    data = bomb()
    assert len(data) < 2000  # a tiny file declaring 100,000 x 100,000 pixels
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        decode_image(data, name="bomb")
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 5_000_000


def test_a_bomb_under_a_raised_limit_still_fails_cleanly_in_bounded_memory(tmp_path):
    """Even with --max-pixels above the declared size, the broken data fails, not the machine."""
    code = ("import resource, sys; sys.path.insert(0, 'tests/faults');"
            "from odd_images import tiff_bomb;"
            "from segmodel.inference.preprocess import decode_image;"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
            "exec('try:\\n decode_image(tiff_bomb(20000), name=\"b\", max_pixels=10**9)\\n"
            "except Exception as e: print(type(e).__name__)');"
            # the peak of this process's own memory: ru_maxrss would also count the parent's
            # pages at the fork, so the figure would depend on the tests run before this one
            "print(next(int(line.split()[1]) for line in open('/proc/self/status')"
            " if line.startswith('VmHWM:')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    kind, rss_kb = proc.stdout.split()
    assert kind == "ImageDecodeError"
    assert int(rss_kb) < 300_000  # about 35 MB measured; the decoded 20,000 x 20,000 bytes: 424 MB


@pytest.mark.parametrize("image_id", [
    "../../evil.png", "../../../../tmp/evil.png", "/etc/passwd.png", "//host/share/x.png",
    "%2e%2e/%2e%2e/x.png", "..%2f..%2fx.png", "a\\..\\..\\x.png", "./././x.png", "x/..",
    "C:/windows/x.png",
], ids=["dotdot", "deep-dotdot", "absolute", "double-slash", "url-encoded",
        "url-encoded-slash", "backslash", "dots", "trailing-dotdot", "drive"])
def test_no_image_id_makes_a_mask_path_outside_labels(image_id):
    path = mask_paths([image_id])[image_id]
    norm = posixpath.normpath(path)
    assert norm.startswith("labels/") and ".." not in norm.split("/")
    assert norm == path  # nothing left for a file system to collapse
    assert "\\" not in path


def test_safe_names_are_kept_and_distinct_names_stay_distinct():
    assert safe_relpath("plate 2/ünï 細胞.png") == "plate 2/ünï 細胞.png"
    names = ["../x", "%2E%2E/x", "%252E%252E/x", "/x", "%2F/x", "./x", "%2E/x", "x"]
    assert len({safe_relpath(n) for n in names}) == len(names)


def test_the_store_refuses_to_write_outside_its_root(tmp_path):
    store = Store(str(tmp_path / "out"))
    for bad in ("../escape.bin", "a/../../escape.bin", "/abs.bin"):
        with pytest.raises(ValueError, match="refusing to write outside"):
            store.write_bytes(bad, b"x")
    assert not (tmp_path / "escape.bin").exists()


def test_hostile_object_names_are_segmented_inside_output(rgb, prefect_server):
    """Keys with ``..``, ``//`` and encoded segments on an object store stay under OUTPUT."""
    import fsspec

    fs = fsspec.filesystem("memory")
    png = next(data for name, data, _ in cases(rgb) if name == "name with spaces.png")
    keys = ["/odd-in/a/../../../escape.png", "/odd-in/b/../../up.png", "/odd-in/%2e%2e/enc.png",
            "/odd-in/ok name ü.png"]
    for key in keys:
        fs.pipe_file(key, png)
    before = set(fs.find("/", detail=False))  # the memory file system is shared by all tests
    try:
        assert main(["run", "memory://odd-in", "memory://odd-out/run"]) == 0
        written = set(fs.find("/", detail=False)) - before
        outside = [p for p in written if not p.startswith(("/odd-in/", "/odd-out/run/"))]
        assert outside == []
        images = pd.read_parquet(fs.open("/odd-out/run/images/" + fs.ls(
            "/odd-out/run/images", detail=False)[0].rsplit("/", 1)[1]))
        assert len(images) == len(keys)
        for path in images["mask_path"]:
            assert fs.isfile(f"/odd-out/run/{path}")
    finally:
        fs.rm("/odd-in", recursive=True)
        if fs.exists("/odd-out"):
            fs.rm("/odd-out", recursive=True)
