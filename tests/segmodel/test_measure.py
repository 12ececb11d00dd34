"""Per-object measurements and their fixed schema."""

import numpy as np
import pytest

from segmodel.inference.measure import (
    INTENSITY_SCHEMA,
    OBJECT_SCHEMA,
    measure_intensities,
    measure_objects,
)


def _dtypes(table):
    return {c: str(t) for c, t in table.dtypes.items()}


def test_no_objects_gives_every_column_and_zero_rows():
    labels, intensity, _ = _two_squares()
    table = measure_objects(np.zeros((20, 20), np.int32), "a.png")
    assert list(table.columns) == list(OBJECT_SCHEMA) and len(table) == 0
    assert _dtypes(table) == _dtypes(measure_objects(labels, "img.png"))
    values = measure_intensities(np.zeros((20, 20), np.int32), intensity, image_id="a.png")
    assert list(values.columns) == list(INTENSITY_SCHEMA) and len(values) == 0
    assert _dtypes(values) == _dtypes(measure_intensities(labels, intensity))


def _two_squares():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 1
    labels[10:16, 12:18] = 2
    intensity = np.zeros((20, 20, 3))
    intensity[..., 0] = 10.0
    intensity[labels == 2, 1] = 5.0
    return labels, intensity, "img.png"


def test_two_squares_have_their_areas_centroids_and_intensities():
    labels, intensity, image_id = _two_squares()
    table = measure_objects(labels, image_id)
    assert table["label"].tolist() == [1, 2]
    assert table["area"].tolist() == [16, 36]
    assert table[["centroid_y", "centroid_x"]].values.tolist() == [[3.5, 3.5], [12.5, 14.5]]
    assert table[["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]].values[1].tolist() == \
        [10, 12, 16, 18]
    assert (table["image_id"] == "img.png").all()
    assert list(table.columns) == list(OBJECT_SCHEMA)  # no per-channel column
    values = measure_intensities(labels, intensity, ["R", "G", "B"], image_id)
    # by label, then channel
    assert values[["label", "channel"]].values.tolist() == [
        [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    assert values["channel_name"].tolist() == ["R", "G", "B"] * 2
    assert values["mean"].tolist() == [10.0, 0.0, 0.0, 10.0, 5.0, 0.0]
    assert values["max"].tolist() == [10.0, 0.0, 0.0, 10.0, 5.0, 0.0]
    assert (values["image_id"] == "img.png").all()


def test_a_gray_image_is_one_channel_named_by_its_index():
    labels, intensity, _ = _two_squares()
    values = measure_intensities(labels, intensity[..., 1])
    assert values["channel"].tolist() == [0, 0] and values["channel_name"].tolist() == ["0", "0"]
    assert values["min"].tolist() == [0.0, 5.0]


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same height and width"):
        measure_intensities(np.zeros((10, 10), np.int32), np.zeros((10, 11, 3)))
    with pytest.raises(ValueError, match="channel_names must name each"):
        measure_intensities(np.zeros((10, 10), np.int32), np.zeros((10, 10, 3)), ["DAPI"])
    with pytest.raises(ValueError, match="labels must be"):
        measure_objects(np.zeros((10, 10, 3), np.int32))


def test_every_column_equals_regionprops_on_real_labels(dsb2018):
    """The vectorised measurements keep regionprops' definitions: checked on real labels and
    real images, object by object."""
    from skimage.measure import regionprops_table

    from segmodel.inference.measure import _PROPS, measure_objects
    from segmodel.inference.preprocess import to_channels
    from segmodel.training.datasets import list_samples

    checked = 0
    for sample in list_samples(dsb2018, "val")[:12]:
        image, labels = sample.load()
        intensity = to_channels(image, 3)
        got = measure_objects(labels, sample.id)
        ref = regionprops_table(labels, intensity_image=intensity.astype(np.float32),
                                properties=[*_PROPS, "intensity_mean", "intensity_min",
                                            "intensity_max"])
        values = measure_intensities(labels, intensity, image_id=sample.id)
        for stat in ("mean", "min", "max"):  # (objects, channels): label-major rows
            np.testing.assert_allclose(
                values[stat].to_numpy().reshape(-1, 3),
                np.stack([ref[f"intensity_{stat}-{c}"] for c in range(3)], axis=1), rtol=1e-6)
        for prop, names in _PROPS.items():
            keys = [prop] if len(names) == 1 else [f"{prop}-{i}" for i in range(len(names))]
            for name, key in zip(names, keys):
                if prop == "orientation":
                    continue
                np.testing.assert_allclose(got[name].to_numpy(), ref[key], rtol=1e-6,
                                           atol=1e-9, err_msg=name)
        # the same axis: compare doubled angles (+-pi/2 is one axis)
        for f in (np.cos, np.sin):
            np.testing.assert_allclose(f(2 * got["orientation"].to_numpy()),
                                       f(2 * ref["orientation"]), atol=1e-9)
        checked += len(got)
    assert checked > 300


def test_orientation_of_objects_with_equal_second_moments_is_regionprops():
    """Where the two second moments are equal (a disk, a square, diagonal symmetry)
    regionprops answers +-pi/4 by a special case; the sign must be its own."""
    from skimage.measure import regionprops_table

    from segmodel.inference.measure import measure_objects

    labels = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 28) ** 2 + (xx - 40) ** 2 <= 16] = 1  # disk
    labels[2:4, 2:4] = 2  # 2x2 square
    for i in range(6):  # "\" and "/" diagonals of single pixels
        labels[10 + i, 2 + i] = 3
        labels[10 + i, 20 - i] = 4
    got = measure_objects(labels, "x")["orientation"]
    ref = regionprops_table(labels, properties=["orientation"])["orientation"]
    np.testing.assert_allclose(got.to_numpy(), ref, atol=1e-12)


def test_convex_areas_equal_regionprops_on_awkward_shapes():
    """Single pixels, lines, a holed rectangle, a triangle, an object in two pieces and objects
    on the image border: the vectorised hull counts the same pixels as regionprops."""
    from skimage.measure import regionprops_table

    from segmodel.inference.measure import convex_areas

    s = np.zeros((40, 40), np.int32)
    s[1, 1] = 1
    s[5, 3:20] = 2
    s[8:30, 30] = 3
    s[10, 10] = s[12, 14] = 4
    s[20:25, 5:15] = 5
    s[22, 5:15] = 0  # cut in two rows apart
    s[30:38, 1:9][np.triu(np.ones((8, 8), bool))] = 6
    s[0, 39] = 7
    s[39, 0:3] = 8
    ids, areas = convex_areas(s)
    ref = regionprops_table(s, properties=["label", "area_convex"])
    np.testing.assert_array_equal(ids, ref["label"])
    np.testing.assert_array_equal(areas, ref["area_convex"])
    assert list(areas) == [1, 17, 22, 7, 50, 36, 1, 3]
