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

from segmodel.evaluation.evaluate import pair_folders, read_labels, score_pairing, summarize
from segmodel.pipeline.outputs import encode_parquet
from segmodel.storage.io import Store


class EvaluateParams(BaseModel):
    """Parameters of the ``evaluate-labels`` flow."""

    model_config = ConfigDict(extra="forbid")

    pred: str = Field(description="Predicted masks: a segflow OUTPUT (its labels/) or a folder "
                                  "of label masks.")
    truth: str = Field(description="Ground-truth label masks (tif/png), paired with the "
                                   "predictions by file name without extension.")
    groups_csv: Optional[str] = Field(None, description="CSV file with an id column and a "
                                      "group column: scores are then given per group.")
    group_column: str = Field("modality", description="The column of the --groups CSV that "
                              "names each image's group.")
    out: Optional[str] = Field(None, description="Parquet file for the per-image scores (one "
                               "row per image of either folder).")
    allow_missing: bool = Field(False, description="Score the images found in both folders "
                                "even when under half of PRED's or of TRUTH's images have a "
                                "match (refused otherwise); unmatched images are counted "
                                "apart, never scored.")
    storage_options: dict = Field(default_factory=dict, description="Passed to fsspec for "
                                  "pred, truth and out: a JSON object such as {\"anon\": true}.")


def preflight(params: EvaluateParams):
    """Pair the two folders and check them before any scoring: both exist, under half of
    either side unmatched needs ``allow_missing``, and a first file of each is a label mask.
    Returns the :class:`~segmodel.evaluation.evaluate.Pairing`."""
    for option, url in (("PRED", params.pred), ("TRUTH", params.truth)):
        if not Store(url, params.storage_options).exists():
            raise FileNotFoundError(f"{option} not found: {url!r}. Check the path or URL (and "
                                    "--storage-options).")
    if params.groups_csv and "://" not in params.groups_csv and \
            not os.path.isfile(params.groups_csv):
        raise FileNotFoundError(f"--groups file not found: {params.groups_csv!r}.")
    pairing = pair_folders(params.pred, params.truth, storage_options=params.storage_options)
    for role, store, refs in (("truth", pairing.truth, [t for _, t in pairing.both]),
                              ("pred", pairing.pred, [p for p, _ in pairing.both])):
        other = pairing.truth_only if role == "truth" else pairing.pred_only
        read_labels(store, (refs or list(other))[0], role=role)  # images given as labels?
    _check_matched(params, pairing)
    return pairing


def _check_matched(params, pairing):
    n = pairing.counts()
    sides = {"PRED": n["both"] + n["pred_only"], "TRUTH": n["both"] + n["truth_only"]}
    counts = (f"PRED={params.pred!r} and TRUTH={params.truth!r} have {n['both']} images in "
              f"common; {n['pred_only']} are only in PRED, {n['truth_only']} only in TRUTH")
    if not n["both"]:
        hint = ""
        if Store(params.truth, params.storage_options).exists("labels"):
            hint = (" TRUTH has a labels/ folder: if it is a segflow OUTPUT, the arguments are "
                    "swapped (segflow evaluate PRED TRUTH); otherwise pass TRUTH/labels.")
        raise ValueError(f"{counts}: nothing to score. Files pair by their path without "
                         f"extension ('a.tif' with 'a.png').{hint}")
    short = [side for side, total in sides.items() if n["both"] / total < 0.5]
    if short and not params.allow_missing:
        raise ValueError(f"{counts}: under half of {short[0]}'s {sides[short[0]]} images have "
                         f"a match. Check the two folders, or pass --allow-missing to score "
                         f"the {n['both']} images in common alone.")


@task(name="score", cache_policy=NO_CACHE)
def score(params: EvaluateParams) -> pd.DataFrame:
    """Score every image found in both folders (refusing as :func:`preflight` does)."""
    groups = pd.read_csv(params.groups_csv) if params.groups_csv else None
    return score_pairing(preflight(params), groups=groups, group_column=params.group_column)


@flow(name="evaluate-labels")
def evaluate_labels(params: EvaluateParams) -> pd.DataFrame:
    """Per-group mean scores over the images found in both folders, with the counts of those
    found on one side only; per-image scores written to ``params.out`` when given."""
    scores = score(params)
    if params.out:
        store = Store(posixpath.dirname(params.out) or ".", params.storage_options)
        store.write_bytes(posixpath.basename(params.out), encode_parquet(scores))
    table = summarize(scores)
    create_table_artifact(  # the scores in the UI
        json.loads(table.round(4).to_json(orient="records")), key="segflow-evaluation",
        description=f"DSB2018 metric of {params.pred} against {params.truth}, over the images "
                    "found in both (no_prediction, no_label: images found on one side only)")
    return table
