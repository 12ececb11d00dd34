"""The DSB2018 instance segmentation metric."""

import numpy as np

#: IoU thresholds of the DSB2018 metric: 0.50, 0.55, ..., 0.95.
THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def iou_matrix(true, pred):
    """IoU between every true object (rows) and every predicted object (columns).

    Parameters
    ----------
    true, pred : (H, W) ndarray of int
        Label images of the same shape, 0 = background.

    Returns
    -------
    iou : (n_true, n_pred) ndarray of float
    """
    if true.shape != pred.shape:
        raise ValueError(
            f"true and pred must have the same shape. Received: {true.shape} and {pred.shape}"
        )
    t_ids, t = np.unique(true, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    inter = np.bincount(t * len(p_ids) + p, minlength=len(t_ids) * len(p_ids)).reshape(
        len(t_ids), len(p_ids)
    )
    area_t, area_p = inter.sum(1), inter.sum(0)
    union = area_t[:, None] + area_p[None, :] - inter
    iou = inter / np.maximum(union, 1)
    rows = t_ids != 0
    cols = p_ids != 0
    return iou[np.ix_(rows, cols)]


def average_precision(true, pred, thresholds=THRESHOLDS):
    """DSB2018 precision ``TP / (TP + FP + FN)`` at each IoU threshold, for one image.

    A true and a predicted object match when their IoU exceeds the threshold (each object
    matches at most one other since IoU > 0.5 is unique). Two empty images score 1.

    Parameters
    ----------
    true, pred : (H, W) int ndarray
        Ground-truth and predicted instance labels (0 = background).
    thresholds : sequence of float, optional
        IoU thresholds, each >= 0.5 (default 0.5 to 0.95 in steps of 0.05).

    Returns
    -------
    ap : (len(thresholds),) ndarray

    Raises
    ------
    ValueError
        A threshold below 0.5, or none.
    """
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.size == 0 or thresholds.min() < 0.5:
        raise ValueError(
            "thresholds must be IoU values >= 0.5 (below that an object can match two). "
            f"Received: thresholds={thresholds.tolist()}"
        )
    iou = iou_matrix(true, pred)
    n_true, n_pred = iou.shape
    out = np.empty(len(thresholds))
    for i, t in enumerate(thresholds):
        if n_true == 0 and n_pred == 0:
            out[i] = 1.0
            continue
        tp = int((iou > t).sum())
        out[i] = tp / (n_true + n_pred - tp)
    return out


def score_image(true, pred):
    """Per-image record: mean AP over IoU 0.5..0.95, AP@0.5, AP@0.75, counts.

    ``count_error`` is ``|n_pred - n_true| / n_true``, and ``n_pred`` when there is no true
    object (so an empty image with false detections still counts against the method).

    Parameters
    ----------
    true, pred : (H, W) ndarray of int
        Ground-truth and predicted instance labels, 0 = background.

    Returns
    -------
    dict
        Keys ``ap``, ``ap50``, ``ap75``, ``n_true``, ``n_pred``, ``count_error``.
    """
    ap = dict(zip(THRESHOLDS.tolist(), average_precision(true, pred)))
    n_true = int(len(np.unique(true[true > 0])))
    n_pred = int(len(np.unique(pred[pred > 0])))
    return {
        "ap": float(np.mean(list(ap.values()))),
        "ap50": float(ap[0.5]),
        "ap75": float(ap[0.75]),
        "n_true": n_true,
        "n_pred": n_pred,
        "count_error": abs(n_pred - n_true) / max(n_true, 1),
    }
