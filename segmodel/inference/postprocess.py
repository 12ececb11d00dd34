"""Turning the model's maps into instance labels (marker-controlled watershed)."""

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from segmodel.model.spec import PostprocessSettings


def labels_from_maps(maps, settings=PostprocessSettings()):
    """Instance labels from ``(H, W, 3)`` foreground/boundary/distance maps.

    Markers are the connected regions where ``distance - boundary_weight * boundary`` exceeds
    ``settings.marker`` inside the foreground, of ``min_marker_area`` pixels or more, each split
    where a higher level of the same score breaks it into large parts (``split_step``,
    ``split_fraction``: see :func:`split_markers`); the watershed of ``-distance`` floods from
    them within the foreground mask. Foreground components that hold no marker keep their own
    label (small nuclei are never dropped for lack of a marker); objects under ``min_area``
    pixels go, and so do those whose mean foreground probability is under
    ``min_mean_foreground``.

    Parameters
    ----------
    maps : (H, W, 3) ndarray
        Model output, ordered as :data:`segmodel.model.spec.OUTPUTS`.
    settings : PostprocessSettings, optional
        Thresholds (default ``PostprocessSettings()``).

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 is background; objects are numbered 1..N in raster order of their first pixel.

    Raises
    ------
    ValueError
        If ``maps`` is not ``(H, W, 3)``.
    """
    if maps.ndim != 3 or maps.shape[-1] != 3:
        raise ValueError(f"maps must have shape (H, W, 3). Received: shape={maps.shape}")
    prob, dist = maps[..., 0], maps[..., 2]
    fg = prob > settings.foreground
    score = dist - settings.boundary_weight * maps[..., 1]
    markers, n = ndi.label((score > settings.marker) & fg)
    if settings.min_marker_area > 1 and n:
        markers, n = _sieve(markers, np.bincount(markers.ravel()) >= settings.min_marker_area)
    markers, n = split_markers(score, markers, n, settings)  # as they are when splitting is off
    labels = _flood(fg, dist, markers, n)
    if settings.min_mean_foreground <= 0:
        return _drop_small(labels, settings.min_area)
    areas, sums = _per_label(labels, prob)
    keep = areas >= max(settings.min_area, 1)
    keep &= sums / np.maximum(areas, 1) >= settings.min_mean_foreground
    return _sieve(labels, keep)[0]


def split_markers(score, markers, n, settings):
    """Split markers that a higher level of ``score`` breaks into large parts.

    A marker is where ``score`` exceeds ``settings.marker``; two touching nuclei whose saddle
    stays above that level share one, and the watershed then makes one object of both. From
    ``marker + split_step`` upwards in steps of ``split_step``, the regions of each marker
    above the level are found; where a marker holds two or more of at least
    ``split_fraction`` of its pixels (and ``min_marker_area``), those parts replace it (its
    other pixels are left to the flooding). Parts relative to the marker's own size, so the
    specks of a textured large nucleus do not split it while two peaks of similar size do.

    Only the markers' own pixels are looked at (as flat lists), and each level labels the
    bounding box of those above it.

    Parameters
    ----------
    score : (H, W) float ndarray
        The marker score (:func:`labels_from_maps`).
    markers : (H, W) int ndarray
        Markers numbered 1..``n``.
    n : int
        The number of markers.
    settings : segmodel.model.spec.PostprocessSettings
        ``marker``, ``split_step``, ``split_fraction`` and ``min_marker_area`` are used.

    Returns
    -------
    markers : (H, W) int32 ndarray
        The new markers, numbered 1..N in raster order of their first pixel, as
        :func:`scipy.ndimage.label` numbers the markers it is given.
    n : int
        N.
    """
    step = settings.split_step
    if step <= 0 or not n:
        return markers, n
    smallest = max(settings.min_marker_area, 1)
    # the marker pixels as flat lists (raster order): every level looks only at these
    at = np.flatnonzero(markers)
    values, owner = score.ravel()[at], markers.ravel()[at]
    width, changed = markers.shape[1], False
    level = settings.marker + step
    while len(values) and level < values.max():
        above = np.flatnonzero(values > level)
        if len(above) < 2 * smallest:
            break
        keep, owner = _split_level(at[above], above, owner, width,
                                   smallest, settings.split_fraction)
        if keep is not None:
            at, values, owner = at[keep], values[keep], owner[keep]
            changed = True
        level += step
    if not changed:
        return markers, n
    return _renumber(markers.shape, at, owner)


def _split_level(at_above, above, owner, width, smallest, fraction):
    """One level of :func:`split_markers`: ``(pixels kept, new owners)``, or ``(None, owner)``.

    ``at_above`` are the flat indices of the marker pixels above the level (``above`` their
    positions in ``owner``). The large parts of split markers become markers, numbered after the
    others; the rest of a split marker's pixels are left to the flooding.
    """
    parts, m = _components(at_above, width)
    area = np.bincount(parts, minlength=m + 1)
    parent = np.zeros(m + 1, np.int64)
    parent[parts] = owner[above]
    marker_area = np.bincount(owner, minlength=int(owner.max()) + 1)
    large = area >= np.maximum(smallest, fraction * marker_area[parent])
    large[0] = False
    split = np.bincount(parent[large], minlength=len(marker_area)) >= 2
    split[0] = False
    if not split.any():
        return None, owner
    new = np.flatnonzero(large & split[parent])
    number = np.zeros(m + 1, np.int64)
    number[new] = len(marker_area) + np.arange(len(new))
    renamed = number[parts]
    keep = ~split[owner]
    keep[above] |= renamed > 0
    owner = owner.copy()
    owner[above] = np.where(renamed > 0, renamed, owner[above])
    return keep, owner


def _renumber(shape, at, owner):
    """``(markers, N)`` of ``shape`` from flat pixel indices and their owners.

    ``at`` is in raster order; the markers are numbered 1..N in raster order of their first pixel.
    """
    ids, first = np.unique(owner, return_index=True)
    lut = np.zeros(int(ids[-1]) + 1, np.int32)
    lut[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1, dtype=np.int32)
    out = np.zeros(shape, np.int32)
    out.ravel()[at] = lut[owner]
    return out, len(ids)


def _components(flat, width):
    """Connected components (4-connected) of the pixels at flat indices ``flat``.

    Of an image ``width`` wide: the component number of each pixel and their count, from one
    labelling of the pixels' bounding box.
    """
    y, x = np.divmod(flat, width)
    y0, x0 = y.min(), x.min()
    box = np.zeros((int(y.max() - y0) + 1, int(x.max() - x0) + 1), bool)
    box[y - y0, x - x0] = True
    labels, m = ndi.label(box)
    return labels[y - y0, x - x0], m


def _per_label(labels, values, pixels=1 << 20):
    """Pixel count and sum of ``values`` of every label, a band at a time.

    Pixel count and sum of ``values`` of every label, a band of about ``pixels`` pixels at a time
    (the float64 weights ``bincount`` makes stay small for a block of a huge image).
    """
    n = int(labels.max()) + 1
    areas, sums = np.zeros(n, np.int64), np.zeros(n)
    rows = max(1, pixels // max(labels.shape[1], 1))
    for r in range(0, labels.shape[0], rows):
        band = labels[r : r + rows].ravel()
        areas += np.bincount(band, minlength=n)
        sums += np.bincount(band, values[r : r + rows].ravel(), minlength=n)
    return areas, sums


def _flood(fg, dist, markers, n):
    """The watershed of ``-dist`` from ``markers`` within ``fg``.

    The watershed of ``-dist`` from ``markers`` (``n`` of them) within ``fg``, then each marker-less
    foreground component numbered after the markers, in raster order.

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
    """Remove objects under ``min_area`` pixels and number the rest 1..N, keeping their order.

    Remove objects under ``min_area`` pixels and number the rest 1..N, keeping their order (one
    lookup-table pass: what ``relabel_sequential`` does, without its hashing).
    """
    labels = labels.astype(np.int32, copy=False)
    if labels.max() == 0:
        return labels
    return _sieve(labels, np.bincount(labels.ravel()) >= max(min_area, 1))[0]


def _sieve(labels, keep):
    """Keep the labels ``l`` where ``keep[l]``, numbered 1..N in their order.

    ``labels`` with only the labels ``l`` where ``keep[l]``, numbered 1..N in their order, and N
    (``keep`` indexed by label; its entry for 0 is ignored).
    """
    keep = np.asarray(keep, bool).copy()
    keep[0] = False
    n = int(keep.sum())
    if n == len(keep) - 1:
        return labels, n
    lut = np.zeros(len(keep), np.int32)
    lut[keep] = np.arange(1, n + 1, dtype=np.int32)
    return lut[labels], n
