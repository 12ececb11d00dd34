"""The ``evaluate-labels`` flow: score predicted masks against ground truth (DSB2018 metric)."""

import json
import os
import posixpath
from typing import Optional

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from segmodel.evaluation.evaluate import evaluate_folders, summarize
from segmodel.pipeline.outputs import encode_parquet
from segmodel.storage.io import Store


class EvaluateParams(BaseModel):
    """Parameters of the ``evaluate-labels`` flow."""

    model_config = ConfigDict(extra="forbid")

    pred: str = Field(description="Predicted masks: a segflow OUTPUT or a folder of masks.")
    truth: str = Field(description="Ground-truth label masks (tif/png), paired by file name.")
    groups_csv: Optional[str] = Field(None, description="CSV with an id column and groups.")
    group_column: str = Field("modality", description="Column of groups_csv naming groups.")
    out: Optional[str] = Field(None, description="Parquet file for the per-image scores.")
    storage_options: dict = Field(default_factory=dict, description="Passed to fsspec for "
                                  "pred, truth and out: a JSON object such as {\"anon\": true}.")


def preflight(params: EvaluateParams):
    """Fail before any Prefect run when a folder or the groups file is not there."""
    for option, url in (("PRED", params.pred), ("TRUTH", params.truth)):
        if not Store(url, params.storage_options).exists():
            raise FileNotFoundError(f"{option} not found: {url!r}. Check the path or URL (and "
                                    "--storage-options).")
    if params.groups_csv and "://" not in params.groups_csv and \
            not os.path.isfile(params.groups_csv):
        raise FileNotFoundError(f"--groups file not found: {params.groups_csv!r}.")


@task(name="score", cache_policy=NO_CACHE)
def score(params: EvaluateParams) -> pd.DataFrame:
    """Score every truth image against its prediction."""
    groups = pd.read_csv(params.groups_csv) if params.groups_csv else None
    return evaluate_folders(params.pred, params.truth, storage_options=params.storage_options,
                            groups=groups, group_column=params.group_column)


@flow(name="evaluate-labels")
def evaluate_labels(params: EvaluateParams) -> pd.DataFrame:
    """Per-group mean scores; per-image scores written to ``params.out`` when given."""
    scores = score(params)
    if params.out:
        store = Store(posixpath.dirname(params.out) or ".", params.storage_options)
        store.write_bytes(posixpath.basename(params.out), encode_parquet(scores))
    table = summarize(scores)
    create_table_artifact(  # the scores in the UI
        json.loads(table.round(4).to_json(orient="records")), key="segflow-evaluation",
        description=f"DSB2018 metric of {params.pred} against {params.truth}")
    return table
