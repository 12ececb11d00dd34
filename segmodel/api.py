"""Segmenting numpy images: the engine behind the pipeline, usable from a notebook.

>>> from segmodel.api import segment
>>> labels, table = segment(image)            # doctest: +SKIP
"""

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np

from segmodel.bundle import n_outputs, normalize
from segmodel.heads import mask_from_maps, object_labels
from segmodel.measure import CHANNELS, measure_objects
from segmodel.model import LoadedModel, load_model
from segmodel.predict import predict_maps, with_flips
from segmodel.preprocess import (
    Normalization,
    Tiling,
    apply_normalization,
    check_values,
    estimate_normalization,
    resize,
    scaled_shape,
    to_channels,
)
from segmodel.workers import CpuPool


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model: ``x`` normalised at the working scale, ``image`` as read."""

    image: np.ndarray
    x: np.ndarray
    scale: float


def resolve_model(model):
    """A :class:`LoadedModel` from a path, a loaded model, or None (the bundled model)."""
    return model if isinstance(model, LoadedModel) else load_model(model)


#: ``scale="auto"``: each image is resized so its nuclei come out at the model's object size.
AUTO = "auto"
#: Automatic scales are clipped to this range, and factors closer to 1 than ``AUTO_KEEP`` keep
#: the first pass's result.
AUTO_RANGE = (0.25, 4.0)
AUTO_KEEP = 1.2


def validate_scale(scale, spec=None):
    """``"auto"`` or a float in [0.05, 20]; ``"auto"`` needs a model that knows its object size."""
    if scale == AUTO:
        if spec is not None and not spec.object_diameter:
            raise ValueError(
                f"scale='auto' needs a model whose spec gives object_diameter; model "
                f"{spec.name!r} has none. Pass a number instead (1.0 = the image's own resolution)."
            )
        return AUTO
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.05 <= scale <= 20:
        raise ValueError(
            f"scale must be 'auto' or a number between 0.05 and 20 (1.0 = the image's own "
            f"resolution). Received: scale={scale!r}"
        )
    return float(scale)


def prepare(image, spec, scale=1.0):
    """Convert, normalise (statistics of the whole image) and resize one image for the model.

    With ``scale="auto"`` the image is prepared at its own resolution; :func:`predict_labels`
    picks the scale.
    """
    image = to_channels(np.asarray(image), spec.channels)
    if spec.normalization != "percentile":
        prepared = Prepared(image, normalize(image, spec), 1.0)
        return rescale(prepared, 1.0 if scale == AUTO else scale)
    stats = estimate_normalization(image, Normalization(spec.p_low, spec.p_high, spec.invert))
    x = apply_normalization(image, stats)
    return rescale(Prepared(image, x, 1.0), 1.0 if scale == AUTO else scale)


def rescale(prepared, scale):
    """The same prepared image at another working scale (resized from the normalised image)."""
    if scale == prepared.scale:
        return prepared
    shape = scaled_shape(prepared.image.shape, scale)
    return Prepared(prepared.image, resize(prepared.x, shape, order=1), scale)


def finish(maps, prepared, spec):
    """Instance labels at the image's own resolution from the maps of a prepared image.

    Upscaled images are labelled at the working scale and the labels downsampled; downscaled
    images have their maps upsampled first, so outlines keep the image's own resolution.
    """
    return finish_at(maps, prepared.image.shape[:2], prepared.scale, spec)


def finish_at(maps, shape, scale, spec):
    """:func:`finish` for an image of ``shape`` prepared at ``scale`` (what a worker process
    is sent: the maps and two numbers, not the image)."""
    if scale < 1.0:
        maps = resize(maps, shape, order=1)
    labels = mask_from_maps(maps, spec)  # class map of a semantic model
    if labels.shape != shape:
        labels = resize(labels, shape, order=0)
    return labels


def median_diameter(labels):
    """Median equivalent diameter (pixels) of the objects in ``labels``; 0.0 when there are none."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return float(np.sqrt(4 * np.median(areas) / np.pi)) if len(areas) else 0.0


def auto_scale(labels, spec, min_objects=3):
    """Scale bringing the median object of ``labels`` (at the image's resolution) to the
    model's size.

    1.0 where the labels hold fewer than ``min_objects`` objects (nothing to measure).
    """
    if int(labels.max()) < min_objects:
        return 1.0
    d = median_diameter(labels)
    return float(np.clip(spec.object_diameter / d, *AUTO_RANGE)) if d else 1.0


def predict_labels(lm, prepared, tiling, *, batch_size=8, auto=False, tta=False, lock=None,
                   on_error=None, timings=None, pool=None, model_thread=None):
    """Labels for prepared images, predicting tiles of all images in shared batches.

    With ``auto``, a first pass at the prepared scale measures each image's objects
    (:func:`auto_scale`); images whose factor is further from 1 than :data:`AUTO_KEEP` are
    predicted again at that scale. ``tta`` averages the maps over the four flips of each tile.
    Returns ``(labels, prepared)`` lists, ``prepared`` holding the scale each image was finally
    segmented at. ``on_error(i, exc)`` receives a failed post-processing of image ``i``
    (default: raise); its labels are then None. ``timings``, a dict, accumulates the seconds
    spent in ``"predict"`` (from taking the lock to the last tile stitched) and
    ``"postprocess"``. ``pool``, a :class:`segmodel.workers.CpuPool`, post-processes the
    images in its worker processes.
    ``model_thread``, a :class:`segmodel.workers.ModelThread`, makes the model calls.
    """
    spent = timings if timings is not None else {}

    def tick(stage, t0):
        t1 = time.perf_counter()
        spent[stage] = spent.get(stage, 0.0) + t1 - t0
        return t1

    guard = _NotedLock(lock)
    submit = model_thread.submit if model_thread is not None else None
    predict = with_flips(lm.predict_batch) if tta else lm.predict_batch
    prepared = list(prepared)
    labels = [None] * len(prepared)

    def run(indices):
        maps = predict_maps(predict, [prepared[i].x for i in indices], tiling=tiling,
                            batch_size=batch_size, n_out=n_outputs(lm.spec), submit=submit,
                            lock=guard, exact_last=lm.any_batch_size)
        t0 = tick("predict", guard.acquired_at)
        shapes = [prepared[i].image.shape[:2] for i in indices]
        scales = [prepared[i].scale for i in indices]
        done = (pool or CpuPool(0)).map(finish_at, maps, shapes, scales, [lm.spec] * len(maps))
        del maps
        for i, (lab, exc) in zip(indices, done):
            if exc is not None and on_error is None:
                raise exc
            labels[i] = lab
            if exc is not None:
                on_error(i, exc)
        tick("postprocess", t0)

    run(range(len(prepared)))
    if auto:
        redo = []
        for i, lab in enumerate(labels):
            if lab is None:
                continue
            factor = auto_scale(object_labels(lab, lm.spec), lm.spec)
            if abs(math.log(factor)) > math.log(AUTO_KEEP):
                prepared[i] = rescale(prepared[i], prepared[i].scale * factor)
                redo.append(i)
        if redo:
            run(redo)
    return labels, prepared


class _NotedLock:
    """A lock (or none) that notes when it was last acquired: waiting for it is not predicting."""

    def __init__(self, lock=None):
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.acquired_at = None

    def __enter__(self):
        self.lock.__enter__()
        self.acquired_at = time.perf_counter()
        return self

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def default_tiling(spec, tile=None, overlap=None):
    """The model's tiling, with optional overrides, validated against the model's divisor."""
    tiling = Tiling(tile or spec.tile, spec.overlap if overlap is None else overlap)
    tiling.validate(spec.divisor)
    return tiling


def segment_many(images, model=None, *, scale=1.0, batch_size=8, tiling=None, tta=False):
    """Instance labels for a list of ``(H, W[, C])`` images, tiles batched across images.

    Parameters
    ----------
    images : list of ndarray
        Gray, RGB or RGBA images of any size and dtype.
    model : str, Path or LoadedModel, optional
        Default: the bundled nuclei model.
    scale : float or "auto", optional
        Resize factor to the model's working scale (1.0 = as is); ``"auto"`` measures each
        image's nuclei in a first pass and resizes them to the model's object size.
    batch_size : int, optional
        Tiles per model call.
    tiling : Tiling, optional
        Default: the model's own tile size and overlap.
    tta : bool, optional
        Test-time augmentation: average the model's maps over the four flips of each tile
        (four times the model calls).

    Returns
    -------
    list of (H, W) ndarray of int32
        Instance labels; for a semantic model, class maps (see :mod:`segmodel.heads`).
    """
    lm = resolve_model(model)
    scale = validate_scale(scale, lm.spec)
    if tiling is None:
        tiling = default_tiling(lm.spec)
    else:
        tiling.validate(lm.spec.divisor)
    images = [np.asarray(im) for im in images]
    for i, im in enumerate(images):  # arrays, not files: nothing has checked them yet
        check_values(im, f"images[{i}]")
    prepared = [prepare(im, lm.spec, scale) for im in images]
    labels, _ = predict_labels(lm, prepared, tiling, batch_size=batch_size,
                               auto=scale == AUTO, tta=tta)
    return labels


def segment(image, model=None, *, scale=1.0, tta=False, image_id=""):
    """Segment one image: ``(labels (H, W) int32, objects table)``."""
    lm = resolve_model(model)
    labels = segment_many([image], lm, scale=scale, tta=tta)[0]
    intensity = to_channels(np.asarray(image), CHANNELS)
    return labels, measure_objects(object_labels(labels, lm.spec), intensity, image_id)
