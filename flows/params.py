"""Flow parameters: one pydantic model per flow (Prefect renders it as the run form).

Kept free of ``from __future__ import annotations``, which breaks Prefect's parameter schemas.
"""

import json
from typing import Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from segmodel.io import DEFAULT_PATTERNS, check_url
from segmodel.large import TILED_ABOVE
from segmodel.preprocess import MAX_PIXELS


class SegmentParams(BaseModel):
    """Parameters of the ``segment-images`` flow."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="Folder or fsspec URL (s3://, gs://, file://, memory://) "
                       "of images.")
    output: str = Field(description="Folder or fsspec URL where masks and tables are written.")
    storage_options: dict = Field(default_factory=dict,
                                  description="Passed to fsspec for both input and output.")
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS),
                                description="Glob patterns of image files (matched recursively).")
    shard_size: int = Field(32, ge=1, description="Images per shard (the unit of work).")
    batch_size: int = Field(8, ge=1, description="Tiles per model call.")
    cpu_workers: int = Field(0, ge=0, description=(
        "Worker processes for post-processing and measuring, overlapped with the model "
        "(0: in the task's thread). Worth it with spare cores, e.g. beside a GPU."))
    scale: Union[Literal["auto"], float] = Field(
        "auto", description="'auto' (default: estimate each image's nucleus size and resize "
        "images whose nuclei lie outside the model's working range) or a resize factor to the "
        "model's scale (1.0 = as is).")
    tta: bool = Field(False, description="Average the model over four flips (4x the compute).")
    tile_size: Optional[int] = Field(None, ge=1, description="Tile size (default: the model's).")
    mask_format: Literal["tif", "png", "ome-zarr"] = Field(
        "tif", description="Label mask format: 'ome-zarr' writes OME-Zarr (NGFF 0.4) labels with "
        "a pyramid beside the image, for napari.")
    model: Optional[str] = Field(None, description="Path of a .keras model, or of a bundle "
                                 "folder (model + spec; default: bundled).")
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="Images larger than this fail.")
    retry_failed: bool = Field(False, description="Try unchanged images that failed before again.")
    max_failure_fraction: float = Field(
        1.0, ge=0, le=1,
        description="The run ends Failed when more than this share of its images failed.")
    trust_model: bool = Field(False, description="Load a model that carries Python code "
                              "(Keras safe mode off); only for files you trust.")
    tiled_above: int = Field(TILED_ABOVE, ge=1, description=(
        "TIFFs with more pixels than this are segmented block by block (bounded memory, tiled "
        "pyramidal label TIFF); max_pixels does not apply to them."))
    block_size: int = Field(4096, ge=256, multiple_of=256,
                            description="Block edge in pixels for the block-wise path.")
    channel: Optional[Union[int, str]] = Field(
        None, description="Channel the model segments: an index (0, 1, ...) or a channel name "
        "from the file (OME), e.g. 'DAPI'. Default: gray and RGB images as they are; images "
        "with other channel counts fail asking for it. Every channel is measured.")
    plane: Optional[int] = Field(
        None, ge=0, description="Plane of a 3-D stack or time series to segment (index over "
        "its non-channel axes). Default: such images fail (3-D and time are out of scope).")
    pyramid_level: int = Field(0, ge=0, description="Resolution level of a pyramidal image "
                               "(OME-Zarr, pyramidal TIFF) to read: 0 = full resolution.")
    outlines: Literal["none", "geojson"] = Field(
        "none", description="Also write object outlines: 'geojson' = outlines/<id>.geojson, one "
        "polygon per object with its label as id (QuPath imports it).")

    @field_validator("storage_options", mode="before")
    @classmethod
    def _parse_storage_options(cls, value):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(  # the text is not repeated: it may hold credentials
                    f"storage_options must be a JSON object: {exc.msg} at character {exc.pos} "
                    f"of {len(value)}."
                ) from None
        if not isinstance(value, dict):
            raise ValueError(
                f"storage_options must be a JSON object like {{\"anon\": true}}. "
                f"Received: a {type(value).__name__}"
            )
        return value

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, value):
        from segmodel.api import validate_scale

        if isinstance(value, str) and value.strip().lower() != "auto":
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, str):
            value = value.strip().lower()
        return validate_scale(value)
    @field_serializer("storage_options", when_used="json")
    def _redact_storage_options(self, value):
        """Keys only in JSON (the flow run's parameters in Prefect, run.json): values may be
        credentials. The flow itself gets the real options."""
        return redact(value)

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, value):
        from segmodel.formats import parse_channel

        return parse_channel(value)

    @field_validator("input", "output")
    @classmethod
    def _known_scheme(cls, value, info):
        check_url(value, info.field_name)
        return value

    @field_validator("patterns")
    @classmethod
    def _some_patterns(cls, value):
        if not value or not all(isinstance(p, str) and p for p in value):
            raise ValueError(f"patterns must be non-empty glob patterns. Received: {value!r}")
        return value


def redact(value):
    """``value`` with every leaf replaced by ``'***'`` (dict keys and list lengths kept)."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return "***"


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
        from segmodel.training import check_patch

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


__all__ = ["SegmentParams", "TrainParams"]
