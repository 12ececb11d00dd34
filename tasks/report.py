"""The report task of a segment-images run: summary table, QC gallery and OUTPUT/report.html.

The content is made by the engine (:mod:`segmodel.pipeline.report`) once and rendered twice:
as the run's artifacts (keys in :mod:`flows.report`) and, where the run segmented an image, as
the output's page. The gallery re-reads the few chosen images and their masks at the end of the
run, so no pixel data is kept by the flow while shards are processed.
"""

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from segmodel.pipeline import report
from segmodel.pipeline.config import RunConfig
from segmodel.pipeline.report import LISTED
from segmodel.pipeline.run import flag_outliers

PROGRESS_KEY = "segflow-progress"
SUMMARY_KEY = "segflow-run-summary"
GALLERY_KEY = "segflow-qc-gallery"


@task(name="report", task_run_name="report and QC gallery", cache_policy=NO_CACHE)
def publish(config: RunConfig, shards: list, summary: dict, failures: list) -> dict:
    """Flag run outliers, publish the summary table and QC gallery, write report.html.

    ``failures``: the run's first failures rows (the gallery lists up to ``LISTED``).

    Returns the QC counts, ``report`` (the page's URL, or None where nothing was segmented),
    ``report_seconds`` (writing the page) and ``engine_seconds``: the task's own work (QC
    flags, thumbnails, the page) without the API calls.
    """
    logger = get_run_logger()
    found = flag_outliers(config, shards)
    t0, cache = time.perf_counter(), {}  # the thumbnails, made once for gallery and page
    made = report.run_report(config, found, summary, failures, run_name=flow_run.get_name() or "",
                             cache=cache, warn=logger.warning)
    work = found.seconds + time.perf_counter() - t0
    out = made.out
    create_table_artifact(report.summary_table(made), key=SUMMARY_KEY,
                          description=f"segment-images run into {out}")
    create_markdown_artifact(report.markdown(made), key=GALLERY_KEY,
                             description=f"QC gallery of {out}")
    page, seconds = None, 0.0
    if summary["images"]:  # a run that segmented nothing leaves the page as it was
        page, seconds = report.write_report(config.output,
                                            storage_options=config.options.storage_options,
                                            cache=cache, warn=logger.warning)
        work += seconds
        logger.info("report: %s (%.2f s)", page, seconds)
    if len(found.flagged):
        logger.info("QC: %d of %d images flagged: %s", len(found.flagged), len(found.rows),
                    found.counts)
    return {"flagged": len(found.flagged), "qc": found.counts, "report": page,
            "report_seconds": seconds, "engine_seconds": round(work, 3)}


__all__ = ["GALLERY_KEY", "LISTED", "PROGRESS_KEY", "SUMMARY_KEY", "publish"]
