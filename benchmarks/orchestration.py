"""Prefect's share of the wall time of a run: task runs created and seconds of orchestration.

For each N (1,000 images by default, plus 250 to show how the task-run count grows), the 256x256
images of the shared DSB2018 set are repeated under distinct names and segmented by the
``segment-images`` flow in a fresh Python process on Prefect's temporary server (no
``PREFECT_API_URL``, as ``segflow run`` does by default). That process times:

- ``import prefect`` (the rest of the imports, Keras and TensorFlow, is not Prefect's);
- the temporary server's start: as ``segflow run`` does, its process starts first, before
  Prefect and TensorFlow are imported and while the model loads and warms up; what counts is
  starting the process plus the time the flow still waits for it;
- the flow call minus the flow body's own seconds and minus the final tasks' own work
  (reconciling the tables, QC flags and thumbnails: the summary's ``finish_seconds``):
  flow-run creation, the final tasks' runs and API calls, teardown;
- inside the flow, the seconds when no task body was running anywhere (task-run creation, state
  changes, futures): the run summary's ``idle_seconds``;
- after the flow returned, the seconds until the server has recorded every task run as
  completed (its backlog);

and counts the task runs the server recorded for the flow run. Prefect's share is the sum of
those seconds over the process' wall time (Python start to the server having recorded all).

Two costs that share leaves out are printed beside it: the CPU seconds of the server process
from its being ready to the run being recorded (it runs on another core, which on a machine
the model keeps busy is taken from the model), and the seconds from the run's last timing to
the process' exit (stopping the server and flushing Prefect's events; it exits as ``segflow``
does, without the interpreter's teardown of TensorFlow and every other module). "share
counting both" adds them to the orchestration seconds: a bound from above, where the share is
one from below.

Usage::

    python benchmarks/orchestration.py                    # N = 250 and 1000, shard size 32
    python benchmarks/orchestration.py --counts 1000 --shard-size 64 --save
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "orchestration.txt"


def child(input_dir, output_dir, shard_size):
    """Run the flow once in this (fresh) process; print the timings as one JSON line."""
    t_start = time.time()
    import flows  # noqa: F401  (sets Prefect's environment defaults; imports nothing of it)
    from flows.server import early_server

    # As ``segflow run`` does: the temporary server's process starts first, before Prefect and
    # TensorFlow are imported and while the model loads and warms up; only starting it and the
    # part of its start the flow still has to wait for count.
    t0 = time.perf_counter()
    early = early_server()
    t_spawn = time.perf_counter() - t0
    t0 = time.perf_counter()
    import prefect  # noqa: F401

    t_prefect = time.perf_counter() - t0
    from flows.params import SegmentParams
    from flows.segment import preflight, segment_images

    params = SegmentParams(input=str(input_dir), output=str(output_dir), shard_size=shard_size)
    preflight(params, warm_up=True)
    t0 = time.perf_counter()
    early.wait()
    t_server = t_spawn + time.perf_counter() - t0
    server_cpu_ready = _cpu_seconds(early.process.pid if early.ready else None)
    t0 = time.perf_counter()
    with early.settings():
        state = segment_images(params, return_state=True)
    t_call = time.perf_counter() - t0
    summary = state.result()
    t0 = time.perf_counter()
    if not early.ready:  # this benchmark measures the path ``segflow run`` takes
        raise SystemExit(f"the temporary server did not start: {early.problem}")
    task_runs = _wait_recorded(early.api_url, state.state_details.flow_run_id)
    t_backlog = time.perf_counter() - t0
    server_cpu = _cpu_seconds(early.process.pid)
    print(json.dumps({"import_prefect": t_prefect, "server_start": t_server, "call": t_call,
                      "backlog": t_backlog, "task_runs": task_runs, "summary": summary,
                      "server_cpu": (None if server_cpu is None or server_cpu_ready is None
                                     else server_cpu - server_cpu_ready),
                      "process": time.time() - t_start, "printed_at": time.time()}), flush=True)


def _cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` so far (Linux's ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _wait_recorded(api_url, flow_run_id, timeout=300):
    """Block until every task run of the flow run is recorded as completed; return the count."""
    import httpx

    flow_runs = {"id": {"any_": [str(flow_run_id)]}}
    done = {"state": {"type": {"any_": ["COMPLETED"]}}}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while True:
            total = client.post("/task_runs/count", json={"flow_runs": flow_runs}).json()
            completed = client.post("/task_runs/count",
                                    json={"flow_runs": flow_runs, "task_runs": done}).json()
            if (total and completed == total) or time.monotonic() > deadline:
                return completed
            time.sleep(0.2)


def measure(n, data_dir, tmp, shard_size, size):
    """One fresh process for ``n`` images; the row of the table."""
    from benchmarks.memory import make_folder

    src, out = Path(tmp) / f"in-{n}", Path(tmp) / f"out-{n}"
    make_folder(src, n, data_dir, size)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(src),
                           str(out), str(shard_size)], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False)
    wall, exited = time.perf_counter() - t0, time.time()
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    s = r["summary"]
    finish = s.get("finish_seconds", 0.0)  # the final tasks' own work: engine, not Prefect
    outside = r["call"] - s["seconds"] - finish
    orchestration = (r["import_prefect"] + r["server_start"] + outside + s["idle_seconds"]
                     + r["backlog"])
    return {"images": s["images"], "shards": s["shards"], "task runs": r["task_runs"],
            "wall s": wall, "engine busy s": s["busy_seconds"],
            "final tasks' own work s": finish,
            "import prefect s": r["import_prefect"], "server start s": r["server_start"],
            "flow run setup/teardown s": outside, "idle in flow s": s["idle_seconds"],
            "server backlog s": r["backlog"], "orchestration s": orchestration,
            "Prefect share %": 100 * orchestration / wall,
            "share without server start %": 100 * (orchestration - r["server_start"]) / wall,
            "server CPU during the run s": r["server_cpu"],
            "exit after the last timing s": exited - r["printed_at"],
            "share counting both %": 100 * (orchestration + (r["server_cpu"] or 0.0)
                                            + exited - r["printed_at"]) / wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", type=int, nargs="+", default=[250, 1000])
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--size", type=int, default=256, help="edge of the images used")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--save", action="store_true", help=f"also write the table to {RESULTS}")
    p.add_argument("--child", nargs=3, metavar=("INPUT", "OUTPUT", "SHARD"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:  # exits as ``segflow`` does (flows.cli.console)
        from flows.cli import console

        return console(lambda: child(args.child[0], args.child[1], int(args.child[2])))
    from segmodel.training.datasets import DEFAULT_DATA

    data_dir = args.data_dir or DEFAULT_DATA
    if not (data_dir / "index.csv").is_file():
        print(f"dataset not found under {data_dir}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        measure(8, data_dir, tmp, args.shard_size, args.size)  # warm-up: database migrations
        rows = [measure(n, data_dir, tmp, args.shard_size, args.size) for n in args.counts]
    table = pd.DataFrame(rows).set_index("images").T
    header = (f"# python benchmarks/orchestration.py --counts {' '.join(map(str, args.counts))} "
              f"--shard-size {args.shard_size}  ({time.strftime('%Y-%m-%d')}, "
              f"{os.cpu_count()} CPU cores, temporary Prefect server)")
    text = table.to_string(float_format=lambda v: f"{v:.2f}")
    print(header + "\n" + text)
    if args.save:
        with open(RESULTS, "a") as f:
            f.write(header + "\n" + text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
