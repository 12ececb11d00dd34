"""What napari's and QuPath's readers find in segflow's OME-Zarr and GeoJSON outputs.

OME-Zarr: ome-zarr-py's ``parse_url`` and ``Reader``, the reader napari-ome-zarr runs, then the
values napari takes from its nodes (data per level, axes, level scales). GeoJSON: strict JSON,
each Feature's geometry built by ``shapely.geometry.shape``, and the keys QuPath's GeoJSON
import reads (``qupath.lib.io.PathObjectTypeAdapters``).

Outline coordinates are pixel-edge coordinates: ``[x, y]`` with the origin at the top-left
corner of the top-left pixel, pixel ``(row, col)`` covering ``[col, col + 1] x [row, row + 1]``
(its centre at ``(col + 0.5, row + 0.5)``). Centroids of ``regionprops`` and of the objects
table are pixel-centre indices, so an outline's centroid is theirs plus 0.5.
"""

import json

import numpy as np
import pytest

#: Largest distance (pixels) between an outline's centroid and its object's pixel centroid
#: + 0.5. Cutting each pixel step's corner moves it by at most 0.09 px over the 24,296 true
#: nuclei of DSB2018; the pixel-centre convention would put it 0.71 px off.
CENTROID_TOL = 0.15
#: The pyramid stops at the first level whose longer side is at most this (docs/outputs.md).
MIN_LEVEL = 256


def halving_shapes(shape):
    """``[(H, W), (ceil(H/2), ceil(W/2)), ...]`` down to a longer side of MIN_LEVEL or less."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > MIN_LEVEL:
        shapes.append(tuple(-(-s // 2) for s in shapes[-1]))
    return shapes


def block_mean(level):
    """A ``(C, H, W)`` level halved by the mean of each 2x2 block (odd edges repeated,
    integers rounded half to even)."""
    c, h, w = level.shape
    a = np.pad(level, [(0, 0), (0, h % 2), (0, w % 2)], mode="edge").astype(np.float64)
    mean = a.reshape(c, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean(axis=(2, 4))
    return (np.rint(mean) if level.dtype.kind in "iu" else mean).astype(level.dtype)


def in_its_block(small, big):
    """Where each value of ``small`` is one of the four of its 2x2 block of ``big``."""
    h, w = big.shape
    a = np.pad(big, [(0, h % 2), (0, w % 2)], mode="edge")
    return np.logical_or.reduce([small == a[i::2, j::2] for i in (0, 1) for j in (0, 1)])


def read_ome_zarr(path):
    """``(location, nodes)`` as napari-ome-zarr gets them: ``Reader(parse_url(path))()``."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    location = parse_url(str(path))
    assert location is not None, f"ome-zarr finds no zarr at {path}"
    return location, list(Reader(location)())


def _check_levels(meta, axes, n_levels, pixel_size):
    """Axes and each level's scale and translation, as napari and NGFF 0.4 read them."""
    from ome_zarr.format import FormatV04

    size, unit = (pixel_size, "micrometer") if pixel_size else (1.0, None)
    assert [(a["name"], a["type"], a.get("unit")) for a in meta["axes"]] == [
        (name, "channel" if name == "c" else "space", None if name == "c" else unit)
        for name in axes]
    transforms = meta["coordinateTransformations"]
    FormatV04().validate_coordinate_transformations(len(axes), n_levels, transforms)
    lead = [1.0] if axes[0] == "c" else []
    assert [[t["type"] for t in level] for level in transforms] == \
        [["scale"]] + [["scale", "translation"]] * (n_levels - 1)  # level 0: no shift
    for k, level in enumerate(transforms):
        np.testing.assert_allclose(level[0]["scale"], lead + [size * 2**k] * 2)
        if k:  # level k's pixel centres sit on its 2x2^k block's centre
            np.testing.assert_allclose(level[1]["translation"],
                                       [0.0] * len(lead) + [size * (2**k - 1) / 2] * 2)


def check_ome_zarr(path, image, mask, object_labels, *, pixel_size=None):
    """Open the OME-Zarr at ``path`` with ome-zarr-py and check what napari would show.

    ``image`` is the ``(H, W, C)`` image segflow stored (the model's channels), ``mask`` its
    label mask, ``object_labels`` the labels of its rows in the objects table.
    """
    from ome_zarr.reader import Label, Labels, Multiscales

    location, nodes = read_ome_zarr(path)
    assert location.fmt.version == "0.4"
    names = [n.zarr.basename() for n in nodes]
    assert names == [location.basename(), "labels", "nuclei"]
    top, group, labels = nodes
    assert top.load(Multiscales) and not top.load(Label) and group.load(Labels)
    shapes = halving_shapes(mask.shape)
    n_channels = image.shape[-1]
    assert [level.shape for level in top.data] == [(n_channels, *s) for s in shapes]
    expected = np.moveaxis(image, -1, 0)
    for level in top.data:
        values = np.asarray(level)
        assert values.dtype == image.dtype
        np.testing.assert_array_equal(values, expected)
        expected = block_mean(values)  # the next level halves this one as written
    _check_levels(top.metadata, "cyx", len(shapes), pixel_size)
    top_value = float(np.iinfo(image.dtype).max) if image.dtype.kind in "iu" else 1.0
    assert len(top.metadata["channel_names"]) == n_channels
    assert top.metadata["contrast_limits"] == [[0.0, top_value]] * n_channels

    assert labels.load(Label) and labels.load(Multiscales)
    assert labels.metadata["name"] == "nuclei"
    assert [level.shape for level in labels.data] == shapes
    full = np.asarray(labels.data[0])
    assert full.dtype.kind == "u"
    np.testing.assert_array_equal(full, mask)
    assert sorted(set(np.unique(full).tolist()) - {0}) == sorted(object_labels)
    for big, small in zip(labels.data, labels.data[1:]):
        assert in_its_block(np.asarray(small), np.asarray(big)).all()  # object ids, never means
    _check_levels(labels.metadata, "yx", len(shapes), pixel_size)

    # napari opening the labels alone: image-label's source leads back to the image
    _, alone = read_ome_zarr(f"{path}/labels/nuclei")
    assert [n.zarr.basename() for n in alone] == [location.basename(), "labels", "nuclei"]
    assert [level.shape for level in alone[0].data] == [level.shape for level in top.data]


def _no_constant(name):
    raise ValueError(f"{name} is not JSON (QuPath's Gson reader refuses it)")


def check_qupath_properties(props):
    """The keys QuPath's GeoJSON import reads, with the types it reads them as.

    QuPath reads ``objectType`` (``"detection"``: a detection object), ``measurements`` (a
    name -> number map), and also ``name``, ``color`` and ``classification`` {name, color},
    which segflow leaves out (its objects import unclassified); ``label`` and ``area`` are kept
    as they are.
    """
    assert set(props) == {"objectType", "label", "area", "measurements"}
    assert props["objectType"] == "detection"
    assert set(props["measurements"]) == {"label", "area"}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for v in props["measurements"].values())


def check_geojson(text, mask, object_labels=None):
    """Parse one outline file as QuPath would and check every object's outline against
    ``mask``, the image's label mask (and its ids against ``object_labels`` where given)."""
    from shapely.geometry import shape
    from shapely.validation import explain_validity
    from skimage.measure import regionprops

    doc = json.loads(text, parse_constant=_no_constant)
    assert set(doc) == {"type", "features"} and doc["type"] == "FeatureCollection"
    regions = {r.label: r for r in regionprops(mask)}
    ids = [f["id"] for f in doc["features"]]  # one Feature per object, in label order
    assert ids == sorted(regions)
    if object_labels is not None:
        assert ids == sorted(object_labels)
    for f in doc["features"]:
        assert f["type"] == "Feature" and set(f) == {"type", "id", "geometry", "properties"}
        props, region = f["properties"], regions[f["id"]]
        check_qupath_properties(props)
        assert props["label"] == props["measurements"]["label"] == f["id"]
        assert props["area"] == props["measurements"]["area"] == region.area
        geom = shape(f["geometry"])
        assert geom.is_valid, (f["id"], explain_validity(geom))
        assert not geom.is_empty and geom.geom_type in ("Polygon", "MultiPolygon")
        parts = list(getattr(geom, "geoms", [geom]))
        assert all(p.exterior.is_ccw and not any(r.is_ccw for r in p.interiors) for p in parts)
        # the outline runs through the midpoints of the object's outer pixel edges: each ring
        # cuts its corners, 0.5 px in all, out of a piece and into a hole
        holes = sum(len(p.interiors) for p in parts)
        assert geom.area == pytest.approx(region.area - 0.5 * (len(parts) - holes), abs=1e-9)
        y0, x0, y1, x1 = region.bbox
        assert geom.bounds == (x0, y0, x1, y1)
        (cy, cx), c = region.centroid, geom.centroid
        assert np.hypot(c.x - cx - 0.5, c.y - cy - 0.5) < CENTROID_TOL
