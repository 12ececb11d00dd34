"""The report task of a segment-images run: summary table and QC gallery artifacts.

Artifact keys (a reused key adds a version, so each key lists every run's artifact) are listed
in :mod:`flows.report`. The gallery re-reads the few chosen images and their masks at the end of
the run, so no pixel data is kept by the flow while shards are processed.
"""

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from segmodel.pipeline import gallery, qc
from segmodel.pipeline.config import RunConfig
from segmodel.pipeline.gallery import escape
from segmodel.pipeline.run import flag_outliers

PROGRESS_KEY = "segflow-progress"
SUMMARY_KEY = "segflow-run-summary"
GALLERY_KEY = "segflow-qc-gallery"
GALLERY_IMAGES = 8
THUMBNAIL_SIZE = 256
GALLERY_BYTES = 1_000_000  # cap on the PNG data embedded in one gallery
LISTED = 50  # flagged images and failures listed by name


@task(name="report", task_run_name="report and QC gallery", cache_policy=NO_CACHE)
def publish(config: RunConfig, shards: list, summary: dict, failures: list) -> dict:
    """Flag run outliers, then publish the summary table and the QC gallery.

    ``failures``: the run's first failures rows (the gallery lists up to ``LISTED``).

    Returns the QC counts, and ``engine_seconds``: the task's own work (QC flags, thumbnails)
    without the API calls.
    """
    logger = get_run_logger()
    found = flag_outliers(config, shards)
    rows, flagged, counts = found.rows, found.flagged, found.counts
    out = config.output.url.rstrip("/")
    table = [{"metric": k, "value": v} for k, v in (
        ("run", flow_run.get_name() or ""), ("images segmented", summary["images"]),
        ("objects", summary["objects"]), ("failures", summary["failed"]),
        ("skipped (already done)", summary["skipped"]), ("flagged by QC", len(flagged)),
        ("seconds", summary["seconds"]), ("images/s", summary["images_per_second"]),
        ("output", out))]
    table += [{"metric": f"qc: {f}", "value": n} for f, n in sorted(counts.items())]
    work = found.seconds
    create_table_artifact(table, key=SUMMARY_KEY, description=f"segment-images run into {out}")
    t0 = time.perf_counter()
    markdown = _gallery(config, rows, flagged, summary, failures, logger)
    work += time.perf_counter() - t0
    create_markdown_artifact(markdown, key=GALLERY_KEY, description=f"QC gallery of {out}")
    if flagged is not None and len(flagged):
        logger.info("QC: %d of %d images flagged: %s", len(flagged), len(rows), counts)
    return {"flagged": len(flagged), "qc": counts, "engine_seconds": round(work, 3)}


def _choose(rows):
    """Up to GALLERY_IMAGES rows: flagged first (most flags first), then the others."""
    if not len(rows):
        return rows
    n_flags = rows["qc_flags"].fillna("").map(lambda t: len(qc.split_flags(t)))
    order = rows.assign(_n=n_flags).sort_values(["_n", "image_id"], ascending=[False, True])
    return order.head(GALLERY_IMAGES)


def _gallery(config, rows, flagged, summary, failures, logger):
    out = config.output.url.rstrip("/")
    where = escape(out)
    lines = [f"# QC gallery: {escape(flow_run.get_name() or 'segment-images')}", "",
             (f"{summary['images']} images segmented, {summary['failed']} failed, "
              f"{len(flagged)} flagged by QC, {summary['skipped']} already done."), "",
             (f"Outputs: masks {where}/labels/, tables {where}/images/, {where}/objects/, "
              f"{where}/intensities/, {where}/failures/, run record {where}/run.json."), ""]
    cells, used = [], 0
    for row in _choose(rows).itertuples():
        try:
            png = qc.read_thumbnail(config.input, config.output, row.image_id, row.mask_path,
                                    max_size=THUMBNAIL_SIZE, **config.choices())
        except (OSError, ValueError) as exc:  # moved or deleted since: leave it out
            logger.warning("no thumbnail for %s: %s", row.image_id, exc)
            continue
        if used + len(png) > GALLERY_BYTES:
            break
        used += len(png)
        cells.append(gallery.thumbnail_row(png, image_id=row.image_id, n_objects=row.n_objects,
                                           qc_flags=row.qc_flags, mask=f"{out}/{row.mask_path}"))
    if cells:
        lines += ["| outlines | image | objects | QC flags | mask |", "|---|---|---|---|---|",
                  *cells, ""]
    else:
        lines += ["No image was segmented in this run.", ""]
    lines += gallery.failed_section(failures[:LISTED], total=summary["failed"], out=out)
    lines += gallery.flagged_section(flagged, out=out, limit=LISTED)
    lines.append("QC flags: `no_objects`, `flat`, `saturated`, `sparse_foreground` (nuclei under "
                 "1% of the image), `objects_small`/`objects_large` (median nucleus under 8 px "
                 "or over 100 px at the working scale), `scale_fallback` (too few nuclei to "
                 "measure their size: kept at the image's own scale), `few_objects`/"
                 "`many_objects` (robust outliers against the median count of all images in "
                 "the output).")
    return "\n".join(lines)


__all__ = ["GALLERY_KEY", "LISTED", "PROGRESS_KEY", "SUMMARY_KEY", "publish"]
