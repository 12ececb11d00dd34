"""Maps to instance labels: hand-made maps whose right answer is known."""

import numpy as np
import pytest

from segmodel.model import PostprocessSettings
from segmodel.postprocess import labels_from_maps

SETTINGS = PostprocessSettings(foreground=0.5, marker=0.5, boundary_weight=1.0, min_area=20)


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(yy - centre[0], xx - centre[1])
    return d <= radius, np.clip(1 - d / radius, 0, 1)


def _maps(disks, shape=(64, 96)):
    """Foreground, boundary and distance maps of (possibly touching) disks."""
    maps = np.zeros(shape + (3,), np.float32)
    for centre, radius in disks:
        inside, dist = _disk(shape, centre, radius)
        maps[..., 0] = np.maximum(maps[..., 0], inside)
        maps[..., 2] = np.maximum(maps[..., 2], dist * inside)
    return maps


def test_touching_nuclei_are_split_and_numbered_in_raster_order():
    maps = _maps([((32, 30), 14), ((32, 56), 14)])  # the disks overlap by 2 px
    labels = labels_from_maps(maps, SETTINGS)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[32, 30] == 1 and labels[32, 56] == 2
    assert (labels > 0).sum() == (maps[..., 0] > 0.5).sum()  # every foreground pixel kept


def test_boundary_map_separates_markers_that_distance_alone_would_merge():
    maps = _maps([((32, 40), 20)])
    assert labels_from_maps(maps, SETTINGS).max() == 1
    maps[:, 38:42, 1] = 1.0  # a boundary line across the one blob: two nuclei
    labels = labels_from_maps(maps, SETTINGS)
    assert labels.max() == 2 and labels[32, 30] != labels[32, 50]
    assert (labels > 0).sum() == (maps[..., 0] > 0.5).sum()  # the line itself is shared out


def test_foreground_without_a_marker_keeps_its_own_label_and_small_objects_go():
    maps = _maps([((20, 20), 12)])
    maps[40:50, 60:70, 0] = 1.0  # foreground, distance 0: no marker (100 px, kept)
    maps[5:8, 80:83, 0] = 1.0  # 9 px: under min_area, dropped
    labels = labels_from_maps(maps, SETTINGS)
    assert set(np.unique(labels)) == {0, 1, 2}  # numbered 1..N with no gap
    assert (labels == 2).sum() == 100 and labels[6, 81] == 0


@pytest.mark.parametrize("min_area", [0, 1, 500])
def test_min_area_bounds_and_empty_maps(min_area):
    settings = PostprocessSettings(0.5, 0.5, 1.0, min_area)
    maps = _maps([((20, 20), 10), ((40, 70), 6)])
    labels = labels_from_maps(maps, settings)
    assert labels.max() == (0 if min_area == 500 else 2)
    assert labels_from_maps(np.zeros((16, 16, 3), np.float32), settings).max() == 0


def test_maps_of_the_wrong_shape_name_the_shape():
    with pytest.raises(ValueError, match=r"maps must have shape \(H, W, 3\).*\(8, 8, 2\)"):
        labels_from_maps(np.zeros((8, 8, 2), np.float32))
