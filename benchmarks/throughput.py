"""End-to-end throughput of ``segflow run`` against the model's own limit, in one run.

The same real images of the shared DSB2018 set (208 by default, in id order: fluorescence,
histology and brightfield, 256x256 to 1040x1388) are measured two ways:

- **raw**: every image decoded and prepared beforehand, its tiles cut and packed into
  batches in memory as the pipeline packs them (per shard of images), then only ``predict``
  timed: tiles/s, and the images/s that implies for these images; measured before and
  after the end-to-end run, and averaged;
- **end to end**: ``python -m flows.cli run`` (the ``segflow run`` command) in a fresh process,
  from the files on disk to every mask and table written: images/s of the flow (from its start
  to the last shard written), and of the whole command (Python start, imports and Prefect's
  temporary server included).

The ratio end-to-end / raw shows how close the pipeline keeps the model busy; the breakdown
(stage seconds summed over shards, from the run summary in ``run.json``) shows where the rest
goes. Stages of different shards overlap, so they can add up to more than the wall time.

Each engine (``--engines``, default Keras on TensorFlow and OpenVINO) is measured both ways in
the same run, and a last table puts them side by side.

Usage::

    python benchmarks/throughput.py                       # 208 images, shard 32, batch 8
    python benchmarks/throughput.py --mosaic 8            # 8 images of 2048x2048 instead
    python benchmarks/throughput.py --count 240 --batch-size 16 --save
    python benchmarks/throughput.py --cpu-workers 0 1    # in-thread vs one worker process
    python benchmarks/throughput.py --repeat 3 --save     # raw, run, raw, run, raw, run, raw

With ``--repeat N`` the end-to-end runs and the raw measurements alternate; each run's ratio is
taken against the mean of the raw measurements just before and just after it, and the run with
the median ratio gets the full tables, after a table of every run. One run's ratio moves with
the machine's load (the raw rate alone moved by up to 15% between runs minutes apart on the
shared 2-core machine), so the median of several is the figure to quote.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmodel.inference.passes import model_tiling, prepare
from segmodel.inference.preprocess import decode_image, extract_tile, tile_origins
from segmodel.model.loading import load_model
from segmodel.pipeline.clock import STAGES
from segmodel.training.datasets import DEFAULT_DATA

RESULTS = REPO / "benchmarks" / "results" / "throughput.txt"


def pick_images(data_dir, count):
    """The first ``count`` images of the set in id order: ``[(path, height, width)]``."""
    index = pd.read_csv(data_dir / "index.csv").sort_values("id").head(count)
    return [(data_dir / "images" / f"{r.id}.png", r.height, r.width)
            for r in index.itertuples()]


def copy_images(picked, folder):
    """Copy ``picked`` (``[(path, height, width)]``) into ``folder``; the copies' list."""
    for path, _, _ in picked:
        shutil.copyfile(path, folder / path.name)
    return [(folder / path.name, h, w) for path, h, w in picked]


def mosaics(data_dir, count, folder, side=2048, piece=256):
    """``count`` images of ``side`` x ``side`` pixels, each a grid of real ``piece``-pixel
    fluorescence images of the set (in id order, reused round-robin), as PNGs in ``folder``."""
    from PIL import Image

    index = pd.read_csv(data_dir / "index.csv").sort_values("id")
    pieces = index[(index.height == piece) & (index.width == piece)
                   & (index.modality == "fluorescence")]
    paths = [data_dir / "images" / f"{i}.png" for i in pieces.id]
    per, made = (side // piece) ** 2, []
    for k in range(count):
        canvas = Image.new("RGB", (side, side))
        for j in range(per):
            with Image.open(paths[(k * per + j) % len(paths)]) as im:
                canvas.paste(im.convert("RGB"), ((j % (side // piece)) * piece,
                                                 (j // (side // piece)) * piece))
        canvas.save(folder / f"mosaic-{k:03d}.png")
        made.append((folder / f"mosaic-{k:03d}.png", side, side))
    return made


def raw_throughput(paths, batch_size, shard_size, engine="keras", tile_size=None, model=None):
    """Tiles, seconds and CPU seconds (this process) of ``predict`` alone on preloaded batches.

    Batches are cut as the pipeline cuts them: the tiles of each shard of ``shard_size``
    images, each image at its tile size (the run's tiling, ``model_tiling``: large images in
    larger tiles unless ``tile_size`` fixes one), in ``batch_size`` tiles each (fewer larger
    ones), a shard's last batch padded, or cut to its tiles where the model takes any batch
    size. Every batch shape is called once before the timing. ``model``: a bundle or zoo
    package (default: the shipped model).
    """
    model = load_model(model, engine=engine)
    tiling = model_tiling(model, tile_size)
    n, batches = 0, []
    for first in range(0, len(paths), shard_size):
        by_size = {}
        for path in paths[first : first + shard_size]:
            x = prepare(decode_image(path.read_bytes(), name=path.name), model.spec).x
            tl = tiling.for_shape(x.shape)
            by_size.setdefault(tl.tile, []).extend(
                extract_tile(x, o, tl.tile) for o in tile_origins(x.shape, tl))
        for tile, tiles in by_size.items():
            n += len(tiles)
            batches += _batches(tiles, max(1, batch_size * tiling.tile ** 2 // tile ** 2),
                                model.any_batch_size)
    for batch in {b.shape: b for b in batches}.values():
        model.predict_batch(batch)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for batch in batches:
        model.predict_batch(batch)
    return n, time.perf_counter() - t0, time.process_time() - cpu0


def _batches(tiles, batch_size, exact_last):
    """``tiles`` in batches of ``batch_size``, the last padded unless ``exact_last``."""
    batches = []
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        batch = np.zeros((len(chunk) if exact_last else batch_size,) + tiles[0].shape,
                         np.float32)
        batch[: len(chunk)] = chunk
        batches.append(batch)
    return batches


def end_to_end(input_dir, output_dir, shard_size, batch_size, extra=()):
    """Command wall seconds and the run summary (``run.json`` counts) of one ``segflow run``."""
    cmd = [sys.executable, "-m", "flows.cli", "run", str(input_dir), str(output_dir),
           "--shard-size", str(shard_size), "--batch-size", str(batch_size), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"segflow run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    record = json.loads((Path(output_dir) / "run.json").read_text())
    return wall, {**record["counts"], "precision": record["model"].get("precision")}


def accelerator(backend):
    """What the model runs on, in words: the GPU's name under JAX or TensorFlow, else 'no GPU'."""
    try:
        if backend == "jax":
            import jax

            gpus = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        else:
            gpus = []
    except Exception:  # an accelerator we cannot name is reported as unknown, not a crash
        return "accelerator unknown"
    return f"GPU: {gpus[0]} x{len(gpus)}" if gpus else "no GPU"


def _model_seconds(counts):
    """Seconds the model thread spent in model calls during the flow (the run summary's
    ``model_seconds``; older summaries: the predict stage, which also holds cutting and
    stitching tiles and overlaps between shards)."""
    seconds = counts.get("model_seconds")
    return seconds if seconds is not None else counts["stage_seconds"]["predict"]


def repeats_table(rows):
    """The per-run table of ``--repeat``: ``rows`` of (run, raw before, raw after, wall, counts)."""
    table = pd.DataFrame([
        {"run": i, "raw before s": before, "raw after s": after,
         "flow s": counts["seconds"], "ratio flow / raw": (before + after) / 2 / counts["seconds"],
         "model busy": _model_seconds(counts) / counts["seconds"],
         "cores busy": counts.get("machine_busy"),
         "whole command s": wall}
        for i, before, after, wall, counts in rows])
    ratios = table["ratio flow / raw"]
    return table, (f"ratio flow / raw over {len(table)} runs: median {ratios.median():.3f}, "
                   f"range {ratios.min():.3f}-{ratios.max():.3f}")


def cpu_line(ratio, raw_s, raw_cpu, counts):
    """How busy the machine's cores were during the flow, and what that bounds the ratio to.

    With the cores busy a share ``b`` of the flow, the same CPU work packed onto them without
    a gap would take ``b`` of the flow's wall time, so the ratio could reach at most
    ``ratio / b``; beyond that only less CPU work around the model helps.
    """
    busy, cpu = counts.get("machine_busy"), counts.get("cpu_seconds")
    if busy is None or cpu is None:
        return "CPU: not recorded by this run (run.json without machine_busy)"
    return (f"CPU ({os.cpu_count()} cores): the model alone used {raw_cpu:.1f} s of CPU in "
            f"{raw_s:.1f} s ({raw_cpu / raw_s:.2f} cores); during the flow the machine's cores "
            f"were {busy:.1%} busy, and the flow's process used {cpu:.1f} s of CPU "
            f"({cpu - raw_cpu:.1f} s more than the model's own calls alone). Ceiling for this "
            f"much CPU work on these cores: ratio / busy share = {ratio / busy:.3f}")


def report(n_images, megapixels, tiles, raw_runs, wall, counts, raw_cpu=None):
    """The tables as text (``raw_runs``: seconds of the raw measurement before and after;
    ``raw_cpu``: its mean CPU seconds)."""
    flow_s = counts["seconds"]
    raw_s = sum(raw_runs) / len(raw_runs)
    raw_ips = n_images / raw_s
    e2e_ips = counts["images"] / flow_s
    rows = [(f"raw predict (preloaded batches), {when}", r, tiles / r, n_images / r,
             megapixels / r) for when, r in zip(("before", "after"), raw_runs)]
    rows += [
        ("raw predict: mean of the two", raw_s, tiles / raw_s, raw_ips, megapixels / raw_s),
        ("end to end: flow", flow_s, tiles / flow_s, e2e_ips, megapixels / flow_s),
        ("end to end: whole command", wall, tiles / wall, n_images / wall, megapixels / wall),
    ]
    table = pd.DataFrame(rows, columns=["measure", "seconds", "tiles/s", "images/s", "MP/s"])
    lines = [f"{n_images} images, {megapixels:.1f} megapixels, {tiles} tiles of the model's size",
             "", table.to_string(index=False, float_format=lambda v: f"{v:.2f}"), "",
             (f"ratio end-to-end / raw: {e2e_ips / raw_ips:.3f} (flow), "
              f"{(n_images / wall) / raw_ips:.3f} (whole command)"),
             (f"model busy (seconds of model calls inside the flow / flow wall, robust to "
              f"the machine's load changing between the two measurements): "
              f"{_model_seconds(counts) / flow_s:.3f}; model calls in the flow "
              f"{_model_seconds(counts):.2f} s against {raw_s:.2f} s alone")]
    waits = counts.get("model_waits")
    if waits:
        between = flow_s - _model_seconds(counts) - sum(waits.values())
        lines.append(f"model idle in the flow: {waits['before_first_call']:.2f} s before its "
                     f"first call, {between:.2f} s between calls, "
                     f"{waits['after_last_call']:.2f} s after its last")
    if raw_cpu is not None:
        lines.append(cpu_line(e2e_ips / raw_ips, raw_s, raw_cpu, counts))
    lines.append("")
    stages = counts["stage_seconds"]
    breakdown = [(k, stages[k], 100 * stages[k] / flow_s) for k in STAGES if k in stages]
    breakdown.append(("orchestration (no task body running)", counts["idle_seconds"],
                      100 * counts["idle_seconds"] / flow_s))
    breakdown.append(("outside the flow: start, imports, model, server, final tasks",
                      wall - flow_s, 100 * (wall - flow_s) / flow_s))
    lines.append(pd.DataFrame(breakdown, columns=["where (stages overlap)", "seconds",
                                                  "% of flow wall"])
                 .to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    return "\n".join(lines)


def measure(args, paths, src, tmp):
    """Raw and end-to-end measurements of every engine and ``--cpu-workers`` value, alternated.

    Returns the tile count and, per ``(engine, cpu_workers)``, the rows of
    :func:`repeats_table`: ``(run, raw before, raw after, wall, counts)``.
    """
    raws = {e: [raw_throughput(paths, args.batch_size, args.shard_size, e, args.tile_size,
                               args.model)]
            for e in args.engines}
    runs = {(e, n): [] for e in args.engines for n in args.cpu_workers}
    tile = ("--tile-size", str(args.tile_size)) if args.tile_size else ()
    tile += ("--model", args.model) if args.model else ()
    for r in range(1, args.repeat + 1):
        done = {(e, n): end_to_end(src, Path(tmp) / f"out-{e}-{n}-{r}", args.shard_size,
                                   args.batch_size, ("--cpu-workers", str(n), "--engine", e,
                                                     "--scale", args.scale, *tile))
                for e in args.engines for n in args.cpu_workers}
        for e in args.engines:
            raws[e].append(raw_throughput(paths, args.batch_size, args.shard_size, e,
                                          args.tile_size, args.model))
        for (e, n), (wall, counts) in done.items():
            (_, before, cpu0), (_, after, cpu1) = raws[e][-2:]
            runs[(e, n)].append((r, before, after, wall, {**counts, "raw_cpu": (cpu0 + cpu1) / 2}))
    return raws[args.engines[0]][0][0], runs


def side_by_side(picked, megapixels, tiles, chosen):
    """One row per (engine, cpu_workers): raw, flow and whole-command rates, and the ratios.

    ``chosen`` maps ``(engine, cpu_workers)`` to its median-ratio row; the last column is the
    whole command's MP/s against the first engine's with the same workers.
    """
    rows = []
    for (engine, n), (_, before, after, wall, counts) in chosen.items():
        raw = (before + after) / 2
        rows.append({"engine": engine, "cpu workers": n, "precision": counts.get("precision"),
                     "raw tiles/s": tiles / raw, "raw MP/s": megapixels / raw,
                     "flow MP/s": megapixels / counts["seconds"],
                     "whole command MP/s": megapixels / wall,
                     "flow / raw": raw / counts["seconds"]})
    table = pd.DataFrame(rows)
    first = table.groupby("cpu workers")["whole command MP/s"].transform("first")
    table["whole command vs first engine"] = table["whole command MP/s"] / first
    return (f"{len(picked)} images, {megapixels:.1f} megapixels, {tiles} tiles\n"
            + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=208, help="number of images (default 208)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cpu-workers", type=int, nargs="+", default=[0],
                   help="end-to-end runs with these --cpu-workers values (default: 0)")
    p.add_argument("--repeat", type=int, default=1,
                   help="end-to-end runs of each --cpu-workers value, alternating with raw "
                        "measurements (default 1)")
    p.add_argument("--engines", nargs="+", default=["keras", "openvino"],
                   choices=["keras", "openvino"],
                   help="engines to measure side by side (default: keras openvino)")
    p.add_argument("--scale", default="1",
                   help="--scale of the end-to-end runs (default 1: the raw measurement's; "
                        "'auto' adds the automatic scale's extra passes to the flow only)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="one tile size for every image (default: the run's, larger tiles for "
                        "large images)")
    p.add_argument("--mosaic", type=int, default=0,
                   help="measure N images of 2048x2048 assembled from 64 real 256x256 ones "
                        "each, instead of the set's own images (default 0: off)")
    p.add_argument("--model", default=None,
                   help="a bundle or BioImage Model Zoo package to measure (default: the shipped "
                        "model)")
    p.add_argument("--save", action="store_true", help=f"also write the tables to {RESULTS}")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1. Received: --repeat {args.repeat}")
    if not (args.data_dir / "index.csv").is_file():
        print(f"dataset not found under {args.data_dir}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        picked = (mosaics(args.data_dir, args.mosaic, src) if args.mosaic
                  else copy_images(pick_images(args.data_dir, args.count), src))
        megapixels = sum(h * w for _, h, w in picked) / 1e6
        tiles, runs = measure(args, [path for path, _, _ in picked], src, tmp)
    parts, chosen = [], {}
    for (engine, n), rows in runs.items():
        text = f"## --engine {engine} --cpu-workers {n}\n"
        if len(rows) > 1:
            table, summary = repeats_table(rows)
            text += (table.to_string(index=False, float_format=lambda v: f"{v:.3f}") + "\n"
                     + summary + "\n\nthe run with the median ratio:\n")
            order = np.argsort(table["ratio flow / raw"].to_numpy(), kind="stable")
            rows = [rows[order[(len(rows) - 1) // 2]]]
        chosen[(engine, n)] = rows[0]
        _, before, after, wall, counts = rows[0]
        parts.append(text + report(len(picked), megapixels, tiles, (before, after), wall,
                                   counts, raw_cpu=counts["raw_cpu"]))
    parts.append("## side by side (the run with the median ratio of each)\n"
                 + side_by_side(picked, megapixels, tiles, chosen))
    text = "\n\n".join(parts)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    workers = " ".join(map(str, args.cpu_workers))
    repeat = f" --repeat {args.repeat}" if args.repeat > 1 else ""
    images = f"--mosaic {args.mosaic}" if args.mosaic else f"--count {args.count}"
    header = (f"# python benchmarks/throughput.py {images} --shard-size "
              f"{args.shard_size} --batch-size {args.batch_size} --cpu-workers {workers}"
              f" --engines {' '.join(args.engines)} --scale {args.scale}"
              + (f" --tile-size {args.tile_size}" if args.tile_size else "")
              + f"{repeat}  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, "
              f"{accelerator(backend)}, Keras backend {backend})")
    print(header + "\n" + text)
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(header + "\n" + text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
