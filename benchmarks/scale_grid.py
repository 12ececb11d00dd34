"""Per-image scores of the model at a grid of scales, for choosing the automatic-scale rules.

Segments every image of a split (default: tune; never the validation split) at each scale of
``--scales`` and writes, per image and scale: objects found, their median diameter (pixels of
the image's own resolution), mean AP, AP@0.5 and count error against the hand labels. An image
magnified by ``f`` and segmented at scale ``s`` is, up to resampling, the image segmented at
scale ``f * s``, so this one table answers "what would the pyramid levels of a magnified image
measure" and "what would it score at the scale a rule picks" (see benchmarks/scale.py).

    python benchmarks/scale_grid.py --out benchmarks/results/scale-grid-tune.csv
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
from segmodel.training.datasets import DEFAULT_DATA, list_samples  # noqa: E402

SCALES = (0.0625, 0.09375, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", default="tune", choices=["tune", "train"])
    p.add_argument("--scales", default=",".join(map(str, SCALES)))
    p.add_argument("--model", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from segmodel.inference.autoscale import median_diameter
    from segmodel.inference.heads import object_labels
    from segmodel.inference.passes import default_tiling, finish_at, prepare, rescale, resolve_model
    from segmodel.inference.predict import predict_maps

    lm = resolve_model(args.model)
    tiling = default_tiling(lm.spec)
    samples = list_samples(args.data_dir, args.split)
    loaded = [s.load() for s in samples]
    base = [prepare(im, lm.spec, 1.0) for im, _ in loaded]
    rows = []
    for scale in [float(s) for s in args.scales.split(",")]:
        t0 = time.perf_counter()
        xs = [rescale(p, scale).x for p in base]
        maps = predict_maps(lm.predict_batch, xs, tiling=tiling)
        for s, (_, truth), x, m in zip(samples, loaded, xs, maps):
            pred = object_labels(finish_at(m, truth.shape, scale, lm.spec), lm.spec)
            level = object_labels(finish_at(m, x.shape[:2], 1.0, lm.spec), lm.spec)
            d_true, d, d_level = map(median_diameter, (truth, pred, level))
            n_level = len(np.unique(level[level > 0]))
            rows.append({"id": s.id, "modality": s.modality, "scale": scale,
                         "true_diameter": d_true, "diameter": d, "level_diameter": d_level,
                         "level_n": n_level, **score_image(truth, pred)})
        print(f"scale {scale}: {time.perf_counter() - t0:.1f} s", flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
