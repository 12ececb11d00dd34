"""The DSB2018 metric on hand-made label images with answers worked out by hand.

The metric at IoU threshold ``t`` is ``TP / (TP + FP + FN)``, where a true and a predicted
object match when their IoU is strictly above ``t``; thresholds are 0.50, 0.55, ..., 0.95.
"""

import numpy as np
import pytest

from segmodel.evaluation.metrics import THRESHOLDS, average_precision, iou_matrix, score_image


def squares(shape, boxes):
    """Label image with object ``i + 1`` filling ``boxes[i] = (y0, y1, x0, x1)``."""
    labels = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        labels[y0:y1, x0:x1] = i + 1
    return labels


FOUR = [(2, 12, 2, 12), (2, 12, 20, 30), (20, 30, 2, 12), (20, 30, 20, 30)]


def test_thresholds_are_the_ten_dsb2018_levels():
    np.testing.assert_allclose(THRESHOLDS, np.arange(10) * 0.05 + 0.5)


def test_perfect_match_scores_one_at_every_threshold():
    true = squares((40, 40), FOUR)
    np.testing.assert_array_equal(average_precision(true, true.copy()), np.ones(10))


def test_perfect_match_ignores_label_numbering():
    true = squares((40, 40), FOUR)
    pred = np.where(true > 0, 10 * (5 - true), 0)  # ids 40, 30, 20, 10
    np.testing.assert_array_equal(average_precision(true, pred), np.ones(10))


def test_nucleus_split_into_equal_halves_matches_nothing():
    # True: one 10x10 nucleus (100 px). Pred: two 10x5 halves (50 px each).
    # IoU of each half = 50 / 100 = 0.5, not above any threshold (0.5 is not > 0.5), so
    # TP = 0, FP = 2, FN = 1 and the score is 0 / 3 = 0 at every threshold.
    true = squares((20, 20), [(5, 15, 5, 15)])
    pred = squares((20, 20), [(5, 15, 5, 10), (5, 15, 10, 15)])
    np.testing.assert_allclose(iou_matrix(true, pred), [[0.5, 0.5]])
    np.testing.assert_array_equal(average_precision(true, pred), np.zeros(10))


def test_nucleus_split_two_thirds_one_third_matches_the_bigger_part_up_to_its_iou():
    # True: one 10x12 nucleus (120 px). Pred: a 10x8 part (80 px) and a 10x4 part (40 px).
    # IoU(big) = 80 / 120 = 0.667, IoU(small) = 40 / 120 = 0.333.
    # t in {0.50, 0.55, 0.60, 0.65}: TP = 1, FP = 1, FN = 0 -> 1 / 2 = 0.5.
    # t in {0.70, ..., 0.95} (6 levels): TP = 0, FP = 2, FN = 1 -> 0 / 3 = 0.
    # Mean over the 10 thresholds: 4 * 0.5 / 10 = 0.2.
    true = squares((20, 20), [(5, 15, 4, 16)])
    pred = squares((20, 20), [(5, 15, 4, 12), (5, 15, 12, 16)])
    ap = average_precision(true, pred)
    np.testing.assert_allclose(ap, [0.5] * 4 + [0.0] * 6)
    record = score_image(true, pred)
    assert record["ap"] == pytest.approx(0.2)
    assert record["ap50"] == pytest.approx(0.5)
    assert record["ap75"] == 0.0
    assert (record["n_true"], record["n_pred"]) == (1, 2)
    assert record["count_error"] == pytest.approx(1.0)


def test_one_missed_nucleus_out_of_four_scores_three_quarters_everywhere():
    # TP = 3, FP = 0, FN = 1 -> 3 / 4 at every threshold.
    true = squares((40, 40), FOUR)
    pred = squares((40, 40), FOUR[:3])
    np.testing.assert_allclose(average_precision(true, pred), np.full(10, 0.75))
    record = score_image(true, pred)
    assert record["ap"] == pytest.approx(0.75)
    assert record["count_error"] == pytest.approx(0.25)


def test_empty_truth_and_empty_prediction_score_one():
    empty = np.zeros((16, 16), np.int32)
    np.testing.assert_array_equal(average_precision(empty, empty), np.ones(10))
    assert score_image(empty, empty)["ap"] == 1.0


def test_prediction_on_empty_truth_scores_zero():
    # TP = 0, FP = 1, FN = 0 -> 0 / 1.
    empty = np.zeros((16, 16), np.int32)
    pred = squares((16, 16), [(4, 10, 4, 10)])
    np.testing.assert_array_equal(average_precision(empty, pred), np.zeros(10))
    assert score_image(empty, pred)["ap"] == 0.0


def test_empty_prediction_on_nonempty_truth_scores_zero():
    true = squares((16, 16), [(4, 10, 4, 10)])
    np.testing.assert_array_equal(average_precision(true, np.zeros_like(true)), np.zeros(10))


@pytest.mark.parametrize("fn", [iou_matrix, average_precision, score_image])
def test_shape_mismatch_raises_value_error_naming_both_shapes(fn):
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        fn(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))


def test_shifted_square_counts_as_a_hit_only_below_its_iou():
    # True: 10x10 square (100 px). Pred: the same square shifted right by 1 pixel.
    # Intersection 10 x 9 = 90, union 100 + 100 - 90 = 110, IoU = 90 / 110 = 0.818.
    # Hit (score 1) at t in {0.50, ..., 0.80} (7 levels), miss (score 0) at 0.85, 0.90, 0.95.
    true = squares((20, 20), [(5, 15, 5, 15)])
    pred = squares((20, 20), [(5, 15, 6, 16)])
    iou = 90 / 110
    assert iou_matrix(true, pred)[0, 0] == pytest.approx(iou)
    ap = average_precision(true, pred)
    np.testing.assert_array_equal(ap, (THRESHOLDS < iou).astype(float))
    assert int((THRESHOLDS < iou).sum()) == 7
    assert score_image(true, pred)["ap"] == pytest.approx(0.7)
    assert score_image(true, pred)["ap75"] == 1.0


def test_iou_matrix_has_true_rows_and_predicted_columns_without_background():
    true = squares((40, 40), FOUR)
    pred = squares((40, 40), FOUR[:3])
    iou = iou_matrix(true, pred)
    assert iou.shape == (4, 3)
    np.testing.assert_array_equal(iou, np.eye(4, 3))
