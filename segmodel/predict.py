"""Tiled prediction: tiles from many images share fixed-shape batches, then are stitched back."""

import numpy as np

from segmodel.preprocess import Tiling, blend_window, extract_tile, tile_origins


def predict_maps(predict_batch, images, *, tiling=Tiling(), batch_size=8, n_out=3):
    """Predict output maps for a list of normalised images with fixed-shape batches.

    Tiles from all ``images`` are cut at ``tiling.tile`` size with ``tiling.overlap`` pixels of
    overlap, grouped into batches of exactly ``batch_size`` (the last padded with zeros), passed
    to ``predict_batch`` and stitched back keeping each tile's centre (see
    :func:`segmodel.preprocess.blend_window`).

    Parameters
    ----------
    predict_batch : callable
        ``(batch_size, T, T, C) float32 -> (batch_size, T, T, n_out)``.
    images : list of (H, W, C) ndarray
        Normalised float32 images.
    tiling : Tiling, optional
    batch_size : int, optional
        Tiles per model call (default 8).
    n_out : int, optional
        Output channels of ``predict_batch``.

    Returns
    -------
    maps : list of (H, W, n_out) ndarray of float32
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    t = tiling.tile
    jobs = [(i, o) for i, img in enumerate(images) for o in tile_origins(img.shape, tiling)]
    acc = [np.zeros(img.shape[:2] + (n_out,), np.float32) for img in images]
    wsum = [np.zeros(img.shape[:2], np.float32) for img in images]
    window = blend_window(t, tiling.overlap)
    channels = images[0].shape[-1] if images else 0
    windows = {}  # one stitching window per kind of tile position (at most 16 kinds)
    scratch = np.empty((t, t, n_out), np.float32)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        batch = np.zeros((batch_size, t, t, channels), np.float32)
        for k, (i, origin) in enumerate(chunk):
            batch[k] = extract_tile(images[i], origin, t)
        out = predict_batch(batch)
        for k, (i, (y, x)) in enumerate(chunk):
            h = min(t, images[i].shape[0] - y)
            w = min(t, images[i].shape[1] - x)
            key = (y == 0, y + t >= images[i].shape[0], x == 0, x + t >= images[i].shape[1], h, w)
            if key not in windows:
                wk = _edge_aware_window(window, images[i].shape, (y, x), t, tiling.overlap)
                wk = np.ascontiguousarray(wk[:h, :w])
                windows[key] = (wk, wk[..., None])
            wk, wk3 = windows[key]
            part = scratch[:h, :w]
            np.multiply(out[k, :h, :w], wk3, out=part)
            acc[i][y : y + h, x : x + w] += part
            wsum[i][y : y + h, x : x + w] += wk
    for a, w in zip(acc, wsum):
        np.maximum(w, 1e-6, out=w)
        a /= w[..., None]
    return acc


def _edge_aware_window(window, shape, origin, t, overlap):
    """The stitching window, with full weight along sides that touch the image border."""
    if overlap == 0:
        return window
    y, x = origin
    ry, rx = window[:, t // 2].copy(), window[t // 2, :].copy()
    if y == 0:
        ry[: t // 2] = 1.0
    if y + t >= shape[0]:
        ry[t // 2 :] = 1.0
    if x == 0:
        rx[: t // 2] = 1.0
    if x + t >= shape[1]:
        rx[t // 2 :] = 1.0
    return np.outer(ry, rx)


def with_flips(predict_batch):
    """Test-time augmentation: ``predict_batch`` averaged over the four flips of the batch.

    Each flipped batch keeps the batch's fixed shape, so the model is traced once.
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
