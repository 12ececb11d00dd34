"""Per-object measurements with a fixed schema (the empty image gives zero rows)."""

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

#: Intensity channels measured: the image converted to 3 channels (gray repeated).
CHANNELS = 3

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
    "intensity_mean": [f"mean_intensity_{c}" for c in range(CHANNELS)],
    "intensity_min": [f"min_intensity_{c}" for c in range(CHANNELS)],
    "intensity_max": [f"max_intensity_{c}" for c in range(CHANNELS)],
}

#: Column -> dtype of the objects table (``image_id`` first).
OBJECT_SCHEMA = {"image_id": "string", "label": "int64", "area": "float64"}
OBJECT_SCHEMA.update({c: "float64" for cols in _PROPS.values() for c in cols
                      if c not in OBJECT_SCHEMA})
OBJECT_SCHEMA.update({c: "int64" for c in _PROPS["bbox"]})
#: Area in square micrometres where the image gives its pixel size, else NaN (see
#: :func:`segmodel.formats.add_measurements`, which also appends ``channel_<name>_*`` columns).
OBJECT_SCHEMA["area_um2"] = "float64"


def measure_objects(labels, intensity, image_id=""):
    """One row per object of ``labels`` with shape, position and intensity measurements.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    intensity : (H, W, 3) ndarray
        The image (raw values) the intensities are measured on.
    image_id : str, optional
        Stored in the ``image_id`` column.

    Returns
    -------
    pandas.DataFrame
        Columns and dtypes of :data:`OBJECT_SCHEMA`; zero rows when there are no objects.
    """
    if labels.shape != intensity.shape[:2] or intensity.ndim != 3 or intensity.shape[-1] != CHANNELS:
        raise ValueError(
            f"labels (H, W) and intensity (H, W, {CHANNELS}) must match. "
            f"Received: labels {labels.shape}, intensity {intensity.shape}"
        )
    if labels.max() == 0:
        return empty_objects()
    table = regionprops_table(labels, intensity_image=intensity.astype(np.float32),
                              properties=[p for p in _PROPS if p not in _FROM_MOMENTS])
    table.update(_moment_props(labels, table["label"]))
    columns = {"image_id": [image_id] * len(table["label"])}
    for prop, names in _PROPS.items():
        keys = [prop] if len(names) == 1 else [f"{prop}-{i}" for i in range(len(names))]
        columns.update({name: table[key] for name, key in zip(names, keys)})
    columns["area_um2"] = np.full(len(columns["image_id"]), np.nan)
    return pd.DataFrame(columns).astype(OBJECT_SCHEMA)


#: Properties computed for all objects at once from their second moments (regionprops computes
#: them object by object, which was most of the measuring time); same definitions and values.
_FROM_MOMENTS = ("eccentricity", "orientation", "axis_major_length", "axis_minor_length")


def _moment_props(labels, ids):
    """Eccentricity, orientation and axis lengths of objects ``ids`` (as regionprops defines
    them: from the inertia tensor of each object's pixel coordinates)."""
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    lab = flat[fg]
    y, x = np.divmod(fg, labels.shape[1])
    n = np.bincount(lab)[ids].astype(np.float64)

    def mean(v):
        return np.bincount(lab, weights=v)[ids] / n

    my, mx = mean(y.astype(np.float64)), mean(x.astype(np.float64))
    index = np.zeros(int(lab.max()) + 1, np.intp)
    index[ids] = np.arange(len(ids))
    dy, dx = y - my[index[lab]], x - mx[index[lab]]
    # inertia tensor [[a, b], [b, c]]: a = mu02 / mu00, c = mu20 / mu00, b = -mu11 / mu00
    a, c, b = mean(dx * dx), mean(dy * dy), -mean(dy * dx)
    root = np.sqrt(((a - c) / 2) ** 2 + b**2)
    l1 = np.clip((a + c) / 2 + root, 0, None)
    l2 = np.clip((a + c) / 2 - root, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(1 - l2 / np.where(l1 > 0, l1, 1)), 0.0)
    orientation = np.where(a - c == 0, np.where(b < 0, -np.pi / 4, np.pi / 4),
                           0.5 * np.arctan2(-2 * b, c - a))
    return {"eccentricity": ecc, "orientation": orientation,
            "axis_major_length": 4 * np.sqrt(l1), "axis_minor_length": 4 * np.sqrt(l2)}


def empty_objects():
    """The objects table with every column and zero rows."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in OBJECT_SCHEMA.items()})
