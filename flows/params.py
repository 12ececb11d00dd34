"""Flow parameters: one pydantic model per flow (Prefect renders it as the run form).

Kept free of ``from __future__ import annotations``, which breaks Prefect's parameter schemas.
"""

from pydantic import Field

from segmodel.pipeline.options import RunOptions, redact
from segmodel.training.train import TrainConfig


class SegmentParams(RunOptions):
    """Parameters of the ``segment-images`` flow: the run's options and the flow's policy."""

    max_failure_fraction: float = Field(
        1.0, ge=0, le=1,
        description="The run ends Failed when more than this share of its images failed.")


class TrainParams(TrainConfig):
    """Parameters of the ``train-model`` flow: the training settings and the run's folder.

    Every setting is a field of :class:`~segmodel.training.train.TrainConfig`, declared there
    once.
    """

    out_dir: str = Field(description="Folder for checkpoints, the log and the trained model.")


__all__ = ["SegmentParams", "TrainParams", "redact"]
