"""Per-object measurements with fixed schemas (the empty image gives zero rows).

Two tables: :func:`measure_objects` gives one row per object (shape and position, the same
columns for every image), :func:`measure_intensities` one row per object and channel (so images
with different channels share one schema too).
"""

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

_PROPS = {  # regionprops name -> our column name(s)
    "label": ["label"],
    "area": ["area"],
    "centroid": ["centroid_y", "centroid_x"],
    "bbox": ["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"],
    "equivalent_diameter_area": ["equivalent_diameter"],
    "perimeter": ["perimeter"],
    "eccentricity": ["eccentricity"],
    "solidity": ["solidity"],
    "orientation": ["orientation"],
    "axis_major_length": ["major_axis_length"],
    "axis_minor_length": ["minor_axis_length"],
}

#: Column -> dtype of the objects table (``image_id`` first).
OBJECT_SCHEMA = {"image_id": "string", "label": "int64", "area": "float64"}
OBJECT_SCHEMA.update({c: "float64" for cols in _PROPS.values() for c in cols
                      if c not in OBJECT_SCHEMA})
OBJECT_SCHEMA.update({c: "int64" for c in _PROPS["bbox"]})
#: Area in square micrometres where the image gives its pixel size, else NaN (see
#: :func:`with_area_um2`).
OBJECT_SCHEMA["area_um2"] = "float64"

#: Column -> dtype of the intensities table: one row per object and channel, raw values.
INTENSITY_SCHEMA = {"image_id": "string", "label": "int64", "channel": "int64",
                    "channel_name": "string", "mean": "float64", "min": "float64",
                    "max": "float64"}


def measure_objects(labels, image_id="", groups=None):
    """One row per object of ``labels`` with shape and position measurements.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    image_id : str, optional
        Stored in the ``image_id`` column (default ``""``).
    groups : ObjectPixels, optional
        The object pixels of ``labels``, when the caller has grouped them already.

    Returns
    -------
    pandas.DataFrame
        Columns and dtypes of :data:`OBJECT_SCHEMA`; zero rows when there are no objects.

    Raises
    ------
    ValueError
        If ``labels`` is not 2-D.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W). Received: labels {labels.shape}")
    if labels.max() == 0:
        return empty_objects()
    groups = groups if groups is not None else ObjectPixels(labels)
    ids = groups.ids
    table = {"label": ids, "area": groups.count.astype(np.float64)}
    table["centroid-0"], table["centroid-1"] = groups.mean(groups.y), groups.mean(groups.x)
    slices = ndi.find_objects(labels)
    for i, (axis, end) in enumerate([(0, "start"), (1, "start"), (0, "stop"), (1, "stop")]):
        table[f"bbox-{i}"] = np.array([getattr(slices[k - 1][axis], end) for k in ids], np.int64)
    table["equivalent_diameter_area"] = np.sqrt(4 * table["area"] / np.pi)
    table["perimeter"] = _perimeters(labels, ids)
    table["solidity"] = table["area"] / convex_areas(labels, groups)[1]
    table.update(_moment_props(groups))
    columns = {"image_id": pd.array([image_id] * len(ids), dtype="string")}
    for prop, names in _PROPS.items():
        keys = [prop] if len(names) == 1 else [f"{prop}-{i}" for i in range(len(names))]
        columns.update({name: np.asarray(table[key], OBJECT_SCHEMA[name])
                        for name, key in zip(names, keys)})
    columns["area_um2"] = np.full(len(ids), np.nan)
    return pd.DataFrame(columns, copy=False)  # every column has its schema dtype already


class ObjectPixels:
    """The pixels of every object of ``labels``, sorted by label once.

    So each per-object statistic (shape and every channel's intensities) is one vectorised
    reduction
    (regionprops loops over objects in Python, which was most of the measuring time).
    Definitions and values are regionprops'.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.

    Attributes
    ----------
    ids, starts, count : ndarray
        The labels present (sorted), each one's first index in :attr:`pixels`, and its area.
    pixels : ndarray of int
        Flat indices of the object pixels, by label, then in raster order.
    label, y, x : ndarray of int
        Each of those pixels' label, row and column.
    """

    def __init__(self, labels):
        flat = labels.ravel()
        fg = np.flatnonzero(flat)
        # a stable sort keeps each object's pixels in raster order: by row, then column
        self.pixels = fg[np.argsort(flat[fg], kind="stable")]
        self.label = flat[self.pixels]
        self.ids, self.starts, self.count = np.unique(
            self.label, return_index=True, return_counts=True)
        self.y, self.x = np.divmod(self.pixels, labels.shape[1])

    def intensity(self, channel):
        """``(mean, min, max)`` per object of one ``(H, W)`` channel.

        Parameters
        ----------
        channel : (H, W) ndarray
            One channel of the image measured.

        Returns
        -------
        mean, min, max : ndarray of float64
            One value per object, in the order of :attr:`ids`.
        """
        values = channel.ravel()[self.pixels].astype(np.float64)
        if not len(self.ids):
            return values, values, values
        return (self.reduce(np.add, values) / self.count, self.reduce(np.minimum, values),
                self.reduce(np.maximum, values))

    def reduce(self, ufunc, values):
        """``ufunc`` reduced over each object's run of ``values``.

        Parameters
        ----------
        ufunc : numpy.ufunc
            E.g. ``np.add``, ``np.minimum``.
        values : ndarray
            One value per object pixel, in the order of :attr:`pixels`.

        Returns
        -------
        ndarray
            One value per object.
        """
        return ufunc.reduceat(values, self.starts)

    def mean(self, values):
        """Per-object mean of ``values`` (one per pixel, in sorted order), as float64.

        Parameters
        ----------
        values : ndarray
            One value per object pixel, in the order of :attr:`pixels`.

        Returns
        -------
        ndarray of float64
            One value per object.
        """
        return self.reduce(np.add, values.astype(np.float64)) / self.count


#: skimage's perimeter weights, indexed by 1 (a border pixel) + 2 x its 4-neighbours and
#: 10 x its diagonal neighbours that are border pixels of the same object.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2


def _perimeters(labels, ids):
    """Perimeter of every object, computed for all objects in one pass.

    Perimeter of every object ``ids`` as ``skimage.measure.perimeter`` (4-connected border) gives it
    for the object alone, computed for all objects in one pass.
    """
    lab = np.pad(labels, 1)
    h, w = lab.shape
    centre = lab[1:-1, 1:-1]
    inner = centre > 0
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        inner &= lab[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] == centre
    border = np.zeros(lab.shape, bool)
    border[1:-1, 1:-1] = (centre > 0) & ~inner
    flat, at = lab.ravel(), np.flatnonzero(border)  # only border pixels are looked at again
    own, code = flat[at], np.ones(len(at), np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                nb = at + dy * w + dx
                code += (border.ravel()[nb] & (flat[nb] == own)) * (2 if 0 in (dy, dx) else 10)
    sums = np.bincount(own, weights=_PERIMETER_WEIGHTS[code], minlength=int(labels.max()) + 1)
    return sums[ids]


def _minorant(obj, row, v):
    """Vertices of each object's greatest convex minorant.

    Of the points ``(row, v)`` (sorted by object, then row): points on or above the chord of their
    neighbours are dropped until none is left (each such point is off the minorant, so dropping them
    together is safe).
    """
    while len(v) > 2:
        yp, yi, yn = row[:-2], row[1:-1], row[2:]
        vp, vi, vn = v[:-2], v[1:-1], v[2:]
        inner = (obj[:-2] == obj[1:-1]) & (obj[2:] == obj[1:-1])
        drop = inner & (vi * (yn - yp) >= vp * (yn - yp) + (vn - vp) * (yi - yp))
        if not drop.any():
            break
        keep = np.r_[True, ~drop, True]
        obj, row, v = obj[keep], row[keep], v[keep]
    return obj, row, v


def _evaluate(vertices, obj, row, height):
    """The piecewise-linear function through ``vertices`` at each ``(obj, row)``."""
    vobj, vrow, v = vertices
    vkey = vobj * height + vrow
    q = obj * height + row
    k = np.searchsorted(vkey, q, side="right") - 1
    k1 = np.minimum(k + 1, len(vkey) - 1)
    span = np.where(vkey[k1] > vkey[k], vkey[k1] - vkey[k], 1)
    return np.where(vkey[k] == q, v[k], v[k] + (v[k1] - v[k]) * (q - vkey[k]) / span)


def convex_areas(labels, groups=None):
    """Pixels in each object's convex hull, for every object at once.

    Counted as ``regionprops``' ``area_convex`` counts them (hull of the pixels' edge
    midpoints, border pixels included). The hull is the hull of the pixel centres widened by a
    diamond of radius 1/2, so its left edge on row ``y`` is
    ``min(L(y) - 1/2, L(y - 1/2), L(y + 1/2))`` with ``L`` the convex minorant of the rows'
    leftmost pixels (linear between rows), and likewise on the right.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels with at least one object.
    groups : ObjectPixels, optional
        The object pixels of ``labels``, when already made.

    Returns
    -------
    ids : ndarray of int
        The labels present, sorted.
    areas : ndarray of float64
        Their convex hull areas in pixels.
    """
    groups = groups if groups is not None else ObjectPixels(labels)
    height = labels.shape[0]
    key = groups.label.astype(np.int64) * height + groups.y  # sorted: object, row, column
    x = groups.x.astype(np.int64)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    obj, row = np.divmod(key[starts], height)
    left = _minorant(obj, row, x[starts])
    right = _minorant(obj, row, -x[np.r_[starts[1:], len(key)] - 1])
    # every row from each object's top to its bottom (rows without pixels included)
    ids, first, n = np.unique(obj, return_index=True, return_counts=True)
    top, bottom = row[first], row[first + n - 1]
    nrows = bottom - top + 1
    robj = np.repeat(ids, nrows)
    offset = np.arange(nrows.sum()) - np.repeat(np.cumsum(nrows) - nrows, nrows)
    rrow = np.repeat(top, nrows) + offset
    is_top, is_bottom = offset == 0, rrow == np.repeat(bottom, nrows)

    def edge(vertices, sign):
        f = _evaluate(vertices, robj, rrow, height).astype(np.float64)
        up = np.where(is_top, np.inf, (f + np.roll(f, 1)) / 2)
        down = np.where(is_bottom, np.inf, (f + np.roll(f, -1)) / 2)
        return sign * np.minimum(np.minimum(f - 0.5, up), down)

    xl, xr = edge(left, 1), edge(right, -1)
    count = np.clip(np.floor(xr + 1e-9) - np.ceil(xl - 1e-9) + 1, 0, None)
    sums = np.bincount(robj, weights=count, minlength=int(ids[-1]) + 1)
    return ids, sums[ids]


def _moment_props(groups):
    """Eccentricity, orientation and axis lengths of every object.

    Eccentricity, orientation and axis lengths of every object (as regionprops defines them: from
    the inertia tensor of each object's pixel coordinates).
    """
    mean = groups.mean
    dy = groups.y - np.repeat(mean(groups.y), groups.count)
    dx = groups.x - np.repeat(mean(groups.x), groups.count)
    # inertia tensor [[a, b], [b, c]]: a = mu02 / mu00, c = mu20 / mu00, b = -mu11 / mu00
    a, c, b = mean(dx * dx), mean(dy * dy), -mean(dy * dx)
    root = np.sqrt(((a - c) / 2) ** 2 + b**2)
    l1 = np.clip((a + c) / 2 + root, 0, None)
    l2 = np.clip((a + c) / 2 - root, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(1 - l2 / np.where(l1 > 0, l1, 1)), 0.0)
    orientation = np.where(a - c == 0, np.where(b < 0, np.pi / 4, -np.pi / 4),
                           0.5 * np.arctan2(-2 * b, c - a))
    return {"eccentricity": ecc, "orientation": orientation,
            "axis_major_length": 4 * np.sqrt(l1), "axis_minor_length": 4 * np.sqrt(l2)}


def empty_objects():
    """The objects table with every column and zero rows.

    Returns
    -------
    pandas.DataFrame
        Columns and dtypes of :data:`OBJECT_SCHEMA`.
    """
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in OBJECT_SCHEMA.items()})


def measure_intensities(labels, image, channel_names=None, image_id="", groups=None):
    """Mean, min and max of every channel of ``image`` on every object of ``labels``.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    image : (H, W[, C]) ndarray
        The raw pixel values measured, every channel (a 2-D image is one channel).
    channel_names : sequence of str, optional
        ``C`` names (default: the indices ``"0"``, ``"1"``, ...).
    image_id : str, optional
        Stored in the ``image_id`` column (default ``""``).
    groups : ObjectPixels, optional
        The object pixels of ``labels``, when the caller has grouped them already.

    Returns
    -------
    pandas.DataFrame
        Columns and dtypes of :data:`INTENSITY_SCHEMA`: one row per object and channel, by
        label, then channel; zero rows when there are no objects.

    Raises
    ------
    ValueError
        If ``image``'s height and width are not ``labels``', or the names are not one per
        channel.
    """
    image = image[..., None] if image.ndim == 2 else image
    names = [str(c) for c in range(image.shape[-1])] if channel_names is None \
        else [str(n) for n in channel_names]
    _validate_intensity(labels, image, names)
    if labels.max() == 0:
        return empty_intensities()
    groups = groups if groups is not None else ObjectPixels(labels)
    n, c = len(groups.ids), image.shape[-1]
    stats = [groups.intensity(image[..., k]) for k in range(c)]  # channel -> (mean, min, max)
    columns = {"image_id": pd.array([image_id] * (n * c), dtype="string"),
               "label": np.repeat(groups.ids.astype(np.int64), c),
               "channel": np.tile(np.arange(c, dtype=np.int64), n),
               "channel_name": pd.array(names * n, dtype="string")}
    for i, name in enumerate(("mean", "min", "max")):  # (n, c) row-major: by label, then channel
        columns[name] = np.stack([s[i] for s in stats], axis=1).ravel()
    return pd.DataFrame(columns, copy=False)


def _validate_intensity(labels, image, names):
    if labels.ndim != 2 or image.ndim != 3 or image.shape[:2] != labels.shape:
        raise ValueError(
            "labels (H, W) and image (H, W[, C]) must have the same height and width. "
            f"Received: labels {labels.shape}, image {image.shape}")
    if len(names) != image.shape[-1]:
        raise ValueError(
            f"channel_names must name each of the image's {image.shape[-1]} channels. "
            f"Received: channel_names={names!r}")


def empty_intensities():
    """The intensities table with every column and zero rows.

    Returns
    -------
    pandas.DataFrame
        Columns and dtypes of :data:`INTENSITY_SCHEMA`.
    """
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in INTENSITY_SCHEMA.items()})


def with_area_um2(table, pixel_size_um):
    """Fill the objects table's ``area_um2`` where the pixel size is known.

    Parameters
    ----------
    table : pandas.DataFrame
        Objects from :func:`measure_objects` (changed in place).
    pixel_size_um : float or None
        The pixel's edge in micrometres; None (or 0) leaves ``area_um2`` NaN.

    Returns
    -------
    pandas.DataFrame
        ``table``.
    """
    if pixel_size_um:
        table["area_um2"] = table["area"] * float(pixel_size_um) ** 2
    return table
