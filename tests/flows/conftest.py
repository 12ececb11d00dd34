"""Reading back what a flow run left in the Prefect API (state, task runs, artifacts, logs)."""

import time

import pytest


def _record(flow_run_id=None):
    """The given (or the latest started) flow run as a dict of plain values."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.server import early_settings

    with early_settings(), get_client(sync_client=True) as client:
        if flow_run_id is None:
            run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        else:
            run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        deadline = time.monotonic() + 20  # logs reach the API in batches, after the run
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)
            if any(log.message.startswith("done: ") for log in logs) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return {"run": run, "state": run.state.type.value, "name": run.name,
            "task_runs": sorted(t.name for t in tasks),
            "artifacts": {a.key: a for a in artifacts if a.key},
            "logs": [(log.level, log.message) for log in logs]}


@pytest.fixture(scope="session")
def flow_run_record():
    """``flow_run_record(id=None)``: state, task run names, keyed artifacts and logs of a run."""
    return _record
