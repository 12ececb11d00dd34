"""Images too big for memory: segmented block by block from a TIFF into a tiled, pyramidal TIFF.

The image is never held whole. Pass 1 reads it block by block for the normalisation statistics
(the same pixels :func:`segmodel.inference.preprocess.estimate_normalization` samples from a whole
image).
Pass 2 reads each block with a ``halo`` of context around it, predicts and post-processes the
expanded block exactly like a whole image, and keeps the objects whose centroid lies in the
block's core: an object crossing a block border is therefore segmented whole by the block that
owns it (objects up to ``halo`` pixels across at the working scale). Labels are numbered
uniquely across the image as blocks are finished. Rows of labels that no later block can reach
are written at once as 256x256 tiles of a zlib-compressed BigTIFF (uint32), with 2x
subsampled pyramid levels as SubIFDs (napari, QuPath and tifffile read them).

Memory is bounded by a few blocks plus a band of label rows of the image's width and the
pyramid levels (a quarter, a sixteenth, ... of the labels at 4 bytes a pixel).
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from segmodel.inference.measure import (
    ObjectPixels,
    empty_intensities,
    empty_objects,
    measure_intensities,
    measure_objects,
)
from segmodel.inference.passes import Prepared, estimate_scales, finish, prepare
from segmodel.inference.predict import predict_maps
from segmodel.inference.preprocess import (
    Normalization,
    apply_normalization,
    check_values,
    estimate_normalization,
    resize,
    scaled_shape,
    to_channels,
)
from segmodel.model.bundle import n_outputs

#: Images with more pixels than this go to the block-wise path in the pipeline.
TILED_ABOVE = 36_000_000
#: Output tile edge of the label TIFF.
OUT_TILE = 256


@dataclass(frozen=True)
class Blocks:
    """Block-wise settings.

    Parameters
    ----------
    block : int, optional
        Core edge in image pixels, a multiple of 256 (default 4096).
    halo : int, optional
        Context in working-scale pixels (default 192): at least the largest nucleus; a multiple
        of the tile step keeps the model's tiles where a whole-image run puts them.
    """

    block: int = 4096
    halo: int = 192

    def validate(self):
        """Check the settings before any work.

        Raises
        ------
        ValueError
            If ``block`` is not a positive multiple of :data:`OUT_TILE` or ``halo`` is negative.
        """
        if self.block < OUT_TILE or self.block % OUT_TILE:
            raise ValueError(f"block must be a positive multiple of {OUT_TILE}. "
                             f"Received: block={self.block}")
        if self.halo < 0:
            raise ValueError(f"halo must be >= 0. Received: halo={self.halo}")


class TiffRegions:
    """Read rectangular regions of a TIFF's first image without reading the rest of it.

    Parameters
    ----------
    fh : file-like or str
        The TIFF, opened by ``tifffile.TiffFile``.
    name : str, optional
        Shown in error messages (default ``"<tiff>"``).

    Attributes
    ----------
    shape : (int, int)
        ``(H, W)`` of the first page.
    axes : str
        The page's axes, e.g. ``"YX"``, ``"YXS"``, ``"SYX"``.
    """

    def __init__(self, fh, name="<tiff>"):
        import tifffile
        import zarr

        self.name = name
        self._tif = tifffile.TiffFile(fh)
        page = self._tif.pages[0]
        self.axes = page.axes
        self._page = page
        # read_only: tifffile makes the store of an uncompressed page on a writable handle
        # (memory://, BytesIO) writable, which zarr refuses to open with mode "r"
        self._z = zarr.open(page.aszarr(read_only=True), mode="r")
        self.shape = (page.imagelength, page.imagewidth)

    @property
    def pixel_size_um(self):
        """The pixel's edge in micrometres from OME-XML or ImageJ tags, or None."""
        from segmodel.storage.formats import tiff_metadata

        return tiff_metadata(self._tif, int(self._page.samplesperpixel))[1]

    @property
    def channel_names(self):
        """Names of the measured channels (an RGBA alpha left out): the file's, else indices."""
        from segmodel.storage.formats import tiff_metadata

        samples = int(self._page.samplesperpixel)
        names = tiff_metadata(self._tif, samples)[0]
        if names is None or len(names) != samples:
            names = [str(c) for c in range(samples)]
        return tuple(names[: 3 if samples == 4 else samples])

    def unsupported(self, *, plane=None, channel=None, pyramid_level=0):
        """Why this TIFF cannot be segmented block by block with these input options, or None.

        The block-wise path reads the first page as one gray or RGB(A) picture: stacks,
        channel choice, pyramid levels, palette and CMYK pages and gray + alpha go through
        :mod:`segmodel.storage.formats` on the whole-image path instead.

        Parameters
        ----------
        plane : int, optional
            ``--plane`` (None or 0 allowed).
        channel : int or str, optional
            ``--channel`` (None allowed).
        pyramid_level : int, optional
            ``--pyramid-level`` (0 allowed).

        Returns
        -------
        str or None
            The reason, to follow "because"; None when block-wise reading works.
        """
        page, series = self._page, self._tif.series[0]
        if pyramid_level:
            return f"--pyramid-level {pyramid_level} was given"
        if channel is not None:
            return f"--channel {channel} was given"
        if plane not in (None, 0) or len(self._tif.pages) > 1 or int(page.imagedepth) > 1 \
                or len(series.shape) > len(page.shape):
            return f"it holds several planes (axes {series.axes}, shape {tuple(series.shape)})"
        samples, photometric = int(page.samplesperpixel), int(page.photometric)
        if not ((photometric == 1 and samples == 1) or (photometric == 2 and samples in (3, 4))):
            return (f"its pixels are {samples} samples of photometric "
                    f"{page.photometric.name}, not one gray or RGB(A) picture")
        if page.dtype is None or page.dtype.kind not in "buif":
            return f"its pixel type {page.dtype} is not integer or real"
        return None

    def read(self, y0, y1, x0, x1):
        """Pixels of the region ``[y0:y1, x0:x1]``.

        Parameters
        ----------
        y0, y1, x0, x1 : int
            The region's rows and columns (ends exclusive).

        Returns
        -------
        (y1 - y0, x1 - x0, C) ndarray
        """
        if self.axes.startswith("S"):  # planar
            return np.moveaxis(np.asarray(self._z[:, y0:y1, x0:x1]), 0, -1)
        region = np.asarray(self._z[y0:y1, x0:x1])
        return region[..., None] if region.ndim == 2 else region

    def close(self):
        """Close the TIFF file."""
        self._tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def estimate_scale(regions, model, *, tiling, batch_size=8, lock=None, size=2048):
    """Automatic scale of a huge image, from the nuclei of its central ``size`` square.

    Parameters
    ----------
    regions : Regions
        The image, read region by region.
    model : segmodel.model.loading.LoadedModel
    tiling : segmodel.inference.preprocess.Tiling
    batch_size : int, optional
        Tiles per model call (default 8).
    lock : threading.Lock, optional
        Held around each model call (default None).
    size : int, optional
        Edge of the central square, in pixels (default 2048).

    Returns
    -------
    segmodel.inference.autoscale.Estimate
        As :func:`segmodel.inference.passes.estimate_scales`.
    """
    h, w = regions.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    crop = regions.read(y0, min(h, y0 + size), x0, min(w, x0 + size))
    (estimate,) = estimate_scales(model, [prepare(crop, model.spec)], tiling,
                                  batch_size=batch_size, lock=lock)
    return estimate


def tiff_shape(fh):
    """``(height, width)`` of a TIFF's first image, from its header, or None for other files.

    Parameters
    ----------
    fh : file-like
        Seekable, binary; left at position 0 for other files.

    Returns
    -------
    (int, int) or None
    """
    import tifffile

    head = fh.read(4)
    fh.seek(0)
    if head not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return None
    with tifffile.TiffFile(fh) as tif:
        page = tif.pages[0]
        return page.imagelength, page.imagewidth


def _cores(n, block):
    return [(a, min(n, a + block)) for a in range(0, n, block)]


def estimate_stats(regions, spec, block):
    """Normalisation statistics from the pixels a whole-image estimate would sample.

    Parameters
    ----------
    regions : TiffRegions
        The image.
    spec : ModelSpec
        Its percentiles, ``invert`` and ``channels`` are used.
    block : int
        The edge of the regions read at a time.

    Returns
    -------
    NormStats
        As :func:`segmodel.inference.preprocess.estimate_normalization` gives for the whole image.

    Raises
    ------
    ImageDecodeError
        If the pixels are of an unsupported type or hold NaN or infinite values.
    """
    h, w = regions.shape
    settings = Normalization(spec.p_low, spec.p_high, spec.invert)
    step = max(1, int(np.sqrt(h * w / settings.sample_pixels)))
    sample = None
    for y0, y1 in _cores(h, block):
        for x0, x1 in _cores(w, block):
            part = regions.read(y0, y1, x0, x1)[(-y0) % step :: step, (-x0) % step :: step]
            check_values(part, regions.name)
            part = to_channels(part, spec.channels)
            if sample is None:
                sample = np.zeros((-(-h // step), -(-w // step), part.shape[-1]), part.dtype)
            sy, sx = -(-y0 // step), -(-x0 // step)
            sample[sy : sy + part.shape[0], sx : sx + part.shape[1]] = part
    return estimate_normalization(sample, Normalization(settings.p_low, settings.p_high,
                                                        settings.invert, sample_pixels=sample.size))


class BlockRun:
    """One block-wise segmentation: iterate :meth:`rows`; then read the tables and ``n``.

    Parameters
    ----------
    regions : TiffRegions
        The image.
    model : LoadedModel
        An instance or binary model with percentile normalisation.
    image_id : str, optional
        The objects table's ``image_id`` (default ``""``).
    scale : float, optional
        The resize factor of the working scale (default 1.0).
    tiling : Tiling
        The model's tiling.
    batch_size : int, optional
        Tiles per model call (default 8).
    blocks : Blocks, optional
        Default ``Blocks()``.
    lock : threading.Lock, optional
        Held around model calls.

    Raises
    ------
    ValueError
        If ``blocks`` is invalid, or the model is semantic or not percentile-normalised.
    """

    def __init__(self, regions, model, *, image_id="", scale=1.0, tiling, batch_size=8,
                 blocks=None, lock=None):
        self.blocks = blocks or Blocks()
        self.blocks.validate()
        if model.spec.kind == "semantic" or model.spec.normalization != "percentile":
            raise ValueError(
                f"model {model.spec.name!r} (kind {model.spec.kind}, normalization "
                f"{model.spec.normalization}) cannot segment block by block: only instance and "
                "binary models with percentile normalisation can. Raise --tiled-above above "
                "this image's pixel count to segment it whole.")
        self.regions, self.model, self.image_id = regions, model, image_id
        self.scale, self.tiling, self.batch_size, self.lock = scale, tiling, batch_size, lock
        self.n = 0
        self.foreground = 0
        self._tables, self._intensities = [], []

    def rows(self):
        """Yield ``(y0, rows)``: final uint32 label rows, 256-row bands in order.

        Yields
        ------
        y0 : int
            The band's first row.
        rows : (n, W) ndarray of uint32
            Its labels (``n`` = 256, less at the bottom).

        Raises
        ------
        ImageDecodeError
            If the pixels are of an unsupported type or hold NaN or infinite values.
        """
        h, w = self.regions.shape
        b = self.blocks.block
        halo = int(np.ceil(self.blocks.halo / self.scale))
        stats = estimate_stats(self.regions, self.model.spec, b)
        cap = b + 2 * halo + OUT_TILE
        buf, base, emitted = np.zeros((cap, w), np.uint32), 0, 0
        cores = _cores(h, b)
        for i, (cy0, cy1) in enumerate(cores):
            for cx0, cx1 in _cores(w, b):
                self._block(stats, (cy0, cy1, cx0, cx1), halo, buf, base)
            final = h if i == len(cores) - 1 else cy1 - halo
            while emitted < final and (emitted + OUT_TILE <= final or final == h):
                n = min(OUT_TILE, h - emitted)
                band = buf[emitted - base : emitted - base + n].copy()
                self.foreground += int(np.count_nonzero(band))
                yield emitted, band
                emitted += n
            shift = emitted - base
            if shift:
                buf[:-shift] = buf[shift:]
                buf[-shift:] = 0
                base = emitted

    @property
    def objects(self):
        """The objects table of the blocks done so far (labels as in the written image)."""
        return pd.concat(self._tables, ignore_index=True) if self._tables else empty_objects()

    @property
    def intensities(self):
        """The intensities table of the blocks done so far (every channel but an alpha)."""
        if not self._intensities:
            return empty_intensities()
        return pd.concat(self._intensities, ignore_index=True)

    def _block(self, stats, core, halo, buf, base):
        h, w = self.regions.shape
        cy0, cy1, cx0, cx1 = core
        ey0, ey1 = max(0, cy0 - halo), min(h, cy1 + halo)
        ex0, ex1 = max(0, cx0 - halo), min(w, cx1 + halo)
        raw = self.regions.read(ey0, ey1, ex0, ex1)
        check_values(raw, self.image_id or self.regions.name)
        image = to_channels(raw, self.model.spec.channels)
        x = apply_normalization(image, stats)
        if self.scale != 1.0:
            x = resize(x, scaled_shape(x.shape, self.scale), order=1)
        if self.lock is not None:
            with self.lock:
                maps = self._predict(x)
        else:
            maps = self._predict(x)
        labels = finish(maps, Prepared(image, x, self.scale), self.model.spec)
        del maps, x
        local = _owned(labels, (cy0 - ey0, cy1 - ey0, cx0 - ex0, cx1 - ex0))
        target = buf[ey0 - base : ey1 - base, ex0:ex1]
        local = _drop_duplicates(local, target)
        k = int(local.max())
        if not k:
            return
        groups = ObjectPixels(local)
        table = measure_objects(local, self.image_id, groups)
        names = self.regions.channel_names
        values = measure_intensities(local, raw[..., : len(names)], names, self.image_id, groups)
        values["label"] += self.n
        self._intensities.append(values)
        table["label"] += self.n
        for col, off in (("centroid_y", ey0), ("bbox_min_y", ey0), ("bbox_max_y", ey0),
                         ("centroid_x", ex0), ("bbox_min_x", ex0), ("bbox_max_x", ex0)):
            table[col] += off
        self._tables.append(table)
        write = (local > 0) & (target == 0)
        target[write] = local[write].astype(np.uint32) + np.uint32(self.n)
        self.n += k

    def _predict(self, x):
        return predict_maps(self.model.predict_batch, [x], tiling=self.tiling,
                            batch_size=self.batch_size, n_out=n_outputs(self.model.spec),
                            exact_last=self.model.any_batch_size)[0]


def _owned(labels, core):
    """Labels (renumbered 1..k in raster order) of the objects whose centroid is in ``core``."""
    from skimage.measure import regionprops_table

    n = int(labels.max())
    if not n:
        return labels
    y0, y1, x0, x1 = core
    props = regionprops_table(labels, properties=("label", "centroid"))
    cy, cx = props["centroid-0"], props["centroid-1"]
    keep = np.zeros(n + 1, bool)
    keep[props["label"][(cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)]] = True
    remap = np.zeros(n + 1, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    return remap[labels]


def _drop_duplicates(local, target):
    """Drop objects that another block already wrote for the most part (a seam's second copy)."""
    n = int(local.max())
    if not n:
        return local
    taken = np.bincount(local[target > 0], minlength=n + 1)
    area = np.bincount(local.ravel(), minlength=n + 1)
    dup = taken * 2 > area
    dup[0] = False
    if not dup.any():
        return local
    remap = np.zeros(n + 1, np.int32)
    remap[~dup] = np.arange(int((~dup).sum()))
    return remap[local]


def write_label_tiff(fh, shape, bands, *, levels=None, min_level=512):
    """Write label bands ``(y0, rows)`` as a tiled BigTIFF with 2x subsampled SubIFD levels.

    Parameters
    ----------
    fh : file-like or path
    shape : (H, W)
    bands : iterable of (int, (n, W) ndarray of uint32)
        In order, ``n`` = 256 except the last.
    levels : int, optional
        Pyramid levels below full resolution (default: halve until the shorter side is under
        ``min_level``).
    min_level : int, optional
        Shortest side of the smallest level when ``levels`` is None (default 512).
    """
    import tifffile

    h, w = shape
    if levels is None:
        levels, side = 0, min(h, w)
        while side // 2 >= min_level:
            levels, side = levels + 1, side // 2
    pyramid = [np.zeros((-(-h // 2**k), -(-w // 2**k)), np.uint32) for k in range(1, levels + 1)]

    def tiles():
        for y0, rows in bands:
            for k, level in enumerate(pyramid, start=1):
                f = 2**k
                part = rows[::f, ::f]
                level[y0 // f : y0 // f + part.shape[0]] = part
            for x in range(0, w, OUT_TILE):
                tile = np.zeros((OUT_TILE, OUT_TILE), np.uint32)
                part = rows[:, x : x + OUT_TILE]
                tile[: part.shape[0], : part.shape[1]] = part
                yield tile

    opts = {"tile": (OUT_TILE, OUT_TILE), "compression": "zlib", "photometric": "minisblack",
            "metadata": None}
    with tifffile.TiffWriter(fh, bigtiff=True) as tw:
        tw.write(tiles(), shape=(h, w), dtype=np.uint32, subifds=levels, **opts)
        for level in pyramid:
            tw.write(level, subfiletype=1, **opts)


def write_mosaic_tiff(fh, images, shape, *, magnify=1, offset=0):
    """Write a tiled RGB TIFF of ``shape`` tiling ``images`` (each ``(256, 256[, C])`` uint8).

    Cell ``(i, j)`` of the grid holds image ``(7 * i + j) % len(images)`` enlarged ``magnify``
    times (pixel repetition), the grid shifted up and left by ``offset`` pixels. Used to
    assemble large test and benchmark images from real ones; written tile by tile, never whole.

    Parameters
    ----------
    fh : file-like or str
        Where to write the BigTIFF.
    images : sequence of (256, 256[, C]) array_like
        The cells.
    shape : (int, int)
        ``(H, W)`` of the TIFF.
    magnify, offset : int, optional
        Enlargement (default 1) and grid shift in pixels (default 0).

    Raises
    ------
    ValueError
        If an image is not 256 x 256.
    """
    import tifffile

    cells = [to_channels(np.asarray(im), 3).astype(np.uint8) for im in images]
    if any(c.shape[:2] != (OUT_TILE, OUT_TILE) for c in cells):
        raise ValueError(f"images must be {OUT_TILE}x{OUT_TILE}.")
    h, w = shape

    def tiles():
        for ty in range(0, h, OUT_TILE):
            for tx in range(0, w, OUT_TILE):
                yield _mosaic_tile(cells, ty + offset, tx + offset, magnify)

    with tifffile.TiffWriter(fh, bigtiff=True) as tw:
        tw.write(tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(OUT_TILE, OUT_TILE),
                 compression="zlib", photometric="rgb", metadata=None)


def _mosaic_tile(cells, gy, gx, magnify):
    cell = OUT_TILE * magnify
    rows, cols = np.arange(gy, gy + OUT_TILE), np.arange(gx, gx + OUT_TILE)
    tile = np.zeros((OUT_TILE, OUT_TILE, 3), np.uint8)
    for i in np.unique(rows // cell):
        for j in np.unique(cols // cell):
            rm, cm = rows // cell == i, cols // cell == j
            src = cells[(7 * int(i) + int(j)) % len(cells)]
            tile[np.ix_(rm, cm)] = src[np.ix_((rows[rm] % cell) // magnify,
                                              (cols[cm] % cell) // magnify)]
    return tile
