"""Time to first result: ``segflow run`` of one 256x256 image, per engine and server.

Each measurement is one whole ``python -m flows.cli run IMAGE_DIR OUT`` in a fresh process
(Python start, imports, model, the run, the exit), on a folder holding one 256x256 real image
of the shared DSB2018 set, with a fresh output each time. Two servers:

- **temporary**: no ``PREFECT_API_URL``; ``segflow run`` starts Prefect's server itself;
- **running**: a ``prefect server start`` started once beforehand, reached through
  ``PREFECT_API_URL`` (as a lab with its own server runs).

The engines' conversion caches are warm (one run of each engine happens before the timings):
the first run of a model on OpenVINO adds its conversion (about 3 s) once per machine.
Rounds interleave the engines and servers; the table gives the median and range.

Usage::

    python benchmarks/start.py                  # 5 rounds, engines keras and openvino
    python benchmarks/start.py --rounds 3 --save
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmodel.training.datasets import DEFAULT_DATA  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "start.txt"


def one_image(data_dir, folder):
    """Copy the first 256x256 image of the set (in id order) into ``folder``; its id."""
    index = pd.read_csv(data_dir / "index.csv").sort_values("id")
    row = index[(index.height == 256) & (index.width == 256)].iloc[0]
    shutil.copyfile(data_dir / "images" / f"{row.id}.png", folder / f"{row.id}.png")
    return row.id


def timed_run(src, out, engine, env):
    """Wall seconds of one ``segflow run`` in a fresh process (raises if it fails)."""
    cmd = [sys.executable, "-m", "flows.cli", "run", str(src), str(out), "--engine", engine]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"segflow run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def start_server(env):
    """A ``prefect server start`` on a free loopback port: ``(process, api_url)``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port), "--no-ui", "--analytics-off",
                             "--no-prompt"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("prefect server start did not answer within 180 s")


def measure(src, tmp, engines, rounds):
    """``{(engine, server): [seconds, ...]}`` over ``rounds`` interleaved rounds."""
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(Path(tmp) / "prefect-home"))
    server, url = start_server(base)
    envs = {"temporary": base, "running": {**base, "PREFECT_API_URL": url}}
    try:
        for engine in engines:  # warm: conversions cached, files in the page cache
            timed_run(src, Path(tmp) / f"warm-{engine}", engine, envs["running"])
        times = {(e, s): [] for e in engines for s in envs}
        for r in range(rounds):
            for (engine, name), seconds in times.items():
                out = Path(tmp) / f"out-{engine}-{name}-{r}"
                seconds.append(timed_run(src, out, engine, envs[name]))
    finally:
        server.terminate()
        server.wait(30)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--engines", nargs="+", default=["keras", "openvino"],
                   choices=["keras", "openvino"])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--save", action="store_true", help=f"also append the table to {RESULTS}")
    args = p.parse_args(argv)
    if not (args.data_dir / "index.csv").is_file():
        print(f"dataset not found under {args.data_dir}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        image = one_image(args.data_dir, src)
        times = measure(src, tmp, args.engines, args.rounds)
    table = pd.DataFrame([{"engine": e, "server": s, "median s": pd.Series(v).median(),
                           "min s": min(v), "max s": max(v)} for (e, s), v in times.items()])
    header = (f"# python benchmarks/start.py --rounds {args.rounds} --engines "
              f"{' '.join(args.engines)}  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU "
              f"cores; one 256x256 image, {image[:12]}...)")
    text = header + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}")
    print(text)
    if args.save:
        with open(RESULTS, "a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
