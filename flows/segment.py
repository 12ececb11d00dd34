"""The ``segment-images`` flow: plan, then shards (read -> segment -> write) pipelined, finalize.

The flow composes the engine's steps (:mod:`segmodel.pipeline`) as tasks; measurement goes
through :class:`segmodel.pipeline.clock.RunMeter`.
"""

from collections import deque

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Failed

from flows import progress, report, runners
from flows.params import SegmentParams
from segmodel.pipeline import runtime
from segmodel.pipeline.clock import RunMeter
from segmodel.pipeline.config import configure
from segmodel.pipeline.plan import run_stamp
from segmodel.pipeline.run import manifest, no_images_message
from segmodel.storage.io import check_readable
from segmodel.storage.lease import Lease, OutputBusy
from tasks.large import segment_large
from tasks.report import LISTED, publish
from tasks.shards import finalize, ingest, process_shard


@flow(name="segment-images", task_runner=runners.make_task_runner("threads"), log_prints=False)
def segment_images(params: SegmentParams) -> dict:
    """Segment every image under ``params.input``; write masks and tables to ``params.output``.

    Returns the run summary. No image under the input, or another run writing to the same
    output (see :mod:`segmodel.storage.lease`), is a Failed run whose message says so (called as
    a function: :class:`prefect.exceptions.FailedRun`).
    """
    meter = RunMeter()
    config, model = configure(params)
    stamp = run_stamp()
    lease = Lease(config.output, stamp)
    try:
        lease.acquire()
    except OutputBusy as exc:
        return Failed(message=str(exc))
    try:
        return _segment(config, model, stamp, meter)
    finally:
        lease.release()


def _segment(config, model, stamp, meter):
    """The body of :func:`segment_images`, run while it holds the output's lease."""
    logger = get_run_logger()
    plan = ingest(config, stamp)
    if plan.found == 0:  # the run fails with the message alone, not a traceback
        return Failed(message=no_images_message(config.options, plan.not_listed))
    meter.add_span(meter.start, plan.span[1])  # loading the model and planning: the engine's
    artifact = report.ProgressArtifact()  # UI: progress artifact, removed again below
    progress.add_listener(artifact)
    progress.start(total=plan.to_segment, skipped=plan.skipped)
    task_runner = FlowRunContext.get().task_runner
    if not runners.is_distributed(task_runner):
        if plan.jobs:  # threads: the model gets its own, at this thread's priority
            runtime.start_model_thread(config)
        meter.model_started()
    window, depth, failures = deque(), runners.in_flight(task_runner), []
    for job in plan.jobs:  # one task per shard: its arrays never leave the process reading it
        window.append(process_shard.submit(config, job))
        while len(window) >= depth:
            _collect(window.popleft(), meter, logger, failures)
    while window:
        _collect(window.popleft(), meter, logger, failures)
    for job in plan.large_jobs:  # one at a time: each holds its blocks' memory
        _collect(segment_large.submit(config, job), meter, logger, failures)
    progress.remove_listener(artifact)
    summary = meter.summary(plan)
    record = {**manifest(config, model, summary, stamp),  # where the UI shows it: the report's
              "prefect_flow_run": {"id": str(flow_run.get_id()), "name": flow_run.get_name()}}
    finish = finalize(config, record)
    published = publish(config, [j.name for j in plan.jobs], summary, failures)  # UI
    # the engine's seconds after ``seconds``: reconciling tables, QC flags, thumbnails
    summary["finish_seconds"] = round(finish + published.pop("engine_seconds"), 3)
    summary.update(published)
    logger.info("done: %s", summary)
    report.check_failures(summary, config.options.max_failure_fraction)  # Failed past limit
    return summary


def _collect(future, meter, logger, failures):
    """Count a job's result; keep its failures rows for the gallery (the first ``LISTED``)."""
    result = future.result()
    meter.add(result)
    failures.extend(result.failures[: max(0, LISTED - len(failures))])
    logger.info("shard %s: %d images, %d objects, %d failed", result.shard, result.images,
                result.objects, result.failed)
    progress.update({"images": result.images, "failed": result.failed, "index": result.index})


def preflight(params, warm_up=False):
    """Fail fast, before any Prefect run: model, tiling, URLs, access and the input's existence.

    With ``warm_up`` (runs on the default thread runner, called from the thread that then
    calls the flow), the model thread starts and traces the run's batch shapes now, so that
    one-time cost overlaps whatever the caller waits for next (the temporary server's start).
    """
    config, _ = configure(params)  # refuses an input it cannot list, an output it cannot write
    if not check_readable(config.input, "input"):
        raise FileNotFoundError(
            f"input not found: {params.input!r}. Check the path or URL (and --storage-options)."
        )
    if warm_up:
        runtime.start_model_thread(config)
    return config
