"""The CPU worker pool: results in order, one item's error kept with that item."""

import numpy as np
import pytest

from segmodel.workers import CpuPool, ImageError


def _area_or_fail(labels):
    if labels.max() == 0:
        raise ValueError("no objects in this one")
    return int((labels > 0).sum())


@pytest.mark.parametrize("workers", [0, 2])
def test_results_come_back_in_order_and_errors_stay_with_their_item(workers):
    images = [np.zeros((8, 8), np.int32) for _ in range(5)]
    for k in (0, 1, 3, 4):
        images[k][: k + 1, :2] = 1
    pool = CpuPool(workers)
    try:
        done = pool.map(_area_or_fail, images)
    finally:
        pool.shutdown()
    assert [v for v, _ in done] == [2, 4, None, 8, 10]
    assert [e is None for _, e in done] == [True, True, False, True, True]
    err = done[2][1]
    assert str(err) == "no objects in this one"
    assert getattr(err, "error_type", type(err).__name__) == "ValueError"
    if workers:
        assert isinstance(err, ImageError)


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_a_bad_worker_count_is_refused_naming_the_parameter(bad):
    with pytest.raises(ValueError, match=r"cpu_workers must be a whole number >= 0. Received"):
        CpuPool(bad)
