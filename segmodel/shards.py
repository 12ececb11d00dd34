"""The three stages applied to a shard of images: read+prepare, segment, tabulate.

A bad image never stops a shard: its error becomes a failure record with the stage it failed
in. Errors that are not about one image (the model, storage that stays down) propagate.
"""

import time
from dataclasses import dataclass, field, replace

import numpy as np

from segmodel import __version__, formats, qc
from segmodel.api import predict_labels, prepare
from segmodel.autoscale import FALLBACK_FLAG
from segmodel.heads import class_rows, object_labels
from segmodel.io import ImageRef, is_transient, retry
from segmodel.measure import CHANNELS, ObjectPixels, measure_objects
from segmodel.preprocess import MAX_PIXELS, ImageDecodeError, to_channels
from segmodel.workers import CpuPool


@dataclass
class Item:
    """One image on its way through a shard's stages."""

    ref: ImageRef
    prepared: object = None
    labels: np.ndarray = None
    failure: dict = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    source: object = None  # segmodel.formats.ImageData: every channel, names, pixel size


def _fail(item, stage, exc):
    kind = getattr(exc, "error_type", type(exc).__name__)  # a worker's ImageError names it
    item.failure = {"stage": stage, "error_type": kind, "message": str(exc)[:2000]}
    item.prepared = item.labels = item.source = None


#: Stages whose seconds :func:`stage_seconds` reports (``write`` is timed by the caller).
STAGES = ("read", "preprocess", "predict", "postprocess", "tabulate")


def _tick(item, stage, t0):
    """Add the seconds since ``t0`` to ``item``'s ``stage``; return the current time."""
    t1 = time.perf_counter()
    item.timings[stage] = item.timings.get(stage, 0.0) + (t1 - t0)
    item.seconds += t1 - t0
    return t1


def stage_seconds(items):
    """Seconds spent per stage over ``items``: ``{stage: seconds}`` for :data:`STAGES`."""
    return {s: sum(it.timings.get(s, 0.0) for it in items) for s in STAGES}


def read_shard(store, refs, spec, *, scale=1.0, max_pixels=MAX_PIXELS, channel=None, plane=None,
               pyramid_level=0):
    """Read, decode and prepare every image of a shard; return a list of :class:`Item`.

    ``channel`` (index or name) picks the channel the model segments, ``plane`` the plane of a
    3-D or time stack, ``pyramid_level`` the resolution level of a pyramid (0 = full size);
    see :mod:`segmodel.formats`.
    """
    items = []
    for ref in refs:
        item, t0 = Item(ref), time.perf_counter()
        try:
            if formats.is_zarr(ref.path):
                source = retry(formats.read_image, store, ref.path, name=ref.image_id,
                               max_pixels=max_pixels, plane=plane, pyramid_level=pyramid_level)
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
                    source = formats.decode(data, name=ref.image_id, max_pixels=max_pixels,
                                            plane=plane, pyramid_level=pyramid_level)
                    del data
                image = formats.model_image(source, channel, ref.image_id)
                t0 = _tick(item, "read", t0)
                item.prepared = prepare(image, spec, scale)
                item.source = source
            except Exception as exc:
                _fail(item, "decode", exc)
        _tick(item, "preprocess" if item.timings else "read", t0)
        items.append(item)
    return items


def segment_shard(model, items, tiling, *, batch_size=8, lock=None, auto=False, tta=False,
                  pool=None, model_thread=None):
    """Predict all prepared items in shared fixed-shape batches, then post-process each.

    ``auto``: pick each image's scale from a first pass (see :func:`segmodel.api.predict_labels`).
    ``pool``: a :class:`segmodel.workers.CpuPool` that post-processes in worker processes;
    ``model_thread``: a :class:`segmodel.workers.ModelThread` that makes the model calls.
    """
    live = [it for it in items if it.prepared is not None]
    if not live:
        return items
    spent = {}
    labels, prepared = predict_labels(
        model, [it.prepared for it in live], tiling, batch_size=batch_size, auto=auto, tta=tta,
        lock=lock, on_error=lambda i, exc: _fail(live[i], "postprocess", exc), timings=spent,
        pool=pool, model_thread=model_thread,
    )
    for it, lab, p in zip(live, labels, prepared):
        if it.failure is None:  # the model's input is not needed again: free it now
            it.labels, it.prepared = lab, replace(p, x=None)
        for stage in ("predict", "postprocess"):
            share = spent.get(stage, 0.0) / len(live)
            it.timings[stage] = it.timings.get(stage, 0.0) + share
            it.seconds += share
    return items


def tabulate_shard(items, *, shard, config_key, mask_paths, model, classes=None, pool=None):
    """Rows of the objects, images and failures tables, and the masks to write.

    A semantic model's mask is its class map; its objects are the components of the spec's
    ``object_class``, and ``classes`` (a list) receives each image's per-class table.
    ``pool`` (a :class:`segmodel.workers.CpuPool`) measures the images in worker processes.
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
    objects, images, failures, masks = [], [], [], {}
    for it in items:
        ref = it.ref
        if it.failure is None:
            table, class_table, flags = measured[id(it)]
            if classes is not None and class_table is not None:
                classes.append(class_table)
            objects.append(table)
            masks[mask_paths[ref.image_id]] = it.labels
            images.append(_image_row(it, table, flags, shard, config_key, mask_paths, model))
        else:
            failures.append({"image_id": ref.image_id, "uri": ref.uri, **it.failure,
                             "fingerprint": ref.fingerprint, "config_key": config_key,
                             "shard": shard})
    return objects, images, failures, masks


def measure_item(labels, image, source, spec, image_id, scale):
    """One image's objects table, per-class table (semantic models, else None) and QC flags.

    Module-level and free of Keras, so a worker process can run it.
    """
    objects_of = object_labels(labels, spec)
    groups = ObjectPixels(objects_of)  # sorted once for the shape and every channel
    table = measure_objects(objects_of, to_channels(image, CHANNELS), image_id, groups)
    table = formats.add_measurements(table, objects_of, source, groups)
    class_table = class_rows(labels, spec, image_id) if spec.kind == "semantic" else None
    flags = qc.join_flags(qc.image_flags(image, objects_of if spec.object_class else labels,
                                         scale=scale))
    return table, class_table, flags


def _image_row(it, table, flags, shard, config_key, mask_paths, model):
    h, w = it.labels.shape
    n = len(table)
    return {
        "image_id": it.ref.image_id, "uri": it.ref.uri, "height": h, "width": w,
        "n_objects": n,
        "mean_object_area": float(table["area"].mean()) if n else 0.0,
        "foreground_fraction": float((it.labels > 0).mean()),
        "scale": float(it.prepared.scale),
        "nucleus_diameter": nucleus_diameter(it.prepared.estimate),
        "model_name": model.spec.name,
        "model_fingerprint": model.fingerprint,
        "segflow_version": __version__, "seconds": it.seconds,
        "mask_path": mask_paths[it.ref.image_id], "fingerprint": it.ref.fingerprint,
        "config_key": config_key, "shard": shard,
        "qc_flags": with_scale_flag(flags, it.prepared.estimate),
        "pixel_size_um": _pixel_size(it.source),
    }


def nucleus_diameter(estimate):
    """The images table's ``nucleus_diameter``: the automatic estimate (nan without one)."""
    return float("nan") if estimate is None else float(estimate.diameter)


def with_scale_flag(flags, estimate):
    """``flags`` (joined) plus ``scale_fallback`` where automatic scale could not measure the
    nuclei and kept the image at its own resolution."""
    if estimate is None or not estimate.fallback:
        return flags
    return qc.join_flags(qc.split_flags(flags) + [FALLBACK_FLAG])


def _pixel_size(source):
    size = getattr(source, "pixel_size_um", None)
    return float(size) if size else float("nan")
