"""Prefect tasks of a run: ingest, one task per shard (read, segment, write), finalize.

A shard is one task run whatever the runner: it reads, segments and writes its images, so
pixel arrays never travel through Prefect. Task inputs and results are a few hundred bytes,
so Prefect's input hashing and in-memory result cache cost nothing, and only the shards the
flow has in flight hold memory. With threads, the shards in flight overlap: while one is on
the model (one model thread per process, at the flow thread's priority), the one before it is
written and the one after it read, both at a lower priority.

One task per shard, not one per stage: each task run costs the API server CPU to record (its
states are events the server writes to its database), about 60 ms of a core per task run on
the 2-core machine (``benchmarks/orchestration.py``), taken from the model there. Three
stage tasks per shard (read, segment, write) gained no throughput over one.
"""

import ctypes
import ctypes.util
import multiprocessing
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from segmodel import export, outputs, shards, workers
from segmodel.api import default_tiling
from segmodel.io import Store, is_transient, list_images
from segmodel.model import load_model

_MODEL_LOCK = threading.Lock()


def model_lock():
    """This process' lock around model calls (a lock cannot be pickled; a function can).

    Prefect pickles a flow's function by value when it runs it in a subprocess (``serve``,
    process work pools, Dask), and with it copies of the module globals the tasks name;
    module-level functions pickle by reference, so the tasks reach the real objects through
    them.
    """
    return _MODEL_LOCK


_MODEL_THREAD = []


def start_model_thread(ctx=None):
    """Start this process' :class:`segmodel.workers.ModelThread` (call it from the flow's own
    thread, before the tasks run: the model thread keeps that thread's CPU priority).

    With a :class:`ShardContext`, the model thread's first job is a call on the run's batch
    shape (and one on a single tile, the shape of a shard's last batch, where the model takes
    any batch size): the model's one-time tracing then overlaps reading the first shard
    instead of delaying its first batch.
    """
    if not _MODEL_THREAD:
        _MODEL_THREAD.append(workers.ModelThread())
    _MODEL_THREAD[0].mark()  # a new run: model_window describes its calls
    if ctx is not None:
        _MODEL_THREAD[0].submit_uncounted(_warm_up, ctx)
    return _MODEL_THREAD[0]


def model_busy_seconds():
    """Seconds this process' model thread has spent in model calls (tracing not counted), or
    None where no model thread runs (Dask workers)."""
    return _MODEL_THREAD[0].busy_seconds if _MODEL_THREAD else None


def model_window():
    """``(first call's start, last call's end)`` of this process' model thread since its last
    :meth:`~segmodel.workers.ModelThread.mark` (``time.perf_counter`` values), or None."""
    if not _MODEL_THREAD or _MODEL_THREAD[0].first_start is None:
        return None
    return _MODEL_THREAD[0].first_start, _MODEL_THREAD[0].last_end


_WARM = set()  # (model fingerprint, batch size, tile size) already traced in this process


def _warm_up(ctx):
    """Call the model once on each batch shape of the run not called in this process yet;
    returns those shapes."""
    model = load_model(ctx.model_path, trust=ctx.trust_model)
    key = (model.fingerprint, ctx.batch_size, ctx.tile_size)
    if key in _WARM:
        return []
    _WARM.add(key)
    sizes = (ctx.batch_size, 1) if model.any_batch_size else (ctx.batch_size,)
    shapes = [(n, ctx.tile_size, ctx.tile_size, model.spec.channels) for n in sizes]
    for shape in shapes:
        model.predict_batch(np.zeros(shape, np.float32))
    return shapes


def _model_thread():
    """The model thread if the flow started one in this process (not on Dask workers); the
    calling task thread then yields the CPU to it."""
    if not _MODEL_THREAD:
        return None
    workers.lower_priority()
    return _MODEL_THREAD[0]


@dataclass(frozen=True)
class ShardContext:
    """Everything a shard's tasks share within one run (small and picklable)."""

    input: Store
    output: Store
    model_path: str
    scale: object  # float, or "auto"
    tta: bool
    batch_size: int
    tile_size: int
    overlap: int
    mask_format: str
    max_pixels: int
    config_key: str
    trust_model: bool = False
    tiled_above: int = 36_000_000
    block_size: int = 4096
    channel: object = None  # int index or str name
    plane: object = None
    pyramid_level: int = 0
    outlines: str = "none"
    cpu_workers: int = 0


@dataclass(frozen=True)
class ShardJob:
    name: str
    index: int
    total: int
    refs: tuple
    mask_paths: dict


def _transient_only(task, task_run, state):
    """Retry condition: only storage errors that may pass (resets, 5xx, throttling)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


IO_RETRIES = dict(retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=1),
                  retry_jitter_factor=0.5, retry_condition_fn=_transient_only)


@task(name="ingest", task_run_name="ingest: list input, plan shards", cache_policy=NO_CACHE,
      **IO_RETRIES)
def ingest(ctx: ShardContext, patterns: tuple, shard_size: int, run_stamp: str,
           retry_failed: bool = False) -> dict:
    """List the input, reconcile earlier outputs and cut what is not done into shards."""
    t0 = time.time()
    logger = get_run_logger()
    refs = list_images(ctx.input, patterns)
    recorded = {}
    latest = outputs.reconcile(ctx.output, masks=recorded)
    if ctx.mask_format == "ome-zarr":
        export.remove_partial(ctx.output)
    todo = outputs.pending(refs, latest, ctx.config_key, retry_failed=retry_failed)
    masks = outputs.mask_paths([r.image_id for r in refs], ctx.mask_format, recorded)
    from tasks.large import find_large

    todo, big = find_large(ctx, todo)
    total = -(-len(todo) // shard_size)
    jobs = [
        ShardJob(f"{run_stamp}-{k:05d}", k + 1, total, tuple(todo[i : i + shard_size]),
                 {r.image_id: masks[r.image_id] for r in todo[i : i + shard_size]})
        for k, i in enumerate(range(0, len(todo), shard_size))
    ]
    large_jobs = [ShardJob(f"{run_stamp}-L{k:05d}", k + 1, len(big), (r,),
                           {r.image_id: masks[r.image_id]}) for k, r in enumerate(big)]
    logger.info("%d images found, %d already done, %d to segment in %d shards, %d block-wise",
                len(refs), len(refs) - len(todo) - len(big), len(todo), total, len(big))
    return {"found": len(refs), "skipped": len(refs) - len(todo) - len(big), "jobs": jobs,
            "large": large_jobs,
            "busy": [(t0, time.time())]}


def _pool(ctx):
    """This process' CPU worker pool for the run's ``cpu_workers`` (None: work in-thread).

    A daemonic process (a Dask worker, by default) may not start processes: there the work
    stays in the task's thread, and the Dask workers themselves are the parallelism.
    """
    if not ctx.cpu_workers or multiprocessing.current_process().daemon:
        return None
    return workers.get_pool(ctx.cpu_workers)


def _input_choices(ctx):
    return {"channel": ctx.channel, "plane": ctx.plane, "pyramid_level": ctx.pyramid_level}


def _write_items(ctx, job, items):
    model = load_model(ctx.model_path, trust=ctx.trust_model)
    classes = [] if model.spec.kind == "semantic" else None
    objects, images, failures, masks = shards.tabulate_shard(
        items, shard=job.name, config_key=ctx.config_key, mask_paths=job.mask_paths,
        model=model, classes=classes, pool=_pool(ctx))
    t0 = time.perf_counter()
    images_by_mask = {job.mask_paths[it.ref.image_id]: it for it in items if it.failure is None}
    for relpath, labels in masks.items():
        it = images_by_mask[relpath]
        export.write_outputs(ctx.output, relpath, labels, ctx.mask_format, ctx.outlines,
                             image=it.prepared.image, name=it.ref.image_id,
                             pixel_size=getattr(it.source, "pixel_size_um", None))
    objects_df = pd.concat(objects, ignore_index=True) if objects else outputs.table("objects", [])
    parts = {"objects": objects_df, "images": outputs.table("images", images),
             "failures": outputs.table("failures", failures)}
    if classes is not None:  # semantic models: the per-class table
        parts["classes"] = (pd.concat(classes, ignore_index=True) if classes
                            else outputs.table("classes", []))
    outputs.write_shard(ctx.output, job.name, parts)
    for f in failures:  # committed: a mask (and outline) of an earlier run must not outlive
        export.remove_outputs(ctx.output, job.mask_paths[f["image_id"]])  # its image's record
    timings = {**shards.stage_seconds(items), "write": time.perf_counter() - t0}
    logger = get_run_logger()
    for f in failures:
        logger.warning("failed %s at %s: %s: %s", f["image_id"], f["stage"], f["error_type"],
                       f["message"][:200])
    return {"shard": job.name, "index": job.index, "images": len(images),
            "failed": len(failures), "objects": len(objects_df),
            "seconds": sum(it.seconds for it in items), "timings": timings}


@task(name="shard", task_run_name="shard {job.index}/{job.total}", cache_policy=NO_CACHE,
      **IO_RETRIES)
def process_shard(ctx: ShardContext, job: ShardJob) -> dict:
    """Read, decode and prepare the shard's images; predict their tiles in shared batches and
    post-process them into labels; measure the objects and write masks then table parts
    (images part last: the commit).

    In the flow's process the model calls go to its model thread, and this thread, reading
    and writing, yields the CPU to it. A retry (transient storage errors that outlast the
    storage layer's own retries) starts the shard again; its uncommitted parts are replaced.
    """
    t0 = time.time()
    try:
        model_thread = _model_thread()
        model = load_model(ctx.model_path, trust=ctx.trust_model)
        items = shards.read_shard(ctx.input, list(job.refs), model.spec, scale=ctx.scale,
                                  max_pixels=ctx.max_pixels, **_input_choices(ctx))
        tiling = default_tiling(model.spec, ctx.tile_size, ctx.overlap)
        shards.segment_shard(model, items, tiling, batch_size=ctx.batch_size,
                             lock=model_lock(), auto=ctx.scale == "auto", tta=ctx.tta,
                             pool=_pool(ctx), model_thread=model_thread)
        result = _write_items(ctx, job, items)
        del items
    finally:
        _trim()  # the shard's arrays are gone (or going with this frame): give pages back
    return {**result, "busy": [(t0, time.time())]}


def _trim():
    """Return freed heap pages to the system (glibc keeps them per thread arena otherwise, so
    the resident size ratchets up with the number of shards that different threads handled)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _LIBC.malloc_trim  # noqa: B018  (glibc only)
except (OSError, AttributeError):
    _LIBC = None


@task(name="finalize", task_run_name="finalize: reconcile tables, write run.json",
      cache_policy=NO_CACHE, **IO_RETRIES)
def finalize(ctx: ShardContext, manifest: dict) -> float:
    """Reconcile the tables once more and write the run manifest; returns its seconds."""
    t0 = time.perf_counter()
    outputs.reconcile(ctx.output)
    ctx.output.write_json("run.json", manifest)
    return round(time.perf_counter() - t0, 3)


__all__ = ["ShardContext", "ShardJob", "ingest", "process_shard", "finalize"]
