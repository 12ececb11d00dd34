"""Accuracy of the segflow model and of the classical baseline on the fixed validation split.

Scores each validation image with the DSB2018 metric
(:func:`segmodel.evaluation.metrics.score_image`)
and prints, per modality and for all images, the mean AP over IoU 0.5:0.95, AP@0.5, AP@0.75
and the relative count error (mean of per-image ``|n_pred - n_true| / n_true``).

Usage::

    python benchmarks/accuracy.py                   # model + baseline, full val split
    python benchmarks/accuracy.py --scales auto,1   # automatic scale (the default) and scale 1
    python benchmarks/accuracy.py --tta             # also the model with flip averaging
    python benchmarks/accuracy.py --engines keras,openvino  # the same model on each engine
    python benchmarks/accuracy.py --skip-model      # baseline only
    python benchmarks/accuracy.py --limit 10 --out scores.csv

Each method also reports its wall time per image on this machine (model loading excluded).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmodel.evaluation.classical import segment_classical  # noqa: E402
from segmodel.evaluation.metrics import score_image  # noqa: E402
from segmodel.training.datasets import list_samples  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "dsb2018"
COLUMNS = {
    "ap": "mean AP 0.5:0.95",
    "ap50": "AP@0.5",
    "ap75": "AP@0.75",
    "count_error": "relative count error",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="dataset folder with index.csv, images/, labels/ "
                        f"(default: {DEFAULT_DATA})")
    p.add_argument("--model", type=Path, default=None,
                   help="a .keras model file (default: the bundled model)")
    p.add_argument("--limit", type=int, default=None, help="only the first N validation images")
    p.add_argument("--out", type=Path, default=None, help="also write per-image scores to this CSV")
    p.add_argument("--skip-model", action="store_true", help="score the classical baseline only")
    p.add_argument("--scales", default="auto",
                   help="comma-separated model scales to compare, e.g. auto,1 (default: auto, "
                        "the pipeline's default)")
    p.add_argument("--engines", default="auto",
                   help="comma-separated engines to run the model on, e.g. keras,openvino "
                        "(default: auto, the pipeline's default)")
    p.add_argument("--tta", action="store_true",
                   help="also score the model with test-time flips at the first scale")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1. Received: {args.limit}")
    return args


def load_val(data_dir, limit):
    """``(samples, images, labels)`` of the validation split (first ``limit`` samples)."""
    samples = list_samples(data_dir, "val")[:limit]
    loaded = [s.load() for s in samples]
    return samples, [im for im, _ in loaded], [lab for _, lab in loaded]


def model_method(scale, tta=False):
    """A predict function running the segflow model at ``scale`` (``"auto"`` or a float)."""
    from segmodel.api import segment_many

    def predict(images, model):
        return segment_many(images, model=model, scale=scale, tta=tta)

    return predict


def predict_classical(images, model=None):
    return [segment_classical(im) for im in images]


def run_method(name, predict, samples, images, labels, model=None):
    """Per-image score records of one method, and its wall time in seconds."""
    start = time.perf_counter()
    preds = predict(images, model)
    seconds = time.perf_counter() - start
    records = []
    for s, true, pred in zip(samples, labels, preds):
        if pred.shape != true.shape:
            raise ValueError(f"{name}: prediction for {s.id} has shape {pred.shape}, "
                             f"expected {true.shape}")
        records.append({"method": name, "id": s.id, "modality": s.modality,
                        "objects": len(np.unique(pred)) - (pred == 0).any(),
                        **score_image(true, pred)})
    return records, seconds


def model_methods(args):
    """``(name, predict, model)`` of each engine x scale (and +tta) asked for."""
    from segmodel.model.engines import resolve_engine
    from segmodel.model.loading import load_model

    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    scales = [s if s == "auto" else float(s) for s in scales]
    engines = [resolve_engine(e.strip()) for e in args.engines.split(",") if e.strip()]
    methods = []
    for engine in engines:
        model = load_model(args.model, engine=engine)  # once, outside the timings
        model_method(1.0, args.tta)(images_for_warmup(), model)  # one-time tracing, outside too
        model_method(1.0)(images_for_warmup(), model)
        tag = f" [{engine} {model.precision}]" if len(engines) > 1 else ""
        methods += [(f"segflow scale={s}{tag}", model_method(s), model) for s in scales]
        if args.tta:
            methods.append((f"segflow scale={scales[0]} +tta{tag}",
                            model_method(scales[0], True), model))
    return methods


def images_for_warmup():
    """One small image to trace the model on before the timings."""
    return [np.zeros((256, 256), np.uint8)]


def summarize(scores):
    """One row per (method, modality) plus (method, 'all')."""
    everything = scores.assign(modality="all")
    grouped = pd.concat([scores, everything]).groupby(["method", "modality"], sort=False)
    table = grouped[list(COLUMNS)].mean().round(3)
    table.insert(0, "images", grouped.size())
    return table.rename(columns=COLUMNS).reset_index()


def format_table(table):
    try:
        return table.to_markdown(index=False, floatfmt=".3f")
    except ImportError:  # tabulate is not installed
        return table.to_string(index=False, float_format="{:.3f}".format)


def main(argv=None):
    args = parse_args(argv)
    if not (args.data_dir / "index.csv").is_file():
        print(f"dataset not found: {str(args.data_dir)!r} has no index.csv. Pass --data-dir "
              "pointing at the DSB2018 folder (index.csv, images/, labels/).", file=sys.stderr)
        return 2
    samples, images, labels = load_val(args.data_dir, args.limit)
    print(f"{len(samples)} validation images from {args.data_dir}")
    methods = [] if args.skip_model else model_methods(args)
    methods.append(("classical", predict_classical, None))
    records, seconds_per_image = [], {}
    for name, predict, model in methods:
        recs, seconds = run_method(name, predict, samples, images, labels, model)
        records += recs
        seconds_per_image[name] = seconds / max(len(recs), 1)
        print(f"{name}: {seconds:.1f} s wall for {len(recs)} images "
              f"({seconds_per_image[name]:.2f} s/image)")
    scores = pd.DataFrame.from_records(records)
    table = summarize(scores)
    table["s/image"] = table["method"].map(seconds_per_image).round(2)
    table["objects"] = table.apply(lambda r: scores[(scores.method == r["method"]) & (
        (scores.modality == r["modality"]) | (r["modality"] == "all"))].objects.sum(), axis=1)
    print()
    print(format_table(table))
    if args.out is not None:
        scores.to_csv(args.out, index=False)
        print(f"\nper-image scores written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
