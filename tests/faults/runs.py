"""Helpers for fault tests: run ``segflow`` in a subprocess, compare outputs, record figures."""

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
#: Columns that differ between two correct runs (timing, shard names from the run's clock).
VOLATILE = {"seconds", "shard"}
SORT = {"images": ["image_id"], "failures": ["image_id"], "objects": ["image_id", "label"],
        "intensities": ["image_id", "label", "channel"]}


def segflow_env():
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def start(args, env):
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(args, env):
    """``(exit code, output, peak RSS MB)`` of ``segflow run ARGS`` in a subprocess."""
    proc = start(args, env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out, usage.ru_maxrss / 1024


def small_png(path, side):
    """PNG bytes of the central ``side`` x ``side`` crop of a real image (RGB)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    y, x = max(0, (arr.shape[0] - side) // 2), max(0, (arr.shape[1] - side) // 2)
    buf = io.BytesIO()
    Image.fromarray(arr[y: y + side, x: x + side]).save(buf, format="PNG")
    return buf.getvalue()


def read_tables(fs, root):
    """The tables under ``root`` of ``fs`` (:data:`SORT`), rows sorted, volatile columns dropped."""
    out = {}
    for name, keys in SORT.items():
        parts = [pd.read_parquet(io.BytesIO(fs.cat_file(p)))
                 for p in sorted(fs.ls(f"{root}/{name}", detail=False)) if p.endswith(".parquet")]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        df = df.drop(columns=[c for c in VOLATILE if c in df.columns])
        out[name] = df.sort_values(keys).reset_index(drop=True) if len(df) else df
    return out


def compare(clean, other):
    """``(rows lost, rows duplicated)`` of ``other`` against ``clean``; asserts equal values."""
    lost = dup = 0
    for name, key in SORT.items():
        a, b = clean[name], other[name]
        if len(a) == 0 and len(b) == 0:
            continue
        ka = a[key].astype(str).agg("|".join, axis=1)
        kb = b[key].astype(str).agg("|".join, axis=1)
        lost += int((~ka.isin(set(kb))).sum())
        dup += int(kb.duplicated().sum())
    for name in SORT:
        if len(clean[name]) or len(other[name]):
            pd.testing.assert_frame_equal(clean[name], other[name], check_dtype=False)
    return lost, dup


def record(row):
    """Append a row to the reliability figures when SEGFLOW_RELIABILITY_CSV names a file."""
    path = os.environ.get("SEGFLOW_RELIABILITY_CSV")
    if not path:
        return
    new = not Path(path).exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["fault", "injected", "runs", "images", "rows_lost",
                                          "rows_duplicated", "max_memory_mb"])
        if new:
            w.writeheader()
        w.writerow(row)
