"""Decoding, normalisation, resizing, pyramids and tiling.

Everything here works on numpy arrays in memory; storage lives in :mod:`segmodel.storage.io`.
Axes are ``(H, W, C)`` for images and ``(H, W)`` for label images throughout.
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Images with more pixels than this are refused by :func:`decode_image` (a decompression bomb
#: guard; huge slides belong to the tiled path).
MAX_PIXELS = 256_000_000


class ImageDecodeError(ValueError):
    """Raised when bytes cannot be decoded into an image (a ``ValueError``)."""


def decode_image(data, *, name="<bytes>", max_pixels=MAX_PIXELS):
    """Decode PNG/JPEG/TIFF/BMP bytes into an ``(H, W, C)`` array.

    Parameters
    ----------
    data : bytes
        The encoded file.
    name : str, optional
        Shown in error messages.
    max_pixels : int, optional
        Refuse images with more pixels than this.

    Returns
    -------
    image : (H, W, C) ndarray
        Integer or real-valued (usually uint8, uint16 or float32), with ``C`` in {1, 3, 4}.
        Palette images become RGB and CMYK images RGB.

    Raises
    ------
    ImageDecodeError
        The only error for bad input: an empty, truncated or non-image file; a header declaring
        more than ``max_pixels`` pixels (refused before any pixel is decoded); a multi-page,
        volumetric or many-channel file; complex pixels; NaN or infinite values.
    """
    if len(data) == 0:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes).")
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        image = _decode_tiff(data, name, max_pixels)
    else:
        image = _decode_pillow(data, name, max_pixels)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
        raise ImageDecodeError(
            f"{name}: expected a 2-D gray, RGB or RGBA image. Received an array of shape "
            f"{image.shape}; multi-page or volumetric files are not supported."
        )
    if image.shape[-1] == 2:  # gray + alpha
        image = image[..., :1]
    check_values(image, name)
    return image


def check_values(image, name):
    """Refuse pixel types the pipeline cannot normalise, and NaN or infinite values.

    Parameters
    ----------
    image : ndarray
        The decoded pixels.
    name : str
        Shown in error messages.

    Raises
    ------
    ImageDecodeError
        A dtype that is not bool, integer or real (complex, object, ...); NaN or infinite
        values; or float64 values beyond the float32 range.
    """
    if image.dtype.kind not in "buif":
        raise ImageDecodeError(
            f"{name}: unsupported pixel type {image.dtype}. segflow reads integer or real-valued "
            "(float) images; convert the file to one of those."
        )
    if image.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise ImageDecodeError(
                f"{name}: {bad} pixel values are NaN or infinite. Replace them with finite values "
                "(e.g. 0 for missing data) and run again."
            )
        if image.dtype.itemsize > 4 and image.size and \
                float(np.abs(image).max()) > float(np.finfo(np.float32).max):
            raise ImageDecodeError(
                f"{name}: pixel values up to {float(np.abs(image).max()):.3g} are beyond the "
                "float32 range the model works in. Rescale the image."
            )


def _decode_tiff(data, name, max_pixels):
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            _check_tiff_header(tif, page, name, max_pixels)
            image = page.asarray()
            photometric, colormap = int(page.photometric), page.colormap
    except ImageDecodeError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise ImageDecodeError(
            f"{name}: not a readable TIFF ({type(exc).__name__}: {exc}).") from exc
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)  # planar CYX -> YXC
    if photometric == 3 and colormap is not None and image.ndim == 2:  # palette
        image = np.moveaxis(colormap, 0, -1)[np.minimum(image, colormap.shape[1] - 1)]
    elif photometric == 5 and image.ndim == 3 and image.shape[-1] == 4:  # CMYK
        image = _cmyk_to_rgb(image)
    return image


def _check_tiff_header(tif, page, name, max_pixels):
    """Refuse over-sized, multi-page and many-channel TIFFs from their tags, before decoding."""
    h, w, depth = int(page.imagelength), int(page.imagewidth), int(page.imagedepth)
    if h * w * depth > max_pixels:
        raise ImageDecodeError(
            f"{name}: the header declares {h}x{w} pixels, over max_pixels={max_pixels}."
        )
    samples = int(page.samplesperpixel)
    if samples > 4 or depth > 1:
        raise ImageDecodeError(
            f"{name}: expected a 2-D gray, RGB or RGBA image. Received {samples} channels"
            f"{f' and depth {depth}' if depth > 1 else ''}; save one 2-D image per file."
        )
    planes = int(np.prod(tif.series[0].shape)) // max(1, int(np.prod(page.shape)))
    if len(tif.pages) > 1 and planes > 1:
        raise ImageDecodeError(
            f"{name}: a multi-page or volumetric TIFF ({len(tif.pages)} pages, shape "
            f"{tuple(tif.series[0].shape)}) is not supported; save one 2-D image per file."
        )


def _cmyk_to_rgb(image):
    top = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    ink = image.astype(np.float32) / top
    rgb = (1.0 - ink[..., :3]) * (1.0 - ink[..., 3:])
    return (rgb * top).astype(image.dtype)


def _allow_in_pillow(max_pixels):
    """Raise Pillow's own pixel limit to ``max_pixels`` (never lower it).

    Pillow refuses images over twice its ``MAX_IMAGE_PIXELS`` (179 million by default) at open,
    whatever ``max_pixels`` says; segflow checks ``max_pixels`` on the header itself before
    decoding, so Pillow's limit only needs to let those images through. Process-wide, as
    Pillow keeps it; a concurrent call can only raise it further.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _decode_pillow(data, name, max_pixels):
    _allow_in_pillow(max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(
                    f"{name}: the header declares {img.height}x{img.width} pixels, over "
                    f"max_pixels={max_pixels}."
                )
            img.load()
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                alpha = "A" in img.mode or "transparency" in img.info
                img = img.convert("RGBA" if alpha else "RGB")
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return np.asarray(img, dtype=np.uint16)
            return np.asarray(img)
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{name}: not a readable image (not PNG, JPEG, TIFF or BMP data; first bytes "
            f"{bytes(data[:8])!r})."
        ) from exc
    except Image.DecompressionBombError as exc:  # Pillow's own header check, before ours
        raise ImageDecodeError(
            f"{name}: {exc} Refused before decoding (max_pixels={max_pixels}).") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad data
        raise ImageDecodeError(
            f"{name}: not a readable image ({type(exc).__name__}: {exc}).") from exc


def to_channels(image, channels=3):
    """Convert an ``(H, W, C)`` image to ``channels`` channels (alpha dropped, gray repeated).

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        The image; a 4th channel is taken as alpha.
    channels : int, optional
        The channels wanted (default 3); 1 averages the colour channels into float32.

    Returns
    -------
    (H, W, channels) ndarray
        ``image`` itself (or a view) where nothing changes.

    Raises
    ------
    ValueError
        If ``image`` has 2 (or more than 4) channels and ``channels`` is neither 1 nor its count.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return image.astype(np.float32).mean(axis=-1, keepdims=True)
    if image.shape[-1] == 1:
        return np.repeat(image, channels, axis=-1)
    raise ValueError(
        f"Cannot convert an image with {image.shape[-1]} channels to channels={channels}."
    )


@dataclass(frozen=True)
class Normalization:
    """Percentile normalisation settings: ``(x - p_low) / (p_high - p_low)``, optional inversion.

    ``invert='auto'`` inverts images whose normalised median is bright (stained or brightfield
    images, where nuclei are dark on a light background) so nuclei are always bright.

    Parameters
    ----------
    p_low, p_high : float, optional
        The percentiles mapped to 0 and 1 (defaults 1.0 and 99.8).
    invert : {'auto', 'never'}, optional
        Default ``'auto'``.
    sample_pixels : int, optional
        Percentiles come from a regular subsample of about this many pixels (default 1e6).
    """

    p_low: float = 1.0
    p_high: float = 99.8
    invert: str = "auto"  # {'auto', 'never'}
    sample_pixels: int = 1_000_000


@dataclass(frozen=True)
class NormStats:
    """Statistics estimated once per image, applied to every tile of it.

    Parameters
    ----------
    low, high : float
        The values mapped to 0 and 1.
    invert : bool
        Whether the normalised image is inverted (``1 - x``).
    """

    low: float
    high: float
    invert: bool

    @property
    def flat(self):
        """True when ``high`` is not above ``low`` (a constant image)."""
        return not self.high > self.low


def estimate_normalization(image, settings=Normalization()):
    """Estimate :class:`NormStats` of an ``(H, W, C)`` image (subsampled for big images).

    A nearly flat image falls back to its full range (min, max) so its output stays finite.

    Parameters
    ----------
    image : (H, W, C) ndarray
        The image.
    settings : Normalization, optional
        Percentiles, inversion and sample size (default ``Normalization()``).

    Returns
    -------
    NormStats
    """
    h, w = image.shape[:2]
    step = max(1, int(np.sqrt(h * w / settings.sample_pixels)))
    sample = image[::step, ::step]
    low, high = _percentiles(sample, [settings.p_low, settings.p_high])
    if not high > low:  # nearly flat: fall back to the full range so the image stays finite
        low, high = float(sample.min()), float(sample.max())
    invert = False
    if settings.invert == "auto" and high > low:
        # nuclei dark on a light background: the median pixel (channel mean) is above mid-range
        median = channel_mean_percentiles(sample, [50])[0]
        invert = bool(median > low + 0.5 * (high - low))
    return NormStats(float(low), float(high), invert)


def channel_mean_percentiles(image, qs):
    """Percentiles ``qs`` of an ``(H, W, C)`` image's channel mean.

    From a histogram of the channel sum for 8/16-bit images (exact, and many times faster than
    sorting floats).

    Parameters
    ----------
    image : (H, W, C) ndarray
        The image.
    qs : sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    list of float
        One value per ``qs``, with linear interpolation as ``np.percentile``.
    """
    if _is_small_uint(image):
        total = image[..., 0].astype(np.uint32)  # channel by channel: a strided
        for c in range(1, image.shape[-1]):  # sum(axis=-1) is ten times slower
            total += image[..., c]
        return [v / image.shape[-1] for v in _percentiles(total, qs)]
    return [float(v) for v in np.percentile(np.asarray(image, np.float32).mean(axis=-1), qs)]


def _is_small_uint(a):
    return a.dtype.kind == "u" and a.dtype.itemsize <= 2


def _counts(values):
    """``np.bincount(values.ravel())`` (trailing zeros aside), without copying a strided view.

    ``np.bincount(values.ravel())`` (trailing zeros aside); 8-bit arrays are counted a block of rows
    at a time, so a strided view (an RGB view of RGBA pixels, a subsample) is never copied whole.
    """
    if values.dtype != np.uint8 or values.ndim < 2 or values.flags.c_contiguous:
        return np.bincount(values.ravel())
    rows = max(1, (1 << 16) // max(1, values[0].size))
    counts = np.zeros(256, np.int64)
    for i in range(0, len(values), rows):
        counts += np.bincount(values[i:i + rows].ravel(), minlength=256)
    return counts


def _percentiles(values, qs):
    """``np.percentile(values, qs)``, from a histogram for 8/16-bit values.

    ``np.percentile(values, qs)`` (linear interpolation); for 8/16-bit images, and sums of their
    channels, exactly that from a histogram, which is several times faster than sorting.
    """
    if not (_is_small_uint(values) or values.dtype == np.uint32 and values.max() < 1 << 20):
        return [float(v) for v in np.percentile(np.asarray(values, np.float32), qs)]
    cum = np.cumsum(_counts(values))
    n = int(cum[-1])
    out = []
    for q in qs:  # the k-th smallest value is the first whose cumulative count passes k
        pos = q / 100 * (n - 1)
        k = int(np.floor(pos))
        below = int(np.searchsorted(cum, k, side="right"))
        above = int(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        out.append(below + (pos - k) * (above - below))
    return out


def apply_normalization(image, stats):
    """Apply :class:`NormStats` to an image or tile; flat images become all zeros.

    One float32 copy of the image, then every step in place: the same values as computing
    each step into a new array, without three more image-sized allocations (and their page
    faults) per image. 8- and 16-bit images (bigger than 4 pixels per possible value) go
    through a lookup table of the same values instead. The input is never changed.

    Parameters
    ----------
    image : (H, W[, C]) array_like
        The image or tile.
    stats : NormStats
        From :func:`estimate_normalization`.

    Returns
    -------
    (H, W[, C]) ndarray of float32
        Clipped to [-0.5, 1.5].
    """
    image = np.asarray(image)
    if image.dtype in (np.uint8, np.uint16) and image.size > 4 * 2 ** (8 * image.itemsize):
        # 8/16-bit: the formula on every possible value once, then one lookup per pixel (the
        # same float32 operations on the same values, so the same bits)
        lut = apply_normalization(np.arange(2 ** (8 * image.itemsize), dtype=image.dtype),
                                  stats)
        return lut[image]
    x = np.array(image, dtype=np.float32)  # a copy: the caller's array is never changed
    if stats.flat:
        return np.zeros_like(x)
    np.subtract(x, stats.low, out=x)
    np.divide(x, stats.high - stats.low, out=x)
    if stats.invert:
        np.subtract(1.0, x, out=x)
    return np.clip(x, -0.5, 1.5, out=x)


def resize(image, shape, *, order=1):
    """Resize ``(H, W[, C])`` to ``shape`` (H, W); ``order=0`` for labels, 1 for intensities.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        The image or label image.
    shape : (int, int)
        The output's ``(H, W)``.
    order : int, optional
        Spline order (default 1). 0 keeps ``image``'s dtype (nearest neighbour); other orders
        return float32, anti-aliased when shrinking.

    Returns
    -------
    (shape[0], shape[1][, C]) ndarray
        ``image`` itself when its shape is ``shape`` already.
    """
    from skimage.transform import resize as _resize

    shape = tuple(int(s) for s in shape)
    if image.shape[:2] == shape:
        return image
    out_shape = shape + image.shape[2:]
    if order == 0:
        return _resize(image, out_shape, order=0, preserve_range=True, anti_aliasing=False).astype(
            image.dtype
        )
    return _resize(
        image.astype(np.float32), out_shape, order=order, preserve_range=True,
        anti_aliasing=bool(out_shape[0] < image.shape[0]),
    ).astype(np.float32)


def scaled_shape(shape, scale):
    """The ``(H, W)`` of an image of ``shape`` resized by ``scale`` (at least 1 pixel).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W, ...)``; only the first two are used.
    scale : float
        The resize factor.

    Returns
    -------
    (int, int)
    """
    return tuple(max(1, int(round(s * scale))) for s in shape[:2])


def pyramid(image, *, min_size=32):
    """Successive 2x downsamplings of ``image``, the original first.

    Stops before a level's shorter side would drop below ``min_size``.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        The image.
    min_size : int, optional
        The least shorter side of a level (default 32); must be at least 1 (not checked).

    Returns
    -------
    list of ndarray
        ``image``, then float32 levels of ``(H // 2, W // 2)``, ... (linear, anti-aliased).
    """
    levels = [image]
    while min(levels[-1].shape[:2]) // 2 >= min_size:
        prev = levels[-1]
        h, w = prev.shape[:2]
        levels.append(resize(prev, (h // 2, w // 2), order=1))
    return levels


@dataclass(frozen=True)
class Tiling:
    """Fixed-size overlapping tiles. ``tile`` must be a multiple of the model's ``divisor``.

    Parameters
    ----------
    tile : int, optional
        The tile edge in pixels (default 256).
    overlap : int, optional
        Pixels of context each tile sees beyond the part it keeps, per side (default 32).
    large : int, optional
        A second, larger tile edge for images that it covers computing fewer pixels, or 0 for
        none (default). Each tile computes ``tile**2`` pixels to keep ``(tile - 2*overlap)**2``:
        on a 2048x2048 image 256 px tiles compute 1.9 times its pixels, 512 px tiles 1.6 times.
        See :meth:`for_shape`.
    """

    tile: int = 256
    overlap: int = 32
    large: int = 0

    def for_shape(self, shape):
        """The tiling for one image: ``large`` tiles where they compute fewer pixels.

        Parameters
        ----------
        shape : tuple of int
            ``(H, W, ...)`` of the image.

        Returns
        -------
        Tiling
            One tile size (``large`` 0): this tiling's ``tile``, or ``large`` where its tiles
            cover the image with fewer pixels computed.
        """
        small = Tiling(self.tile, self.overlap)
        if not self.large:
            return small
        big = Tiling(self.large, self.overlap)
        return big if computed_pixels(shape, big) < computed_pixels(shape, small) else small

    def validate(self, divisor=16):
        """Check ``tile`` and ``overlap`` against a model's ``divisor``.

        Parameters
        ----------
        divisor : int, optional
            The model's total downsampling factor (default 16).

        Raises
        ------
        ValueError
            If ``tile`` is not a positive multiple of ``divisor``, or ``overlap`` is not in
            ``[0, tile / 2)``; the message suggests a value that works.
        """
        if self.large and (self.large % divisor or self.large <= self.tile):
            raise ValueError(f"large must be 0 or a multiple of {divisor} above tile_size. "
                             f"Received: large={self.large} with tile_size={self.tile}.")
        if self.tile < divisor or self.tile % divisor:
            raise ValueError(
                f"tile_size must be a positive multiple of {divisor} for this model. "
                f"Received: tile_size={self.tile}. "
                f"Use e.g. {max(divisor, self.tile // divisor * divisor)}."
            )
        if not 0 <= self.overlap < self.tile // 2:
            if self.overlap >= 0:
                raise ValueError(
                    f"tile_size must be more than twice the overlap of {self.overlap} "
                    f"pixels (each tile keeps its centre). Received: tile_size={self.tile}. "
                    f"Use {-(-(2 * self.overlap + 1) // divisor) * divisor} or more."
                )
            raise ValueError(f"overlap must be in [0, tile_size/2). Received: "
                             f"overlap={self.overlap} with tile_size={self.tile}.")


def computed_pixels(shape, tiling):
    """Pixels the model computes to cover an image of ``shape`` with ``tiling``'s tiles.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W, ...)`` of the image.
    tiling : Tiling

    Returns
    -------
    int
        ``number of tiles * tile**2``.
    """
    return len(tile_origins(shape, tiling)) * tiling.tile ** 2


def tile_origins(shape, tiling):
    """Top-left corners ``[(y, x), ...]`` of the tiles covering an image of ``shape``.

    Tiles step by ``tile - 2*overlap``; the last row/column is shifted back so every tile lies
    inside the image when the image is at least one tile big (smaller images are padded).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W, ...)`` of the image.
    tiling : Tiling
        A validated tiling (see :meth:`Tiling.validate`).

    Returns
    -------
    list of (int, int)
        Row by row.
    """
    step = tiling.tile - 2 * tiling.overlap

    def starts(n):
        if n <= tiling.tile:
            return [0]
        s = list(range(0, n - tiling.tile, step))
        s.append(n - tiling.tile)
        return s

    return [(y, x) for y in starts(shape[0]) for x in starts(shape[1])]


def extract_tile(image, origin, tile):
    """Cut a ``tile x tile`` window at ``origin``, zero-padded where it leaves the image.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        The image.
    origin : (int, int)
        ``(y, x)`` of the window's top-left corner.
    tile : int
        The window's edge.

    Returns
    -------
    (tile, tile[, C]) ndarray
        A view of ``image`` where the window fits, else a zero-padded copy.
    """
    y, x = origin
    patch = image[y : y + tile, x : x + tile]
    if patch.shape[0] == tile and patch.shape[1] == tile:
        return patch
    out = np.zeros((tile, tile) + image.shape[2:], dtype=image.dtype)
    out[: patch.shape[0], : patch.shape[1]] = patch
    return out


def owned_region(shape, origin, tiling):
    """The ``(rows, cols)`` slices of an image that the tile at ``origin`` fills.

    The slices of an image of ``shape`` that the tile at ``origin`` fills when the tiles of
    :func:`tile_origins` are stitched back in their order.

    A tile owns its centre, all but ``tiling.overlap`` pixels on each side, and reaches out to
    the image's borders where it touches them. Tiles step by ``tile - 2 * overlap``, so the
    centres of neighbouring tiles abut and every pixel is owned by a tile that saw at least
    ``overlap`` pixels of context around it (or the image's border). Where the last row or
    column of tiles, shifted back to fit the image, overlaps the one before, the later tile's
    pixels are taken.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W, ...)`` of the image.
    origin : (int, int)
        The tile's top-left corner, from :func:`tile_origins`.
    tiling : Tiling
        The tiling used.

    Returns
    -------
    rows, cols : slice
    """
    t, ov = tiling.tile, tiling.overlap

    def span(start, n):
        return slice(0 if start == 0 else start + ov, n if start + t >= n else start + t - ov)

    return span(origin[0], shape[0]), span(origin[1], shape[1])
