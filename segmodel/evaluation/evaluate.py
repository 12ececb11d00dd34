"""Scoring predicted label masks against ground truth folders with the DSB2018 metric."""

import posixpath

import numpy as np
import pandas as pd

from segmodel.evaluation.metrics import score_image
from segmodel.inference.preprocess import decode_image
from segmodel.storage.io import Store, list_images

LABEL_PATTERNS = ("*.tif", "*.tiff", "*.png")


def _stem(image_id):
    return posixpath.splitext(image_id)[0]


def _read_labels(store, ref):
    image = decode_image(store.read_bytes(ref.path), name=ref.uri)
    if image.shape[-1] != 1:
        raise ValueError(f"{ref.uri}: a label image must have one channel. "
                         f"Received shape {image.shape}.")
    return image[..., 0].astype(np.int64)


def evaluate_folders(pred, truth, *, storage_options=None, groups=None, group_column=None):
    """Per-image scores of the label masks under ``pred`` against those under ``truth``.

    Files are paired by their path relative to each folder without the extension
    (``labels/a.tif`` under a segflow output pairs with ``a.png``); a truth image with no
    prediction is scored against an empty prediction and flagged ``missing``.

    Parameters
    ----------
    pred, truth : str
        Folders or fsspec URLs. A segflow OUTPUT folder may be given for ``pred``: its
        ``labels/`` subfolder is used.
    storage_options : dict, optional
        Passed to fsspec for both.
    groups : pandas.DataFrame, optional
        A table with an ``id`` (or ``image_id``) column matching the truth stems.
    group_column : str, optional
        The column of ``groups`` naming the group of each image (e.g. ``modality``).

    Returns
    -------
    scores : pandas.DataFrame
        One row per truth image: ``image_id``, ``group``, ``ap``, ``ap50``, ``ap75``,
        ``n_true``, ``n_pred``, ``count_error``, ``missing``.
    """
    pred_store = Store(pred, storage_options or {})
    if pred_store.exists("labels"):
        pred_store = Store(posixpath.join(pred.rstrip("/"), "labels"), storage_options or {})
    truth_store = Store(truth, storage_options or {})
    preds = {_stem(r.image_id): r for r in list_images(pred_store, LABEL_PATTERNS)}
    group_of = _group_map(groups, group_column)
    rows = []
    for ref in list_images(truth_store, LABEL_PATTERNS):
        stem = _stem(ref.image_id)
        true = _read_labels(truth_store, ref)
        missing = stem not in preds
        p = np.zeros_like(true) if missing else _read_labels(pred_store, preds[stem])
        if p.shape != true.shape:
            raise ValueError(f"{preds[stem].uri} has shape {p.shape} but its truth {ref.uri} "
                             f"has {true.shape}.")
        rows.append({"image_id": ref.image_id,
                     "group": group_of.get(stem, group_of.get(posixpath.basename(stem), "all")),
                     **score_image(true, p), "missing": missing})
    if not rows:
        raise FileNotFoundError(f"no label images (tif/png) under truth={truth!r}.")
    return pd.DataFrame(rows)


def _group_map(groups, group_column):
    if groups is None:
        return {}
    key = "id" if "id" in groups.columns else "image_id"
    if key not in groups.columns or group_column not in groups.columns:
        raise ValueError(f"groups must have an 'id' or 'image_id' column and {group_column!r}. "
                         f"Received columns: {list(groups.columns)}")
    return {_stem(str(k)): str(g) for k, g in zip(groups[key], groups[group_column])}


def summarize(scores):
    """Mean scores per group plus an ``all`` row.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per image with ``group``, ``ap``, ``ap50``, ``ap75`` and ``count_error``.

    Returns
    -------
    pandas.DataFrame
        Columns ``group``, ``images`` and the four mean scores, groups sorted; a single group
        gives the ``all`` row alone.
    """
    cols = ["ap", "ap50", "ap75", "count_error"]
    both = pd.concat([scores, scores.assign(group="all")]) if scores["group"].nunique() > 1 \
        else scores.assign(group="all")
    table = both.groupby("group", sort=True)[cols].mean()
    table.insert(0, "images", both.groupby("group").size())
    return table.reset_index()
