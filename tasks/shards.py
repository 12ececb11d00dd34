"""Prefect tasks of a run: plan, one task per shard, finalize.

Each task is a thin wrapper around one engine call (:mod:`segmodel.pipeline`) adding a name,
retries of transient storage errors and logging. One task run per shard, not one per image or
per stage: each task run costs the API server about 60 ms of a core to record
(``benchmarks/orchestration.py``), taken from the model on a small machine.
"""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from segmodel.pipeline.config import RunConfig
from segmodel.pipeline.plan import Plan, ShardJob, ShardResult, plan_run
from segmodel.pipeline.run import finalize as finalize_run
from segmodel.pipeline.shard import process_shard as run_shard
from segmodel.storage.io import describe_skipped, is_transient


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
def ingest(config: RunConfig, stamp: str) -> Plan:
    """List the input, reconcile earlier outputs and cut what is not done into shards."""
    plan = plan_run(config, stamp)
    logger = get_run_logger()
    logger.info(
        "%d images found, %d already done, %d to segment in %d shards, %d block-wise",
        plan.found, plan.skipped, plan.to_segment - len(plan.large_jobs), len(plan.jobs),
        len(plan.large_jobs))
    if plan.not_listed:
        logger.warning("%s", describe_skipped(plan.not_listed))
    return plan


@task(name="shard", task_run_name="shard {job.index}/{job.total}", cache_policy=NO_CACHE,
      **IO_RETRIES)
def process_shard(config: RunConfig, job: ShardJob) -> ShardResult:
    """Read, segment, measure and write one shard (a retry starts the shard again)."""
    result = run_shard(config, job)
    log_failures(result)
    return result


def log_failures(result):
    """Log each failures row of a job's result as a warning."""
    logger = get_run_logger()
    for f in result.failures:
        logger.warning("failed %s at %s: %s: %s", f["image_id"], f["stage"], f["error_type"],
                       f["message"][:200])


@task(name="finalize", task_run_name="finalize: reconcile tables, write run.json",
      cache_policy=NO_CACHE, **IO_RETRIES)
def finalize(config: RunConfig, manifest: dict) -> float:
    """Reconcile the tables once more and write the run manifest; returns its seconds."""
    return finalize_run(config, manifest)


__all__ = ["ingest", "process_shard", "finalize", "log_failures"]
