"""Cost of the output formats: seconds and files to write one image's mask and outlines.

Real annotated images of the shared DSB2018 set (their ground-truth instance labels) of three
sizes are written with each mask format to a local folder and to an S3 server on loopback (moto
in server mode), and their GeoJSON outlines traced. Times are medians over the images of a
size, per image, including encoding.

Usage::

    python benchmarks/export.py                 # 5 images of each size
    python benchmarks/export.py --per-size 10 --no-s3
"""

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmodel.storage import export
from segmodel.storage.io import Store
from segmodel.training.datasets import DEFAULT_DATA, list_samples

SIZES = [(256, 256), (520, 696), (1024, 1024)]


def pick(data_dir, per_size):
    """``{(H, W): [(image, labels)]}`` with up to ``per_size`` images of each size."""
    out = {s: [] for s in SIZES}
    for sample in list_samples(data_dir):
        image, labels = sample.load()
        if labels.shape in out and len(out[labels.shape]) < per_size:
            out[labels.shape].append((image[..., :3], labels))
        if all(len(v) == per_size for v in out.values()):
            break
    return out


def moto():
    """``(process, storage options)`` of a moto S3 server on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    opts = {"key": "x", "secret": "x",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}",
                              "region_name": "eu-west-1"}}
    return proc, opts


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def _trace(labels):
    return export.encode_geojson(export.outline_features(labels))


def measure(images, stores):
    rows = []
    for shape, pairs in images.items():
        for where, store in stores.items():
            for fmt in ("tif", "ome-zarr"):
                secs, files = [], []
                for i, (image, labels) in enumerate(pairs):
                    rel = f"labels/{uuid.uuid4().hex}.{'tif' if fmt == 'tif' else 'ome.zarr'}"
                    secs.append(timed(export.write_outputs, store, rel, labels, fmt,
                                      image=image, name=str(i)))
                    files.append(len(store.fs.find(store.path(rel))) if fmt != "tif" else 1)
                rows.append({"size": f"{shape[0]}x{shape[1]}", "storage": where,
                             "output": fmt, "ms/image": 1000 * np.median(secs),
                             "files/image": np.median(files)})
        secs = [timed(_trace, lab) for _, lab in pairs]
        n = np.median([int(lab.max()) for _, lab in pairs])
        rows.append({"size": f"{shape[0]}x{shape[1]}", "storage": "(trace only)",
                     "output": f"geojson ({n:.0f} objects)", "ms/image": 1000 * np.median(secs),
                     "files/image": 1})
    return pd.DataFrame(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--per-size", type=int, default=5)
    p.add_argument("--no-s3", action="store_true", help="local folder only")
    args = p.parse_args()
    images = pick(args.data_dir, args.per_size)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"local": Store(tmp)}
        if not args.no_s3:
            import s3fs

            proc, opts = moto()
            s3fs.S3FileSystem(**opts).mkdir("bench")
            stores["s3 (moto)"] = Store("s3://bench/out", opts)
        try:
            table = measure(images, stores)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
