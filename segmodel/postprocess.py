"""Turning the model's maps into instance labels (marker-controlled watershed)."""

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from segmodel.model import PostprocessSettings


def labels_from_maps(maps, settings=PostprocessSettings()):
    """Instance labels from ``(H, W, 3)`` foreground/boundary/distance maps.

    Markers are the connected regions where ``distance - boundary_weight * boundary`` exceeds
    ``settings.marker`` inside the foreground, of ``min_marker_area`` pixels or more; the
    watershed of ``-distance`` floods from them within the foreground mask. Foreground
    components that hold no marker keep their own label (small nuclei are never dropped for
    lack of a marker); objects under ``min_area`` pixels go, and so do those whose mean
    foreground probability is under ``min_mean_foreground``.

    Parameters
    ----------
    maps : (H, W, 3) ndarray
        Model output, ordered as :data:`segmodel.model.OUTPUTS`.
    settings : PostprocessSettings, optional

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 is background; objects are numbered 1..N in raster order of their first pixel.
    """
    if maps.ndim != 3 or maps.shape[-1] != 3:
        raise ValueError(f"maps must have shape (H, W, 3). Received: shape={maps.shape}")
    prob, dist = maps[..., 0], maps[..., 2]
    fg = prob > settings.foreground
    score = dist - settings.boundary_weight * maps[..., 1]
    markers, n = ndi.label((score > settings.marker) & fg)
    if settings.min_marker_area > 1 and n:
        markers, n = _sieve(markers, np.bincount(markers.ravel()) >= settings.min_marker_area)
    labels = _flood(fg, dist, markers, n)
    if settings.min_mean_foreground <= 0:
        return _drop_small(labels, settings.min_area)
    areas, sums = _per_label(labels, prob)
    keep = areas >= max(settings.min_area, 1)
    keep &= sums / np.maximum(areas, 1) >= settings.min_mean_foreground
    return _sieve(labels, keep)[0]


def _per_label(labels, values, pixels=1 << 20):
    """Pixel count and sum of ``values`` of every label, a band of about ``pixels`` pixels at a
    time (the float64 weights ``bincount`` makes stay small for a block of a huge image)."""
    n = int(labels.max()) + 1
    areas, sums = np.zeros(n, np.int64), np.zeros(n)
    rows = max(1, pixels // max(labels.shape[1], 1))
    for r in range(0, labels.shape[0], rows):
        band = labels[r : r + rows].ravel()
        areas += np.bincount(band, minlength=n)
        sums += np.bincount(band, values[r : r + rows].ravel(), minlength=n)
    return areas, sums


def _flood(fg, dist, markers, n):
    """The watershed of ``-dist`` from ``markers`` (``n`` of them) within ``fg``, then each
    marker-less foreground component numbered after the markers, in raster order.

    The flooding never crosses the background, so only the foreground components that hold
    two markers or more need it: a component with one marker is all that marker's, one with
    none is an orphan. One watershed over those components alone (in their bounding box)
    gives the whole-image watershed's labels at the cost of the touching nuclei (pixels of
    exactly equal value may be taken in another order, as in any heap: on the 208 images of
    the throughput benchmark, as the bundled model maps them, every label was the same).
    """
    components, n_comp = ndi.label(fg)  # 4-connected, as the watershed floods
    labels = np.zeros(fg.shape, np.int32)
    if not n_comp:
        return labels
    # the component of each marker (every marker lies inside the foreground)
    at = np.flatnonzero(markers)
    comp_of = np.zeros(n + 1, np.int64)
    comp_of[markers.ravel()[at]] = components.ravel()[at]
    per_comp = np.bincount(comp_of[1:], minlength=n_comp + 1)
    lut = np.zeros(n_comp + 1, np.int32)
    alone = per_comp[comp_of[1:]] == 1  # markers alone in their component
    lut[comp_of[1:][alone]] = np.flatnonzero(alone) + 1
    orphan = np.flatnonzero(per_comp[1:] == 0) + 1
    lut[orphan] = n + 1 + np.arange(len(orphan), dtype=np.int32)
    shared = per_comp >= 2
    shared[0] = False
    mask = shared[components] if shared.any() else None
    # the component numbers become labels in place (one image-sized array less: block-wise
    # huge images are segmented in blocks of tens of megapixels)
    labels = np.take(lut, components, out=components, mode="clip")
    if mask is not None:  # one watershed over the components that hold several markers
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        mask = mask[box]
        flooded = watershed(-dist[box], np.where(mask, markers[box], 0), mask=mask)
        labels[box][mask] = flooded[mask]
    return labels


def _drop_small(labels, min_area):
    """Remove objects under ``min_area`` pixels and number the rest 1..N, keeping their order
    (one lookup-table pass: what ``relabel_sequential`` does, without its hashing)."""
    labels = labels.astype(np.int32, copy=False)
    if labels.max() == 0:
        return labels
    return _sieve(labels, np.bincount(labels.ravel()) >= max(min_area, 1))[0]


def _sieve(labels, keep):
    """``labels`` with only the labels ``l`` where ``keep[l]``, numbered 1..N in their order,
    and N (``keep`` indexed by label; its entry for 0 is ignored)."""
    keep = np.asarray(keep, bool).copy()
    keep[0] = False
    n = int(keep.sum())
    if n == len(keep) - 1:
        return labels, n
    lut = np.zeros(len(keep), np.int32)
    lut[keep] = np.arange(1, n + 1, dtype=np.int32)
    return lut[labels], n
