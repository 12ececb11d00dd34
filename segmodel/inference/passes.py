"""Images to labels: preparing images, the model's passes over shared batches, and the way back.

:func:`prepare` normalises and resizes an image for the model; :func:`predict_labels` runs the
model over many prepared images in fixed-shape batches (with automatic scale, a first pass on a
coarse pyramid level, see :mod:`segmodel.inference.autoscale`) and post-processes each image's
maps into labels at the image's own resolution. The pipeline and :mod:`segmodel.api` use both.
"""

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from segmodel.inference import autoscale
from segmodel.inference.autoscale import Estimate
from segmodel.inference.heads import mask_from_maps, object_labels
from segmodel.inference.predict import predict_maps, with_flips
from segmodel.inference.preprocess import (
    Tiling,
    resize,
    scaled_shape,
    to_channels,
)
from segmodel.inference.workers import CpuPool
from segmodel.model.bundle import model_input, n_outputs, takes_any_size
from segmodel.model.loading import DEFAULT_MODEL, LoadedModel, load_model


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model: ``x`` normalised at the working scale, ``image`` as read.

    ``estimate``: with automatic scale, the nucleus size the scale was chosen from
    (:class:`segmodel.inference.autoscale.Estimate`); None when the scale was given.
    """

    image: np.ndarray
    x: np.ndarray
    scale: float
    estimate: Estimate = None


def resolve_model(model):
    """A :class:`LoadedModel` from a path, a loaded model, or None (the bundled model).

    Parameters
    ----------
    model : str, Path, LoadedModel or None
        A ``.keras`` file with its spec, a model already loaded (returned as it is), or None.
        Files load on the default engine, ``'auto'`` (see :mod:`segmodel.model.engines`).

    Returns
    -------
    LoadedModel
    """
    return model if isinstance(model, LoadedModel) else load_model(model, engine="auto")


#: ``scale="auto"`` (the default): each image's nucleus size is estimated and images whose
#: nuclei lie outside the model's working range are resized (see
#: :mod:`segmodel.inference.autoscale`).
AUTO = "auto"


def validate_scale(scale):
    """``"auto"`` or a float in [0.05, 20].

    With ``"auto"``, a model whose spec gives no ``object_diameter`` segments every image at its own
    resolution.

    Parameters
    ----------
    scale : {'auto'} or float
        The working scale (1.0 = the image's own resolution).

    Returns
    -------
    str or float
        ``"auto"``, or ``scale`` as a float.

    Raises
    ------
    TypeError
        If ``scale`` is neither a string nor a number (a bool included).
    ValueError
        If ``scale`` is a string other than ``"auto"``, or a number outside [0.05, 20].
    """
    if scale == AUTO:
        return AUTO
    if isinstance(scale, bool) or not isinstance(scale, (str, int, float)):
        raise TypeError(f"scale must be 'auto' or a number. Received: a {type(scale).__name__}, "
                        f"scale={scale!r}")
    if isinstance(scale, str) or not 0.05 <= scale <= 20:
        raise ValueError(
            f"scale must be 'auto' or a number between 0.05 and 20 (1.0 = the image's own "
            f"resolution). Received: scale={scale!r}"
        )
    return float(scale)


def prepare(image, spec, scale=1.0):
    """Convert, normalise (statistics of the whole image) and resize one image for the model.

    With ``scale="auto"`` the image is prepared at its own resolution; :func:`predict_labels`
    picks the scale.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        Gray, RGB or RGBA, any dtype.
    spec : ModelSpec
        The model's channels and normalisation.
    scale : float or {'auto'}, optional
        Working scale (default 1.0).

    Returns
    -------
    Prepared
        The image with its channels converted, and ``x`` normalised at the working scale.

    Raises
    ------
    ValueError
        If the image's channels cannot be converted to the spec's.
    """
    image = to_channels(np.asarray(image), spec.channels)
    return rescale(Prepared(image, model_input(image, spec), 1.0), 1.0 if scale == AUTO else scale)


def rescale(prepared, scale):
    """The same prepared image at another working scale (resized from the normalised image).

    Parameters
    ----------
    prepared : Prepared
    scale : float
        The new working scale (> 0).

    Returns
    -------
    Prepared
        ``prepared`` itself when the scale is unchanged.
    """
    if scale == prepared.scale:
        return prepared
    shape = scaled_shape(prepared.image.shape, scale)
    return Prepared(prepared.image, resize(prepared.x, shape, order=1), scale)


def finish(maps, prepared, spec):
    """Instance labels at the image's own resolution from the maps of a prepared image.

    Upscaled images are labelled at the working scale and the labels downsampled; downscaled
    images have their maps upsampled first, so outlines keep the image's own resolution.

    Parameters
    ----------
    maps : (h, w, K) float ndarray
        The model's maps at the working scale.
    prepared : Prepared
    spec : segmodel.model.spec.ModelSpec

    Returns
    -------
    (H, W) int32 ndarray
        Labels at the image's own size (a class map for a semantic model).
    """
    return finish_at(maps, prepared.image.shape[:2], prepared.scale, spec)


def finish_at(maps, shape, scale, spec):
    """:func:`finish` for an image of ``shape`` prepared at ``scale``.

    What a worker process is sent: the maps and two numbers, not the image.

    Parameters
    ----------
    maps : (h, w, K) float ndarray
        The model's maps at the working scale.
    shape : tuple of int
        ``(H, W)`` of the image.
    scale : float
        The working scale the maps were computed at.
    spec : segmodel.model.spec.ModelSpec

    Returns
    -------
    (H, W) int32 ndarray
    """
    if scale < 1.0:
        maps = resize(maps, shape, order=1)
    labels = mask_from_maps(maps, spec)  # class map of a semantic model
    if labels.shape != shape:
        labels = resize(labels, shape, order=0)
    return labels


@dataclass(frozen=True)
class ModelCalls:
    """How the model is called: batches, test-time augmentation, locks, workers, bookkeeping.

    Parameters
    ----------
    batch_size : int, optional
        Tiles per model call (default 8).
    tta : bool, optional
        Average the maps over the four flips of each tile (default False).
    lock : context manager, optional
        Held while the tiles of one pass are submitted (see
        :func:`segmodel.inference.predict.predict_maps`). Default: none.
    pool : segmodel.inference.workers.CpuPool, optional
        Post-processes the images in its worker processes. Default: in this process.
    model_thread : segmodel.inference.workers.ModelThread, optional
        Makes the model calls. Default: in this thread.
    timings : dict, optional
        Accumulates the seconds spent in ``"predict"`` (from taking the lock to the last tile
        stitched) and ``"postprocess"``. Default: not kept.
    on_error : callable, optional
        ``on_error(i, exc)`` receives a failed post-processing of image ``i``, whose labels
        are then None. Default: the exception is raised.
    """

    batch_size: int = 8
    tta: bool = False
    lock: object = None
    pool: object = None
    model_thread: object = None
    timings: dict = None
    on_error: object = None


def predict_labels(lm, prepared, tiling, *, auto=False, calls=ModelCalls()):
    """Labels for prepared images, predicting tiles of all images in shared batches.

    Parameters
    ----------
    lm : LoadedModel
        The model and its spec.
    prepared : list of Prepared
        Images from :func:`prepare` (at scale 1 with ``auto``).
    tiling : Tiling
        Tile size and overlap, e.g. from :func:`default_tiling`.
    auto : bool, optional
        Estimate each image's nucleus size from its pyramid levels and segment the image at
        the scale it calls for (:func:`estimate_scales`). Default False.
    calls : ModelCalls, optional
        Batch size, test-time augmentation, lock, worker pool, model thread, timings and error
        handler (default: ``ModelCalls()``).

    Returns
    -------
    labels : list of (H, W) ndarray
        Instance labels (a semantic model: class maps) of each image at its own resolution;
        None for an image whose post-processing failed and went to ``calls.on_error``.
    prepared : list of Prepared
        The images at the scale each was finally segmented at (and, with ``auto``, its
        :class:`segmodel.inference.autoscale.Estimate`).
    """
    passes = _Passes(lm, list(prepared), tiling, calls)
    if not auto:
        return passes.run(range(len(passes.prepared))), passes.prepared
    labels, redo = _estimate(passes)
    for i, lab in zip(redo, passes.run(redo)):
        labels[i] = lab
    return labels, passes.prepared


def estimate_scales(lm, prepared, tiling, *, batch_size=8, lock=None):
    """The automatic scale of each prepared image (at scale 1), without segmenting it there.

    Parameters
    ----------
    lm : LoadedModel
        The model and its spec.
    prepared : list of Prepared
        Images from :func:`prepare` at scale 1.
    tiling : Tiling
        Tile size and overlap.
    batch_size : int, optional
        Tiles per model call (default 8).
    lock : context manager, optional
        Held while the tiles of one pass are submitted. Default: none.

    Returns
    -------
    list of segmodel.inference.autoscale.Estimate
        One per image; see :mod:`segmodel.inference.autoscale`.
    """
    passes = _Passes(lm, list(prepared), tiling, ModelCalls(batch_size=batch_size, lock=lock))
    _estimate(passes)
    return [p.estimate for p in passes.prepared]


def _estimate(passes, rule=autoscale.DEFAULT):
    """Segment each image's pyramid levels, coarsest first, until one measures its nuclei.

    Set each prepared image to its chosen scale. Returns ``(labels, redo)``: labels of the images
    whose last pass was already at their chosen scale, and the indices still to run.
    """
    spec, base = passes.lm.spec, list(passes.prepared)
    labels = [None] * len(base)
    if not spec.object_diameter:  # a model that does not know its working size: scale 1
        return labels, list(range(len(base)))
    found, failed = {}, set()
    pending = list(range(len(base)))
    for level in rule.levels:
        last = level == rule.levels[-1]
        for i in pending:
            passes.prepared[i] = rescale(base[i], base[i].scale * level)
        for i, lab in zip(pending, passes.run(pending, at_level=not last)):
            labels[i] = lab
            if lab is None:
                failed.add(i)
                continue
            d = autoscale.level_diameter(object_labels(lab, spec), level, rule, last=last)
            if d is not None or last:
                found[i] = (d, level)
        pending = [i for i in pending if i not in found and i not in failed]
    redo = []
    for i, p in enumerate(base):
        if i in failed:
            continue
        d, level = found[i]
        scale = autoscale.choose_scale(d, spec, rule)
        estimate = autoscale.Estimate(scale, math.nan if d is None else d, level)
        passes.prepared[i] = replace(rescale(p, scale), estimate=estimate)
        if scale != 1.0 or level != 1.0:
            labels[i] = None
            redo.append(i)
    return labels, redo


class _Passes:
    """Model passes over prepared images.

    Tiles of all images in shared batches, then the post-processing of each (see
    :func:`predict_labels` for the arguments).
    """

    def __init__(self, lm, prepared, tiling, calls):
        self.lm, self.prepared, self.tiling = lm, prepared, tiling
        self.batch_size = calls.batch_size
        self.predict = with_flips(lm.predict_batch) if calls.tta else lm.predict_batch
        self.guard = _NotedLock(calls.lock)
        thread = calls.model_thread
        self.submit = thread.submit if thread is not None else None
        self.on_error, self.pool = calls.on_error, calls.pool or CpuPool(0)
        self.spent = calls.timings if calls.timings is not None else {}

    def _tick(self, stage, t0):
        t1 = time.perf_counter()
        self.spent[stage] = self.spent.get(stage, 0.0) + t1 - t0
        return t1

    def run(self, indices, *, at_level=False):
        """Labels of some of the images; None where post-processing failed.

        Parameters
        ----------
        indices : iterable of int
            Positions of the images in the prepared list.
        at_level : bool, optional
            Labels at the resolution the images were prepared at, not their own (default False).

        Returns
        -------
        list of ((H, W) int32 ndarray or None)
        """
        indices = list(indices)
        if not indices:
            return []
        xs = [self.prepared[i].x for i in indices]
        maps = predict_maps(self.predict, xs, tiling=self.tiling, batch_size=self.batch_size,
                            n_out=n_outputs(self.lm.spec), submit=self.submit, lock=self.guard,
                            exact_last=self.lm.any_batch_size)
        t0 = self._tick("predict", self.guard.acquired_at)
        if at_level:
            shapes, scales = [x.shape[:2] for x in xs], [1.0] * len(xs)
        else:
            shapes = [self.prepared[i].image.shape[:2] for i in indices]
            scales = [self.prepared[i].scale for i in indices]
        done = self.pool.map(finish_at, maps, shapes, scales, [self.lm.spec] * len(maps))
        del maps
        labels = []
        for i, (lab, exc) in zip(indices, done):
            if exc is not None and self.on_error is None:
                raise exc
            labels.append(lab)
            if exc is not None:
                self.on_error(i, exc)
        self._tick("postprocess", t0)
        return labels


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


def default_tiling(spec, tile=None, overlap=None, *, large=False):
    """The model's tiling, with optional overrides, validated against the model's divisor.

    Parameters
    ----------
    spec : ModelSpec
        Gives the default ``tile``, ``overlap`` and the ``divisor``.
    tile : int, optional
        Tile size in pixels (default: the spec's).
    overlap : int, optional
        Overlap in pixels (default: the spec's).
    large : bool, optional
        Add twice the spec's tile as a larger tile size for the images it covers computing fewer
        pixels (see :class:`Tiling`), unless ``tile`` is given (default False). Only for models
        that take any input size.

    Returns
    -------
    Tiling

    Raises
    ------
    ValueError
        If the tile or overlap does not fit the model (see :meth:`Tiling.validate`).
    """
    tiling = Tiling(tile or spec.tile, spec.overlap if overlap is None else overlap,
                    2 * spec.tile if large and tile is None else 0)
    tiling.validate(spec.divisor)
    return tiling


def model_tiling(lm, tile=None):
    """The tiling a run uses for ``lm``: larger tiles for large images unless ``tile`` is set.

    Larger tiles need a model that takes any input size: the shipped model does; another is
    asked (this loads it in Keras).

    Parameters
    ----------
    lm : LoadedModel
    tile : int, optional
        A fixed tile size (no larger tiles). Default: the model's, and twice it for large images.

    Returns
    -------
    Tiling

    Raises
    ------
    ValueError
        If the tile does not fit the model (see :meth:`Tiling.validate`).
    """
    if lm.package is not None:  # a package's input sizes say (segmodel.model.zoo)
        flexible = tile is None and lm.package.any_size
    else:
        flexible = tile is None and (Path(lm.path) == DEFAULT_MODEL or takes_any_size(
            lm.keras_model, lm.spec))
    return default_tiling(lm.spec, tile, large=flexible)
