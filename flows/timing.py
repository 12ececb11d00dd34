"""Where a run's wall time goes: stage seconds summed over shards, and idle (orchestration) time.

Each shard's result carries ``timings`` (seconds per stage, summed over its images) and ``busy``
(wall-clock spans of its task bodies). Stages of different shards overlap in time, so stage
seconds can add up to more than the wall time; the time when no task body was running anywhere
is what orchestration (task-run creation, state changes, scheduling) costs the run.
"""

import os

STAGES = ("read", "preprocess", "predict", "postprocess", "tabulate", "write")


def machine_cpu():
    """``(busy, total)`` CPU seconds of the whole machine since boot, summed over its cores
    (Linux's ``/proc/stat``), or None where that cannot be read. The busy share between two
    readings shows whether a run had cores to spare, whichever process used them (the
    Prefect server, worker processes, anything else running)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(fields[3:5])  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def busy_share(before, after):
    """The machine's busy share of its cores between two :func:`machine_cpu` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


class RunClock:
    """Accumulates the timings of shard results; :meth:`summary` gives the run's breakdown."""

    def __init__(self):
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.spans = []

    def add(self, result):
        for stage, seconds in result.get("timings", {}).items():
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        self.spans.extend(tuple(s) for s in result.get("busy", ()))

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
        """``{'stage_seconds': {...}, 'busy_seconds': s, 'idle_seconds': s}`` for the run."""
        busy = self.busy_seconds()
        return {"stage_seconds": {k: round(v, 3) for k, v in self.stages.items()},
                "busy_seconds": round(busy, 3),
                "idle_seconds": round(max(0.0, wall_seconds - busy), 3)}
