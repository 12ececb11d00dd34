"""Interchange outputs: OME-Zarr (NGFF 0.4) label stores and GeoJSON object outlines.

OME-Zarr layout of one image (``mask_format='ome-zarr'``, path ``labels/<id>.ome.zarr``)::

    .zgroup .zattrs            the image: multiscales (axes c, y, x) + omero rendering hints
    0/ 1/ 2/ ...               image pyramid levels (2x2 mean), chunks (C, 512, 512)
    labels/.zattrs             {"labels": ["nuclei"]}
    labels/nuclei/.zattrs      multiscales (axes y, x) + image-label
    labels/nuclei/0/ 1/ ...    label pyramid levels (2x2 mode: values stay object labels)

Zarr format 2 with ``/`` chunk keys, as NGFF 0.4 asks. A store is encoded in memory (or in a
local temporary folder for the block-wise path), then uploaded file by file through
:class:`segmodel.storage.io.Store` with every chunk and array first and the root ``.zattrs`` last: a
store without its root ``.zattrs`` is incomplete, never shown by a reader as an image, and
removed by :func:`remove_partial` (or replaced when its image is segmented again).

GeoJSON (``outlines='geojson'``, path ``outlines/<id>.geojson``): a FeatureCollection with one
Polygon (MultiPolygon for an object in pieces) per object, ``id`` = its label, coordinates
``[x, y]`` in pixels with the origin at the top-left corner of the top-left pixel (pixel
``(row, col)`` covers ``[col, col + 1] x [row, row + 1]``), as QuPath and ImageJ place them.
"""

import io
import json
import os
import posixpath

import numpy as np

NGFF_VERSION = "0.4"
#: Chunk edge of every array (an image chunk holds all its channels).
CHUNK = 512
#: The pyramid stops at the first level whose longer side is at most this.
MIN_LEVEL = 256
LABEL_NAME = "nuclei"
ROOT_MARKER = ".zattrs"
_METADATA = (".zattrs", ".zgroup", ".zarray")
_RGB = ("FF0000", "00FF00", "0000FF")


def pyramid_shapes(shape, min_level=MIN_LEVEL):
    """Shapes of the pyramid levels, halving until the longer side is ``min_level`` or less.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` (or any shape: every axis is halved) of the full-resolution level.
    min_level : int, optional
        The pyramid stops at the first level whose longer side is at most this (default
        :data:`MIN_LEVEL`).

    Returns
    -------
    list of tuple of int
        ``[(H, W), (ceil(H/2), ceil(W/2)), ...]``; one level when ``shape`` is small already.

    Examples
    --------
    >>> pyramid_shapes((600, 300))
    [(600, 300), (300, 150), (150, 75)]
    """
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > min_level:
        shapes.append(tuple(-(-s // 2) for s in shapes[-1]))
    return shapes


def _pad_even(a):
    """Pad the last two axes of ``a`` to even lengths by repeating the last row / column."""
    pad = [(0, 0)] * (a.ndim - 2) + [(0, a.shape[-2] % 2), (0, a.shape[-1] % 2)]
    return np.pad(a, pad, mode="edge") if any(p[1] for p in pad) else a


def downsample_labels(labels):
    """Halve ``(..., H, W)`` labels by the mode of each 2x2 block (ties: top-left pixel).

    Every output value is one of its block's input values, so labels stay valid object ids
    (nearest-style, never averaged). An odd edge is padded by repeating its last row / column.

    Parameters
    ----------
    labels : (..., H, W) array_like of int
        The label image(s).

    Returns
    -------
    (..., ceil(H/2), ceil(W/2)) ndarray
        Of the dtype of ``labels``.
    """
    a = _pad_even(np.asarray(labels))
    q = [a[..., 0::2, 0::2], a[..., 0::2, 1::2], a[..., 1::2, 0::2], a[..., 1::2, 1::2]]
    best, best_n = q[0].copy(), sum((q[0] == x).astype(np.uint8) for x in q)
    for cand in q[1:]:
        n = sum((cand == x).astype(np.uint8) for x in q)
        better = n > best_n
        best[better], best_n = cand[better], np.maximum(n, best_n)
    return best


def downsample_image(image):
    """Halve ``(..., H, W)`` intensities by the mean of each 2x2 block, keeping the dtype.

    Integer means are rounded to the nearest integer; an odd edge is padded by repeating its
    last row / column.

    Parameters
    ----------
    image : (..., H, W) array_like
        The intensities (channels first when there are any).

    Returns
    -------
    (..., ceil(H/2), ceil(W/2)) ndarray
        Of the dtype of ``image``.
    """
    a = _pad_even(np.asarray(image))
    mean = (a[..., 0::2, 0::2].astype(np.float64) + a[..., 0::2, 1::2] + a[..., 1::2, 0::2]
            + a[..., 1::2, 1::2]) / 4
    if np.issubdtype(a.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(a.dtype)


def label_dtype(n_objects):
    """uint16 up to 65535 objects, uint32 beyond (as the TIFF masks).

    Parameters
    ----------
    n_objects : int
        The largest label.

    Returns
    -------
    type
        ``numpy.uint16`` or ``numpy.uint32``.
    """
    return np.uint16 if n_objects <= np.iinfo(np.uint16).max else np.uint32


def _datasets(n_levels, lead=(), pixel_size=None):
    """NGFF datasets: the scale and translation of each pyramid level.

    NGFF datasets: level k has scale 2**k (times the pixel size in micrometres where known) and a
    translation to its 2x2 block's centre.
    """
    out = []
    for k in range(n_levels):
        f = float(2**k) * (pixel_size or 1.0)
        transforms = [{"type": "scale", "scale": [1.0] * len(lead) + [f, f]}]
        if k:
            t = (f - (pixel_size or 1.0)) / 2
            transforms.append({"type": "translation", "translation": [0.0] * len(lead) + [t, t]})
        out.append({"path": str(k), "coordinateTransformations": transforms})
    return out


def multiscales(name, n_levels, *, channels=False, kind="mean", pixel_size=None):
    """The NGFF 0.4 ``multiscales`` list of an image or a label image.

    Level k has scale 2**k (times ``pixel_size``) and a translation to its 2x2 block's centre.

    Parameters
    ----------
    name : str
        The image's name in the metadata.
    n_levels : int
        The number of pyramid levels (datasets ``"0"``, ``"1"``, ...).
    channels : bool, optional
        True for an image (axes c, y, x), False (default) for a label image (y, x).
    kind : str, optional
        The downsampling method recorded as ``type`` (default ``"mean"``; ``"mode"`` for labels).
    pixel_size : float, optional
        Micrometres per pixel: the spatial axes are then in micrometres, else (default) in pixels.

    Returns
    -------
    list of dict
        One ``multiscales`` entry.
    """
    unit = {"unit": "micrometer"} if pixel_size else {}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    if channels:
        axes.insert(0, {"name": "c", "type": "channel"})
    return [{"version": NGFF_VERSION, "name": name, "axes": axes,
             "datasets": _datasets(n_levels, ("c",) if channels else (), pixel_size),
             "type": kind}]


def _omero(name, n_channels, dtype):
    top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    colors = _RGB if n_channels == 3 else ("FFFFFF",) * n_channels
    return {"name": name, "version": NGFF_VERSION, "rdefs": {"model": "color"}, "channels": [
        {"label": f"c{i}", "color": colors[i], "active": True, "coefficient": 1.0,
         "family": "linear", "inverted": False,
         "window": {"min": 0.0, "max": top, "start": 0.0, "end": top}}
        for i in range(n_channels)]}


class OmeZarrBuilder:
    """Build one image's OME-Zarr in a zarr store band by band; :meth:`finish` adds the pyramid.

    Parameters
    ----------
    zstore : zarr store
        Where to build (``zarr.storage.MemoryStore`` or ``LocalStore`` of a temporary folder).
    shape : (H, W) tuple of int
        The full-resolution shape.
    label_dtype : numpy dtype
        The dtype of every label level (see :func:`label_dtype`).
    n_channels, image_dtype : int, numpy dtype, optional
        The intensity image (axes c, y, x); None (default) writes labels only under an empty
        image group.
    name : str, optional
        The image's name in the metadata (default ``"image"``).
    chunk : int, optional
        The chunk edge of every array (default :data:`CHUNK`).
    pixel_size : float, optional
        Micrometres per pixel, for the axes' units (default None: pixels).
    """

    def __init__(self, zstore, shape, *, label_dtype, n_channels=None, image_dtype=None,
                 name="image", chunk=CHUNK, pixel_size=None):
        import zarr

        self.shapes, self.name, self.chunk = pyramid_shapes(shape), name, chunk
        self.pixel_size = pixel_size
        self.group = zarr.open_group(zstore, mode="w", zarr_format=2)
        self.labels = [self._array(f"labels/{LABEL_NAME}/{k}", s, label_dtype)
                       for k, s in enumerate(self.shapes)]
        self.image = None
        if n_channels is not None:
            self.image = [self._array(str(k), (n_channels, *s), image_dtype)
                          for k, s in enumerate(self.shapes)]

    def _array(self, path, shape, dtype):
        import numcodecs

        chunks = (*shape[:-2], self.chunk, self.chunk)
        return self.group.create_array(
            path, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
            compressors=numcodecs.Blosc(cname="zstd", clevel=5,
                                        shuffle=numcodecs.Blosc.BITSHUFFLE),
            chunk_key_encoding={"name": "v2", "separator": "/"})

    def write_labels(self, y0, rows):
        """Write full-resolution label rows ``y0 : y0 + len(rows)``.

        Parameters
        ----------
        y0 : int
            The first row.
        rows : (n, W) ndarray of int
            The label rows.
        """
        self.labels[0][y0 : y0 + rows.shape[0]] = rows

    def write_image(self, y0, x0, pixels):
        """Write full-resolution pixels at ``(y0, x0)``.

        Parameters
        ----------
        y0, x0 : int
            The top-left corner.
        pixels : (h, w, C) ndarray
            The intensities, channels last (``C`` = ``n_channels``).
        """
        h, w = pixels.shape[:2]
        self.image[0][:, y0 : y0 + h, x0 : x0 + w] = np.moveaxis(pixels, -1, 0)

    def finish(self):
        """Compute the lower levels from the ones above, band by band; write the metadata."""
        band = 2 * self.chunk
        for k in range(1, len(self.shapes)):
            pairs = [(self.labels, downsample_labels)]
            if self.image is not None:
                pairs.append((self.image, downsample_image))
            for arrays, down in pairs:
                src, dst = arrays[k - 1], arrays[k]
                for r0 in range(0, src.shape[-2], band):
                    part = down(np.asarray(src[..., r0 : r0 + band, :]))
                    dst[..., r0 // 2 : r0 // 2 + part.shape[-2], :] = part
        n = len(self.shapes)
        self.group.require_group("labels").attrs.update({"labels": [LABEL_NAME]})
        self.group[f"labels/{LABEL_NAME}"].attrs.update({
            "multiscales": multiscales(LABEL_NAME, n, kind="mode", pixel_size=self.pixel_size),
            "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}}})
        attrs = {"multiscales": multiscales(self.name, n, channels=True,
                                            pixel_size=self.pixel_size)}
        if self.image is not None:
            attrs["omero"] = _omero(self.name, self.image[0].shape[0], self.image[0].dtype)
        self.group.attrs.update(attrs)


def encode_ome_zarr(labels, image=None, *, name="image", chunk=CHUNK, pixel_size=None):
    """``{key: bytes}`` of the OME-Zarr of ``labels`` and ``image``, built in memory.

    Parameters
    ----------
    labels : (H, W) array_like of int
        The label image; stored as uint16 (uint32 past 65535 objects).
    image : (H, W[, C]) array_like, optional
        The intensity image the labels belong to (default None: labels only).
    name : str, optional
        The image's name in the metadata (default ``"image"``).
    chunk : int, optional
        The chunk edge (default :data:`CHUNK`).
    pixel_size : float, optional
        The input's micrometres per pixel: the axes are then in micrometres.

    Returns
    -------
    dict of str to bytes
        The store's files by key (e.g. ``"labels/nuclei/0/0/0"``).
    """
    from zarr.storage import MemoryStore

    labels = np.asarray(labels)
    zstore = MemoryStore()
    n = int(labels.max()) if labels.size else 0
    image = None if image is None else np.asarray(image)
    if image is not None and image.ndim == 2:
        image = image[..., None]
    builder = OmeZarrBuilder(
        zstore, labels.shape, label_dtype=label_dtype(n), name=name, chunk=chunk,
        pixel_size=pixel_size,
        n_channels=None if image is None else image.shape[-1],
        image_dtype=None if image is None else image.dtype)
    builder.write_labels(0, labels.astype(label_dtype(n)))
    if image is not None:
        builder.write_image(0, 0, image)
    builder.finish()
    return {k: v.to_bytes() for k, v in zstore._store_dict.items()}


def write_ome_zarr(store, relpath, labels, image=None, *, name="image", pixel_size=None):
    """Encode in memory and upload to ``relpath`` under ``store`` (root ``.zattrs`` last).

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output store.
    relpath : str
        The store's folder relative to the root, e.g. ``labels/a.ome.zarr``.
    labels, image, name, pixel_size
        As in :func:`encode_ome_zarr`.
    """
    upload(store, relpath, encode_ome_zarr(labels, image, name=name, pixel_size=pixel_size))


def encode_mask(labels, mask_format):
    """Compressed TIFF (uint16, or uint32 past 65535 objects) or 16-bit PNG bytes.

    A uint8 label image (a semantic model's class map) stays 8-bit.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        The label image.
    mask_format : {'tif', 'png'}
        ``'png'`` for PNG; any other value writes a zlib-compressed TIFF.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        If ``mask_format='png'`` and there are more than 65535 objects.
    """
    n = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    if labels.dtype == np.uint8:  # a semantic model's class map stays 8-bit
        dtype = np.uint8
    buf = io.BytesIO()
    if mask_format == "png":
        if dtype is np.uint32:
            raise ValueError(f"{n} objects do not fit a 16-bit PNG: use mask_format='tif'.")
        from PIL import Image

        Image.fromarray(labels.astype(dtype)).save(buf, format="PNG")
    else:
        import tifffile

        tifffile.imwrite(buf, labels.astype(dtype), compression="zlib")
    return buf.getvalue()


def write_outputs(store, mask_path, labels, mask_format, outlines="none", *, image=None,
                  name="image", pixel_size=None):
    """Write one image's mask at ``mask_path`` and, with ``outlines='geojson'``, its outlines.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output store.
    mask_path : str
        From :func:`segmodel.pipeline.outputs.mask_paths`.
    labels : (H, W) ndarray of int
        The label image.
    mask_format : {'tif', 'png', 'ome-zarr'}
        The mask's format.
    outlines : {'none', 'geojson'}, optional
        ``'geojson'`` also writes :func:`outline_path` (default ``'none'``).
    image : (H, W[, C]) ndarray, optional
        The image the labels belong to: written beside them in an OME-Zarr.
    name : str, optional
        The image's name in OME-Zarr metadata (default ``"image"``).
    pixel_size : float, optional
        Micrometres per pixel of the image: an OME-Zarr's axes are then in micrometres.

    Raises
    ------
    ValueError
        If ``mask_format='png'`` and there are more than 65535 objects.
    """
    if mask_format == "ome-zarr":
        write_ome_zarr(store, mask_path, labels, image, name=name, pixel_size=pixel_size)
    else:
        store.write_bytes(mask_path, encode_mask(labels, mask_format))
    if outlines == "geojson":
        store.write_bytes(outline_path(mask_path), encode_geojson(outline_features(labels)))


def build_large_ome_zarr(folder, regions, bands, *, channels, name="image", chunk=CHUNK,
                         pixel_size=None):
    """Build the OME-Zarr of a huge image in the local ``folder``, never holding it whole.

    Parameters
    ----------
    folder : str
        An empty local folder (upload it with :func:`upload` of :func:`local_files`).
    regions : segmodel.inference.blockwise.TiffRegions
        The input image, read in full-width bands of ``chunk`` rows for the image levels.
    bands : iterable of (int, (n, W) ndarray of uint32)
        The label rows in order (:meth:`segmodel.inference.blockwise.BlockRun.rows`).
    channels : int
        Channels the image is converted to (the model's), as for a whole image.
    name : str, optional
        The image's name in the metadata (default ``"image"``).
    chunk : int, optional
        The chunk edge and band height (default :data:`CHUNK`).
    pixel_size : float, optional
        Micrometres per pixel, for the axes' units (default None: pixels).
    """
    from zarr.storage import LocalStore

    from segmodel.inference.preprocess import to_channels

    h, w = regions.shape
    first = to_channels(regions.read(0, min(h, chunk), 0, w), channels)
    builder = OmeZarrBuilder(LocalStore(folder), (h, w), label_dtype=np.uint32,
                             n_channels=first.shape[-1], image_dtype=first.dtype, name=name,
                             chunk=chunk, pixel_size=pixel_size)
    for y0, rows in bands:
        builder.write_labels(y0, rows)
    for y0 in range(0, h, chunk):
        part = first if y0 == 0 else to_channels(regions.read(y0, min(h, y0 + chunk), 0, w),
                                                 channels)
        builder.write_image(y0, 0, part)
    builder.finish()


def outline_features_by_region(read, objects, *, tile=2048):
    """:func:`outline_features` of a huge label image, read region by region.

    Parameters
    ----------
    read : callable
        ``read(y0, y1, x0, x1)`` -> labels of that region (``(h, w)`` ndarray).
    objects : pandas.DataFrame
        The image's objects table (``label`` and ``bbox_*`` columns, max exclusive).
    tile : int, optional
        Objects are grouped by the ``tile`` x ``tile`` cell of their top-left corner; one read
        per cell covers its objects' bounding boxes (default 2048).

    Returns
    -------
    list of dict
        GeoJSON Features sorted by ``id``; an object with no pixel left is skipped.
    """
    features = []
    if objects.empty:
        return features
    cells = objects.assign(cy=objects["bbox_min_y"] // tile, cx=objects["bbox_min_x"] // tile)
    for _, group in cells.groupby(["cy", "cx"]):
        y0, x0 = int(group["bbox_min_y"].min()), int(group["bbox_min_x"].min())
        y1, x1 = int(group["bbox_max_y"].max()), int(group["bbox_max_x"].max())
        region = np.asarray(read(y0, y1, x0, x1))
        for row in group.itertuples(index=False):
            label = int(row.label)
            by0, bx0 = int(row.bbox_min_y) - y0, int(row.bbox_min_x) - x0
            by1, bx1 = int(row.bbox_max_y) - y0, int(row.bbox_max_x) - x0
            mask = region[by0:by1, bx0:bx1] == label
            if mask.any():  # a seam's second copy may have kept no pixel
                features.append(_feature(label, int(mask.sum()), object_geometry(
                    mask, (int(row.bbox_min_y), int(row.bbox_min_x)))))
    return sorted(features, key=lambda f: f["id"])


def local_files(folder):
    """``{key: local file path}`` of a zarr store built in a local folder.

    Parameters
    ----------
    folder : str
        The local folder of the store.

    Returns
    -------
    dict of str to str
        Local paths by key (``/``-separated, relative to ``folder``).
    """
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, folder).replace(os.sep, "/")] = path
    return out


def _order(key):
    """Upload order: chunks, then metadata deepest first, the root ``.zattrs`` very last."""
    base = posixpath.basename(key)
    if base not in _METADATA:
        return (0, 0, key)
    return (1, -key.count("/"), base == ROOT_MARKER, key)


def upload(store, relpath, files):
    """Replace ``relpath`` with ``files``, root marker last.

    An earlier store at ``relpath`` (a finished one of a changed image, or a partial one of a
    killed run) is removed first, marker first, so no mix of old and new chunks stays. Chunks
    go first (concurrently on object stores), then metadata deepest first; ``.zattrs`` files
    holding ``{}`` are skipped.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output store.
    relpath : str
        The store's folder relative to the root.
    files : dict of str to (bytes or str)
        Content or local file path by key (from :func:`encode_ome_zarr` or :func:`local_files`).
    """
    remove_store(store, relpath)
    files = {k: v for k, v in files.items() if not _empty_attrs(k, v)}
    keys = sorted(files, key=_order)
    chunks = [k for k in keys if _order(k)[0] == 0]
    in_memory = {posixpath.join(relpath, k): bytes(files[k]) for k in chunks
                 if isinstance(files[k], (bytes, bytearray, memoryview))}
    store.write_many(in_memory)  # concurrent PUTs on object stores
    store.put_many({posixpath.join(relpath, k): files[k] for k in chunks
                    if posixpath.join(relpath, k) not in in_memory})
    for key in keys[len(chunks):]:  # metadata, in order, the root marker last
        data = files[key]
        if isinstance(data, (bytes, bytearray, memoryview)):
            store.write_bytes(posixpath.join(relpath, key), bytes(data))
        else:
            store.put_file(data, posixpath.join(relpath, key))


def _empty_attrs(key, data):
    """True for a ``.zattrs`` holding ``{}`` (optional in Zarr 2: one file less to write)."""
    if posixpath.basename(key) != ".zattrs":
        return False
    if not isinstance(data, (bytes, bytearray, memoryview)):
        if os.path.getsize(data) > 16:
            return False
        with open(data, "rb") as f:
            data = f.read()
    return bytes(data).strip() == b"{}"


def remove_outputs(store, mask_path):
    """Delete one image's mask (any format) and its outlines where they exist.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output store.
    mask_path : str
        The mask's path relative to the root (a ``*.ome.zarr`` folder or a file).
    """
    _remove_mask(store, mask_path)
    store.remove(store.path(outline_path(mask_path)))


def remove_superseded(store, old_path, new_path):
    """Delete an image's earlier mask at ``old_path`` now that its mask is ``new_path``.

    The earlier mask was of another mask format (``labels/a.tif`` beside a new
    ``labels/a.png``). Its outlines go too, unless they are the new mask's (the same path).

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output store.
    old_path, new_path : str
        Mask paths relative to the root; nothing is removed where they are equal.
    """
    if old_path == new_path:
        return
    _remove_mask(store, old_path)
    if outline_path(old_path) != outline_path(new_path):
        store.remove(store.path(outline_path(old_path)))


def _remove_mask(store, mask_path):
    if mask_path.endswith(".ome.zarr"):
        remove_store(store, mask_path)
    else:
        store.remove(store.path(mask_path))


def remove_store(store, relpath):
    """Delete the OME-Zarr at ``relpath`` (its root marker first, so it never looks complete).

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output store.
    relpath : str
        The store's folder relative to the root; a missing one is not an error.
    """
    store.remove(store.path(relpath, ROOT_MARKER))
    store.remove_tree(relpath)


def open_ome_zarr(store, relpath):
    """The OME-Zarr at ``relpath`` under ``store`` as a read-only ``zarr.Group``.

    Works on any fsspec file system.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The store holding it.
    relpath : str
        The OME-Zarr folder relative to the root.

    Returns
    -------
    zarr.Group

    Raises
    ------
    FileNotFoundError
        If there is no complete OME-Zarr at ``relpath`` (no root ``.zattrs``).
    """
    import zarr
    from zarr.storage import FsspecStore

    if not is_complete(store, relpath):
        raise FileNotFoundError(f"no complete OME-Zarr at {store.uri(store.path(relpath))!r} "
                                f"(missing {ROOT_MARKER}): segment its image again.")
    mapper = store.fs.get_mapper(store.path(relpath))
    return zarr.open_group(FsspecStore.from_mapper(mapper, read_only=True), mode="r")


def read_labels(store, relpath, level=0):
    """The ``(H, W)`` labels of pyramid ``level`` of the OME-Zarr at ``relpath``.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The store holding it.
    relpath : str
        The OME-Zarr folder relative to the root.
    level : int, optional
        The pyramid level, 0 (default) for full resolution.

    Returns
    -------
    (H, W) ndarray of int

    Raises
    ------
    FileNotFoundError
        If there is no complete OME-Zarr at ``relpath``.
    """
    return np.asarray(open_ome_zarr(store, relpath)[f"labels/{LABEL_NAME}/{level}"][:])


def is_complete(store, relpath):
    """True when the OME-Zarr at ``relpath`` has its root metadata (it was written to the end).

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The store holding it.
    relpath : str
        The OME-Zarr folder relative to the root.

    Returns
    -------
    bool
    """
    return store.exists(relpath, ROOT_MARKER)


def remove_partial(store, folder="labels"):
    """Remove every ``*.zarr`` store under ``folder`` that lacks its root ``.zattrs``.

    Lists the whole folder, so it acts on local outputs only (see README); on object stores
    nothing is removed, and an incomplete store is replaced when its image is segmented again.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output store.
    folder : str, optional
        The folder to search, relative to the root (default ``"labels"``).

    Returns
    -------
    list of str
        The relative paths removed.
    """
    removed = []
    if store.container() is not None:  # an object store: see above
        return removed
    for rel in store.find_dirs(folder, ".zarr"):
        if not is_complete(store, rel):
            remove_store(store, rel)
            removed.append(rel)
    return removed


# ----------------------------------------------------------------------------- outlines


def _rings(mask):
    """Closed rings ``(N, 2)`` (row, col, pixel-centre coordinates) of a padded binary mask."""
    from skimage.measure import find_contours

    rings = find_contours(mask.astype(np.uint8), 0.5, fully_connected="high",
                          positive_orientation="high")
    return [_drop_collinear(r) for r in rings if len(r) >= 4]


def _drop_collinear(ring):
    """The closed ``ring`` without its points on a straight line between their neighbours."""
    pts = ring[:-1]
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = ((pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1])
             - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0]))
    kept = pts[np.abs(cross) > 1e-9]
    return np.vstack([kept, kept[:1]])


def _signed_area(ring_xy):
    x, y = ring_xy[:, 0], ring_xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def object_geometry(mask, offset=(0, 0)):
    """GeoJSON geometry of one object's binary ``mask`` whose top-left pixel is ``offset``.

    Exterior rings come from the object's outer boundaries, interior rings from its holes; a
    hole belongs to the smallest exterior around it (an island inside another piece's hole
    holds its own holes). One exterior gives a Polygon, several a MultiPolygon. Coordinates
    ``[x, y]`` are pixel corners (pixel centres at ``+0.5``), rounded to 3 decimals; rings are
    closed, exteriors counter-clockwise and holes clockwise in ``x, y`` (RFC 7946).

    Parameters
    ----------
    mask : (h, w) array_like of bool
        The object's pixels.
    offset : (int, int), optional
        ``(row, col)`` of the mask's top-left pixel in the image (default ``(0, 0)``).

    Returns
    -------
    dict
        ``{"type": "Polygon" or "MultiPolygon", "coordinates": ...}``.
    """
    from skimage.measure import points_in_poly

    padded = np.pad(np.asarray(mask, bool), 1)
    y0, x0 = offset
    outer, holes = [], []
    for ring in _rings(padded):
        xy = np.stack([ring[:, 1] + x0 - 0.5, ring[:, 0] + y0 - 0.5], axis=1)[::-1]
        (outer if _signed_area(xy) > 0 else holes).append(xy)  # exteriors: positive area
    polys = [[o] for o in outer]
    areas = [_signed_area(o) for o in outer]
    for h in holes:  # rings never touch, so one vertex tells inside from outside
        around = [i for i, o in enumerate(outer) if points_in_poly(h[:1], o)[0]]
        if around:
            polys[min(around, key=areas.__getitem__)].append(h)
    coords = [[np.round(r, 3).tolist() for r in poly] for poly in polys]
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


def outline_features(labels, offset=(0, 0)):
    """One GeoJSON Feature per object of ``labels``: ``id`` = label.

    Properties: ``objectType`` ``'detection'`` (QuPath's kind for segmented objects),
    ``label``, ``area`` (pixels) and ``measurements`` (the same two, which QuPath lists).

    Parameters
    ----------
    labels : (H, W) array_like of int
        The label image.
    offset : (int, int), optional
        ``(row, col)`` of ``labels``' top-left pixel in the whole image (default ``(0, 0)``).

    Returns
    -------
    list of dict
        In label order; empty for an image without objects.
    """
    from skimage.measure import regionprops

    y0, x0 = offset
    features = []
    for region in regionprops(np.asarray(labels)):
        r0, c0, _, _ = region.bbox
        features.append(_feature(int(region.label), int(region.area),
                                 object_geometry(region.image, (r0 + y0, c0 + x0))))
    return features


def _feature(label, area, geometry):
    return {"type": "Feature", "id": label, "geometry": geometry,
            "properties": {"objectType": "detection", "label": label, "area": area,
                           "measurements": {"label": label, "area": area}}}


def encode_geojson(features):
    """A FeatureCollection of ``features`` as compact UTF-8 JSON.

    Parameters
    ----------
    features : list of dict
        GeoJSON Features (see :func:`outline_features`).

    Returns
    -------
    bytes
    """
    return json.dumps({"type": "FeatureCollection", "features": features},
                      separators=(",", ":")).encode()


def outline_path(image_path):
    """``outlines/<...>.geojson`` for a mask path ``labels/<...>.<ext>`` of any mask format.

    Parameters
    ----------
    image_path : str
        A mask path relative to the output root; its first folder is replaced.

    Returns
    -------
    str

    Examples
    --------
    >>> outline_path("labels/plate1/a01.ome.zarr")
    'outlines/plate1/a01.geojson'
    """
    rel = image_path.split("/", 1)[1]
    for ext in (".ome.zarr", ".tif", ".png"):
        if rel.endswith(ext):
            rel = rel[: -len(ext)]
            break
    return f"outlines/{rel}.geojson"
