"""Scoring folders of hand-made and real (DSB2018) label pairs with known answers."""

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from segmodel.evaluation.evaluate import evaluate_folders, pair_folders, summarize


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
    assert scores.loc["nopred.png", "found"] == "label only"
    assert np.isnan(scores.loc["nopred.png", "ap"])  # counted apart, not scored as 0
    assert scores.loc["perfect.png", "found"] == "both"


def test_groups_from_a_csv(pair):
    groups = pd.DataFrame({"id": ["perfect", "missed", "split", "empty", "nopred"],
                           "modality": ["a", "a", "b", "b", "b"]})
    table = summarize(evaluate_folders(str(pair[0]), str(pair[1]), groups=groups,
                                       group_column="modality")).set_index("group")
    assert table.loc["a", "images"] == 2 and table.loc["a", "ap"] == pytest.approx(0.875)
    assert table.loc["all", "images"] == 4 and table.loc["all", "no_prediction"] == 1
    assert table.loc["b", "images"] == 2 and table.loc["b", "no_prediction"] == 1
    assert table.loc["b", "ap"] == pytest.approx((0.2 + 1.0) / 2)  # nopred is not a zero


def _dsb_ids(dsb2018, n):
    return sorted(p.stem for p in (dsb2018 / "labels").glob("*.png"))[:n]


@pytest.fixture
def dsb_folders(dsb2018, tmp_path):
    """TRUTH: six real DSB2018 label masks; PRED: a segflow-like OUTPUT whose labels/ holds
    four of them (as TIFFs, a perfect prediction) and one image TRUTH has not."""
    ids = _dsb_ids(dsb2018, 7)
    truth, pred = tmp_path / "truth", tmp_path / "out" / "labels"
    truth.mkdir()
    pred.mkdir(parents=True)
    for i in ids[:6]:
        shutil.copy(dsb2018 / "labels" / f"{i}.png", truth)
    for i in ids[:4] + ids[6:]:
        tifffile.imwrite(pred / f"{i}.tif", np.asarray(Image.open(dsb2018 / "labels" /
                                                                   f"{i}.png")))
    return tmp_path / "out", truth, ids


def test_real_labels_are_paired_and_the_unmatched_counted_apart(dsb_folders):
    out, truth, ids = dsb_folders
    pairing = pair_folders(str(out), str(truth))
    assert pairing.counts() == {"both": 4, "pred_only": 1, "truth_only": 2}
    assert [t.image_id for _, t in pairing.both] == [f"{i}.png" for i in ids[:4]]
    assert [r.image_id for r in pairing.pred_only] == [f"{ids[6]}.tif"]
    scores = evaluate_folders(str(out), str(truth)).set_index("image_id")
    assert scores["found"].value_counts().to_dict() == \
        {"both": 4, "label only": 2, "prediction only": 1}
    matched = scores[scores["found"] == "both"]
    assert (matched["ap"] == 1.0).all() and (matched["n_true"] == matched["n_pred"]).all()
    assert scores.loc[f"{ids[4]}.png", ["ap", "n_true"]].isna().all()
    row = summarize(scores.reset_index()).set_index("group").loc["all"]
    # over the matched images only: the two without a prediction are not zeros (0.667)
    assert row["ap"] == 1.0 and row["images"] == 4
    assert (row["no_prediction"], row["no_label"]) == (2, 1)


def test_images_given_as_labels_are_named_with_what_to_pass(dsb2018, tmp_path):
    ids = _dsb_ids(dsb2018, 2)
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in ids:
        shutil.copy(dsb2018 / "labels" / f"{i}.png", pred)
    with pytest.raises(ValueError, match=r"^TRUTH holds .*\.png, an RGBA image \(shape "
                                         r"\(\d+, \d+, 4\)\): not a label mask .* Pass a folder "
                                         r"of ground-truth label masks .*labels/"):
        evaluate_folders(str(pred), str(dsb2018 / "images"))


@pytest.mark.parametrize("image, problem", [
    (np.full((16, 16), 0.5, np.float32), "an image of fractional values (float32 pixels)"),
    (np.full((16, 16), -3, np.int16), "an image with negative values (int16 pixels)")],
    ids=["float", "negative"])
def test_a_prediction_that_is_not_a_label_mask_is_named(pair, image, problem):
    tifffile.imwrite(pair[0] / "labels" / "perfect.tif", image)
    with pytest.raises(ValueError, match=r"^PRED holds .*perfect\.tif, " + problem.replace(
            "(", r"\(").replace(")", r"\)") + r": not a label mask .* segflow OUTPUT"):
        evaluate_folders(str(pair[0]), str(pair[1]))


def test_whole_valued_real_labels_are_scored(pair):
    labels = np.asarray(Image.open(pair[1] / "perfect.png"))
    tifffile.imwrite(pair[0] / "labels" / "perfect.tif", labels.astype(np.float32))
    scores = evaluate_folders(str(pair[0]), str(pair[1])).set_index("image_id")
    assert scores.loc["perfect.png", "ap"] == 1.0
