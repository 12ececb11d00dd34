"""Quality-control flags per image and small outline thumbnails for a QC gallery.

Two kinds of flags end up in the ``qc_flags`` column of the images table (names joined by
``;``, empty when nothing is wrong):

* per image, computed when the image is segmented (:func:`image_flags`):

  ``no_objects``         no nucleus found;
  ``flat``               the image has almost no contrast (1st to 99.8th percentile spans less
                         than 4% of its range): nothing to segment, or a blank frame;
  ``saturated``          more than 5% of the pixels sit at the top of its range (clipped).

  An integer image's range is that of the camera's bit depth as its values show it: the
  smallest of 8, 10, 12, 14 or 16 bits (then the dtype's) that holds its largest value, so
  12-bit data stored as uint16 is judged on 0-4095, not on 0-65535.
  ``sparse_foreground``  nuclei cover less than 1% of the image: the percentile normalisation
                         is then set by the background and nuclei may be missed or merged;
  ``objects_small``      median nucleus diameter at the model's working scale below 8 px;
  ``objects_large``      median nucleus diameter at the model's working scale above 100 px
                         (the model saw nuclei of ~8 to ~100 px: use ``scale``);
  ``scale_fallback``     automatic scale found too few nuclei to measure their size at any
                         pyramid level, so the image kept its own resolution (see
                         :mod:`segmodel.inference.autoscale`).

* per run, once all images of a run are written (:func:`outlier_flags`): ``few_objects`` and
  ``many_objects`` for object counts that are robust outliers against the median count of all
  images in the output (at least 3x off the median and beyond 3.5 robust standard deviations,
  on a log scale), once the output holds at least 10 images with objects.

The thresholds were checked on the 562 DSB2018 images with their true masks: none is ``flat``
or ``saturated``; 11 have nuclei covering less than 1% of the image.
"""

import io
import math
from dataclasses import dataclass

import numpy as np

from segmodel.inference.preprocess import channel_mean_percentiles

FLAG_SEPARATOR = ";"
RUN_FLAGS = ("few_objects", "many_objects")
OUTLINE_COLOR = (255, 220, 0)
#: The flags in one paragraph, as the QC gallery and the report explain them.
FLAGS_LEGEND = (
    "QC flags: `no_objects`, `flat`, `saturated`, `sparse_foreground` (nuclei under 1% of the "
    "image), `objects_small`/`objects_large` (median nucleus under 8 px or over 100 px at the "
    "working scale), `scale_fallback` (too few nuclei to measure their size: kept at the "
    "image's own scale), `few_objects`/`many_objects` (robust outliers against the median "
    "count of all images in the output).")


@dataclass(frozen=True)
class QCSettings:
    """Thresholds of the per-image and per-run flags (see the module docstring)."""

    flat_range: float = 0.04
    saturated_fraction: float = 0.05
    sparse_fraction: float = 0.01
    min_diameter: float = 8.0
    max_diameter: float = 100.0
    outlier_z: float = 3.5
    outlier_ratio: float = 3.0
    #: Fewer images with objects than this are no population to judge one against: a 5-image
    #: run flagged an ordinary image with a few nuclei.
    outlier_min_images: int = 10


#: Bit depths of cameras and files; an integer image's range is the smallest that holds it.
BIT_DEPTHS = (8, 10, 12, 14, 16)


def value_top(image):
    """Find the top of an integer image's range (see the module docstring).

    Parameters
    ----------
    image : ndarray

    Returns
    -------
    int or None
        The top of the smallest bit depth that holds the image; None for float images.
    """
    if not np.issubdtype(image.dtype, np.integer):
        return None
    dtype_top = int(np.iinfo(image.dtype).max)
    largest = int(np.max(image)) if image.size else 0
    for bits in BIT_DEPTHS:
        if largest <= 2**bits - 1 <= dtype_top:
            return float(2**bits - 1)
    return float(dtype_top)


def image_flags(image, labels, *, scale=1.0, settings=QCSettings()):
    """QC flag names of one segmented image, in a fixed order.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        The image as read (its own dtype), before normalisation.
    labels : (H, W) ndarray of int
        Instance labels at the image's resolution, 0 = background.
    scale : float, optional
        Resize factor to the model's working scale used for this image (default 1.0).
    settings : QCSettings, optional
        Thresholds.

    Returns
    -------
    list of str
        Empty when nothing is wrong.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image and labels must have the same height and width. "
                         f"Received: image {image.shape}, labels {labels.shape}")
    flags = []
    areas = np.bincount(labels.ravel())[1:] if labels.size else np.zeros(0, int)
    areas = areas[areas > 0]
    if len(areas) == 0:
        flags.append("no_objects")
    flags.extend(_intensity_flags(image, settings))
    if len(areas):
        if (labels > 0).mean() < settings.sparse_fraction:
            flags.append("sparse_foreground")
        diameter = float(np.median(np.sqrt(4 * areas / np.pi))) * scale
        if diameter < settings.min_diameter:
            flags.append("objects_small")
        elif diameter > settings.max_diameter:
            flags.append("objects_large")
    return flags


def _intensity_flags(image, settings):
    gray = image.reshape(image.shape[0], image.shape[1], -1)
    step = max(1, int(math.sqrt(gray.shape[0] * gray.shape[1] / 1_000_000)))
    sample = gray[::step, ::step]
    top = value_top(sample)
    span = top if top is not None else float(np.nanmax(np.abs(sample))) or 1.0
    low, high = channel_mean_percentiles(sample, [1.0, 99.8])
    flags = []
    if (high - low) < settings.flat_range * span:
        flags.append("flat")
    if top is not None and sample.max() >= top:  # most images never reach the maximum
        clipped = sample[..., 0] >= top
        for c in range(1, sample.shape[-1]):
            clipped |= sample[..., c] >= top
        if clipped.mean() > settings.saturated_fraction:
            flags.append("saturated")
    return flags


def outlier_flags(counts, *, settings=QCSettings()):
    """Robust outlier flags of object counts against their median.

    Parameters
    ----------
    counts : sequence of int
        Objects per image (the reference population, e.g. every image of a run).
    settings : QCSettings, optional
        ``outlier_z`` robust standard deviations and at least ``outlier_ratio`` times off the
        median, on ``log(1 + count)``; nothing is flagged with fewer than
        ``outlier_min_images`` images with objects.

    Returns
    -------
    list of str
        ``'few_objects'``, ``'many_objects'`` or ``''`` per count. Images with no objects
        get ``''`` (they carry ``no_objects`` already).
    """
    counts = np.asarray(counts, dtype=np.float64)
    out = [""] * len(counts)
    positive = counts[counts > 0]
    if len(positive) < settings.outlier_min_images:
        return out
    logs = np.log1p(positive)
    median = float(np.median(logs))
    sigma = 1.4826 * float(np.median(np.abs(logs - median)))
    limit = max(settings.outlier_z * sigma, math.log(settings.outlier_ratio))
    for i, n in enumerate(counts):
        if n > 0:
            d = math.log1p(n) - median
            out[i] = "many_objects" if d > limit else "few_objects" if d < -limit else ""
    return out


def join_flags(flags):
    """Join flags into one text, ``'a;b'``; empties and duplicates dropped, order kept.

    Parameters
    ----------
    flags : iterable of str

    Returns
    -------
    str
    """
    return FLAG_SEPARATOR.join(dict.fromkeys(f for f in flags if f))


def split_flags(text):
    """Split a flags text ``'a;b'`` into ``['a', 'b']``; ``''`` and None give ``[]``.

    Parameters
    ----------
    text : str or None

    Returns
    -------
    list of str
    """
    return [f for f in (text or "").split(FLAG_SEPARATOR) if f]


def flag_run_outliers(store, shards, *, settings=QCSettings()):
    """Add ``few_objects``/``many_objects`` to the images of ``shards``; return their rows.

    The reference is every image currently in the output's images table (this run's and
    earlier runs'), so an hourly run of 20 new images is compared with all images so far.
    Only the images parts of ``shards`` are rewritten (atomically, and only when a flag
    changed); running it again gives the same flags.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The output.
    shards : sequence of str
        Names of this run's shards.
    settings : QCSettings, optional
        Thresholds.

    Returns
    -------
    pandas.DataFrame
        The images rows of ``shards`` with their updated ``qc_flags``.
    """
    import pandas as pd

    from segmodel.pipeline.outputs import IMAGE_SCHEMA, encode_parquet, read_index, read_parts

    names = [p.rsplit("/", 1)[-1][: -len(".parquet")] for p in store.list("images", ".parquet")]
    if not names:
        return pd.DataFrame()
    ids, counts = [], []  # every image's count, for the reference
    index = read_index(store) or {}  # written by the reconcile at the end of the run
    for shard in names:
        if shard in index:
            image_ids, statuses, *_, n_objects = index[shard]
            done = [k for k, status in enumerate(statuses) if status == "done"]
            ids += [image_ids[k] for k in done]
            counts += [n_objects[k] for k in done]
    uncovered = [n for n in names if n not in index]  # only where no reconcile ran since
    for _, _, part in read_parts(store, ("images",), uncovered, ["image_id", "n_objects"]):
        if part is not None:
            ids += part.column("image_id").to_pylist()
            counts += part.column("n_objects").to_pylist()
    run = dict(zip(ids, outlier_flags(np.asarray(counts, np.int64), settings=settings)))
    mine = []
    committed = set(names)
    for name, _, part in read_parts(store, ("images",), [n for n in shards if n in committed]):
        if part is None:
            continue
        df = part.to_pandas()  # the dtypes the part was written with (pandas metadata)
        if "qc_flags" not in df.columns:  # written before QC flags existed
            df["qc_flags"] = pd.Series([""] * len(df), dtype="string")
        new = [join_flags([f for f in split_flags(old) if f not in RUN_FLAGS] + [run[i]])
               for i, old in zip(df["image_id"], df["qc_flags"].fillna(""))]
        if new != list(df["qc_flags"].fillna("")):
            df = df.assign(qc_flags=pd.Series(new, index=df.index, dtype="string"))
            store.write_bytes(f"images/{name}.parquet", encode_parquet(df))
        mine.append(df)
    if mine:
        return pd.concat(mine, ignore_index=True)
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in IMAGE_SCHEMA.items()})


def read_thumbnail(input_store, output_store, image_id, mask_path, *, max_size=256,
                   channel=None, plane=None, pyramid_level=0):
    """:func:`outline_thumbnail` of an image already written: its input file and its mask.

    Parameters
    ----------
    input_store, output_store : segmodel.storage.io.Store
        The run's input and output.
    image_id : str
        The image's path relative to the input.
    mask_path : str
        Its mask's path relative to the output (``labels/...``).
    max_size : int, optional
        Longest side of the thumbnail (default 256).
    channel, plane, pyramid_level : optional
        The run's input choices (see :mod:`segmodel.storage.formats`): the thumbnail shows what was
        segmented.

    Returns
    -------
    bytes
        PNG data.
    """
    from PIL import Image

    from segmodel.storage import formats

    source = formats.read_image(input_store, input_store.path(image_id), name=image_id,
                                plane=plane, pyramid_level=pyramid_level)
    image = formats.model_image(source, channel, image_id)
    if mask_path.endswith(".zarr"):
        from segmodel.storage.export import read_labels

        return outline_thumbnail(image, read_labels(output_store, mask_path), max_size=max_size)
    data = output_store.read_bytes(output_store.path(mask_path))
    if mask_path.endswith(".png"):
        labels = np.asarray(Image.open(io.BytesIO(data)))
    else:
        import tifffile

        labels = tifffile.imread(io.BytesIO(data))
    return outline_thumbnail(image, labels, max_size=max_size)


def _display(image):
    """An ``(h, w, 3)`` uint8 view stretched between the 1st and 99.8th percentiles."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3].astype(np.float32)
    if image.shape[-1] != 3:
        image = np.repeat(image[..., :1], 3, axis=-1)
    low, high = np.percentile(image, [1.0, 99.8])
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def outline_thumbnail(image, labels, *, max_size=256, colors=64):
    """A small PNG of ``image`` with the outlines of ``labels`` drawn over it.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        The image as read.
    labels : (H, W) ndarray of int
        Its instance labels.
    max_size : int, optional
        Longest side of the thumbnail in pixels (default 256); images are only shrunk.
    colors : int, optional
        Palette size of the PNG (default 64), which keeps it to a few tens of KB.

    Returns
    -------
    bytes
        PNG data.
    """
    from PIL import Image
    from skimage.segmentation import find_boundaries

    if not 2 <= colors <= 256:
        raise ValueError(f"colors must be between 2 and 256. Received: colors={colors}")
    if max_size < 16:
        raise ValueError(f"max_size must be at least 16. Received: max_size={max_size}")
    labels = np.asarray(labels)
    if np.asarray(image).shape[:2] != labels.shape:
        raise ValueError(f"image and labels must have the same height and width. "
                         f"Received: image {np.asarray(image).shape}, labels {labels.shape}")
    h, w = labels.shape
    f = min(1.0, max_size / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    pal = Image.fromarray(_display(image)).resize(size, Image.BILINEAR).quantize(colors - 1)
    small = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.NEAREST))
    index = np.asarray(pal).copy()
    index[find_boundaries(small, mode="inner")] = colors - 1  # one palette entry: the outline
    palette = (pal.getpalette() or [])[: 3 * (colors - 1)]
    palette += [0, 0, 0] * (colors - 1 - len(palette) // 3) + list(OUTLINE_COLOR)
    out = Image.fromarray(index, mode="P")
    out.putpalette(palette)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


__all__ = [
    "FLAGS_LEGEND",
    "RUN_FLAGS",
    "QCSettings",
    "flag_run_outliers",
    "image_flags",
    "join_flags",
    "outlier_flags",
    "outline_thumbnail",
    "read_thumbnail",
    "split_flags",
]
