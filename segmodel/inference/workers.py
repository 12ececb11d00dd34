"""CPU worker processes for the per-image work around the model (post-processing, measuring).

The model runs in the main process, batched over many images; turning its maps into labels
(watershed) and measuring the objects is per-image CPU work that, in threads, shares one
interpreter lock with everything else. A :class:`CpuPool` of ``N`` worker processes takes that
work, so on a machine with spare cores it runs truly in parallel and overlaps with the next
shard's inference. ``workers=0`` runs the same functions in the calling thread.

Workers are started with ``spawn`` (never ``fork``: the parent holds TensorFlow's threads) and
import only numpy/scipy/scikit-image code, never Keras. One pool is made per process and
worker count (:func:`get_pool`), like the model, and reused by every shard.
"""

import atexit
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor


class CpuPool:
    """``map(fn, *iterables)`` over worker processes, each item's error kept with its item.

    ``fn`` must be a module-level function (it is pickled by reference). The results come back
    in order as ``(value, None)`` or ``(None, exception)`` (from a worker, an :class:`ImageError`
    naming the original type): one bad image never hides the others' results. A worker that
    dies (killed, out of memory) raises ``concurrent.futures.process.BrokenProcessPool`` from
    :meth:`map`: that is not one image's fault, so it stops the shard like any other engine
    error.

    Parameters
    ----------
    workers : int, optional
        Worker processes (``spawn``ed); 0 (default) runs every call in the calling thread.

    Raises
    ------
    TypeError
        If ``workers`` is not an int.
    ValueError
        If ``workers`` is negative.
    """

    def __init__(self, workers=0):
        if not isinstance(workers, int):
            raise TypeError(f"cpu_workers must be a whole number >= 0. Received: {workers!r}")
        if workers < 0:
            raise ValueError(f"cpu_workers must be a whole number >= 0. Received: {workers!r}")
        self.workers = workers
        self._executor = None
        if workers:
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn, *iterables):
        """``fn`` over ``zip(*iterables)``: ``(value, None)`` or ``(None, exception)`` in order.

        Parameters
        ----------
        fn : callable
            A module-level function.
        *iterables : iterable
            Its arguments, zipped.

        Returns
        -------
        list of tuple
            ``(value, None)`` or ``(None, exception)`` per item; the exception is the original in
            the calling thread, an :class:`ImageError` from a worker.

        Raises
        ------
        concurrent.futures.process.BrokenProcessPool
            If a worker process dies.
        """
        calls = list(zip(*iterables))
        if self._executor is None:  # in this thread: the original exceptions
            return [_inline(fn, *args) for args in calls]
        futures = [self._executor.submit(_guarded, fn, *args) for args in calls]
        return [f.result() for f in futures]

    def shutdown(self):
        """Stop the worker processes (waiting for running calls, cancelling queued ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class ImageError(Exception):
    """One item's error as it comes back from a worker.

    The original exception object may not survive pickling, so its type's name and message
    travel instead.

    Parameters
    ----------
    error_type : str
        The original exception's type name, e.g. ``"ValueError"``.
    message : str
        Its message.
    """

    def __init__(self, error_type, message):
        super().__init__(message)
        self.error_type = error_type

    def __reduce__(self):
        return ImageError, (self.error_type, str(self))


def _inline(fn, *args):
    try:
        return fn(*args), None
    except Exception as exc:
        return None, exc


def _guarded(fn, *args):
    try:
        return fn(*args), None
    except Exception as exc:  # one image's error, reported with its item
        return None, ImageError(type(exc).__name__, str(exc))


_POOLS = {}
_LOCK = threading.Lock()


def get_pool(workers):
    """Get this process' pool of ``workers`` processes (made on first use, shut down at exit).

    Parameters
    ----------
    workers : int
        Worker processes, 0 for the calling thread.

    Returns
    -------
    CpuPool

    Raises
    ------
    TypeError
        If ``workers`` is not an int (on first use).
    ValueError
        If ``workers`` is negative (on first use).
    """
    with _LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = CpuPool(workers)
        return pool


@atexit.register
def _shutdown_all():
    for pool in list(_POOLS.values()):
        pool.shutdown()
    _POOLS.clear()


class ModelThread:
    """One thread that makes every model call of a process.

    It runs at the process' own CPU priority, while :func:`lower_priority` lets the threads
    doing the work around the model (reading, post-processing, measuring, writing) yield to it.

    Why: on a CPU-only machine the model's parallel operations use every core, and an operation
    waits for its slowest thread. A reading or measuring thread running at the same priority
    takes a core from one of them and stalls the whole operation, so each second of that work
    cost the model about a second. At a lower priority the same work fills the moments the
    model leaves the cores idle instead. Create it from a thread at normal priority (its thread
    inherits the creator's priority, which an unprivileged process cannot raise again).

    Attributes
    ----------
    busy_seconds : float
        Seconds spent running counted calls (the time the model was busy).
    first_start, last_end : float or None
        ``time.perf_counter()`` at the start of the first counted call since :meth:`mark` and
        at the end of the last one (None before any).
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-model")
        self._executor.submit(int).result()  # start the thread now, from the creating thread
        #: Seconds the thread has spent running submitted calls (they run one at a time, so
        #: this is the time the model was busy; read it before and after a run).
        self.busy_seconds = 0.0
        #: ``time.perf_counter()`` at the start of the first counted call since :meth:`mark`,
        #: and at the end of the last one (None before any).
        self.first_start = self.last_end = None

    def mark(self):
        """Start a new window for :attr:`first_start` and :attr:`last_end` (a run's start)."""
        self.first_start = self.last_end = None

    def submit(self, fn, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)`` on the model thread, counted in :attr:`busy_seconds`.

        Parameters
        ----------
        fn : callable
            The call.
        *args, **kwargs
            Its arguments.

        Returns
        -------
        concurrent.futures.Future
            Of ``fn``'s result.
        """
        return self._executor.submit(self._timed, fn, args, kwargs)

    def submit_uncounted(self, fn, *args, **kwargs):
        """:meth:`submit`, not counted in :attr:`busy_seconds` (the one-time tracing).

        Parameters
        ----------
        fn : callable
            The call.
        *args, **kwargs
            Its arguments.

        Returns
        -------
        concurrent.futures.Future
        """
        return self._executor.submit(fn, *args, **kwargs)

    def _timed(self, fn, args, kwargs):
        t0 = time.perf_counter()
        if self.first_start is None:
            self.first_start = t0
        try:
            return fn(*args, **kwargs)
        finally:
            self.last_end = time.perf_counter()
            self.busy_seconds += self.last_end - t0


_LOWERED = threading.local()


def lower_priority(step=10):
    """Lower the calling thread's CPU priority by ``step`` nice levels, once per thread.

    Linux only (elsewhere, in the main thread, or where it is refused, nothing happens).

    Parameters
    ----------
    step : int, optional
        Nice levels to add, up to 19 in all (default 10).

    Returns
    -------
    bool
        True when this thread now runs below the process' priority.
    """
    if getattr(_LOWERED, "done", False):
        return True
    if not hasattr(os, "setpriority") or threading.current_thread() is threading.main_thread():
        return False  # never the main thread: it may be the one running the model
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except OSError:
        return False
    _LOWERED.done = True
    return True
