"""OME-Zarr label stores and GeoJSON outlines on real annotated images (DSB2018 ground truth)."""

import json
import time

import numpy as np
import pytest
import zarr
from skimage.draw import polygon as fill_polygon
from viewers import check_geojson, check_ome_zarr

from segmodel.inference.measure import measure_objects
from segmodel.storage import export
from segmodel.storage.io import Store
from segmodel.training.datasets import list_samples


@pytest.fixture(scope="module")
def annotated(dsb2018):
    """Three real images with their instance labels: 256x320, 256x256 and 1024x1024 (the first
    of each size in the set)."""
    picked, sizes = [], set()
    for s in list_samples(dsb2018):
        image, labels = s.load()
        if labels.shape not in sizes and labels.shape in {(256, 320), (256, 256), (1024, 1024)}:
            sizes.add(labels.shape)
            picked.append((s.id, image, labels))
        if len(picked) == 3:
            return picked
    pytest.skip("dsb2018 lacks images of the three sizes")


@pytest.fixture
def store():
    return Store(f"memory://export{time.perf_counter_ns()}")


def test_pyramid_halves_until_a_level_fits_one_chunk():
    assert export.pyramid_shapes((256, 256)) == [(256, 256)]
    assert export.pyramid_shapes((520, 696)) == [(520, 696), (260, 348), (130, 174)]
    assert export.pyramid_shapes((1025, 3)) == [(1025, 3), (513, 2), (257, 1), (129, 1)]


def test_mode_downsampling_keeps_label_values_valid(annotated):
    for _, _, labels in annotated:
        small = export.downsample_labels(labels)
        assert small.shape == tuple(-(-s // 2) for s in labels.shape)
        assert set(np.unique(small)) <= set(np.unique(labels))
        # an object of at least a 2x2 block keeps at least one pixel at the next level
        big = [v for v, n in zip(*np.unique(labels, return_counts=True)) if v and n >= 64]
        assert set(big) <= set(np.unique(small))


def test_mode_is_the_majority_of_each_block_and_ties_take_the_top_left():
    a = np.array([[1, 2, 5, 5],
                  [2, 2, 6, 7]])
    assert export.downsample_labels(a).tolist() == [[2, 5]]
    assert export.downsample_labels(np.array([[3, 4], [4, 3]])).tolist() == [[3]]


def _check_ngff(group, n_levels, shape, n_channels):
    """The NGFF 0.4 rules a reader relies on, for this layout."""
    ms = group.attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space"]
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(n_levels)]
    assert group["labels"].attrs["labels"] == ["nuclei"]
    lab = group["labels/nuclei"].attrs
    assert lab["image-label"]["version"] == "0.4"
    lms = lab["multiscales"][0]
    assert [a["name"] for a in lms["axes"]] == ["y", "x"]
    assert len(lms["datasets"]) == n_levels  # as many levels as the image (NGFF MUST)
    for k, (d, ld) in enumerate(zip(ms["datasets"], lms["datasets"])):
        kinds = [t["type"] for t in d["coordinateTransformations"]]
        assert kinds == (["scale"] if k == 0 else ["scale", "translation"])
        assert d["coordinateTransformations"][0]["scale"] == [1.0, 2.0**k, 2.0**k]
        assert ld["coordinateTransformations"][0]["scale"] == [2.0**k, 2.0**k]
        expect = tuple(-(-s // 2**k) for s in shape)
        assert group[d["path"]].shape == (n_channels, *expect)
        assert group[f"labels/nuclei/{ld['path']}"].shape == expect
        arr = group[f"labels/nuclei/{ld['path']}"]
        assert arr.metadata.dimension_separator == "/" and arr.dtype.kind == "u"
    assert len(group.attrs["omero"]["channels"]) == n_channels


def test_ome_zarr_round_trip_holds_labels_image_and_pyramid(annotated, store):
    for image_id, image, labels in annotated:
        path = f"labels/{image_id}.ome.zarr"
        export.write_ome_zarr(store, path, labels, image[..., :3], name=image_id)
        group = export.open_ome_zarr(store, path)
        n = len(export.pyramid_shapes(labels.shape))
        _check_ngff(group, n, labels.shape, 3)
        np.testing.assert_array_equal(export.read_labels(store, path), labels)
        np.testing.assert_array_equal(np.moveaxis(group["0"][:], 0, -1), image[..., :3])
        assert group["labels/nuclei/0"].dtype == np.uint16
        if n > 1:
            np.testing.assert_array_equal(export.read_labels(store, path, 1),
                                          export.downsample_labels(labels))


def test_ome_zarr_of_a_calibrated_image_is_in_micrometres(annotated, store):
    """With the input's pixel size the axes are in micrometres and every level's scale and
    translation are the pixel ones times it, on the image and the labels alike (napari then
    overlays the labels on the source image)."""
    image_id, image, labels = annotated[0]
    export.write_ome_zarr(store, "labels/c.ome.zarr", labels, image[..., :3], pixel_size=0.325)
    group = export.open_ome_zarr(store, "labels/c.ome.zarr")
    for ms, lead in ((group.attrs["multiscales"][0], [1.0]),
                     (group["labels/nuclei"].attrs["multiscales"][0], [])):
        assert [a.get("unit") for a in ms["axes"] if a["type"] == "space"] == ["micrometer"] * 2
        for k, d in enumerate(ms["datasets"]):
            transforms = d["coordinateTransformations"]
            np.testing.assert_allclose(transforms[0]["scale"], lead + [0.325 * 2**k] * 2)
            if k:
                np.testing.assert_allclose(transforms[1]["translation"],
                                           [0.0] * len(lead) + [0.325 * (2**k - 1) / 2] * 2)


def test_ome_zarr_py_reads_a_calibrated_store_in_micrometres(annotated, tmp_path):
    """napari's reader on a store with a pixel size: the 1024x1024 image's three levels, its
    labels, and scales in micrometres on both."""
    image_id, image, labels = annotated[2]
    export.write_ome_zarr(Store(str(tmp_path)), "labels/c.ome.zarr", labels, image[..., :3],
                          name=image_id, pixel_size=0.325)
    check_ome_zarr(tmp_path / "labels" / "c.ome.zarr", image[..., :3], labels,
                   measure_objects(labels)["label"].tolist(), pixel_size=0.325)


class _DiesAfter(Store):
    """A store whose process 'dies' (raises) after ``budget`` file writes."""

    budget = 0

    def write_bytes(self, relpath, data):
        if self.budget <= 0:
            raise KeyboardInterrupt("killed")
        self.budget -= 1
        super().write_bytes(relpath, data)

    def write_many(self, files):  # a batch dies part way through too
        for relpath, data in files.items():
            self.write_bytes(relpath, data)


def test_a_killed_write_never_looks_complete_and_is_removed(annotated):
    _, image, labels = annotated[2]
    files = [k for k, v in export.encode_ome_zarr(labels, image).items()
             if not export._empty_attrs(k, v)]  # the files written
    root = f"memory://killed{time.perf_counter_ns()}"
    for budget in (1, len(files) // 2, len(files) - 1):
        dying = _DiesAfter(root)
        dying.budget = budget
        with pytest.raises(KeyboardInterrupt):
            export.write_ome_zarr(dying, "labels/plate/x.ome.zarr", labels, image)
        store = Store(root)
        assert not export.is_complete(store, "labels/plate/x.ome.zarr")
        with pytest.raises(FileNotFoundError, match="no complete OME-Zarr"):
            export.read_labels(store, "labels/plate/x.ome.zarr")
        with pytest.raises(Exception):  # noqa: B017 (a plain zarr reader finds no image either)
            zarr.open_group(store.fs.get_mapper(store.path("labels/plate/x.ome.zarr")),
                            mode="r").attrs["multiscales"]
        assert export.remove_partial(store) == ["labels/plate/x.ome.zarr"]
        assert not store.fs.exists(store.path("labels/plate/x.ome.zarr"))


def test_rewriting_a_store_leaves_no_chunk_of_the_old_one(annotated, store):
    _, _, big = annotated[2]
    _, _, small = annotated[1]
    export.write_ome_zarr(store, "labels/a.ome.zarr", big)
    export.write_ome_zarr(store, "labels/a.ome.zarr", small)
    keys = {p.split("a.ome.zarr/", 1)[1] for p in store.fs.find(store.path("labels/a.ome.zarr"))}
    assert keys == {k for k, v in export.encode_ome_zarr(small).items()
                    if not export._empty_attrs(k, v)}
    assert ".zattrs" in keys and "labels/nuclei/0/0/0" in keys
    np.testing.assert_array_equal(export.read_labels(store, "labels/a.ome.zarr"), small)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _rasterise(geometry, shape):
    """Pixels whose centres lie inside ``geometry`` (holes cut out)."""
    polys = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else \
        [geometry["coordinates"]]
    out = np.zeros(shape, bool)
    for rings in polys:
        for i, ring in enumerate(rings):
            xy = np.asarray(ring)
            rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)  # to pixel centres
            hit = np.zeros(shape, bool)
            hit[rr, cc] = True
            out = (out | hit) if i == 0 else (out & ~hit)
    return out


def test_outlines_rasterise_back_to_each_object(annotated):
    for _, _, labels in annotated:
        doc = json.loads(export.encode_geojson(export.outline_features(labels)))
        assert doc["type"] == "FeatureCollection"
        ids = [f["id"] for f in doc["features"]]
        assert sorted(ids) == sorted(set(np.unique(labels)) - {0})
        for f in doc["features"]:
            obj = labels == f["id"]
            assert f["properties"]["label"] == f["id"]
            assert f["properties"]["area"] == obj.sum()
            assert _iou(_rasterise(f["geometry"], labels.shape), obj) > 0.9, f["id"]
            for rings in ([f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon"
                          else f["geometry"]["coordinates"]):
                for ring in rings:
                    assert ring[0] == ring[-1] and len(ring) >= 4


def test_an_object_with_a_hole_and_two_parts_is_a_multipolygon_with_an_interior_ring():
    labels = np.zeros((40, 40), np.int32)
    labels[5:25, 5:25] = 4
    labels[10:15, 10:15] = 0  # hole
    labels[30:34, 30:38] = 4  # second part
    (f,) = export.outline_features(labels)
    assert f["geometry"]["type"] == "MultiPolygon"
    assert sorted(len(p) for p in f["geometry"]["coordinates"]) == [1, 2]
    np.testing.assert_array_equal(_rasterise(f["geometry"], labels.shape), labels == 4)
    big = next(p for p in f["geometry"]["coordinates"] if len(p) == 2)
    xs = [x for x, _ in big[0]]
    assert (min(xs), max(xs)) == (5.0, 25.0)  # pixel edges, origin at the top-left corner


def test_no_objects_give_an_empty_feature_collection():
    doc = json.loads(export.encode_geojson(export.outline_features(np.zeros((8, 8), int))))
    assert doc == {"type": "FeatureCollection", "features": []}


@pytest.mark.parametrize("mask, expected", [
    ("labels/a.tif", "outlines/a.geojson"),
    ("labels/p/a.png.ome.zarr", "outlines/p/a.png.geojson"),
    ("labels/b.png", "outlines/b.geojson"),
], ids=["tif", "ome-zarr-with-kept-extension", "png"])
def test_outline_path_follows_the_mask_path(mask, expected):
    assert export.outline_path(mask) == expected


def test_outlines_of_real_masks_are_valid_shapely_geometries_qupath_imports(annotated):
    for _, _, labels in annotated:
        text = export.encode_geojson(export.outline_features(labels)).decode()
        check_geojson(text, labels)


def test_a_hole_inside_an_island_inside_a_hole_belongs_to_the_island():
    labels = np.zeros((16, 16), np.int32)
    labels[1:14, 1:14] = 3  # a square frame ...
    labels[3:12, 3:12] = 0
    labels[5:10, 5:10] = 3  # ... around an island of the same object, with a hole
    labels[7, 7] = 0
    labels[12:16, 12:16] = 5  # another object: its hole touches its notch at one corner
    labels[12, 12], labels[13, 13] = 0, 0
    features = export.outline_features(labels)
    check_geojson(export.encode_geojson(features).decode(), labels)
    frame = features[0]["geometry"]
    assert frame["type"] == "MultiPolygon"
    outer, island = frame["coordinates"]
    assert [len(outer), len(island)] == [2, 2]  # each piece with its own hole
    assert np.asarray(island[1]).mean(axis=0) == pytest.approx([7.5, 7.5], abs=0.1)
    assert len(features[1]["geometry"]["coordinates"]) == 2  # object 5: a Polygon with a hole
