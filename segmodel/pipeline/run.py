"""A whole run in the engine: plan, every shard, every huge image, finalize; no Prefect.

The flow (``flows/segment.py``) composes the same steps as Prefect tasks, with retries, logging,
concurrency and the UI; :func:`run` does them in order in the calling process, for a notebook or
a script. Both write the same masks and tables.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from segmodel import __version__
from segmodel.pipeline import outputs, qc
from segmodel.pipeline.clock import RunMeter
from segmodel.pipeline.config import configure
from segmodel.pipeline.large import process_large
from segmodel.pipeline.plan import plan_run, run_stamp
from segmodel.pipeline.report import write_report
from segmodel.pipeline.shard import process_shard
from segmodel.storage.io import describe_skipped
from segmodel.storage.lease import Lease


def run(options):
    """Segment every image under ``options.input`` into ``options.output``.

    Parameters
    ----------
    options : RunOptions

    Returns
    -------
    dict
        The run's summary (see :meth:`segmodel.pipeline.clock.RunMeter.summary`), plus
        ``flagged`` and ``qc`` (see :func:`flag_outliers`), ``not_listed`` (what the
        listing skipped: :attr:`segmodel.pipeline.plan.Plan.not_listed`), ``report`` (the URL
        of ``OUTPUT/report.html``, written where the run segmented an image, else None) and
        ``report_seconds``.

    Raises
    ------
    FileNotFoundError
        No image under the input matches the patterns.
    PermissionError, ConnectionError
        The input cannot be listed or the output cannot be written (see
        :func:`segmodel.pipeline.config.configure`).
    segmodel.storage.lease.OutputBusy
        Another run is writing to the same output.
    """
    meter = RunMeter()
    config, model = configure(options)
    stamp = run_stamp()
    with Lease(config.output, stamp):
        plan = plan_run(config, stamp)
        if plan.found == 0:
            raise FileNotFoundError(no_images_message(options, plan.not_listed))
        meter.add_span(meter.start, plan.span[1])
        for job in plan.jobs:
            meter.add(process_shard(config, job))
        for job in plan.large_jobs:
            meter.add(process_large(config, job))
        summary = meter.summary(plan)
        seconds = finalize(config, manifest(config, model, summary, stamp))
        found = flag_outliers(config, [j.name for j in plan.jobs])
        page, report_seconds = write_report(
            config.output, storage_options=config.options.storage_options) \
            if summary["images"] else (None, 0.0)
    return {**summary, "finish_seconds": round(seconds + found.seconds + report_seconds, 3),
            "flagged": len(found.flagged), "qc": found.counts, "not_listed": plan.not_listed,
            "report": page, "report_seconds": report_seconds}


def no_images_message(options, not_listed=None):
    """Say that a run found no image, naming the input, the patterns and what was skipped.

    Parameters
    ----------
    options : RunOptions
    not_listed : dict, optional
        What the listing skipped (:attr:`segmodel.pipeline.plan.Plan.not_listed`).

    Returns
    -------
    str
    """
    text = f"no images under input={options.input!r} match patterns={list(options.patterns)}"
    skipped = describe_skipped(not_listed or {})
    if skipped:  # the links, not the patterns, may be why
        return f"{text}; {skipped}"
    return f"{text}. Check the path, or pass --pattern."


def manifest(config, model, summary, stamp):
    """Build the run's record, written as ``runs/<stamp>.json`` (and ``run.json``).

    Parameters
    ----------
    config : RunConfig
    model : LoadedModel
    summary : dict
        The run's counts (:meth:`segmodel.pipeline.clock.RunMeter.summary`).
    stamp : str
        The run's stamp (:func:`segmodel.pipeline.plan.run_stamp`).

    Returns
    -------
    dict
        Parameters (storage options left out), model (with the engine that ran it and its
        precision), version, configuration key, the run's stamp, finish time and counts.
    """
    return {"parameters": config.options.model_dump(mode="json", exclude={"storage_options"}),
            "run_stamp": stamp,
            "model": {"name": model.spec.name, "path": model.path,
                      "fingerprint": model.fingerprint, "engine": model.engine,
                      "precision": model.precision},
            "segflow_version": __version__, "config_key": config.config_key,
            "finished_at": datetime.now(timezone.utc).isoformat(), "counts": summary}


def finalize(config, manifest):
    """Reconcile the tables once more and write the run's record.

    Every run's record is kept as ``runs/<run stamp>.json``; ``run.json`` is the record of
    the last run that segmented an image, so a rerun with nothing to do leaves it as it was.

    Parameters
    ----------
    config : RunConfig
    manifest : dict
        See :func:`manifest`.

    Returns
    -------
    float
        Seconds it took.
    """
    t0 = time.perf_counter()
    outputs.reconcile(config.output)
    config.output.write_json(f"{RUNS}/{manifest['run_stamp']}.json", manifest)
    if manifest["counts"]["images"]:
        config.output.write_json("run.json", manifest)
    return round(time.perf_counter() - t0, 3)


#: The folder of every run's record, one ``<run stamp>.json`` each (stamps sort by time).
RUNS = "runs"


@dataclass(frozen=True)
class Outliers:
    """What :func:`flag_outliers` found.

    Attributes
    ----------
    rows : pandas.DataFrame
        This run's images rows, with their QC flags.
    counts : dict
        ``{flag: images}``.
    seconds : float
    """

    rows: object
    counts: dict
    seconds: float

    @property
    def flagged(self):
        """The rows with any QC flag."""
        if not len(self.rows):
            return self.rows
        return self.rows[self.rows["qc_flags"].fillna("") != ""]


def flag_outliers(config, shards):
    """Flag this run's images whose object count is an outlier among all the output's images.

    Parameters
    ----------
    config : RunConfig
    shards : list of str
        This run's shard names.

    Returns
    -------
    Outliers
    """
    t0 = time.perf_counter()
    rows = qc.flag_run_outliers(config.output, shards)
    found = Outliers(rows=rows, counts={}, seconds=0.0)
    for text in found.flagged["qc_flags"] if len(found.flagged) else []:
        for f in qc.split_flags(text):
            found.counts[f] = found.counts.get(f, 0) + 1
    return Outliers(rows=rows, counts=found.counts, seconds=round(time.perf_counter() - t0, 3))
