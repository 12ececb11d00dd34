"""Check that two segflow outputs hold the same results: tables, masks and outlines.

    python benchmarks/same_outputs.py OUT_A OUT_B

Compares the objects, intensities, images, failures (and classes) tables row for row, sorted by
image and label, leaving out the columns that differ between any two runs (``seconds``,
``shard``, ``finished_at``); every label mask pixel for pixel (TIFF, PNG, OME-Zarr); every
GeoJSON outline file. Prints one line per check and exits 1 on any difference.
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmodel.pipeline.outputs import read_table
from segmodel.storage import export
from segmodel.storage.io import Store

VOLATILE = {"seconds", "shard"}
KEYS = {"objects": ["image_id", "label"], "intensities": ["image_id", "label", "channel"],
        "images": ["image_id"], "failures": ["image_id"], "classes": ["image_id", "class"]}


def _table(out, name):
    try:
        df = read_table(str(out), name)
    except FileNotFoundError:
        return None
    df = df.drop(columns=[c for c in df.columns if c in VOLATILE])
    keys = [k for k in KEYS[name] if k in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


def _mask(out, relpath):
    if relpath.endswith(".ome.zarr"):
        return np.asarray(export.read_labels(Store(str(out)), relpath))
    import tifffile
    from PIL import Image

    path = out / relpath
    return tifffile.imread(path) if relpath.endswith(".tif") else np.asarray(Image.open(path))


def compare(a, b):
    """``[(check, ok, detail)]`` for outputs ``a`` and ``b``."""
    checks = []
    for name in KEYS:
        ta, tb = _table(a, name), _table(b, name)
        if ta is None or tb is None:
            checks.append((f"table {name}", ta is None and tb is None, "missing in one"))
            continue
        try:
            pd.testing.assert_frame_equal(ta, tb, check_exact=True)
            checks.append((f"table {name}", True, f"{len(ta)} rows"))
        except AssertionError as exc:
            checks.append((f"table {name}", False, str(exc).splitlines()[0]))
    images = _table(a, "images")
    diff = [p for p in images["mask_path"] if not np.array_equal(_mask(a, p), _mask(b, p))]
    checks.append(("masks", not diff, f"{len(images)} compared, {len(diff)} differ {diff[:3]}"))
    outlines_a = sorted(p.relative_to(a) for p in a.glob("outlines/**/*.geojson"))
    outlines_b = sorted(p.relative_to(b) for p in b.glob("outlines/**/*.geojson"))
    same = outlines_a == outlines_b and all(
        json.loads((a / p).read_text()) == json.loads((b / p).read_text()) for p in outlines_a)
    checks.append(("outlines", same, f"{len(outlines_a)} files"))
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=pathlib.Path)
    parser.add_argument("b", type=pathlib.Path)
    args = parser.parse_args()
    checks = compare(args.a, args.b)
    for check, ok, detail in checks:
        print(f"{'same' if ok else 'DIFFERENT':9} {check:16} {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
