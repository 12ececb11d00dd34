"""Maps to instance labels: hand-made maps whose right answer is known."""

from dataclasses import replace

import numpy as np
import pytest

from segmodel.inference.postprocess import labels_from_maps
from segmodel.model.spec import PostprocessSettings

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


def test_a_small_marker_does_not_split_a_nucleus():
    """A speck of high distance at a nucleus' rim (as stain texture gives) is a second marker;
    with ``min_marker_area`` above its size it is ignored and the nucleus stays whole."""
    maps = _maps([((32, 40), 16)])
    maps[32:34, 51:53, 2] = 0.9  # a 4-pixel speck of high distance near the rim
    assert labels_from_maps(maps, SETTINGS).max() == 2  # split in two
    labels = labels_from_maps(maps, replace(SETTINGS, min_marker_area=5))
    assert labels.max() == 1
    assert (labels == 1).sum() == (maps[..., 0] > 0.5).sum()  # the speck's pixels rejoin it
    # the nucleus' own marker is far larger than 5 px: kept with the speck's size as the bound
    assert labels_from_maps(maps, replace(SETTINGS, min_marker_area=4)).max() == 2


def test_objects_the_model_doubts_are_dropped_and_the_rest_renumbered():
    maps = _maps([((20, 20), 10), ((20, 60), 10), ((48, 40), 10)])
    inside = _disk((64, 96), (20, 60), 10)[0]
    maps[..., 0][inside] = 0.7  # the middle object: foreground, but only just
    settings = replace(SETTINGS, min_mean_foreground=0.8)
    labels = labels_from_maps(maps, settings)
    assert labels.max() == 2 and labels[20, 60] == 0
    assert labels[20, 20] == 1 and labels[48, 40] == 2
    lenient = replace(settings, min_mean_foreground=0.6)
    np.testing.assert_array_equal(labels_from_maps(maps, lenient), labels_from_maps(maps, SETTINGS))
    # the area bound still applies beside it
    assert labels_from_maps(maps, replace(settings, min_area=400)).max() == 0


def test_touching_nuclei_whose_saddle_stays_above_the_marker_level_are_split():
    """Two disks 20 px apart (radius 14): the distance between them dips only to 0.29, above a
    marker level of 0.2, so they share one marker; a higher level separates them."""
    maps = _maps([((32, 36), 14), ((32, 56), 14)])
    settings = replace(SETTINGS, marker=0.2)
    assert labels_from_maps(maps, settings).max() == 1
    split = labels_from_maps(maps, replace(settings, split_step=0.1, split_fraction=0.1))
    assert split.max() == 2 and split[32, 36] == 1 and split[32, 56] == 2
    assert (split > 0).sum() == (maps[..., 0] > 0.5).sum()  # every foreground pixel kept
    halves = np.bincount(split.ravel())[1:]
    assert abs(int(halves[0]) - int(halves[1])) <= 14  # split down the middle
    # a step too coarse to pass between the saddle (0.29) and the peaks (1.0) finds one part
    assert labels_from_maps(maps, replace(settings, split_step=0.9)).max() == 1


def test_a_small_peak_is_not_a_part_large_enough_to_split_its_marker():
    """A 9-pixel peak at the rim of a large nucleus: a part of its marker at high levels, but
    far under ``split_fraction`` of it, so the nucleus stays whole unless the fraction is tiny."""
    maps = _maps([((32, 40), 20)])
    maps[31:34, 53:56, 2] = 0.95
    settings = replace(SETTINGS, marker=0.2, min_marker_area=4, split_step=0.1)
    labels = labels_from_maps(maps, replace(settings, split_fraction=0.1))
    assert labels.max() == 1 and (labels == 1).sum() == (maps[..., 0] > 0.5).sum()
    assert labels_from_maps(maps, replace(settings, split_fraction=0.005)).max() == 2
    # and min_marker_area bounds a part as it bounds a marker
    assert labels_from_maps(maps, replace(settings, split_fraction=0.005,
                                          min_marker_area=10)).max() == 1


def test_maps_of_the_wrong_shape_name_the_shape():
    with pytest.raises(ValueError, match=r"maps must have shape \(H, W, 3\).*\(8, 8, 2\)"):
        labels_from_maps(np.zeros((8, 8, 2), np.float32))


def _whole_image_watershed(maps, settings):
    """The reference: one watershed over the whole image, then orphans numbered after it."""
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import relabel_sequential, watershed

    from segmodel.inference.postprocess import _drop_small

    fg = maps[..., 0] > settings.foreground
    score = maps[..., 2] - settings.boundary_weight * maps[..., 1]
    markers, n = ndi.label((score > settings.marker) & fg)
    if settings.min_marker_area > 1:
        kept = remove_small_objects(markers, max_size=settings.min_marker_area - 1)
        markers = relabel_sequential(kept)[0]
        n = int(markers.max())
    if settings.split_step > 0:
        markers = _split_one_by_one(score, markers, settings)
        n = int(markers.max())
    labels = watershed(-maps[..., 2], markers, mask=fg) if n else np.zeros(fg.shape, np.int32)
    orphans, n_orphans = ndi.label(fg & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    labels = _drop_small(labels, settings.min_area)
    if settings.min_mean_foreground > 0 and labels.max():
        ids = np.arange(1, labels.max() + 1)
        mean = ndi.mean(maps[..., 0], labels, ids)
        doubtful = np.isin(labels, ids[mean < settings.min_mean_foreground])
        labels = relabel_sequential(np.where(doubtful, 0, labels))[0].astype(np.int32)
    return labels


def _split_one_by_one(score, markers, settings):
    """The reference splitting: each marker on its own, level by level, then renumbered."""
    from scipy import ndimage as ndi

    smallest = max(settings.min_marker_area, 1)
    level = settings.marker + settings.split_step
    while level < score.max():
        out = np.zeros_like(markers)
        for i, box in enumerate(ndi.find_objects(markers), start=1):
            if box is None:
                continue
            own = markers[box] == i
            parts, m = ndi.label(own & (score[box] > level))
            sizes = np.bincount(parts.ravel(), minlength=m + 1)[1:]
            large = np.flatnonzero(sizes >= max(smallest, settings.split_fraction * own.sum()))
            if len(large) >= 2:
                out[box][np.isin(parts, large + 1)] = 1
            else:
                out[box][own] = 1
        markers = ndi.label(out)[0]
        level += settings.split_step
    return markers


def test_flooding_only_shared_components_equals_the_whole_image_watershed_on_real_maps(dsb2018):
    """Touching, lone and marker-less nuclei of real images, as the bundled model maps them:
    the same labels, numbers included, as flooding the whole image."""
    from segmodel.inference.passes import default_tiling, prepare
    from segmodel.inference.predict import predict_maps
    from segmodel.model.loading import DEFAULT_MODEL, load_model
    from segmodel.training.datasets import list_samples

    model = load_model(str(DEFAULT_MODEL))
    settings = model.spec.postprocess
    samples = list_samples(dsb2018, "val")[::6]
    prepared = [prepare(s.load()[0], model.spec) for s in samples]
    maps = predict_maps(model.predict_batch, [p.x for p in prepared],
                        tiling=default_tiling(model.spec), batch_size=8)
    several = fewer = split_more = 0
    filtered = replace(settings, min_marker_area=12, min_mean_foreground=0.95)
    unfiltered = replace(settings, min_marker_area=0, min_mean_foreground=0.0)
    split = replace(settings, split_step=0.15, split_fraction=0.1)
    unsplit = replace(split, split_step=0.0)
    for m in maps:
        counts = []
        for s in (split, unsplit, filtered, unfiltered, settings):
            expected = _whole_image_watershed(m, s)
            got = labels_from_maps(m, s)
            assert got.dtype == expected.dtype == np.int32
            np.testing.assert_array_equal(got, expected)
            counts.append(int(got.max()))
        several += int(counts[-1] > 1)
        # the filters only ever take objects away (a dropped marker's region joins a
        # neighbour's or becomes a marker-less object of its own)
        assert counts[2] <= counts[3]
        fewer += counts[2] < counts[3]
        split_more += counts[0] != counts[1]
    # images with several nuclei, filtered ones and split ones met
    assert several >= 5 and fewer >= 2 and split_more >= 2


def test_shared_lone_and_markerless_components_together_equal_the_whole_image_watershed():
    maps = _maps([((20, 20), 12), ((21, 43), 13), ((48, 70), 10), ((50, 20), 9)],
                 shape=(72, 96))
    maps[40:60, 10:30, 2] *= 0.4  # the last disk has no marker: an orphan
    # (the touching disks differ in size: along the line of equal distances of two equal disks
    # the heap may take tied pixels in another order)
    labels = labels_from_maps(maps, SETTINGS)
    np.testing.assert_array_equal(labels, _whole_image_watershed(maps, SETTINGS))
    assert labels.max() == 4 and labels[50, 20] == 4  # the orphan comes after the markers


def test_per_label_counts_and_sums_band_by_band_as_a_whole_image_bincount():
    from segmodel.inference.postprocess import _per_label

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 40, (123, 77)).astype(np.int32)
    values = rng.random((123, 77, 3), dtype=np.float32)[..., 0]  # a strided view, as maps give
    areas, sums = _per_label(labels, values, pixels=1000)  # bands of 12 rows and a last of 3
    np.testing.assert_array_equal(areas, np.bincount(labels.ravel()))
    np.testing.assert_allclose(sums, np.bincount(labels.ravel(), values.ravel()), rtol=1e-12)
