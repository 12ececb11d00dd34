"""Turning a model's output maps into masks, by the spec's output kind.

- ``instances``: foreground/boundary/distance maps -> instance labels by marker-controlled
  watershed (:func:`segmodel.inference.postprocess.labels_from_maps`).
- ``binary``: one sigmoid foreground map -> instance labels, by connected components or, with
  ``split: watershed``, by a watershed on the foreground's distance transform that splits
  touching objects.
- ``semantic``: softmax over C classes -> a class map (``uint8``, ``uint16`` past 256 classes,
  values 0..C-1). Its objects are the connected components of the spec's ``object_class``
  (none when it is ""), and :func:`class_rows` gives the per-class table.

Connected components use 4-connectivity throughout, so the objects of a semantic image are
``scipy.ndimage.label(mask == k)`` of its written class map (minus those under ``min_area``).
"""

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from segmodel.inference.postprocess import _drop_small, labels_from_maps
from segmodel.model.bundle import n_outputs

CLASS_SCHEMA = {"image_id": "string", "class_index": "int64", "class": "string",
                "pixels": "int64", "fraction": "float64", "components": "int64"}

__all__ = ["CLASS_SCHEMA", "binary_labels", "class_map", "class_rows", "mask_from_maps",
           "n_outputs", "object_labels"]


def mask_from_maps(maps, spec):
    """The mask of one image from its maps, by the spec's output kind.

    Parameters
    ----------
    maps : (H, W, K) ndarray
        The model's maps, ``K`` = :func:`n_outputs` of ``spec``.
    spec : ModelSpec
        Its ``kind``, ``split`` and ``postprocess`` are used.

    Returns
    -------
    (H, W) ndarray
        Instance labels (int32) for ``instances`` and ``binary`` models, the class map
        (:func:`class_map`) for ``semantic`` ones.

    Raises
    ------
    ValueError
        If ``maps`` is not 3-D with ``n_outputs(spec)`` channels.
    """
    if maps.ndim != 3 or maps.shape[-1] != n_outputs(spec):
        raise ValueError(f"a {spec.kind} model's maps must have shape (H, W, "
                         f"{n_outputs(spec)}). Received: shape={maps.shape}")
    if spec.kind == "binary":
        return binary_labels(maps[..., 0], spec)
    if spec.kind == "semantic":
        return class_map(maps)
    return labels_from_maps(maps, spec.postprocess)


def binary_labels(foreground, spec):
    """Instance labels from a foreground probability map (threshold ``postprocess.foreground``).

    ``split: components``: each 4-connected foreground region is an object. ``split:
    watershed``: markers are the local maxima of the foreground's distance transform at least
    ``object_diameter / 4`` pixels apart (3 without an object size), flooded over the negated
    distance; regions without a marker keep their own label. Objects under ``min_area`` go.

    Parameters
    ----------
    foreground : (H, W) array_like
        Foreground probabilities.
    spec : ModelSpec
        Its ``split``, ``object_diameter`` and ``postprocess`` are used.

    Returns
    -------
    (H, W) ndarray of int
        0 is background.
    """
    settings = spec.postprocess
    fg = np.asarray(foreground) > settings.foreground
    if spec.split == "watershed" and fg.any():
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        dist = ndi.distance_transform_edt(fg)
        regions, _ = ndi.label(fg)
        spacing = max(2, round(spec.object_diameter / 4)) if spec.object_diameter else 3
        peaks = peak_local_max(dist, min_distance=spacing, labels=regions, exclude_border=False)
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-dist, markers, mask=fg) if len(peaks) else markers
        orphans, n_orphans = ndi.label(fg & (labels == 0))
        if n_orphans:
            labels = np.where(orphans > 0, orphans + labels.max(), labels)
    else:
        labels, _ = ndi.label(fg)
    return _drop_small(labels, settings.min_area)


def class_map(maps):
    """Per-pixel argmax over the class channels: ``uint8`` (``uint16`` past 256 classes).

    Parameters
    ----------
    maps : (H, W, C) ndarray
        Class scores.

    Returns
    -------
    (H, W) ndarray of uint8 or uint16
        Values 0..C-1.
    """
    dtype = np.uint8 if maps.shape[-1] <= 256 else np.uint16
    return np.argmax(maps, axis=-1).astype(dtype)


def object_labels(mask, spec):
    """Instance labels of a mask.

    The mask itself, or for a semantic model the 4-connected components of its
    ``object_class`` (objects under ``min_area`` dropped; all zeros without one).

    Parameters
    ----------
    mask : (H, W) ndarray of int
        From :func:`mask_from_maps`.
    spec : ModelSpec
        The model's spec.

    Returns
    -------
    (H, W) ndarray of int
    """
    if spec.kind != "semantic":
        return mask
    if not spec.object_class:
        return np.zeros(mask.shape, np.int32)
    labels, _ = ndi.label(mask == spec.classes.index(spec.object_class))
    return _drop_small(labels, spec.postprocess.min_area)


def class_rows(mask, spec, image_id=""):
    """The per-class table of one class map: one row per class of the spec, in class order.

    ``pixels`` and ``fraction`` of the image in that class (fractions sum to 1), and
    ``components``, its number of 4-connected regions (all of them, whatever their size).

    Parameters
    ----------
    mask : (H, W) array_like of int
        A class map (:func:`class_map`).
    spec : ModelSpec
        Its ``classes`` name the rows.
    image_id : str, optional
        The ``image_id`` column's value (default ``""``).

    Returns
    -------
    pandas.DataFrame
        Columns and dtypes of :data:`CLASS_SCHEMA`.
    """
    mask = np.asarray(mask)
    counts = np.bincount(mask.ravel(), minlength=len(spec.classes))[: len(spec.classes)]
    total = max(mask.size, 1)
    rows = []
    for k, name in enumerate(spec.classes):
        n_comp = ndi.label(mask == k)[1] if counts[k] else 0
        rows.append({"image_id": image_id, "class_index": k, "class": name,
                     "pixels": int(counts[k]), "fraction": counts[k] / total,
                     "components": int(n_comp)})
    return pd.DataFrame(rows, columns=list(CLASS_SCHEMA)).astype(CLASS_SCHEMA)
