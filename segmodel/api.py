"""Segmenting numpy images: the engine behind the pipeline, usable from a notebook.

>>> from segmodel.api import segment
>>> labels, table = segment(image)            # doctest: +SKIP
"""

from dataclasses import dataclass

import numpy as np

from segmodel.measure import CHANNELS, measure_objects
from segmodel.model import LoadedModel, load_model
from segmodel.postprocess import labels_from_maps
from segmodel.predict import predict_maps
from segmodel.preprocess import (
    Normalization, Tiling, apply_normalization, estimate_normalization, resize, scaled_shape,
    to_channels,
)


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model: ``x`` normalised at the working scale, ``image`` as read."""

    image: np.ndarray
    x: np.ndarray
    scale: float


def resolve_model(model):
    """A :class:`LoadedModel` from a path, a loaded model, or None (the bundled model)."""
    return model if isinstance(model, LoadedModel) else load_model(model)


def validate_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.05 <= scale <= 20:
        raise ValueError(
            f"scale must be a number between 0.05 and 20 (1.0 = the image's own resolution). "
            f"Received: scale={scale!r}"
        )
    return float(scale)


def prepare(image, spec, scale=1.0):
    """Convert, normalise (statistics of the whole image) and resize one image for the model."""
    image = to_channels(np.asarray(image), spec.channels)
    stats = estimate_normalization(image, Normalization(spec.p_low, spec.p_high, spec.invert))
    x = apply_normalization(image, stats)
    if scale != 1.0:
        x = resize(x, scaled_shape(x.shape, scale), order=1)
    return Prepared(image, x, scale)


def finish(maps, prepared, spec):
    """Instance labels at the image's own resolution from the maps of a prepared image."""
    labels = labels_from_maps(maps, spec.postprocess)
    if prepared.scale != 1.0:
        labels = resize(labels, prepared.image.shape[:2], order=0)
    return labels


def default_tiling(spec, tile=None, overlap=None):
    """The model's tiling, with optional overrides, validated against the model's divisor."""
    tiling = Tiling(tile or spec.tile, spec.overlap if overlap is None else overlap)
    tiling.validate(spec.divisor)
    return tiling


def segment_many(images, model=None, *, scale=1.0, batch_size=8, tiling=None):
    """Instance labels for a list of ``(H, W[, C])`` images, tiles batched across images.

    Parameters
    ----------
    images : list of ndarray
        Gray, RGB or RGBA images of any size and dtype.
    model : str, Path or LoadedModel, optional
        Default: the bundled nuclei model.
    scale : float, optional
        Resize factor to the model's working scale (1.0 = as is).
    batch_size : int, optional
        Tiles per model call.
    tiling : Tiling, optional
        Default: the model's own tile size and overlap.

    Returns
    -------
    list of (H, W) ndarray of int32
    """
    lm = resolve_model(model)
    scale = validate_scale(scale)
    tiling = tiling or default_tiling(lm.spec)
    prepared = [prepare(im, lm.spec, scale) for im in images]
    maps = predict_maps(lm.predict_batch, [p.x for p in prepared], tiling=tiling,
                        batch_size=batch_size)
    return [finish(m, p, lm.spec) for m, p in zip(maps, prepared)]


def segment(image, model=None, *, scale=1.0, image_id=""):
    """Segment one image: ``(labels (H, W) int32, objects table)``."""
    labels = segment_many([image], model, scale=scale)[0]
    intensity = to_channels(np.asarray(image), CHANNELS)
    return labels, measure_objects(labels, intensity, image_id)
