"""Serve the segment-images flow as a deployment of a Prefect server, on a schedule.

Built on Prefect's own machinery: :meth:`prefect.Flow.serve` registers a deployment with the
server named by ``PREFECT_API_URL`` and runs the server's scheduled (or manually triggered) runs
of it in subprocesses until stopped (SIGTERM or Ctrl-C, which also pause its schedule). Each run
segments only the images not done yet (see "Safe to repeat" in the README).
"""

from prefect.settings import PREFECT_API_URL

NO_SERVER = (
    "segflow serve needs a Prefect server: schedules do not run on the temporary server a plain "
    "run starts. Start one and point segflow at it, e.g.\n"
    "  prefect server start --host 127.0.0.1 --port 4200 &\n"
    "  export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
    "then run segflow serve again."
)


def api_url():
    """The configured ``PREFECT_API_URL`` (environment or profile), or None."""
    return PREFECT_API_URL.value() or None


def serve_segment(params, *, name, cron=None, interval=None):
    """Serve ``segment_images(params)`` as deployment ``segment-images/<name>`` until stopped.

    Parameters
    ----------
    params : flows.params.SegmentParams
        The run's parameters, stored with the deployment (keep credentials out of
        ``storage_options``: use a profile or environment variables the runs can read).
    name : str
        Deployment name.
    cron : str, optional
        Cron schedule, e.g. ``"0 * * * *"`` for hourly.
    interval : float, optional
        Seconds between runs. With neither, runs start only when triggered (UI, API, CLI).

    Raises
    ------
    RuntimeError
        No ``PREFECT_API_URL`` is set (the message says how to start a server).
    """
    if cron is not None and interval is not None:
        raise ValueError(f"give cron or interval, not both. Received: cron={cron!r}, "
                         f"interval={interval!r}")
    if api_url() is None:
        raise RuntimeError(NO_SERVER)
    from flows.segment import segment_images

    segment_images.serve(
        name=name, cron=cron, interval=interval, limit=1,  # one run per OUTPUT at a time
        parameters={"params": params.model_dump(mode="json")},
        description=f"Segment new images of {params.input} into {params.output}.",
        tags=["segflow"])


__all__ = ["NO_SERVER", "api_url", "serve_segment"]
