"""Tiled prediction: tiles from many images share fixed-shape batches, then are stitched back."""

import contextlib
from collections import deque
from concurrent.futures import Future

import numpy as np

from segmodel.inference.preprocess import Tiling, extract_tile, owned_region, tile_origins


def predict_maps(predict_batch, images, *, tiling=Tiling(), batch_size=8, n_out=3, submit=None,
                 lock=None, exact_last=False):
    """Predict output maps for a list of normalised images with fixed-shape batches.

    Tiles from all ``images`` are cut at ``tiling.tile`` size with ``tiling.overlap`` pixels of
    overlap, grouped into batches of exactly ``batch_size`` (the last padded with zeros, or cut
    to its tiles with ``exact_last``), passed to ``predict_batch`` and stitched back: each
    pixel is taken from a tile that saw at least ``tiling.overlap`` pixels of context around
    it (see :func:`segmodel.inference.preprocess.owned_region`). Images that suit
    ``tiling.large`` (``Tiling.for_shape``) get those tiles, in batches of as many pixels.

    Parameters
    ----------
    predict_batch : callable
        ``(batch_size, T, T, C) float32 -> (batch_size, T, T, n_out)``.
    images : list of (H, W, C) ndarray
        Normalised float32 images.
    tiling : Tiling, optional
        Tile size, overlap, larger size (default ``Tiling()``: 256, 32, none).
    batch_size : int, optional
        Tiles per model call (default 8).
    n_out : int, optional
        Output channels of ``predict_batch`` (default 3).
    submit : callable, optional
        ``submit(fn, batch) -> Future`` runs the model calls elsewhere (the model thread of
        :class:`segmodel.inference.workers.ModelThread`). The next batch is then queued behind
        the running one, and this thread cuts the batch after it and stitches the one before
        it meanwhile, so the model never waits for them. Default: each call runs here, in turn.
    lock : context manager, optional
        Held while this call submits its batches (so the batches of concurrent calls do not
        interleave) and released before the last ones are stitched: the next call queues its
        first batch while this one's last batch runs.
    exact_last : bool, optional
        Send the last batch with only its tiles, not padded: for models whose calls cost in
        proportion to the batch (``LoadedModel.any_batch_size``). Default False.

    Returns
    -------
    maps : list of (H, W, n_out) ndarray of float32
        One per image, in the order of ``images``.

    Raises
    ------
    ValueError
        If ``batch_size`` is below 1 (before any work).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    maps = [np.empty(img.shape[:2] + (n_out,), np.float32) for img in images]
    queued = deque()  # (tiling, tiles, future) of submitted batches, oldest first
    with lock if lock is not None else contextlib.nullcontext():
        for tl, chunk, batch in _class_batches(images, tiling, batch_size, exact_last):
            queued.append((tl, chunk, (submit or _run_here)(predict_batch, batch)))
            if len(queued) > 1:  # one batch stays queued behind the one the model is running
                _stitch(maps, images, *queued.popleft())
    while queued:
        _stitch(maps, images, *queued.popleft())
    return maps


def _class_batches(images, tiling, batch_size, exact_last):
    """``(tiling, tiles, batch)`` of each tile class in turn, smaller tiles first.

    A class of larger tiles than ``tiling.tile`` gets batches of about as many pixels:
    ``batch_size`` scaled by the area ratio, at least 1.
    """
    classes = [tiling.for_shape(img.shape) for img in images]
    tile = tiling.tile
    for tl in sorted(set(classes), key=lambda c: c.tile):
        jobs = [(i, o) for i, img in enumerate(images) if classes[i] == tl
                for o in tile_origins(img.shape, tl)]
        size = max(1, batch_size * tile ** 2 // tl.tile ** 2)
        for chunk, batch in _batches(images, jobs, tl.tile, size, exact_last):
            yield tl, chunk, batch


def _batches(images, jobs, t, batch_size, exact_last):
    """``(tiles, batch)`` for each ``batch_size`` of ``jobs``, the batch cut from ``images``."""
    channels = images[0].shape[-1] if images else 0
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        size = len(chunk) if exact_last else batch_size
        batch = np.zeros((size, t, t, channels), np.float32)
        for k, (i, origin) in enumerate(chunk):
            batch[k] = extract_tile(images[i], origin, t)
        yield chunk, batch


def _stitch(maps, images, tiling, chunk, future):
    """Write the owned region of each tile of ``chunk`` from ``future``'s output into ``maps``.

    Every pixel is owned by one of the image's tiles (owned_region), so every one is written.
    """
    out = future.result()
    for k, (i, (y, x)) in enumerate(chunk):
        rows, cols = owned_region(images[i].shape, (y, x), tiling)
        maps[i][rows, cols] = out[k, rows.start - y : rows.stop - y,
                                  cols.start - x : cols.stop - x]


def _run_here(fn, *args):
    """``fn(*args)`` now, as a finished future (its exception, if any, comes from ``result``)."""
    future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future


def with_flips(predict_batch):
    """Wrap ``predict_batch`` for test-time augmentation: averaged over the batch's four flips.

    Each flipped batch keeps the batch's fixed shape, so the model is traced once.

    Parameters
    ----------
    predict_batch : callable
        ``(N, T, T, C) -> (N, T, T, n_out)``.

    Returns
    -------
    callable
        ``(N, T, T, C) -> (N, T, T, n_out) float32``, the mean over no flip, a vertical, a
        horizontal and both flips (each output flipped back).
    """

    def predict(batch):
        total = None
        for flip in ((), (1,), (2,), (1, 2)):
            x = np.ascontiguousarray(np.flip(batch, flip)) if flip else batch
            out = np.asarray(predict_batch(x))
            out = np.flip(out, flip) if flip else out
            total = out.astype(np.float32) if total is None else total + out
        return total / 4.0

    return predict
