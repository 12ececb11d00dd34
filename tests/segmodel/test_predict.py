"""Tiled prediction with an exact arithmetic predictor (no model involved): stitching, batch
shapes, and the model calls queued on another thread."""

import threading
from concurrent.futures import Future

import numpy as np
import pytest

from segmodel.inference.predict import predict_maps
from segmodel.inference.preprocess import Tiling, tile_origins
from segmodel.inference.workers import ModelThread


class Doubler:
    """``x * 2`` per channel, recording every batch shape it is called with."""

    def __init__(self):
        self.shapes = []

    def __call__(self, batch):
        self.shapes.append(batch.shape)
        return batch[..., :3] * 2


@pytest.mark.parametrize("tile, overlap", [(32, 0), (32, 8), (64, 16), (256, 32)])
def test_stitched_output_equals_the_whole_image_prediction(tile, overlap):
    rng = np.random.default_rng(1)
    images = [rng.random((100, 77, 3), dtype=np.float32),
              rng.random((20, 300, 3), dtype=np.float32)]
    maps = predict_maps(Doubler(), images, tiling=Tiling(tile, overlap), batch_size=4)
    for image, m in zip(images, maps):
        assert m.shape == image.shape
        np.testing.assert_allclose(m, image * 2, rtol=1e-5, atol=1e-5)


def test_every_batch_has_the_same_fixed_shape():
    predictor = Doubler()
    images = [np.ones((70, 50, 3), np.float32), np.ones((10, 10, 3), np.float32)]
    predict_maps(predictor, images, tiling=Tiling(32, 8), batch_size=5)
    assert len(set(predictor.shapes)) == 1 and predictor.shapes[0] == (5, 32, 32, 3)


def test_tiles_of_many_images_share_batches():
    predictor = Doubler()
    images = [np.ones((32, 32, 3), np.float32)] * 8
    predict_maps(predictor, images, tiling=Tiling(32, 0), batch_size=8)
    assert len(predictor.shapes) == 1


def test_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size must be >= 1. Received: batch_size=0"):
        predict_maps(Doubler(), [np.ones((8, 8, 3), np.float32)], batch_size=0)


def _tile_count(images, tiling):
    return sum(len(tile_origins(im.shape, tiling)) for im in images)


def test_the_last_batch_can_be_cut_to_its_tiles_with_the_same_maps():
    rng = np.random.default_rng(2)
    images = [rng.random((70, 50, 3), dtype=np.float32), rng.random((10, 10, 3), np.float32)]
    tiling = Tiling(32, 8)
    n = _tile_count(images, tiling)
    assert n % 5  # the case under test: a partial last batch
    padded, cut = Doubler(), Doubler()
    expected = predict_maps(padded, images, tiling=tiling, batch_size=5)
    maps = predict_maps(cut, images, tiling=tiling, batch_size=5, exact_last=True)
    assert padded.shapes == [(5, 32, 32, 3)] * (n // 5 + 1)
    assert cut.shapes == [(5, 32, 32, 3)] * (n // 5) + [(n % 5, 32, 32, 3)]
    for a, b in zip(maps, expected):
        np.testing.assert_array_equal(a, b)


class Lazy(Future):
    """A submitted model call that runs when its result is asked for, noting what had been
    submitted by then."""

    def __init__(self, fn, batch, log):
        super().__init__()
        self.fn, self.batch, self.log = fn, batch, log

    def result(self, timeout=None):
        self.log.append(("stitch", sum(e[0] == "submit" for e in self.log)))
        return self.fn(self.batch)


class NotingLock:
    def __init__(self, log):
        self.log = log

    def __enter__(self):
        self.log.append(("acquire",))

    def __exit__(self, *exc):
        self.log.append(("release",))


def test_the_next_batch_is_queued_before_the_previous_one_is_stitched():
    log = []
    images = [np.ones((100, 100, 3), np.float32)]
    tiling = Tiling(32, 8)
    n_batches = -(-_tile_count(images, tiling) // 4)

    def submit(fn, batch):
        log.append(("submit",))
        return Lazy(fn, batch, log)

    maps = predict_maps(Doubler(), images, tiling=tiling, batch_size=4, submit=submit,
                        lock=NotingLock(log))
    np.testing.assert_allclose(maps[0], 2.0, rtol=1e-6)
    stitched_after = [e[1] for e in log if e[0] == "stitch"]
    # batch k is stitched only once batch k+1 is queued behind it (the last one at the end)
    assert stitched_after == [k + 2 for k in range(n_batches - 1)] + [n_batches]
    # the lock covers every submission and is free again before the last batch is stitched
    kinds = [e[0] for e in log]
    assert kinds[0] == "acquire" and kinds.count("release") == 1
    release = kinds.index("release")
    assert kinds[:release].count("submit") == n_batches and "stitch" in kinds[release:]


def test_model_calls_on_the_model_thread_give_the_same_maps():
    rng = np.random.default_rng(3)
    images = [rng.random((90, 61, 3), dtype=np.float32), rng.random((33, 200, 3), np.float32)]
    threads = []

    def predictor(batch):
        threads.append(threading.current_thread().name)
        return batch[..., :3] * 2

    model = ModelThread()
    maps = predict_maps(predictor, images, tiling=Tiling(32, 8), batch_size=3,
                        submit=model.submit, exact_last=True)
    expected = predict_maps(Doubler(), images, tiling=Tiling(32, 8), batch_size=3)
    assert len(threads) == -(-_tile_count(images, Tiling(32, 8)) // 3)
    assert all(name.startswith("segflow-model") for name in threads)
    for a, b in zip(maps, expected):
        np.testing.assert_array_equal(a, b)


def test_a_model_error_reaches_the_caller():
    def broken(batch):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        predict_maps(broken, [np.ones((40, 40, 3), np.float32)], tiling=Tiling(32, 8),
                     submit=ModelThread().submit)


def test_large_images_get_large_tiles_in_batches_of_their_own_with_the_same_maps():
    """Two tile classes: the large image's tiles come in their own fixed-shape batches holding
    about as many pixels, and stitching is exact for both."""
    rng = np.random.default_rng(3)
    images = [rng.random((300, 280, 3), dtype=np.float32),   # small tiles compute fewer pixels
              rng.random((1100, 900, 3), dtype=np.float32),  # large tiles do
              rng.random((40, 60, 3), dtype=np.float32)]
    tiling = Tiling(64, 8, 128)
    assert [tiling.for_shape(im.shape).tile for im in images] == [64, 128, 64]
    predictor = Doubler()
    maps = predict_maps(predictor, images, tiling=tiling, batch_size=8)
    for image, m in zip(images, maps):
        np.testing.assert_allclose(m, image * 2, rtol=1e-5, atol=1e-5)
    assert set(predictor.shapes) == {(8, 64, 64, 3), (2, 128, 128, 3)}
    large_calls = [s for s in predictor.shapes if s[1] == 128]
    assert len(large_calls) == -(-len(tile_origins(images[1].shape, Tiling(128, 8))) // 2)
