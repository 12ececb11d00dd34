"""Scoring folders of hand-made label pairs with known answers."""

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from segmodel.evaluation.evaluate import evaluate_folders, summarize


def _square(labels, value, y, x, size=10):
    labels[y : y + size, x : x + size] = value


@pytest.fixture
def pair(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "out" / "labels"
    truth.mkdir()
    pred.mkdir(parents=True)
    t = np.zeros((64, 64), np.uint16)
    for i, (y, x) in enumerate([(2, 2), (2, 30), (30, 2), (30, 30)], start=1):
        _square(t, i, y, x)
    Image.fromarray(t).save(truth / "perfect.png")
    tifffile.imwrite(pred / "perfect.tif", t)
    missed = t.copy()
    missed[missed == 4] = 0  # one of four nuclei missed
    Image.fromarray(t).save(truth / "missed.png")
    tifffile.imwrite(pred / "missed.tif", missed)
    split = np.zeros((64, 64), np.uint16)
    _square(split, 1, 10, 10, 20)
    s = split.copy()
    s[10:30, 24:30] = 2  # 14/20 of the nucleus keeps label 1: IoU 0.7
    Image.fromarray(split).save(truth / "split.png")
    tifffile.imwrite(pred / "split.tif", s)
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(truth / "empty.png")
    tifffile.imwrite(pred / "empty.tif", np.zeros((8, 8), np.uint16))
    Image.fromarray(t).save(truth / "nopred.png")
    return tmp_path / "out", truth


def test_known_answers(pair):
    scores = evaluate_folders(str(pair[0]), str(pair[1])).set_index("image_id")
    assert scores.loc["perfect.png", "ap"] == 1.0
    assert scores.loc["empty.png", "ap"] == 1.0
    assert scores.loc["missed.png", "ap"] == pytest.approx(0.75)
    # the split nucleus: IoU 0.7 matches at 0.50..0.65 (TP 1, FP 1: 1/2), nothing above
    assert scores.loc["split.png", "ap"] == pytest.approx(4 * 0.5 / 10)
    assert scores.loc["nopred.png", "missing"] and scores.loc["nopred.png", "ap"] == 0.0


def test_groups_from_a_csv(pair):
    groups = pd.DataFrame({"id": ["perfect", "missed", "split", "empty", "nopred"],
                           "modality": ["a", "a", "b", "b", "b"]})
    table = summarize(evaluate_folders(str(pair[0]), str(pair[1]), groups=groups,
                                       group_column="modality")).set_index("group")
    assert table.loc["a", "images"] == 2 and table.loc["a", "ap"] == pytest.approx(0.875)
    assert table.loc["all", "images"] == 5
