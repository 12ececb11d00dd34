"""One shard, end to end: read and prepare, segment in shared batches, measure, write.

:func:`process_shard` is the unit of work of every runner (the flow's tasks, Dask workers,
:func:`segmodel.pipeline.run.run`): its pixel arrays never leave the process that reads them.
A bad image never stops a shard: its error becomes a failures row with the stage it failed in.
Errors that are not about one image (the model, storage that stays down) propagate, for the
caller's retries; a shard run again replaces its uncommitted parts.
"""

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from segmodel.inference.heads import class_rows, object_labels
from segmodel.inference.measure import ObjectPixels, measure_objects, with_area_um2
from segmodel.inference.passes import ModelCalls, predict_labels, prepare
from segmodel.inference.preprocess import MAX_PIXELS, ImageDecodeError
from segmodel.inference.workers import CpuPool
from segmodel.pipeline import outputs, qc, runtime
from segmodel.pipeline.plan import ShardResult
from segmodel.pipeline.rows import Segmented, failure_row, image_row
from segmodel.storage import export, formats
from segmodel.storage.io import ImageRef, is_transient, retry


@dataclass
class Item:
    """One image on its way through a shard's stages."""

    ref: ImageRef
    prepared: object = None
    labels: np.ndarray = None
    failure: dict = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    source: object = None  # segmodel.storage.formats.ImageData: every channel, names, pixel size


def _fail(item, stage, exc):
    kind = getattr(exc, "error_type", type(exc).__name__)  # a worker's ImageError names it
    item.failure = {"stage": stage, "error_type": kind, "message": str(exc)[:2000]}
    item.prepared = item.labels = item.source = None


#: Stages whose seconds :func:`stage_seconds` reports (``write`` is timed apart).
STAGES = ("read", "preprocess", "predict", "postprocess", "tabulate")


def _tick(item, stage, t0):
    """Add the seconds since ``t0`` to ``item``'s ``stage``; return the current time."""
    t1 = time.perf_counter()
    item.timings[stage] = item.timings.get(stage, 0.0) + (t1 - t0)
    item.seconds += t1 - t0
    return t1


def stage_seconds(items):
    """Sum the seconds spent per stage over ``items``.

    Parameters
    ----------
    items : list of Item

    Returns
    -------
    dict
        ``{stage: seconds}`` for each of :data:`STAGES`.
    """
    return {s: sum(it.timings.get(s, 0.0) for it in items) for s in STAGES}


def read_shard(store, refs, spec, *, scale=1.0, max_pixels=MAX_PIXELS, channel=None, plane=None,
               pyramid_level=0):
    """Read, decode and prepare every image of a shard.

    Parameters
    ----------
    store : Store
        The input.
    refs : list of ImageRef
    spec : ModelSpec
        The model's spec (normalisation, channels).
    scale : float or 'auto', optional
        Resize factor (default 1.0); with ``'auto'`` images are prepared as they are.
    max_pixels : int, optional
        Images with more pixels fail.
    channel : int or str, optional
        The channel the model segments (index or name).
    plane : int, optional
        The plane of a 3-D or time stack.
    pyramid_level : int, optional
        The resolution level of a pyramid (0 = full size); see :mod:`segmodel.storage.formats`.

    Returns
    -------
    list of Item
        One per ref, in order; an image that could not be read or decoded carries a failure.

    Raises
    ------
    OSError
        Storage errors other than a missing or forbidden file (for the caller's retries).
    """
    how = {"max_pixels": max_pixels, "plane": plane, "pyramid_level": pyramid_level}
    return [_read_item(store, ref, spec, scale, channel, how) for ref in refs]


def _read_item(store, ref, spec, scale, channel, how):
    """Read, decode and prepare one image into an :class:`Item` (failed where it is bad)."""
    item, t0 = Item(ref), time.perf_counter()
    try:
        if formats.is_zarr(ref.path):
            source = retry(formats.read_image, store, ref.path, name=ref.image_id, **how)
        else:
            data = store.read_bytes(ref.path)
    except ImageDecodeError as exc:
        _fail(item, "decode", exc)
    except Exception as exc:
        if is_transient(exc) or not isinstance(exc, (FileNotFoundError, PermissionError)):
            raise  # storage trouble is the task's to retry, not a bad image
        _fail(item, "read", exc)
    else:
        try:
            if not formats.is_zarr(ref.path):
                source = formats.decode(data, name=ref.image_id, **how)
                del data
            image = formats.model_image(source, channel, ref.image_id)
            t0 = _tick(item, "read", t0)
            item.prepared = prepare(image, spec, scale)
            item.source = source
        except Exception as exc:
            _fail(item, "decode", exc)
    _tick(item, "preprocess" if item.timings else "read", t0)
    return item


def segment_shard(model, items, config, *, pool=None, model_thread=None):
    """Predict all prepared items in shared fixed-shape batches, then post-process each.

    Parameters
    ----------
    model : LoadedModel
    items : list of Item
        From :func:`read_shard`; failed ones are left as they are.
    config : RunConfig
        Tiling, batch size, scale (``"auto"``: each image's scale from a first pass, see
        :func:`segmodel.inference.passes.predict_labels`) and test-time augmentation.
    pool : segmodel.inference.workers.CpuPool, optional
        Post-processes in worker processes.
    model_thread : segmodel.inference.workers.ModelThread, optional
        Makes the model calls.

    Returns
    -------
    list of Item
        ``items``, with labels (or a failure) set.
    """
    live = [it for it in items if it.prepared is not None]
    if not live:
        return items
    spent = {}
    labels, prepared = predict_labels(
        model, [it.prepared for it in live], config.tiling(),
        auto=config.options.scale == "auto", calls=ModelCalls(
            batch_size=config.options.batch_size, tta=config.options.tta,
            lock=runtime.model_lock(), on_error=lambda i, exc: _fail(live[i], "postprocess", exc),
            timings=spent, pool=pool, model_thread=model_thread),
    )
    for it, lab, p in zip(live, labels, prepared):
        if it.failure is None:  # the model's input is not needed again: free it now
            it.labels, it.prepared = lab, replace(p, x=None)
        for stage in ("predict", "postprocess"):
            share = spent.get(stage, 0.0) / len(live)
            it.timings[stage] = it.timings.get(stage, 0.0) + share
            it.seconds += share
    return items


def tabulate_shard(items, *, shard, config_key, mask_paths, model, pool=None):
    """Measure the segmented items into table rows, and collect the masks to write.

    A semantic model's mask is its class map; its objects are the components of the spec's
    ``object_class``.

    Parameters
    ----------
    items : list of Item
        Segmented (or failed) items; an item whose measuring fails gets a failure.
    shard, config_key : str
        Written into every row.
    mask_paths : dict
        ``{image_id: mask path}``.
    model : LoadedModel
    pool : segmodel.inference.workers.CpuPool, optional
        Measures the images in worker processes.

    Returns
    -------
    tables : dict
        ``{'objects': [DataFrame], 'intensities': [DataFrame]}``, one frame per image, and
        ``'classes'`` for a semantic model.
    images, failures : list of dict
        Rows of the images and failures tables.
    masks : dict
        ``{mask path: (H, W) labels}``.
    """
    live = [it for it in items if it.failure is None]
    t0 = time.perf_counter()
    done = (pool or CpuPool(0)).map(
        measure_item, [it.labels for it in live], [it.prepared.image for it in live],
        [it.source for it in live], [model.spec] * len(live), [it.ref.image_id for it in live],
        [it.prepared.scale for it in live])
    share = (time.perf_counter() - t0) / max(len(live), 1)
    measured = {}
    for it, (result, exc) in zip(live, done):
        if exc is not None:
            _fail(it, "measure", exc)
        else:
            it.timings["tabulate"] = it.timings.get("tabulate", 0.0) + share
            it.seconds += share
            measured[id(it)] = result
    tables = {"objects": [], "intensities": []}
    if model.spec.kind == "semantic":
        tables["classes"] = []
    images, failures, masks = [], [], {}
    for it in items:
        if it.failure is None:
            table, intensities, class_table, flags = measured[id(it)]
            for name, df in (("objects", table), ("intensities", intensities),
                             ("classes", class_table)):
                if name in tables and df is not None:
                    tables[name].append(df)
            masks[mask_paths[it.ref.image_id]] = it.labels
            images.append(image_row(it.ref, _segmented(it, table, flags, mask_paths), model=model,
                                    config_key=config_key, shard=shard))
        else:
            failures.append(failure_row(it.ref, it.failure, config_key=config_key, shard=shard))
    return tables, images, failures, masks


def measure_item(labels, image, source, spec, image_id, scale):
    """Measure one image: its objects and intensities tables, per-class table and QC flags.

    Module-level and free of Keras, so a worker process can run it.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, or a semantic model's class map.
    image : (H, W[, C]) ndarray
        The image the model saw (at its own resolution).
    source : segmodel.storage.formats.ImageData or None
        Every channel of the file, each measured (None: the channels of ``image``).
    spec : ModelSpec
    image_id : str
    scale : float
        The factor the model saw the image at (for the size flags).

    Returns
    -------
    table : pandas.DataFrame
        The objects table.
    intensities : pandas.DataFrame
        The intensities table: every channel of ``source`` on every object.
    class_table : pandas.DataFrame or None
        The per-class table of a semantic model, else None.
    flags : str
        QC flags, joined.
    """
    objects_of = object_labels(labels, spec)
    groups = ObjectPixels(objects_of)  # sorted once for the shape and every channel
    if source is None:
        planes = image if image.ndim == 3 else image[..., None]
        source = formats.ImageData(planes, tuple(str(c) for c in range(planes.shape[-1])))
    table = with_area_um2(measure_objects(objects_of, image_id, groups), source.pixel_size_um)
    intensities = formats.measure_channels(objects_of, source, image_id, groups)
    class_table = class_rows(labels, spec, image_id) if spec.kind == "semantic" else None
    flags = qc.join_flags(qc.image_flags(image, objects_of if spec.object_class else labels,
                                         scale=scale))
    return table, intensities, class_table, flags


def _segmented(it, table, flags, mask_paths):
    n = len(table)
    h, w = it.labels.shape
    return Segmented(
        height=h, width=w, n_objects=n,
        mean_object_area=float(table["area"].mean()) if n else 0.0,
        foreground_fraction=float((it.labels > 0).mean()), scale=float(it.prepared.scale),
        estimate=it.prepared.estimate, qc_flags=flags,
        pixel_size_um=getattr(it.source, "pixel_size_um", None),
        mask_path=mask_paths[it.ref.image_id], seconds=it.seconds)


def process_shard(config, job):
    """Read, segment, measure and write one shard; the images part is written last (the commit).

    Parameters
    ----------
    config : RunConfig
    job : ShardJob

    Returns
    -------
    ShardResult

    Notes
    -----
    Where this process runs a model thread (:func:`segmodel.pipeline.runtime.start_model_thread`)
    the model calls go to it, and this thread, reading and writing, yields the CPU to it.
    """
    t0 = time.time()
    try:
        model_thread = runtime.model_thread()
        model = config.load_model()
        pool = runtime.cpu_pool(config.options.cpu_workers)
        items = read_shard(config.input, list(job.refs), model.spec, scale=config.options.scale,
                           max_pixels=config.options.max_pixels, **config.choices())
        segment_shard(model, items, config, pool=pool, model_thread=model_thread)
        counts, timings = _write(config, job, model, items, pool)
        del items
    finally:
        runtime.trim()  # the shard's arrays are gone (or going with this frame): pages back
    return ShardResult(shard=job.name, index=job.index, timings=timings,
                       span=(t0, time.time()), **counts)


def _write(config, job, model, items, pool):
    """Measure the items, write masks then table parts; ``(counts, timings)``."""
    tables, images, failures, masks = tabulate_shard(
        items, shard=job.name, config_key=config.config_key, mask_paths=job.mask_paths,
        model=model, pool=pool)
    t0 = time.perf_counter()
    by_mask = {job.mask_paths[it.ref.image_id]: it for it in items if it.failure is None}
    o = config.options
    for relpath, labels in masks.items():
        it = by_mask[relpath]
        export.write_outputs(config.output, relpath, labels, o.mask_format, o.outlines,
                             image=it.prepared.image, name=it.ref.image_id,
                             pixel_size=getattr(it.source, "pixel_size_um", None))
    parts = {name: pd.concat(dfs, ignore_index=True) if dfs else outputs.table(name, [])
             for name, dfs in tables.items()}
    parts.update(images=outputs.table("images", images),
                 failures=outputs.table("failures", failures))
    outputs.write_shard(config.output, job.name, parts)
    for f in failures:  # committed: a mask (and outline) of an earlier run must not outlive
        export.remove_outputs(config.output, job.mask_paths[f["image_id"]])  # its image's record
    for image_id, old in job.superseded.items():  # and the image's mask of another format goes
        export.remove_superseded(config.output, old, job.mask_paths[image_id])
    timings = {**stage_seconds(items), "write": time.perf_counter() - t0}
    counts = {"images": len(images), "failed": len(failures), "objects": len(parts["objects"]),
              "seconds": sum(it.seconds for it in items), "failures": tuple(failures)}
    return counts, timings
