"""Would thresholds per kind of background beat one set? Tune on the tune split, score both.

Images that normalisation inverts (nuclei dark on a light background: stained histology and
brightfield) and the others each get the threshold search of
:func:`segmodel.training.train.tune_thresholds` on their part of the tune split; the grouped and the
single settings are then scored on the tune and validation splits, per modality. The
validation split only scores: it chooses nothing.

Usage::

    python benchmarks/threshold_groups.py [MODEL.keras]    # default: the shipped model
"""

import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segmodel.evaluation.metrics import score_image
from segmodel.inference.passes import finish, prepare
from segmodel.inference.predict import predict_maps
from segmodel.inference.preprocess import Normalization, Tiling, estimate_normalization
from segmodel.model.loading import load_model
from segmodel.training import datasets
from segmodel.training.train import TUNING_GRID, TUNING_MIN_AREAS


def load_split(lm, split):
    spec = lm.spec
    samples = datasets.list_samples(split=split)
    loaded = [s.load() for s in samples]
    prepared = [prepare(im, spec) for im, _ in loaded]
    norm = Normalization(spec.p_low, spec.p_high, spec.invert)
    light = np.array([estimate_normalization(p.image, norm).invert for p in prepared])
    maps = predict_maps(lm.predict_batch, [p.x for p in prepared], tiling=Tiling())
    modality = np.array([s.modality for s in samples])
    return {"truth": [lab for _, lab in loaded], "prepared": prepared, "light": light,
            "maps": maps, "modality": modality}


def scores(data, spec, settings, idx):
    trial = replace(spec, postprocess=settings)
    return np.array([score_image(data["truth"][i], finish(data["maps"][i], data["prepared"][i],
                                                          trial))["ap"] for i in idx])


def tune(data, spec, idx):
    """The same two-step search as training's, on the images ``idx`` only."""
    best, best_score = None, -1.0
    for fg, marker, bw in itertools.product(*TUNING_GRID):
        s = replace(spec.postprocess, foreground=fg, marker=marker, boundary_weight=bw)
        if (v := scores(data, spec, s, idx).mean()) > best_score:
            best, best_score = s, v
    for min_area in TUNING_MIN_AREAS:
        s = replace(best, min_area=min_area)
        if (v := scores(data, spec, s, idx).mean()) > best_score:
            best, best_score = s, v
    return best


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    lm = load_model(argv[0] if argv else None)
    spec, t0 = lm.spec, time.perf_counter()
    tune_data, val_data = load_split(lm, "tune"), load_split(lm, "val")
    light = tune_data["light"]
    chosen = {True: tune(tune_data, spec, np.flatnonzero(light)),
              False: tune(tune_data, spec, np.flatnonzero(~light))}
    print(f"one set (shipped): {spec.postprocess}")
    print(f"light background ({light.sum()} tune images): {chosen[True]}")
    print(f"dark background ({(~light).sum()} tune images): {chosen[False]}")
    print(f"\n{'split':6} {'modality':13} {'images':>6} {'one set':>8} {'grouped':>8}")
    for name, data in (("tune", tune_data), ("val", val_data)):
        n = len(data["truth"])
        single = scores(data, spec, spec.postprocess, range(n))
        grouped = np.array([scores(data, spec, chosen[bool(data["light"][i])], [i])[0]
                            for i in range(n)])
        for mod in ["all", *sorted(set(data["modality"]))]:
            m = np.ones(n, bool) if mod == "all" else data["modality"] == mod
            print(f"{name:6} {mod:13} {m.sum():6d} {single[m].mean():8.3f} "
                  f"{grouped[m].mean():8.3f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
