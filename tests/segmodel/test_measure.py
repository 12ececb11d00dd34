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


def test_moment_properties_equal_regionprops_on_real_labels(dsb2018):
    from skimage.measure import regionprops_table

    from segmodel.datasets import list_samples
    from segmodel.measure import _moment_props

    checked = 0
    for sample in list_samples(dsb2018, "val")[:12]:
        _, labels = sample.load()
        ref = regionprops_table(labels, properties=["label", "eccentricity", "orientation",
                                                     "axis_major_length", "axis_minor_length"])
        got = _moment_props(labels, ref["label"])
        for key in ("eccentricity", "axis_major_length", "axis_minor_length"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, atol=1e-9)
        # the same axis: compare doubled angles (+-pi/2 is one axis); regionprops returns
        # +-pi/4 by a special case when the two second moments are exactly equal
        defined = np.abs(np.abs(ref["orientation"]) - np.pi / 4) > 1e-12
        for f in (np.cos, np.sin):
            np.testing.assert_allclose(f(2 * got["orientation"][defined]),
                                       f(2 * ref["orientation"][defined]), atol=1e-9)
        checked += int(defined.sum())
    assert checked > 100
