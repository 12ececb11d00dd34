"""Tiled prediction with an exact arithmetic predictor (no model involved)."""

import numpy as np
import pytest

from segmodel.predict import predict_maps
from segmodel.preprocess import Tiling


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
