"""Process-wide runtime state of the pipeline: the model lock, the model thread, warm shapes.

One Python process segments with one model at a time, whatever runs it (a notebook, the flow's
thread runner, a Dask worker). This module holds the little state that process shares, and
nothing else does:

- :func:`model_lock`: the lock around model calls made from several threads.
- The model thread (:class:`segmodel.inference.workers.ModelThread`): started by
  :func:`start_model_thread` from the thread whose CPU priority the model should keep (the
  flow's), before any shard runs; shards then queue their batches on it while their own threads
  read and write at a lower priority (:func:`model_thread`). Where no model thread was started
  (Dask workers, :func:`segmodel.pipeline.run.run`), shards call the model in their own thread.
- Warm shapes: the batch shapes already traced in this process (:func:`warm_up`), so a second run
  in the same process does not trace again.
- :func:`cpu_pool` and :func:`trim`: the post-processing worker pool of the run's
  ``cpu_workers``, and giving freed heap pages back after each shard.

Lifecycle: the state lives as long as the process; :meth:`ModelThread.mark` at each
:func:`start_model_thread` starts a new run's accounting (:func:`model_busy_seconds`,
:func:`model_window`). Prefect pickles a flow's function by value when it runs it in a
subprocess, with copies of the globals it names; module-level functions pickle by reference, so
callers reach the real objects through these functions, never through the globals.
"""

import ctypes
import ctypes.util
import multiprocessing
import threading

import numpy as np

from segmodel.inference import workers

_MODEL_LOCK = threading.Lock()
_MODEL_THREAD = []  # at most one ModelThread
_WARM = set()  # (model fingerprint, engine, batch size, tile size) already run in this process


def model_lock():
    """Return the process' lock around model calls.

    Returns
    -------
    threading.Lock
    """
    return _MODEL_LOCK


def start_model_thread(config=None):
    """Start (or reuse) this process' model thread and mark the start of a run.

    Call it from the thread whose CPU priority the model should keep, before the shards run.

    Parameters
    ----------
    config : RunConfig, optional
        With a configuration, the thread's first job traces the run's batch shapes
        (:func:`warm_up`), overlapping the reading of the first shard.

    Returns
    -------
    segmodel.inference.workers.ModelThread
    """
    if not _MODEL_THREAD:
        _MODEL_THREAD.append(workers.ModelThread())
    _MODEL_THREAD[0].mark()  # a new run: model_window describes its calls
    if config is not None:
        _MODEL_THREAD[0].submit_uncounted(warm_up, config)
    return _MODEL_THREAD[0]


def model_thread():
    """The model thread if one was started in this process, else None.

    The calling (shard) thread lowers its own CPU priority when there is one, so that it yields
    the CPU to the model.
    """
    if not _MODEL_THREAD:
        return None
    workers.lower_priority()
    return _MODEL_THREAD[0]


def model_busy_seconds():
    """Seconds the model thread has spent in model calls (tracing not counted), or None."""
    return _MODEL_THREAD[0].busy_seconds if _MODEL_THREAD else None


def model_window():
    """``(first call's start, last call's end)`` since the last run's start, or None.

    Values are :func:`time.perf_counter` readings of the model thread.
    """
    if not _MODEL_THREAD or _MODEL_THREAD[0].first_start is None:
        return None
    return _MODEL_THREAD[0].first_start, _MODEL_THREAD[0].last_end


def warm_up(config):
    """Call the model once on each batch shape of the run not yet traced in this process.

    Parameters
    ----------
    config : RunConfig

    Returns
    -------
    list of tuple
        The batch shapes called now (empty when all were warm).
    """
    model = config.load_model()
    key = (model.fingerprint, model.engine, config.options.batch_size, config.tile)
    if key in _WARM:
        return []
    _WARM.add(key)
    sizes = (config.options.batch_size, 1) if model.any_batch_size else (
        config.options.batch_size,)
    shapes = [(n, config.tile, config.tile, model.spec.channels) for n in sizes]
    for shape in shapes:
        model.predict_batch(np.zeros(shape, np.float32))
    return shapes


def cpu_pool(cpu_workers):
    """Return the process' worker pool for ``cpu_workers`` processes, or None (in-thread).

    A daemonic process (a Dask worker, by default) may not start processes: there the work stays
    in the calling thread, and the Dask workers themselves are the parallelism.

    Parameters
    ----------
    cpu_workers : int
        Worker processes (0: none).

    Returns
    -------
    segmodel.inference.workers.CpuPool or None
    """
    if not cpu_workers or multiprocessing.current_process().daemon:
        return None
    return workers.get_pool(cpu_workers)


def trim():
    """Give freed heap pages back to the system (glibc only; elsewhere a no-op).

    glibc keeps them per thread arena otherwise, so the resident size would ratchet up with the
    number of shards that different threads handled.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _LIBC.malloc_trim  # noqa: B018  (glibc only)
except (OSError, AttributeError):
    _LIBC = None
