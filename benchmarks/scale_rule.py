"""Choosing the automatic-scale rule on the tune split (never the validation split).

Reads the table of ``benchmarks/scale_grid.py`` (every tune image segmented at scales 1/16 to 3)
and replays, for each candidate rule, what automatic scale would do to the tune split rendered
at 0.5x to 4x: an image magnified by ``f`` and seen at pyramid level ``l`` is, up to resampling,
the image at scale ``f * l``, so the level's measurement is read off the table, the rule picks a
scale ``s``, and the image's score is the table's at ``f * s`` (interpolated in log scale).
Prints the best rules by mean AP over the factors (mean AP at each factor, its ratio to
factor 1, count error, and the model passes per image at factor 1); then the best of those
that keep factor 1 within :data:`TOLERANCE` of scale 1's mean AP (images at their own
magnification must not pay for the others) in at most :data:`MAX_PASSES` model passes per image
at factor 1: the rule shipped; then the rule in use beside scale 1.

    python benchmarks/scale_rule.py benchmarks/results/scale-grid-tune.csv
"""

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segmodel.inference import autoscale  # noqa: E402
from segmodel.model.spec import ModelSpec  # noqa: E402

FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
#: Mean AP differences within this are noise on 58 images (as in threshold tuning).
TOLERANCE = 0.003
#: Model passes per image at factor 1 (pixels relative to one pass at the image's size).
MAX_PASSES = 1.3
CANDIDATES = {
    "levels": [(0.25, 1.0), (0.25, 0.5, 1.0), (0.5, 1.0), (1.0,)],
    "min_level_diameter": [8.0, 10.0, 12.0, 16.0],
    "min_objects": [2, 3, 5],
    "low": [8.0, 10.0, 12.0],
    "high": [40.0, 50.0, 60.0],
    "margin": [1.0, 1.15, 1.3, 1.5],
}


class Grid:
    """The grid table as arrays (images x scales) with lookups by scale."""

    def __init__(self, df):
        self.scales = np.array(sorted(df["scale"].unique()))
        self.ids = sorted(df["id"].unique())
        self.cols = {c: df.pivot(index="id", columns="scale", values=c)
                     .loc[self.ids, self.scales].to_numpy()
                     for c in ("ap", "count_error", "level_diameter", "level_n")}

    def nearest(self, scale):
        return int(np.argmin(np.abs(np.log(self.scales) - np.log(scale))))

    def at(self, col, k, scale):
        """Image ``k``'s ``col`` at ``scale``, interpolated in log scale."""
        x = np.log(np.clip(scale, self.scales[0], self.scales[-1]))
        return float(np.interp(x, np.log(self.scales), self.cols[col][k]))


def replay(grid, rule, spec, factor):
    """``(mean AP, mean count error, model passes per image)`` of ``rule`` at ``factor``."""
    aps, errors, passes = [], [], []
    for k in range(len(grid.ids)):
        diameter, level, cost = None, 1.0, 0.0
        # as segmodel.inference.passes._estimate, from the table's level columns
        for lv in rule.levels:
            j = grid.nearest(factor * lv)
            cost += lv * lv
            diameter = autoscale.trusted_diameter(
                grid.cols["level_diameter"][k, j], grid.cols["level_n"][k, j], lv, rule,
                last=lv == rule.levels[-1])
            if diameter is not None:
                level = lv
                break
        scale = autoscale.choose_scale(diameter, spec, rule)
        if scale != 1.0 or level != 1.0:
            cost += scale * scale
        aps.append(grid.at("ap", k, factor * scale))
        errors.append(grid.at("count_error", k, factor * scale))
        passes.append(cost)
    return float(np.mean(aps)), float(np.mean(errors)), float(np.mean(passes))


def evaluate(grid, rule, spec):
    per = {f: replay(grid, rule, spec, f) for f in FACTORS}
    return {"mean AP over factors": np.mean([v[0] for v in per.values()]),
            **{f"AP {f:g}x": v[0] for f, v in per.items()},
            **{f"ratio {f:g}x": v[0] / per[1.0][0] for f, v in per.items() if f != 1.0},
            "count error (worst)": max(v[1] for v in per.values()),
            "passes at 1x": per[1.0][2]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("grid", type=Path, help="the CSV written by benchmarks/scale_grid.py")
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args(argv)
    grid = Grid(pd.read_csv(args.grid))
    rows = []
    for values in itertools.product(*CANDIDATES.values()):
        c = dict(zip(CANDIDATES, values))
        rule = autoscale.AutoScale(levels=c["levels"], min_level_diameter=c["min_level_diameter"],
                                   min_objects=c["min_objects"], margin=c["margin"])
        spec = ModelSpec(object_diameter=18.0, object_diameter_range=(c["low"], c["high"]))
        rows.append({**c, **evaluate(grid, rule, spec)})
    table = pd.DataFrame(rows).sort_values("mean AP over factors", ascending=False)
    print(f"{len(grid.ids)} tune images, {len(rows)} rules; best by mean AP over the factors:\n")
    print(table.head(args.top).to_markdown(index=False, floatfmt=".3f"))
    shipped = ModelSpec.from_dict({**ModelSpec().to_dict(), **_shipped_sizes()})
    now = evaluate(grid, autoscale.DEFAULT, shipped)
    fixed = evaluate(grid, replace(autoscale.DEFAULT, levels=(1.0,)),
                     replace(shipped, object_diameter=0.0))
    kept = table[(table["AP 1x"] >= fixed["AP 1x"] - TOLERANCE)
                 & (table["passes at 1x"] <= MAX_PASSES)]
    print(f"\nthe best that keep factor 1 within {TOLERANCE} of scale 1 ({fixed['AP 1x']:.3f}) "
          f"in at most {MAX_PASSES} passes:\n")
    print(kept.head(args.top).to_markdown(index=False, floatfmt=".3f"))
    print(f"\nthe rule in use ({autoscale.DEFAULT}, working range "
          f"{shipped.object_diameter_range}) and scale 1 for every image:\n")
    print(pd.DataFrame([{"rule": "in use", **now}, {"rule": "scale 1", **fixed}])
          .to_markdown(index=False, floatfmt=".3f"))


def _shipped_sizes():
    import json

    spec = json.loads((REPO / "segmodel" / "weights" / "nuclei.json").read_text())
    return {k: spec[k] for k in ("object_diameter", "object_diameter_range")}


if __name__ == "__main__":
    main()
