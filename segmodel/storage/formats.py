"""Microscopy formats: TIFF/OME-TIFF, OME-Zarr (NGFF) and Pillow images with their metadata.

:func:`read_image` turns one input (a file's bytes, or an OME-Zarr folder) into an
:class:`ImageData`: one 2-D plane with every channel, the channel names and the pixel size the
file gives. :func:`model_image` picks what the model segments (``channel``), and
:func:`measure_channels` measures every channel on every object (the intensities table).

Decoding is left to tifffile, zarr and Pillow. Sizes are checked from headers (TIFF tags, zarr
array metadata) before any pixel is read, and only the chosen plane is read.
"""

import io
import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from segmodel.inference.measure import measure_intensities
from segmodel.inference.preprocess import MAX_PIXELS, ImageDecodeError, check_values, decode_image

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Axes (tifffile letters, NGFF types) that hold channels; every other non-YX axis holds planes.
CHANNEL_AXES = ("C", "S")
#: Micrometres per unit, for OME and NGFF unit names.
_UM = {"µm": 1.0, "um": 1.0, "micrometer": 1.0, "micron": 1.0, "microns": 1.0,
       "\\u00B5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3,
       "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "Å": 1e-4, "angstrom": 1e-4,
       "pm": 1e-6, "picometer": 1e-6}


@dataclass
class ImageData:
    """One 2-D plane of an input image, every channel kept.

    Attributes
    ----------
    image : (H, W, C) ndarray
        The plane's pixels, every channel.
    channel_names : tuple of str
        ``C`` names: the file's, else ``"0"``, ``"1"``, ...
    pixel_size_um : float or None, optional
        The pixel's edge in micrometres at the level read; None (default) when the file does not
        say.
    axes : str, optional
        The source's axes, e.g. ``"TCZYX"``, ``"YXS"`` (default ``"YXC"``).
    rgb : bool, optional
        True (default) when the channels are the colour samples of one picture (gray, RGB,
        RGBA), which the model takes as they are.
    """

    image: np.ndarray
    channel_names: tuple
    pixel_size_um: object = None
    axes: str = "YXC"
    rgb: bool = True


def is_zarr(path):
    """True for a path naming an OME-Zarr (any ``*.zarr`` folder).

    Parameters
    ----------
    path : str
        A path or URL; a trailing slash is ignored, case is not.

    Returns
    -------
    bool
    """
    return posixpath.basename(path.rstrip("/")).lower().endswith(".zarr")


def read_image(store, path, *, name=None, max_pixels=MAX_PIXELS, plane=None, pyramid_level=0):
    """Read the image at ``path`` of ``store`` (a file, or an OME-Zarr folder).

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The input store.
    path : str
        A full path in ``store.fs``; a ``*.zarr`` folder is read as OME-Zarr.
    name : str, optional
        Shown in error messages (default ``path``).
    max_pixels : int, optional
        Refuse planes with more pixels than this (default :data:`MAX_PIXELS`).
    plane : int, optional
        The plane of a stack or time series to read (default None: the image must be 2-D).
    pyramid_level : int, optional
        The resolution level, 0 (default) for full size.

    Returns
    -------
    ImageData

    Raises
    ------
    ImageDecodeError
        A file that cannot be read as an image, over ``max_pixels``, a stack without
        ``plane`` or a plane or level the file does not have.
    FileNotFoundError
        If there is no file at ``path``.
    """
    name = name or path
    if is_zarr(path):
        return read_ome_zarr(store.zarr_store(path), name=name, max_pixels=max_pixels,
                             plane=plane, pyramid_level=pyramid_level)
    return decode(store.read_bytes(path), name=name, max_pixels=max_pixels, plane=plane,
                  pyramid_level=pyramid_level)


def decode(data, *, name="<bytes>", max_pixels=MAX_PIXELS, plane=None, pyramid_level=0):
    """:class:`ImageData` from a file's bytes (TIFF through tifffile, others through Pillow).

    Parameters
    ----------
    data : bytes
        The encoded file.
    name : str, optional
        Shown in error messages (default ``"<bytes>"``).
    max_pixels, plane, pyramid_level : int, optional
        As in :func:`read_image` (defaults :data:`MAX_PIXELS`, None and 0).

    Returns
    -------
    ImageData

    Raises
    ------
    ImageDecodeError
        Bytes that are not a readable image, over ``max_pixels``, a stack without ``plane``, or
        a plane or level the file does not have.
    """
    if len(data) and bytes(data[:4]) in TIFF_MAGIC:
        return _read_tiff(data, name, max_pixels, plane, pyramid_level)
    _check_level(name, pyramid_level, 1)
    image = decode_image(data, name=name, max_pixels=max_pixels)
    _check_plane(name, plane, 1, "YXC", image.shape)
    return ImageData(image, _indices(image.shape[-1]), None, "YXC", True)


def _indices(n):
    return tuple(str(i) for i in range(n))


def _check_level(name, level, levels):
    if not 0 <= level < levels:
        raise ImageDecodeError(
            f"{name}: pyramid_level={level} (--pyramid-level) does not exist: the file has "
            f"{levels} level{'s' if levels > 1 else ''} (0 to {levels - 1}; 0 = full resolution)."
        )


def _check_plane(name, plane, planes, axes, shape, pages=None):
    if plane is None:
        if planes > 1:
            where = f" in {pages} pages" if pages else ""
            raise ImageDecodeError(
                f"{name}: a 3-D stack or time series (axes {axes}, shape {tuple(shape)}: "
                f"{planes} planes{where}). 3-D and time-lapse segmentation are out of scope; "
                f"segflow segments one 2-D plane: pick it with --plane N (0 to {planes - 1})."
            )
        return 0
    if planes == 1:  # a 2-D image is its own only plane, whatever --plane says
        return 0
    if not 0 <= plane < planes:
        raise ImageDecodeError(
            f"{name}: plane={plane} (--plane) does not exist: the image has {planes} "
            f"plane{'s' if planes > 1 else ''} (0 to {planes - 1}; axes {axes}, shape "
            f"{tuple(shape)})."
        )
    return plane


def _check_size(name, h, w, channels, max_pixels):
    if h * w > max_pixels or h * w * channels > 4 * max_pixels:
        raise ImageDecodeError(
            f"{name}: the header declares {h}x{w} pixels and {channels} channels, over "
            f"max_pixels={max_pixels}."
        )


def _split_axes(axes, shape, name):
    """``(plane axes, channel axes)`` positions; Y and X must both be present."""
    if "Y" not in axes or "X" not in axes:
        raise ImageDecodeError(
            f"{name}: no 2-D image in the file (axes {axes}, shape {tuple(shape)})."
        )
    planes = [i for i, a in enumerate(axes) if a not in ("Y", "X") + CHANNEL_AXES]
    channels = [i for i, a in enumerate(axes) if a in CHANNEL_AXES]
    return planes, channels


def _select(array, axes, shape, plane, name, pages=None):
    """Read one plane, every channel, of an array-like with ``axes`` -> ``(H, W, C)``."""
    plane_axes, channel_axes = _split_axes(axes, shape, name)
    n_planes = int(np.prod([shape[i] for i in plane_axes])) if plane_axes else 1
    index = _check_plane(name, plane, n_planes, axes, shape, pages)
    key = [slice(None)] * len(shape)
    for i, k in zip(plane_axes, np.unravel_index(index, [shape[i] for i in plane_axes])
                    if plane_axes else ()):
        key[i] = int(k)
    data = np.asarray(array[tuple(key)])
    kept = [a for i, a in enumerate(axes) if i not in plane_axes]
    order = [kept.index("Y"), kept.index("X")] + [kept.index(axes[i]) for i in channel_axes]
    data = np.transpose(data, order)
    return data.reshape(data.shape[0], data.shape[1], -1)


def _read_tiff(data, name, max_pixels, plane, level):
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            _check_level(name, level, len(series.levels))
            part = series.levels[level]
            axes, shape = part.axes, tuple(part.shape)
            _, channel_axes = _split_axes(axes, shape, name)
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            n_channels = int(np.prod([shape[i] for i in channel_axes])) if channel_axes else 1
            _check_size(name, h, w, n_channels, max_pixels)
            page = series.pages[0] if series.pages else tif.pages[0]
            photometric = int(page.photometric)
            names, pixel_size = tiff_metadata(tif, n_channels)  # of the full-size level
            if pixel_size and level:
                full = series.levels[0]
                pixel_size *= float(np.sqrt(
                    full.shape[full.axes.index("Y")] / h * full.shape[full.axes.index("X")] / w))
            samples = int(page.samplesperpixel)
            alpha = tuple(int(e) for e in page.extrasamples or ()) in ((1,), (2,))
            # one picture: gray, gray + alpha, RGB(A), palette, CMYK; 2-4 samples of a gray
            # page without an alpha are channels (DAPI, GFP, ...), read like a stack's
            picture = samples == 1 or photometric in (2, 3, 5, 6) or (samples == 2 and alpha)
            simple = (level == 0 and len(tif.pages) == 1 and int(page.imagedepth) <= 1
                      and samples <= 4 and picture)
            if simple:  # one 2-D page: palette, CMYK, planar RGB... as before
                image = None
            else:
                import zarr

                image = _select(zarr.open(series.aszarr(level=level), mode="r+"), axes,
                                shape, plane, name, len(tif.pages))
                check_values(image, name)
    except ImageDecodeError:
        raise
    except Exception as exc:  # tifffile and zarr raise many types for broken files
        raise ImageDecodeError(f"{name}: not a readable TIFF ({type(exc).__name__}: {exc}).") \
            from exc
    if image is None:
        image = decode_image(data, name=name, max_pixels=max_pixels)
        _check_plane(name, plane, 1, axes, shape)
    rgb = photometric in (2, 3, 5, 6) or image.shape[-1] == 1 or (
        names is None and image.shape[-1] == 3)
    if names is None or len(names) != image.shape[-1]:
        names = _indices(image.shape[-1])
    return ImageData(image, tuple(names), pixel_size, axes, rgb)


def tiff_metadata(tif, n_channels):
    """``(channel names or None, pixel size in µm or None)`` from OME-XML or ImageJ tags.

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file.
    n_channels : int
        The number of channels; ImageJ labels of another count are ignored.

    Returns
    -------
    names : list of str or None
    size : float or None
        The pixel's edge in µm (the square root of its area where X and Y differ).
    """
    names, size = None, None
    if tif.is_ome and tif.ome_metadata:
        try:
            names, size = _ome_xml(tif.ome_metadata)
        except ET.ParseError:
            pass
    elif tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        labels = meta.get("Labels")
        if isinstance(labels, (list, tuple)) and len(labels) == n_channels:
            names = [str(v) for v in labels]
        unit = _UM.get(str(meta.get("unit", "")).strip().lower().replace("\\u00b5", "µ"))
        edges = []
        for name in ("XResolution", "YResolution"):
            tag = tif.pages[0].tags.get(name)
            num, den = tag.value if tag is not None else (0, 0)
            edges.append(unit * den / num if unit and num and den else None)
        size = _edge(*edges)
    return names, size


def _edge(x, y):
    """The pixel's edge in µm from its X and Y sizes (either may be None).

    Where they differ, the square root of the pixel's area, so areas in µm² come out right.
    """
    if x and y:
        return float(np.sqrt(x * y))
    return x or y or None


def _ome_xml(text):
    root = ET.fromstring(text)
    pixels = root.find("{*}Image/{*}Pixels")
    if pixels is None:
        return None, None
    names = [c.get("Name") or str(i)
             for i, c in enumerate(pixels.findall("{*}Channel"))]
    edges = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}")
        unit = _UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        ok = value is not None and unit is not None and float(value) > 0
        edges.append(float(value) * unit if ok else None)
    return (names or None), _edge(*edges)


def read_ome_zarr(zstore, *, name="<zarr>", max_pixels=MAX_PIXELS, plane=None, pyramid_level=0):
    """One plane of an OME-Zarr (NGFF 0.4 or 0.5) image at one pyramid level.

    Parameters
    ----------
    zstore : zarr store
        The image's group (:meth:`segmodel.storage.io.Store.zarr_store`).
    name, max_pixels, plane, pyramid_level
        As :func:`read_image`.

    Returns
    -------
    ImageData

    Raises
    ------
    ImageDecodeError
        Not an OME-Zarr image, unreadable pixels, or as :func:`read_image`.
    """
    group, ome = _open_ome_zarr(zstore, name)
    ms = ome["multiscales"][0]
    datasets = ms.get("datasets") or []
    _check_level(name, pyramid_level, len(datasets))
    dataset = datasets[pyramid_level]
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"]
    axes_meta = [a if isinstance(a, dict) else {"name": a} for a in axes_meta]
    axes = "".join(_ngff_axis(a) for a in axes_meta)
    try:
        array = group[dataset["path"]]
        shape = tuple(array.shape)
    except Exception as exc:
        if _transient(exc):
            raise
        raise ImageDecodeError(f"{name}: level {pyramid_level} of the OME-Zarr cannot be read "
                               f"({type(exc).__name__}: {exc}).") from exc
    if len(shape) != len(axes):
        raise ImageDecodeError(f"{name}: the OME-Zarr declares axes {axes} for an array of "
                               f"shape {shape}.")
    _, channel_axes = _split_axes(axes, shape, name)
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    n_channels = int(np.prod([shape[i] for i in channel_axes])) if channel_axes else 1
    _check_size(name, h, w, n_channels, max_pixels)
    try:
        image = _select(array, axes, shape, plane, name)
    except ImageDecodeError:
        raise
    except Exception as exc:
        if _transient(exc):
            raise
        raise ImageDecodeError(f"{name}: pixels of the OME-Zarr cannot be read "
                               f"({type(exc).__name__}: {exc}).") from exc
    check_values(image, name)
    channels = (ome.get("omero") or {}).get("channels") or []
    names = [str(c.get("label") or i) for i, c in enumerate(channels) if isinstance(c, dict)]
    if len(names) != image.shape[-1]:
        names = _indices(image.shape[-1])
    pixel_size = _ngff_pixel_size(ms, dataset, axes_meta, axes)
    return ImageData(image, tuple(names), pixel_size, axes, image.shape[-1] == 1)


def _open_ome_zarr(zstore, name):
    """``(group, ome attributes)`` of an OME-Zarr image; ImageDecodeError for anything else."""
    import zarr

    try:
        group = zarr.open_group(store=zstore, mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:
        if isinstance(exc, (PermissionError,)) or _transient(exc):
            raise
        raise ImageDecodeError(f"{name}: not a readable OME-Zarr ({type(exc).__name__}: "
                               f"{exc}).") from exc
    ome = attrs.get("ome", attrs)
    if not ome.get("multiscales"):
        raise ImageDecodeError(
            f"{name}: not an OME-Zarr image: no 'multiscales' in its attributes (a plate, "
            "well or labels group is not an image; point segflow at the image itself)."
        )
    return group, ome


def _transient(exc):
    from segmodel.storage.io import is_transient

    return is_transient(exc)


def _ngff_axis(axis):
    """A tifffile-style letter for an NGFF axis: Y, X, C (channel), T, Z or Q (other)."""
    kind, label = axis.get("type"), str(axis.get("name", "")).lower()
    if kind == "channel" or label == "c":
        return "C"
    if label in ("x", "y", "z", "t"):
        return label.upper()
    return "T" if kind == "time" else "Q"


def _ngff_pixel_size(ms, dataset, axes_meta, axes):
    """Micrometres per pixel at ``dataset``'s level (see :func:`_edge`), or None."""
    scale = np.ones(len(axes))
    for transforms in (dataset.get("coordinateTransformations"),
                       ms.get("coordinateTransformations")):
        for t in transforms or []:
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                scale = scale * np.asarray(t["scale"], dtype=float)
    edges = []
    for letter in ("X", "Y"):
        i = axes.index(letter)
        unit = _UM.get(str(axes_meta[i].get("unit", "")).lower())
        edges.append(float(scale[i]) * unit if unit is not None and scale[i] > 0 else None)
    return _edge(*edges)


def parse_channel(value):
    """``--channel`` as given: an int index (``"0"`` -> 0), a name, or None.

    Parameters
    ----------
    value : int, str or None
        An index, a string of digits, a channel name (surrounding spaces dropped), or None.

    Returns
    -------
    int, str or None

    Raises
    ------
    TypeError
        If ``value`` is neither an int, a str nor None (a bool included).
    ValueError
        If ``value`` is an empty string.
    """
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError("channel must be an index (0, 1, ...) or a channel name. "
                             "Received: an empty string")
        return int(value) if re.fullmatch(r"\d+", value) else value
    raise TypeError(f"channel must be an index (0, 1, ...) or a channel name. Received: a "
                    f"{type(value).__name__}, {value!r}")


def channel_index(data, channel, name="<image>"):
    """The index of ``channel`` (an index or a name) in ``data``, or a clear error.

    A name matches exactly, else case-insensitively, and must match one channel only.

    Parameters
    ----------
    data : ImageData
        The image.
    channel : int or str
        An index or a channel name (see :func:`parse_channel`).
    name : str, optional
        Shown in error messages (default ``"<image>"``).

    Returns
    -------
    int

    Raises
    ------
    ImageDecodeError
        An index out of range, or a name that matches no channel or several.
    """
    n = len(data.channel_names)
    if isinstance(channel, int):
        if 0 <= channel < n:
            return channel
    else:
        for match in (lambda c: c == channel, lambda c: c.lower() == channel.lower()):
            hits = [i for i, c in enumerate(data.channel_names) if match(c)]
            if len(hits) == 1:
                return hits[0]
    raise ImageDecodeError(
        f"{name}: channel={channel!r} (--channel) is not a channel of this image. It has {n} "
        f"channel{'s' if n > 1 else ''}: {_describe(data.channel_names)}; pass an index "
        f"(0 to {n - 1}) or one of those names."
    )


def _describe(names):
    return ", ".join(f"{i}={c!r}" for i, c in enumerate(names))


def model_image(data, channel=None, name="<image>"):
    """What the model segments: the chosen channel, or the image as it is.

    The chosen channel as a gray ``(H, W, 1)`` image, or the image as it is (gray, RGB, RGBA;
    gray + alpha becomes gray) when no channel is chosen.

    Parameters
    ----------
    data : ImageData
        The image.
    channel : int or str, optional
        An index or name (default None: the whole picture).
    name : str, optional
        Shown in error messages (default ``"<image>"``).

    Returns
    -------
    (H, W, C) ndarray
        A view of ``data.image`` with ``C`` in {1, 3, 4}.

    Raises
    ------
    ImageDecodeError
        An unknown channel, or an image with several channels that are not the colours of one
        picture (e.g. 4 fluorescence channels) and no ``channel``.
    """
    image = data.image
    if channel is not None:
        i = channel_index(data, channel, name)
        return image[..., i : i + 1]
    c = image.shape[-1]
    if c in (1, 3) or (data.rgb and c in (2, 4)):
        return image[..., :1] if c == 2 else image
    raise ImageDecodeError(
        f"{name}: {c} channels ({_describe(data.channel_names)}) and no channel chosen. "
        "Pick the channel to segment (e.g. the nuclear stain) with --channel INDEX or "
        "--channel NAME; every channel is still measured."
    )


def measured_channels(data):
    """How many channels of ``data`` are measured: all but an RGBA (or gray + alpha) alpha.

    Parameters
    ----------
    data : ImageData

    Returns
    -------
    int
    """
    c = data.image.shape[-1]
    return c - (1 if data.rgb and c in (2, 4) else 0)


def measure_channels(labels, data, image_id="", groups=None):
    """The intensities table of one image: every channel's raw values on every object.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        The label image.
    data : ImageData
        The image measured, of the same height and width; its alpha is left out.
    image_id : str, optional
        Stored in the ``image_id`` column (default ``""``).
    groups : segmodel.inference.measure.ObjectPixels, optional
        The object pixels of ``labels`` when the caller has them already (default: computed).

    Returns
    -------
    pandas.DataFrame
        See :func:`segmodel.inference.measure.measure_intensities`; ``channel_name`` is the
        file's name of the channel, else its index.
    """
    n = measured_channels(data)
    return measure_intensities(labels, data.image[..., :n], data.channel_names[:n], image_id,
                               groups)
