"""Per-object measurements and their fixed schema."""

import numpy as np
import pytest

from segmodel.measure import OBJECT_SCHEMA, measure_objects


def test_no_objects_gives_every_column_and_zero_rows():
    table = measure_objects(np.zeros((10, 10), np.int32), np.zeros((10, 10, 3)), "a.png")
    assert list(table.columns) == list(OBJECT_SCHEMA) and len(table) == 0
    assert {c: str(t) for c, t in table.dtypes.items()} == \
        {c: str(t) for c, t in measure_objects(*_two_squares()).dtypes.items()}


def _two_squares():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 1
    labels[10:16, 12:18] = 2
    intensity = np.zeros((20, 20, 3))
    intensity[..., 0] = 10.0
    intensity[labels == 2, 1] = 5.0
    return labels, intensity, "img.png"


def test_two_squares_have_their_areas_centroids_and_intensities():
    table = measure_objects(*_two_squares())
    assert table["label"].tolist() == [1, 2]
    assert table["area"].tolist() == [16, 36]
    assert table[["centroid_y", "centroid_x"]].values.tolist() == [[3.5, 3.5], [12.5, 14.5]]
    assert table[["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]].values[1].tolist() == \
        [10, 12, 16, 18]
    assert table["mean_intensity_0"].tolist() == [10.0, 10.0]
    assert table["max_intensity_1"].tolist() == [0.0, 5.0]
    assert (table["image_id"] == "img.png").all()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="must match"):
        measure_objects(np.zeros((10, 10), np.int32), np.zeros((10, 11, 3)))
