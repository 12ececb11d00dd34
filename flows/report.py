"""What a segment-images run shows in the Prefect UI: progress, summary table, QC gallery.

The summary and gallery are made by the ``report`` task (:mod:`tasks.report`); this module
keeps the flow-side parts: the progress artifact and the failure limit.

Artifact keys (a reused key adds a version, so each key lists every run's artifact):

``segflow-progress``     progress bar, updated as shards finish;
``segflow-run-summary``  table: images, objects, failures, skipped, flagged, seconds, images/s;
``segflow-qc-gallery``   markdown: up to :data:`segmodel.pipeline.report.GALLERY_IMAGES`
                         thumbnails with label outlines, flagged images first, embedded as
                         ``data:image/png`` (no extra storage), plus the flags of every flagged
                         image and the paths of the outputs.

The same content, for the whole output, is written as ``OUTPUT/report.html``
(:mod:`segmodel.pipeline.report`).
"""

import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from tasks.report import GALLERY_KEY, PROGRESS_KEY, SUMMARY_KEY, publish


class TooManyFailures(RuntimeError):
    """The share of images that failed passed ``max_failure_fraction``; ``summary`` attached."""

    def __init__(self, message, summary):
        super().__init__(message)
        self.summary = summary


class ProgressArtifact:
    """A listener of :mod:`flows.progress` keeping a progress artifact of the current run.

    Updated at most once per :attr:`min_interval` seconds, and always when the last shard is
    done: each update is an API call and an event the server records (13 ms of its CPU, on
    the 2-core machine), which on a fast accelerator would come many times a second.
    """

    min_interval = 1.0

    def __init__(self):
        self.run_id, self.artifact, self.total, self.done = flow_run.get_id(), None, 0, 0
        self.sent = 0.0  # time.monotonic() of the last call to the API

    def start(self, total, skipped):
        if flow_run.get_id() != self.run_id:
            return
        self.total, self.done = total, 0
        self.artifact = create_progress_artifact(
            100.0 if total == 0 else 0.0, key=PROGRESS_KEY,
            description=f"Images segmented of {total} to do ({skipped} already done).")
        self.sent = time.monotonic()

    def update(self, result):
        if self.artifact is None or flow_run.get_id() != self.run_id:
            return
        self.done += result["images"] + result["failed"]
        now = time.monotonic()
        if self.done < self.total and now - self.sent < self.min_interval:
            return  # the next update (or the last one) carries this shard's images too
        update_progress_artifact(self.artifact, 100.0 * self.done / max(self.total, 1))
        self.sent = now


def check_failures(summary, max_failure_fraction):
    """Raise :class:`TooManyFailures` when the failed share of this run passes the limit."""
    tried = summary["images"] + summary["failed"]
    fraction = summary["failed"] / tried if tried else 0.0
    if fraction > max_failure_fraction:
        raise TooManyFailures(
            f"{summary['failed']} of {tried} images failed ({fraction:.1%}), more than "
            f"max_failure_fraction={max_failure_fraction}: see the failures table.", summary)


__all__ = ["GALLERY_KEY", "PROGRESS_KEY", "SUMMARY_KEY", "ProgressArtifact", "TooManyFailures",
           "check_failures", "publish"]
