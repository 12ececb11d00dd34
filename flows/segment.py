"""The ``segment-images`` flow: ingest, then shards (read -> segment -> write) pipelined."""

import hashlib
import json
import time
from collections import deque
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Failed

from flows import progress, report, runners
from flows.params import SegmentParams
from flows.timing import RunClock, busy_share, machine_cpu
from segmodel import __version__, autoscale
from segmodel.api import default_tiling, validate_scale
from segmodel.bundle import check_model
from segmodel.io import Store
from segmodel.lease import Lease, OutputBusy
from segmodel.model import load_model, spec_path
from tasks.large import segment_large
from tasks.report import publish
from tasks.shards import (
    ShardContext,
    finalize,
    ingest,
    model_busy_seconds,
    model_window,
    process_shard,
    start_model_thread,
)


def _context(params):
    """Check everything that can be checked before any work, and build the shared context."""
    model = load_model(params.model, trust=params.trust_model)
    problems = check_model(model.keras_model, model.spec, str(spec_path(model.path)))
    if problems:  # a bundle whose spec does not fit its model: say so before any work
        raise ValueError("; ".join(problems) + f" (check with: segflow model inspect {model.path})")
    tiling = default_tiling(model.spec, params.tile_size)
    validate_scale(params.scale)
    scale = [params.scale, repr(autoscale.DEFAULT)] if params.scale == "auto" else [params.scale]
    key = json.dumps([model.fingerprint, *scale, tiling.tile, tiling.overlap,
                      params.mask_format, params.max_pixels] + ([True] if params.tta else [])
                     + _input_key(params)
                     + ([params.outlines] if params.outlines != "none" else []))
    return ShardContext(
        input=Store(params.input, params.storage_options),
        output=Store(params.output, params.storage_options),
        model_path=model.path, scale=params.scale, tta=params.tta, batch_size=params.batch_size,
        cpu_workers=params.cpu_workers,
        tile_size=tiling.tile, overlap=tiling.overlap, mask_format=params.mask_format,
        max_pixels=params.max_pixels, tiled_above=params.tiled_above,
        block_size=params.block_size,
        config_key=hashlib.sha1(key.encode()).hexdigest()[:16], trust_model=params.trust_model,
        channel=params.channel, plane=params.plane, pyramid_level=params.pyramid_level,
        outlines=params.outlines,
    ), model


def _input_key(params):
    """The input choices in the configuration key, only when set (keys of runs without them
    stay as they were)."""
    chosen = {k: getattr(params, k) for k in ("channel", "plane")
              if getattr(params, k) is not None}
    if params.pyramid_level:
        chosen["pyramid_level"] = params.pyramid_level
    return [chosen] if chosen else []


@flow(name="segment-images", task_runner=runners.make_task_runner("threads"), log_prints=False)
def segment_images(params: SegmentParams) -> dict:
    """Segment every image under ``params.input``; write masks and tables to ``params.output``.

    Returns the run summary. No image under the input, or another run writing to the same
    output (see :mod:`segmodel.lease`), is a Failed run whose message says so (called as a
    function: :class:`prefect.exceptions.FailedRun`).
    """
    start = time.perf_counter(), time.time(), time.process_time(), machine_cpu()
    ctx, model = _context(params)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    lease = Lease(ctx.output, stamp)
    try:
        lease.acquire()
    except OutputBusy as exc:
        return Failed(message=str(exc))
    try:
        return _segment(params, ctx, model, stamp, start)
    finally:
        lease.release()


def _segment(params, ctx, model, stamp, start):
    """The body of :func:`segment_images`, run while it holds the output's lease."""
    logger = get_run_logger()
    t0, t_load, cpu0, machine0 = start
    t_plan = time.time()
    plan = ingest(ctx, tuple(params.patterns), params.shard_size, stamp, params.retry_failed)
    if plan["found"] == 0:  # the run fails with the message alone, not a traceback
        return Failed(message=(
            f"no images under input={params.input!r} match patterns={params.patterns}. "
            "Check the path, or pass --pattern."))
    jobs, large_jobs = plan["jobs"], plan.get("large", [])
    artifact = report.ProgressArtifact()  # UI: progress artifact, removed again below
    progress.add_listener(artifact)
    progress.start(total=sum(len(j.refs) for j in jobs) + len(large_jobs),
                   skipped=plan["skipped"])
    totals = {"images": 0, "failed": 0, "objects": 0}
    task_runner = FlowRunContext.get().task_runner
    distributed, depth = runners.is_distributed(task_runner), runners.in_flight(task_runner)
    clock = RunClock()
    clock.add({"busy": [(t_load, t_plan)]})  # loading the model is the engine's, not Prefect's
    clock.add(plan)
    window = deque()
    if not distributed and jobs:  # threads: the model gets its own, at this thread's priority
        start_model_thread(ctx)
    model_busy = None if distributed else model_busy_seconds()
    for job in jobs:  # one task per shard: its arrays never leave the process that reads it
        window.append((job, process_shard.submit(ctx, job)))
        while len(window) >= depth:
            _collect(*window.popleft(), totals, clock, logger)
    while window:
        _collect(*window.popleft(), totals, clock, logger)
    for job in large_jobs:  # one at a time: each holds its blocks' memory
        _collect(job, segment_large.submit(ctx, job), totals, clock, logger)
    progress.remove_listener(artifact)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0  # this process' threads, not worker processes
    waits = None
    if model_busy is not None:  # the model's own calls in this flow (model thread only)
        model_busy = round(model_busy_seconds() - model_busy, 3)
        window = model_window() if jobs else None
        if window is not None:  # the model's idle time before its first call, after its last
            waits = {"before_first_call": round(window[0] - t0, 3),
                     "after_last_call": round(t0 + seconds - window[1], 3)}
    summary = {"found": plan["found"], "skipped": plan["skipped"], **totals,
               "model_seconds": model_busy, "model_waits": waits,
               "cpu_seconds": round(cpu_seconds, 2),
               "machine_busy": busy_share(machine0, machine_cpu()),
               "shards": len(jobs), "large": len(large_jobs), "seconds": round(seconds, 2),
               "images_per_second": round(totals["images"] / seconds, 3) if seconds else 0.0,
               **clock.summary(seconds)}
    manifest = {"parameters": params.model_dump(mode="json", exclude={"storage_options"}),
                "model": {"name": model.spec.name, "path": model.path,
                          "fingerprint": model.fingerprint},
                "segflow_version": __version__, "config_key": ctx.config_key,
                "finished_at": datetime.now(timezone.utc).isoformat(), "counts": summary}
    finish = finalize(ctx, manifest)
    published = publish(ctx, [j.name for j in jobs], summary)  # UI: table, gallery
    # the engine's seconds after ``seconds``: reconciling tables, QC flags, thumbnails
    summary["finish_seconds"] = round(finish + published.pop("engine_seconds"), 3)
    summary.update(published)
    logger.info("done: %s", summary)
    report.check_failures(summary, params.max_failure_fraction)  # Failed past the limit
    return summary


def _collect(job, future, totals, clock, logger):
    result = future.result()
    for k in totals:
        totals[k] += result[k]
    clock.add(result)
    logger.info("shard %d/%d: %d images, %d objects, %d failed", job.index, job.total,
                result["images"], result["objects"], result["failed"])
    progress.update(result)


def preflight(params, warm_up=False):
    """Fail fast, before any Prefect run: model, tiling, URLs and the input's existence.

    With ``warm_up`` (runs on the default thread runner, called from the thread that then
    calls the flow), the model thread starts and traces the run's batch shapes now, so that
    one-time cost overlaps whatever the caller waits for next (the temporary server's start).
    """
    ctx, _ = _context(params)
    try:
        found = ctx.input.exists()
        if not found:  # some file systems answer "no" for a bucket they may not read
            ctx.input.fs.ls(ctx.input.root)
    except FileNotFoundError:
        found = False
    except PermissionError as exc:
        raise PermissionError(
            f"access denied to input={params.input!r} ({exc}). Check the credentials "
            "(--storage-options or the environment) and the bucket's permissions."
        ) from None
    if not found:
        raise FileNotFoundError(
            f"input not found: {params.input!r}. Check the path or URL (and --storage-options)."
        )
    bucket = ctx.output.container()
    if bucket is not None and not ctx.output.fs.exists(bucket):
        raise FileNotFoundError(
            f"output bucket not found: {bucket!r} (output={params.output!r}). Create it, or "
            "check the URL and --storage-options."
        )
    if warm_up:
        start_model_thread(ctx)
    return ctx
