"""Peak memory of ``segflow run`` for a small and a large number of images.

Images of the shared DSB2018 set are repeated under distinct names into a temporary folder
(256x256 ones by default, so the run time stays short on a CPU), then ``segflow run`` runs in
a fresh process for each N and its peak resident memory is read from ``getrusage``. The flow
keeps a bounded number of shards in flight, so peak memory should not grow with N.

Usage::

    python benchmarks/memory.py                 # N = 50 and 1000
    python benchmarks/memory.py --counts 50 200
"""

import argparse
import os
import resource
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

from segmodel.training.datasets import DEFAULT_DATA, list_samples  # noqa: E402


def make_folder(root, n, data_dir, size):
    """``n`` images named ``img-00000.png``... from the same-size images of the set: spread
    evenly over them when ``n`` is fewer (so a small run sees the same kinds of images as a
    large one), cycling over all of them when more."""
    pool = [s.image_path for s in list_samples(data_dir)
            if s.image_path.stat().st_size and _shape(s.image_path) == (size, size)]
    if not pool:
        raise SystemExit(f"no {size}x{size} images under {data_dir}")
    root.mkdir(parents=True)
    for i in range(n):
        k = i * len(pool) // n if n < len(pool) else i % len(pool)
        shutil.copyfile(pool[k], root / f"img-{i:05d}.png")


def _shape(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def run_once(input_dir, output_dir, shard_size, *extra):
    """Wall seconds and peak RSS (MB) of one ``segflow run`` (call in a fresh process)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(input_dir),
                           str(output_dir), "--shard-size", str(shard_size), *extra],
                          cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"segflow run failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", type=int, nargs="+", default=[50, 1000],
                   help="numbers of images")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--size", type=int, default=256, help="edge of the images used")
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--huge", type=int, default=20480,
                   help="edge of the huge image assembled from the set (0: skip it)")
    p.add_argument("--huge-scale", type=float, default=0.25,
                   help="--scale of the huge run; the set's images are enlarged 1/scale times")
    args = p.parse_args(argv)
    if not (args.data_dir / "index.csv").is_file():
        print(f"dataset not found under {args.data_dir}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.counts):
            src = Path(tmp) / f"in-{n}"
            make_folder(src, n, args.data_dir, args.size)
            seconds, peak = _measure_fresh(src, Path(tmp) / f"out-{n}", args.shard_size)
            rows.append({"images": n, "seconds": round(seconds, 1),
                         "images/s": round(n / seconds, 2), "peak RSS MB": round(peak)})
        huge = _huge(Path(tmp), args) if args.huge and args.counts else None
    table = pd.DataFrame(rows).sort_values("images")
    print(table.to_string(index=False))
    if len(table) > 1:  # a growth needs two counts
        small, large = table["peak RSS MB"].iloc[0], table["peak RSS MB"].iloc[-1]
        print(f"\npeak RSS growth from {table['images'].iloc[0]} to {table['images'].iloc[-1]} "
              f"images: {100 * (large - small) / small:+.1f}%")
    if huge is not None:
        print("\n" + huge.to_string(index=False))
    return 0


def _huge(tmp, args):
    """One image of ``args.huge`` squared pixels: a mosaic of 256x256 fluorescence images of
    the set, each enlarged ``1 / huge_scale`` times, segmented at ``--scale huge_scale``."""
    from PIL import Image

    from segmodel.inference.blockwise import write_mosaic_tiff

    index = pd.read_csv(args.data_dir / "index.csv").sort_values("id")
    ids = index[(index.height == 256) & (index.width == 256)
                & (index.modality == "fluorescence")].id[:64]
    images = [np.asarray(Image.open(args.data_dir / "images" / f"{i}.png")) for i in ids]
    src, out = tmp / "huge-in", tmp / "huge-out"
    src.mkdir()
    t0 = time.perf_counter()
    write_mosaic_tiff(src / "slide.tif", images, (args.huge, args.huge),
                      magnify=round(1 / args.huge_scale), offset=128)
    built = time.perf_counter() - t0
    seconds, peak = _measure_fresh(src, out, args.shard_size,
                                   ("--scale", str(args.huge_scale)))
    row = pd.read_parquet(out / "images").iloc[0]
    import tifffile

    with tifffile.TiffFile(out / row["mask_path"]) as tif:
        page = tif.pages[0]
        tiled = f"{page.tilelength}x{page.tilewidth}" if page.is_tiled else "no"
        levels = len(tif.series[0].levels)
    mp = args.huge * args.huge / 1e6
    return pd.DataFrame([{"huge image": f"{args.huge}x{args.huge}", "megapixels": round(mp),
                          "--scale": args.huge_scale, "objects": int(row["n_objects"]),
                          "seconds": round(seconds, 1), "MP/s": round(mp / seconds, 2),
                          "peak RSS MB": round(peak), "label tiles": tiled,
                          "pyramid levels": levels, "input built s": round(built, 1)}])


def _measure_fresh(src, out, shard_size, extra=()):
    """Measure in a child Python so each N gets its own getrusage maximum."""
    code = ("import sys, resource; sys.path.insert(0, %r); from benchmarks.memory import "
            "run_once; s, m = run_once(%r, %r, %d, *%r); print(s, m)"
            % (str(REPO), str(src), str(out), shard_size, tuple(extra)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    seconds, peak = proc.stdout.split()[-2:]
    return float(seconds), float(peak)


if __name__ == "__main__":
    sys.exit(main())
