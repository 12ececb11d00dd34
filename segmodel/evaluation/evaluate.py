"""Scoring predicted label masks against ground truth folders with the DSB2018 metric."""

import posixpath
from dataclasses import dataclass

import numpy as np
import pandas as pd

from segmodel.evaluation.metrics import score_image
from segmodel.inference.preprocess import decode_image
from segmodel.storage.io import Store, list_images

LABEL_PATTERNS = ("*.tif", "*.tiff", "*.png")

#: What ``found`` says of an image in the scores: it has a prediction and a label (scored), or
#: only one of them (counted, never scored).
FOUND = ("both", "prediction only", "label only")

#: What to pass instead of files that are not label masks, per argument.
_INSTEAD = {"pred": "a segflow OUTPUT or a folder of its label masks",
            "truth": "a folder of ground-truth label masks (e.g. DSB2018's labels/, not images/)"}


def _stem(image_id):
    return posixpath.splitext(image_id)[0]


@dataclass(frozen=True)
class Pairing:
    """The label images of a prediction folder and a truth folder, paired by stem.

    Attributes
    ----------
    pred, truth : Store
        The two folders (``pred`` is a segflow OUTPUT's ``labels/`` where it has one).
    both : tuple of (ImageRef, ImageRef)
        ``(prediction, label)`` of each image found in both, sorted by the label's id.
    pred_only, truth_only : tuple of ImageRef
        Images found on one side only.
    """

    pred: Store
    truth: Store
    both: tuple
    pred_only: tuple
    truth_only: tuple

    def counts(self):
        """``{"both": n, "pred_only": n, "truth_only": n}``."""
        return {"both": len(self.both), "pred_only": len(self.pred_only),
                "truth_only": len(self.truth_only)}


def pair_folders(pred, truth, *, storage_options=None):
    """Pair the label images under ``pred`` with those under ``truth`` by file name.

    Files pair by their path relative to each folder without the extension (``labels/a.tif``
    under a segflow output pairs with ``a.png``). Nothing is read but the two listings.

    Parameters
    ----------
    pred, truth : str
        Folders or fsspec URLs. A segflow OUTPUT folder may be given for ``pred``: its
        ``labels/`` subfolder is used.
    storage_options : dict, optional
        Passed to fsspec for both.

    Returns
    -------
    Pairing

    Raises
    ------
    FileNotFoundError
        No label image (tif/png) under ``pred`` or under ``truth``.
    """
    pred_store = Store(pred, storage_options or {})
    if pred_store.exists("labels"):
        pred_store = Store(posixpath.join(pred.rstrip("/"), "labels"), storage_options or {})
    truth_store = Store(truth, storage_options or {})
    preds = {_stem(r.image_id): r for r in list_images(pred_store, LABEL_PATTERNS)}
    truths = {_stem(r.image_id): r for r in list_images(truth_store, LABEL_PATTERNS)}
    for name, url, found in (("pred", pred, preds), ("truth", truth, truths)):
        if not found:
            raise FileNotFoundError(f"no label images (tif/png) under {name}={url!r}.")
    return Pairing(pred_store, truth_store,
                   both=tuple((preds[s], truths[s]) for s in sorted(truths.keys() & preds)),
                   pred_only=tuple(preds[s] for s in sorted(preds.keys() - truths.keys())),
                   truth_only=tuple(truths[s] for s in sorted(truths.keys() - preds.keys())))


def read_labels(store, ref, *, role):
    """A label mask as ``(H, W)`` int64, refusing files that are not label masks.

    A label mask is a one-channel image of whole numbers >= 0 (0 = background, one id per
    object): integer pixels, or real ones that all are whole numbers.

    Parameters
    ----------
    store : Store
        The folder holding the file.
    ref : ImageRef
        The file.
    role : {'pred', 'truth'}
        Which argument the folder was given as (named in the error, with what to pass instead).

    Returns
    -------
    labels : (H, W) ndarray of int64

    Raises
    ------
    ValueError
        An image with several channels (RGB, RGBA), fractional or negative values.
    """
    image = decode_image(store.read_bytes(ref.path), name=ref.uri)
    problem = None
    if image.shape[-1] != 1:
        kind = {3: "an RGB image", 4: "an RGBA image"}.get(image.shape[-1], "a color image")
        problem = f"{kind} (shape {image.shape})"
    elif np.issubdtype(image.dtype, np.floating) and not np.all(np.mod(image, 1) == 0):
        problem = f"an image of fractional values ({image.dtype} pixels)"
    elif image.size and image.min() < 0:
        problem = f"an image with negative values ({image.dtype} pixels)"
    if problem:
        raise ValueError(
            f"{role.upper()} holds {ref.uri}, {problem}: not a label mask (a 2-D integer image, "
            f"0 = background, one id per object). Pass {_INSTEAD[role]} as {role.upper()}.")
    return image[..., 0].astype(np.int64)


def evaluate_folders(pred, truth, *, storage_options=None, groups=None, group_column=None):
    """Per-image scores of the label masks under ``pred`` against those under ``truth``.

    Files are paired as :func:`pair_folders` does, and only the images found in both are
    scored; those found on one side only get a row with ``found`` saying which, and no scores.

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
        See :func:`score_pairing`.
    """
    return score_pairing(pair_folders(pred, truth, storage_options=storage_options),
                         groups=groups, group_column=group_column)


def score_pairing(pairing, *, groups=None, group_column=None):
    """Per-image scores of the images of ``pairing`` found in both folders.

    Parameters
    ----------
    pairing : Pairing
        From :func:`pair_folders`.
    groups : pandas.DataFrame, optional
        A table with an ``id`` (or ``image_id``) column matching the images' stems.
    group_column : str, optional
        The column of ``groups`` naming the group of each image (e.g. ``modality``).

    Returns
    -------
    scores : pandas.DataFrame
        One row per image of either folder: ``image_id``, ``group``, ``found`` (one of
        :data:`FOUND`), ``ap``, ``ap50``, ``ap75``, ``n_true``, ``n_pred``, ``count_error``;
        the scores and counts are missing (NaN) on the rows of images found on one side only.

    Raises
    ------
    ValueError
        A file that is not a label mask (see :func:`read_labels`), or a prediction whose shape
        differs from its label's.
    """
    group_of = _group_map(groups, group_column)

    def group(ref):
        stem = _stem(ref.image_id)
        return group_of.get(stem, group_of.get(posixpath.basename(stem), "all"))

    rows = []
    for p_ref, t_ref in pairing.both:
        true = read_labels(pairing.truth, t_ref, role="truth")
        p = read_labels(pairing.pred, p_ref, role="pred")
        if p.shape != true.shape:
            raise ValueError(f"{p_ref.uri} has shape {p.shape} but its truth {t_ref.uri} "
                             f"has {true.shape}.")
        rows.append({"image_id": t_ref.image_id, "group": group(t_ref), "found": FOUND[0],
                     **score_image(true, p)})
    rows += [{"image_id": r.image_id, "group": group(r), "found": found}
             for found, refs in ((FOUND[1], pairing.pred_only), (FOUND[2], pairing.truth_only))
             for r in refs]
    columns = ["image_id", "group", "found", "ap", "ap50", "ap75", "n_true", "n_pred",
               "count_error"]
    return pd.DataFrame(rows, columns=columns).astype({"n_true": "Int64", "n_pred": "Int64"})


def _group_map(groups, group_column):
    if groups is None:
        return {}
    key = "id" if "id" in groups.columns else "image_id"
    if key not in groups.columns or group_column not in groups.columns:
        raise ValueError(f"groups must have an 'id' or 'image_id' column and {group_column!r}. "
                         f"Received columns: {list(groups.columns)}")
    return {_stem(str(k)): str(g) for k, g in zip(groups[key], groups[group_column])}


def summarize(scores):
    """Mean scores per group over the images found in both folders, plus an ``all`` row.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per image with ``group``, ``ap``, ``ap50``, ``ap75``, ``count_error`` and
        optionally ``found`` (rows whose ``found`` is not ``"both"`` are counted, not scored).

    Returns
    -------
    pandas.DataFrame
        Columns ``group``, ``images`` (scored), the four mean scores, ``no_prediction`` and
        ``no_label`` (images found on one side only), groups sorted; a single group gives the
        ``all`` row alone.
    """
    cols = ["ap", "ap50", "ap75", "count_error"]
    if "found" not in scores.columns:
        scores = scores.assign(found=FOUND[0])
    both = pd.concat([scores, scores.assign(group="all")]) if scores["group"].nunique() > 1 \
        else scores.assign(group="all")
    scored = both[both["found"] == FOUND[0]]
    table = scored.groupby("group")[cols].mean().reindex(sorted(both["group"].unique()))
    table.insert(0, "images", scored.groupby("group").size())
    for column, found in (("no_prediction", FOUND[2]), ("no_label", FOUND[1])):
        table[column] = (both["found"] == found).groupby(both["group"]).sum()
    table.index.name = "group"
    return table.fillna({"images": 0}).astype({"images": int}).reset_index()
