"""Reliability figures: run the fault-injection tests and print what they measured.

The slow tests in ``tests/faults`` (flaky S3 at 10% and 30%, kill -9 at 20 moments) append
one row each to a CSV named by ``SEGFLOW_RELIABILITY_CSV``; this script runs them with it set
and prints the table (Markdown) also written to ``benchmarks/results/reliability.md``.

Usage::

    python benchmarks/reliability.py                 # runs the tests (about 15 minutes)
    python benchmarks/reliability.py --csv rows.csv  # only format rows already measured
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [("fault", "fault"), ("injected", "injected"), ("runs", "runs"), ("images", "images"),
           ("rows_lost", "rows lost"), ("rows_duplicated", "rows duplicated"),
           ("max_memory_mb", "max memory (MB, peak RSS of a run)")]


def measure(csv_path):
    env = {**os.environ, "SEGFLOW_RELIABILITY_CSV": str(csv_path), "PYTHONPATH": str(REPO)}
    tests = ["tests/faults/test_flaky_storage.py", "tests/faults/test_kill9.py"]
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *tests], cwd=REPO, env=env)
    if code != 0:
        raise SystemExit(f"the fault tests failed (exit {code}); no figures")


def table(csv_path):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[key] for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=None, help="format these rows instead of measuring")
    args = ap.parse_args()
    if args.csv is None:
        args.csv = Path(tempfile.mkdtemp()) / "reliability.csv"
        measure(args.csv)
    text = table(args.csv)
    print(text)
    out = REPO / "benchmarks" / "results" / "reliability.md"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
