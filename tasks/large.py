"""The Prefect task for one image above the block-wise threshold (:mod:`segmodel.pipeline.large`).

One task run per huge image: such an image is a unit of work of its own (minutes, bounded
memory).
"""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from segmodel.pipeline.config import RunConfig
from segmodel.pipeline.large import process_large
from segmodel.pipeline.plan import ShardJob, ShardResult
from tasks.shards import log_failures


@task(name="segment-large", task_run_name="segment large image {job.index}/{job.total}",
      cache_policy=NO_CACHE)
def segment_large(config: RunConfig, job: ShardJob) -> ShardResult:
    """Segment one huge TIFF block by block; write its tiled label mask and table parts."""
    result = process_large(config, job)
    log_failures(result)
    if result.images:
        get_run_logger().info("%s: %d objects in %.1f s", job.refs[0].image_id, result.objects,
                              result.seconds)
    return result


__all__ = ["segment_large"]
