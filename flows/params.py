"""Flow parameters: one pydantic model per flow (Prefect renders it as the run form).

Kept free of ``from __future__ import annotations``, which breaks Prefect's parameter schemas.
"""

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from segmodel.pipeline.options import RunOptions, redact


class SegmentParams(RunOptions):
    """Parameters of the ``segment-images`` flow: the run's options and the flow's policy."""

    max_failure_fraction: float = Field(
        1.0, ge=0, le=1,
        description="The run ends Failed when more than this share of its images failed.")


class TrainParams(BaseModel):
    """Parameters of the ``train-model`` flow."""

    model_config = ConfigDict(extra="forbid")

    out_dir: str = Field(description="Folder for checkpoints, the log and the trained model.")
    data_dir: Optional[str] = Field(None, description="DSB2018-style dataset folder.")
    steps: int = Field(2600, ge=1, description="Training steps (batches).")
    steps_per_epoch: int = Field(100, ge=1, description="Steps between checkpoints.")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate (cosine decay).")
    object_diameter: float = Field(
        24.0, ge=0, description="Resize training images to this median nucleus diameter in "
        "pixels; automatic scale does the same at inference (0: train at the images' own "
        "scale, and record the training images' range of sizes as the working range).")
    init: str = Field("", description="Start from this .keras model's weights ('' = random).")
    seed: int = Field(0, description="Seed of patch sampling and augmentation.")
    images_dir: Optional[str] = Field(
        None, description="Your own images (instead of data_dir), paired by file stem with "
        "labels_dir.")
    labels_dir: Optional[str] = Field(None, description="Instance label images of images_dir.")
    kind: Literal["instances", "binary", "semantic"] = Field(
        "instances", description="Output kind of the trained model bundle.")
    name: str = Field("", description="The bundle's name ('' = '<kind>-unet').")
    filters: list[int] = Field(
        [16, 32, 64, 128], min_length=1, max_length=6,
        description="Filters per U-Net level (one level per entry; with init, the levels a "
        "deeper network shares with that model start from its weights).")
    bottleneck: int = Field(128, ge=1, description="Filters at the U-Net's lowest resolution.")
    patch: int = Field(128, ge=1, description="Edge of the training patches in pixels (a "
                       "multiple of 2**levels: 16 with 4 levels).")
    batch_size: int = Field(16, ge=1, description="Patches per training step.")
    contact_weight: float = Field(
        0.0, ge=0, description="Extra loss weight on pixels where two nuclei touch, where "
        "merges start (0: every pixel alike; instance models only).")

    @model_validator(mode="after")
    def _patch_fits_the_levels(self):
        from segmodel.training.train import check_patch

        check_patch(self.patch, len(self.filters))
        return self

    @field_validator("filters")
    @classmethod
    def _positive_filters(cls, value):
        if min(value) < 1:
            raise ValueError(f"every level needs at least 1 filter. Received: {value}")
        return value

    @field_validator("labels_dir")
    @classmethod
    def _labels_with_images(cls, value, info):
        if value and not info.data.get("images_dir"):
            raise ValueError("labels_dir needs images_dir (the images the labels belong to).")
        return value


__all__ = ["SegmentParams", "TrainParams", "redact"]
