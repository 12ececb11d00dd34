"""Accuracy at other magnifications: the validation split rendered at 0.5x to 4x, segmented with
the default settings (automatic scale) and with ``--scale 1``.

Every validation image (fixed split, never trained or tuned on) is resampled by each factor
(:func:`segmodel.training.datasets.magnify`: area averaging to shrink, bicubic to enlarge; its
labels
by nearest neighbour) and segmented in chunks of images with tiles batched across them. Prints,
per factor, setting and modality: mean AP over IoU 0.5..0.95, AP@0.5, relative count error,
seconds per image and the scales chosen, then each factor's mean AP against the same images'
at factor 1 (the targets of README, "Automatic scale").

    python benchmarks/scale.py                                  # the full table (about an hour)
    python benchmarks/scale.py --factors 1,4 --limit 10         # a quick look
    python benchmarks/scale.py --out benchmarks/results/scale-per-image.csv
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmodel.evaluation.metrics import score_image  # noqa: E402
from segmodel.training.datasets import DEFAULT_DATA, list_samples, magnify  # noqa: E402

FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
SETTINGS = {"auto": "auto", "scale 1": 1.0}
#: Images per call to the engine (bounds memory at 4x: maps of a few 20-megapixel images).
CHUNK = 6


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--model", default=None, help="a .keras model or bundle (default: bundled)")
    p.add_argument("--factors", default=",".join(str(f) for f in FACTORS),
                   help="comma-separated magnifications (default: %(default)s)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma-separated settings: auto, 'scale 1' (default: both)")
    p.add_argument("--limit", type=int, default=None, help="only the first N validation images")
    p.add_argument("--out", type=Path, default=None, help="also write per-image rows to this CSV")
    args = p.parse_args(argv)
    args.factors = [float(f) for f in args.factors.split(",")]
    args.settings = [s.strip() for s in args.settings.split(",")]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        p.error(f"--settings takes {', '.join(SETTINGS)}. Received: {unknown}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1. Received: {args.limit}")
    return args


def score(samples, lm, factor, scale):
    """Per-image rows of one factor and one scale setting."""
    from segmodel.inference.heads import object_labels
    from segmodel.inference.passes import default_tiling, predict_labels, prepare

    tiling, rows = default_tiling(lm.spec), []
    for start in range(0, len(samples), CHUNK):
        chunk = [magnify(*s.load(), factor) for s in samples[start:start + CHUNK]]
        t0 = time.perf_counter()
        prepared = [prepare(im, lm.spec, scale) for im, _ in chunk]
        labels, prepared = predict_labels(lm, prepared, tiling, auto=scale == "auto")
        seconds = (time.perf_counter() - t0) / len(chunk)
        for s, (_, truth), lab, p in zip(samples[start:start + CHUNK], chunk, labels, prepared):
            est = p.estimate
            rows.append({"id": s.id, "modality": s.modality, "factor": factor,
                         "scale": float(p.scale), "seconds": seconds,
                         "diameter": est.diameter if est is not None else np.nan,
                         **score_image(truth, object_labels(lab, lm.spec))})
    return rows


def summary(df):
    """One row per factor, setting and modality (and all images)."""
    out = []
    for (factor, setting), part in df.groupby(["factor", "setting"], sort=True):
        for modality, rows in [("all", part)] + sorted(part.groupby("modality")):
            out.append({"factor": factor, "setting": setting, "modality": modality,
                        "images": len(rows), "mean AP": rows["ap"].mean(),
                        "AP@0.5": rows["ap50"].mean(), "count error": rows["count_error"].mean(),
                        "s/image": rows["seconds"].mean(),
                        "scale (median)": rows["scale"].median(),
                        "fallback": int(rows["diameter"].isna().sum())
                        if setting == "auto" else 0})
    return pd.DataFrame(out)


def ratios(df):
    """Each factor's mean AP over all images against the same setting's at factor 1."""
    if 1.0 not in set(df["factor"]):
        return None
    base = df[df["factor"] == 1.0].groupby("setting")["ap"].mean()
    table = df.groupby(["setting", "factor"])["ap"].mean().unstack("factor")
    return table.div(base, axis=0)


def main(argv=None):
    args = parse_args(argv)
    from segmodel.inference.passes import resolve_model

    lm = resolve_model(args.model)
    samples = list_samples(args.data_dir, "val")[:args.limit]
    rows = []
    for factor in args.factors:
        for setting in args.settings:
            t0 = time.perf_counter()
            part = score(samples, lm, factor, SETTINGS[setting])
            rows += [dict(r, setting=setting) for r in part]
            print(f"factor {factor}, {setting}: mean AP {np.mean([r['ap'] for r in part]):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if args.out:
                pd.DataFrame(rows).to_csv(args.out, index=False)
    df = pd.DataFrame(rows)
    print(f"\nmodel {lm.spec.name} ({lm.fingerprint[:12]}), {len(samples)} validation images\n")
    print(summary(df).to_markdown(index=False, floatfmt=".3f"))
    rel = ratios(df)
    if rel is not None:
        print("\nmean AP / the same setting's mean AP at factor 1:\n")
        print(rel.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
