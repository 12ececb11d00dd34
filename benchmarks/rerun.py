"""What a rerun pays to find out what is already done, as the output grows.

Every run reads the current record of every image from the output's tables before it starts
(``segmodel.pipeline.outputs.reconcile``), reconciles them again at its end, and reads every image's
object count for the QC reference (``segmodel.pipeline.qc.flag_run_outliers``). The tables are one
Parquet part per shard and table, so an output of a million images in shards of 32 holds
about 31,000 images parts and as many failures parts. This benchmark writes outputs of N
images (shards of 32; the parts are the real tables' schemas, rows as a run writes them) and
times, on each store:

- ``one at a time``: each part read and decoded in turn with pandas (what segflow did
  before 2026-12-06);
- ``parts in chunks``: :func:`segmodel.pipeline.outputs.reconcile` on an output without its index
  (the first run after an upgrade): the parts are fetched in chunks, concurrently from object
  stores, decoded with pyarrow, only the columns it needs; it then writes the index;
- ``index + new shard``: ``reconcile`` again after one more shard was committed, as every
  later run does: the index and the new shard's parts;
- ``QC reference``: :func:`segmodel.pipeline.qc.flag_run_outliers` for that new shard (from the
index).

Stores: a local folder; S3 (moto's server on loopback); the same S3 behind a proxy that
delays every request by ``--latency`` seconds (20 ms by default, a request to a cloud bucket
from a machine in the same region takes about that or more). Rows are per image; "per 10^6
images" extrapolates linearly.

Usage::

    python benchmarks/rerun.py                        # 10,000 and 50,000 images (local)
    python benchmarks/rerun.py --counts 10000 --s3-count 5000 --save
"""

import argparse
import io
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "faults"))

from segmodel.pipeline import outputs, qc  # noqa: E402
from segmodel.storage.io import Store  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "rerun.txt"
SHARD = 32


def _parts(shard_index):
    """The parts of one committed shard (failures empty, no objects: the reads that matter are
    the images and failures parts)."""
    name = f"20261206T000000{shard_index:06d}Z-{shard_index:05d}"
    rows = [{"image_id": f"plate{shard_index:06d}/well{i:02d}.tif", "uri": "x", "height": 256,
             "width": 256, "n_objects": 20 + i, "mean_object_area": 100.0,
             "foreground_fraction": 0.1, "scale": 1.0, "model_name": "nuclei",
             "model_fingerprint": "f" * 16, "segflow_version": "0", "seconds": 0.1,
             "mask_path": f"labels/plate{shard_index:06d}/well{i:02d}.tif",
             "fingerprint": "1234-5678", "config_key": "c" * 16, "shard": name,
             "qc_flags": "", "pixel_size_um": float("nan")} for i in range(SHARD)]
    return name, {
        f"objects/{name}.parquet": outputs.encode_parquet(outputs.table("objects", [])),
        f"intensities/{name}.parquet": outputs.encode_parquet(outputs.table("intensities", [])),
        f"failures/{name}.parquet": outputs.encode_parquet(outputs.table("failures", [])),
        f"images/{name}.parquet": outputs.encode_parquet(outputs.table("images", rows))}


def build(store, n_images):
    """Write an output of ``n_images`` images in committed shards; return the shard names."""
    names, batch = [], {}
    for k in range(-(-n_images // SHARD)):
        name, files = _parts(k)
        names.append(name)
        batch.update(files)
        if len(batch) >= 600:
            store.write_many(batch)
            batch = {}
    if batch:
        store.write_many(batch)
    return names


def one_at_a_time(store):
    """The records of every image, each part read and decoded in turn (the former way)."""
    latest = {}
    cols = ["image_id", "fingerprint", "config_key"]
    for path in store.list("images", ".parquet"):
        shard = path.rsplit("/", 1)[-1][: -len(".parquet")]
        for name, status in (("images", "done"), ("failures", "failed")):
            data = store.read_bytes(store.path(name, f"{shard}.parquet"))
            part = pd.read_parquet(io.BytesIO(data),
                                   columns=cols + ["mask_path"] * (status == "done"))
            for image_id, fp, key, *_ in part.itertuples(index=False):
                latest[image_id] = (status, fp, key)
    return latest


def measure(label, store, n_images):
    t = time.perf_counter()
    names = build(store, n_images)
    built = time.perf_counter() - t
    timings = {}
    t = time.perf_counter()
    before = one_at_a_time(store)
    timings["one at a time s"] = time.perf_counter() - t
    t = time.perf_counter()
    first = outputs.reconcile(store)
    timings["parts in chunks s"] = time.perf_counter() - t
    assert first == before and len(first) == len(names) * SHARD, "the two reads disagree"
    name, files = _parts(len(names))  # a run's new shard
    store.write_many(files)
    t = time.perf_counter()
    again = outputs.reconcile(store)
    timings["index + new shard s"] = time.perf_counter() - t
    assert len(again) == len(first) + SHARD
    t = time.perf_counter()
    rows = qc.flag_run_outliers(store, [name])
    timings["QC reference s"] = time.perf_counter() - t
    assert len(rows) == SHARD
    scale = 1e6 / len(again)
    row = {"store": label, "images": len(again), "shards": len(names) + 1,
           **{k: round(v, 2) for k, v in timings.items()},
           "speed-up, index": round(timings["one at a time s"] / timings["index + new shard s"]),
           **{f"{k[:-2]} per 10^6 images s": round(v * scale)
              for k, v in timings.items()}}
    print(f"  {label}, {row['images']} images: written in {built:.0f} s; "
          + ", ".join(f"{k} {v}" for k, v in row.items() if k.endswith(" s")), flush=True)
    return row


def _s3_store(endpoint, bucket):
    options = {"key": "k", "secret": "s", "skip_instance_cache": True,
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}
    store = Store(f"s3://{bucket}/out", options)
    if not store.fs.exists(bucket):
        store.fs.mkdir(bucket)
    return store


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[10000, 50000],
                   help="images in the local outputs")
    p.add_argument("--s3-count", type=int, default=5000,
                   help="images in the S3 outputs (0: no S3)")
    p.add_argument("--latency", type=float, default=0.02,
                   help="seconds the proxy delays each S3 request")
    p.add_argument("--save", action="store_true", help=f"append the table to {RESULTS}")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.counts:
            rows.append(measure("local", Store(os.path.join(tmp, f"out{n}")), n))
    if args.s3_count:
        from export import moto  # benchmarks/export.py: a moto server on loopback
        from flaky_proxy import FlakyProxy

        proc, options = moto()
        endpoint = options["client_kwargs"]["endpoint_url"]
        try:
            rows.append(measure("S3 (loopback)", _s3_store(endpoint, "rerun"), args.s3_count))
            with FlakyProxy(endpoint, latency=args.latency) as proxy:
                label = f"S3 + {args.latency * 1000:.0f} ms a request"
                rows.append(measure(label, _s3_store(proxy.url, "rerun-far"), args.s3_count))
        finally:
            proc.terminate()
            proc.wait(10)
    table = pd.DataFrame(rows).set_index(["store", "images"]).T
    header = (f"# python benchmarks/rerun.py {' '.join(argv or sys.argv[1:])}  ({date.today()}, "
              f"{os.cpu_count()} CPU cores)")
    text = header + "\n" + table.to_string() + "\n"
    print(text)
    if args.save:
        with RESULTS.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
