"""Where a run's time goes, measured in one place (:class:`RunMeter`).

Each job's :class:`~segmodel.pipeline.plan.ShardResult` carries ``timings`` (seconds per stage,
summed over its images) and ``span`` (the wall-clock span of its work). Stages of different
shards overlap in time, so stage seconds can add up to more than the wall time; the time when no
job was running anywhere is what orchestration (task-run creation, state changes, scheduling)
costs the run. The benchmarks read the summary's keys.
"""

import os
import time

from segmodel.pipeline import runtime

STAGES = ("read", "preprocess", "predict", "postprocess", "tabulate", "write")


def machine_cpu():
    """Busy and total CPU seconds of the whole machine since boot, summed over its cores.

    The busy share between two readings shows whether a run had cores to spare, whichever
    process used them (the Prefect server, worker processes, anything else running).

    Returns
    -------
    tuple of float or None
        ``(busy, total)`` from Linux's ``/proc/stat``; None where that cannot be read.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(fields[3:5])  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def busy_share(before, after):
    """Compute the machine's busy share of its cores between two readings.

    Parameters
    ----------
    before, after : tuple of float or None
        :func:`machine_cpu` readings.

    Returns
    -------
    float or None
        Busy share in [0, 1], rounded to 3 digits; None where a reading is missing.
    """
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


class RunClock:
    """Accumulates the timings of shard results; :meth:`summary` gives the run's breakdown."""

    def __init__(self):
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.spans = []

    def add(self, timings=None, span=None):
        """Add a job's stage seconds and its wall-clock span.

        Parameters
        ----------
        timings : dict, optional
            ``{stage: seconds}``.
        span : tuple of float, optional
            ``(start, end)``, :func:`time.time` values.
        """
        for stage, seconds in (timings or {}).items():
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        if span is not None:
            self.spans.append(tuple(span))

    def busy_seconds(self):
        """Seconds during which at least one task body ran (the union of the spans)."""
        total, end = 0.0, None
        for a, b in sorted(self.spans):
            if end is None or a > end:
                total += b - a
                end = b
            elif b > end:
                total += b - end
                end = b
        return total

    def summary(self, wall_seconds):
        """Break a run's wall time down into stages, busy and idle seconds.

        Parameters
        ----------
        wall_seconds : float
            The run's wall time.

        Returns
        -------
        dict
            ``{'stage_seconds': {...}, 'busy_seconds': s, 'idle_seconds': s}``.
        """
        busy = self.busy_seconds()
        return {"stage_seconds": {k: round(v, 3) for k, v in self.stages.items()},
                "busy_seconds": round(busy, 3),
                "idle_seconds": round(max(0.0, wall_seconds - busy), 3)}


class RunMeter:
    """Measures one run: wall, CPU and model time, the machine's load, and every job's stages.

    Create it when the run starts; :meth:`add` each job's result (planning's span too); call
    :meth:`model_started` once the model thread runs (threads only); :meth:`summary` at the end.
    """

    def __init__(self):
        self.t0, self.start, self.cpu0 = time.perf_counter(), time.time(), time.process_time()
        self.machine0 = machine_cpu()
        self.clock = RunClock()
        self.totals = {"images": 0, "failed": 0, "objects": 0}
        self.model0 = None

    def add_span(self, start, end):
        """Count a span as engine work (loading the model, planning).

        Parameters
        ----------
        start, end : float
            :func:`time.time` values.
        """
        self.clock.add(span=(start, end))

    def model_started(self):
        """Start counting the model thread's busy seconds from now."""
        self.model0 = runtime.model_busy_seconds()

    def add(self, result):
        """Add a job's result to the totals and the clock.

        Parameters
        ----------
        result : segmodel.pipeline.plan.ShardResult
        """
        for k in self.totals:
            self.totals[k] += getattr(result, k)
        self.clock.add(result.timings, result.span)

    def summary(self, plan):
        """Summarise the run's counts and timings (the flow's result, run.json's ``counts``).

        Keys: ``found``, ``skipped``, ``images``, ``failed``, ``objects``, ``model_seconds`` and
        ``model_waits`` (model thread only, else None), ``cpu_seconds`` (this process),
        ``machine_busy`` (share of the machine's cores), ``shards``, ``large``, ``seconds``,
        ``images_per_second``, ``stage_seconds``, ``busy_seconds``, ``idle_seconds``.

        Parameters
        ----------
        plan : segmodel.pipeline.plan.Plan

        Returns
        -------
        dict
        """
        seconds = time.perf_counter() - self.t0
        model_busy, waits = None, None
        if self.model0 is not None:  # the model's own calls in this run (model thread only)
            model_busy = round(runtime.model_busy_seconds() - self.model0, 3)
            window = runtime.model_window() if plan.jobs else None
            if window is not None:  # the model's idle time before its first call, after its last
                waits = {"before_first_call": round(window[0] - self.t0, 3),
                         "after_last_call": round(self.t0 + seconds - window[1], 3)}
        images = self.totals["images"]
        return {"found": plan.found, "skipped": plan.skipped, **self.totals,
                "model_seconds": model_busy, "model_waits": waits,
                "cpu_seconds": round(time.process_time() - self.cpu0, 2),
                "machine_busy": busy_share(self.machine0, machine_cpu()),
                "shards": len(plan.jobs), "large": len(plan.large_jobs),
                "seconds": round(seconds, 2),
                "images_per_second": round(images / seconds, 3) if seconds else 0.0,
                **self.clock.summary(seconds)}
