"""Choosing the task runner of a ``segment-images`` run: threads in this process, or Dask.

- ``threads`` (default): Prefect's ``ThreadPoolTaskRunner``; each shard is one task that reads,
  segments and writes it in this process, with :data:`IN_FLIGHT` shards overlapping.
- ``dask``: prefect-dask's ``DaskTaskRunner`` on a new ``distributed.LocalCluster`` (one
  single-threaded worker process per core pair by default) or an existing scheduler
  (``--dask-address tcp://host:8786``). The same shard task runs in the worker processes, so
  pixels never cross processes; every worker process loads the model once (the module-level
  cache of :func:`segmodel.model.loading.load_model`).

Dask runs need a Prefect server every worker can reach (``PREFECT_API_URL``): without one each
worker process would start its own temporary server on the same sqlite database.
"""

import os

from prefect.task_runners import ThreadPoolTaskRunner

#: Shards in flight with threads: one on the model while the one before it is written and
#: then the one after it read (a third in flight gained no throughput and cost ~80 MB).
IN_FLIGHT = 2
TASK_RUNNERS = ("threads", "dask")

NEEDS_SERVER = (
    "--task-runner dask needs a Prefect server that every Dask worker can reach "
    "(without PREFECT_API_URL each worker process would start its own temporary server on "
    "the same database and runs fail with 'database is locked'). Start one and point "
    "segflow at it, e.g.:\n"
    "  prefect server start --host 127.0.0.1 --port 4200 &\n"
    "  export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
    "(on a cluster: --host 0.0.0.0 and the server's address in PREFECT_API_URL on every "
    "machine)."
)


def api_url():
    """The Prefect API URL from the environment or Prefect's settings, or None."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def check_api(url, timeout=10.0):
    """Raise ``ConnectionError`` saying what to do when the Prefect server at ``url`` does not
    answer its health check (instead of a traceback from the first API call of the flow)."""
    import httpx

    try:
        with httpx.Client(timeout=timeout) as client:
            answer = client.get(f"{url.rstrip('/')}/health")
        if answer.status_code == 200:
            return
        problem = f"HTTP {answer.status_code}"
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    raise ConnectionError(
        f"the Prefect server at PREFECT_API_URL={url} does not answer ({problem}). Start it "
        "(prefect server start), point PREFECT_API_URL at a running one, or unset it to run "
        "on a temporary server.")


def make_task_runner(kind="threads", address=None, n_workers=None):
    """A task runner for ``kind`` in :data:`TASK_RUNNERS`.

    Raises
    ------
    ValueError
        Unknown ``kind``, an address without Dask, or Dask without a Prefect server.
    """
    if kind not in TASK_RUNNERS:
        raise ValueError(f"task_runner must be one of {TASK_RUNNERS}. Received: {kind!r}")
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"--dask-workers must be at least 1 (worker processes of a new local "
                         f"Dask cluster). Received: {n_workers}")
    if kind == "threads":
        if address:
            raise ValueError(f"--dask-address needs --task-runner dask. Received: {address!r}")
        if n_workers is not None:
            raise ValueError(f"--dask-workers needs --task-runner dask. Received: {n_workers}")
        return ThreadPoolTaskRunner(max_workers=IN_FLIGHT)
    if not api_url():
        raise ValueError(NEEDS_SERVER)
    from prefect_dask import DaskTaskRunner

    if address and n_workers is not None:
        raise ValueError(f"--dask-workers sizes a new local cluster, not the existing one at "
                         f"--dask-address {address}: start its workers there. Received: "
                         f"--dask-workers {n_workers}")
    if address:
        return DaskTaskRunner(address=address)
    n = n_workers or max(1, (os.cpu_count() or 2) // 2)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def is_distributed(task_runner):
    """True when tasks may run in other processes (the model thread is then not started)."""
    return not isinstance(task_runner, ThreadPoolTaskRunner)


def in_flight(task_runner):
    """Shards to keep submitted: IN_FLIGHT with threads; twice the Dask workers' threads."""
    if not is_distributed(task_runner):
        return IN_FLIGHT
    client = getattr(task_runner, "_client", None)
    try:
        return max(2, 2 * sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001  (no client yet, or an older distributed)
        return 6
