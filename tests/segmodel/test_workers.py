"""The CPU worker pool (results in order, one item's error kept with that item) and the model
thread with the lowered priority of the threads around it."""

import os
import sys
import threading

import numpy as np
import pytest

from segmodel.inference.workers import CpuPool, ImageError, ModelThread, lower_priority


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


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("2", TypeError)],
                         ids=["negative", "float", "str"])
def test_a_bad_worker_count_is_refused_naming_the_parameter(bad, error):
    with pytest.raises(error, match=r"cpu_workers must be a whole number >= 0. Received"):
        CpuPool(bad)


def test_the_model_thread_runs_calls_on_its_own_thread_and_passes_errors_back():
    model = ModelThread()
    assert model.submit(threading.current_thread).result().name.startswith("segflow-model")
    assert model.submit(sorted, [3, 1, 2], reverse=True).result() == [3, 2, 1]
    with pytest.raises(ZeroDivisionError):
        model.submit(lambda: 1 / 0).result()
    queued = [model.submit(pow, 2, k) for k in range(5)]  # run in the order submitted
    assert [f.result() for f in queued] == [1, 2, 4, 8, 16]


def test_the_model_thread_notes_its_first_and_last_counted_call_since_a_mark():
    import time

    model = ModelThread()
    model.submit_uncounted(time.sleep, 0.05).result()  # tracing: not a call of the window
    assert model.first_start is None and model.last_end is None
    before = time.perf_counter()
    model.submit(time.sleep, 0.05).result()
    model.submit(time.sleep, 0.05).result()
    after = time.perf_counter()
    assert before <= model.first_start < model.last_end <= after
    assert model.last_end - model.first_start >= 0.1 and model.busy_seconds >= 0.1
    model.mark()
    assert model.first_start is None and model.last_end is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_lowering_priority_affects_only_the_calling_thread_and_only_once():
    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice()
    seen = {}

    def worker():
        seen["first"], seen["second"] = lower_priority(), lower_priority()
        seen["nice"] = nice()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"first": True, "second": True, "nice": min(19, base + 10)}
    assert nice() == base  # the calling (and every other) thread keeps its priority
    assert lower_priority() is False and nice() == base  # never the main thread
    model = ModelThread()  # created from a normal thread: it keeps that priority
    assert model.submit(nice).result() == base
