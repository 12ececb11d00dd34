"""The options of a segmentation run (a pydantic model: typed, validated, described).

Kept free of ``from __future__ import annotations``, which breaks Prefect's parameter schemas
(the flow's parameter model extends :class:`RunOptions`).
"""

import json
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from segmodel.inference.blockwise import TILED_ABOVE
from segmodel.inference.passes import validate_scale
from segmodel.inference.preprocess import MAX_PIXELS
from segmodel.storage.formats import parse_channel
from segmodel.storage.io import DEFAULT_PATTERNS, check_url


class RunOptions(BaseModel):
    """The options of a segmentation run, declared once.

    The engine's :class:`~segmodel.pipeline.config.RunConfig` is built from them, the flow's
    parameters (Prefect's run form) extend them and the ``segflow run`` options are generated
    from them: each field's description is the option's help.
    """

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="Folder or fsspec URL (s3://, gs://, file://, memory://) "
                       "of images.")
    output: str = Field(description="Folder or fsspec URL where masks and tables are written.")
    storage_options: dict = Field(default_factory=dict,
                                  description="Passed to fsspec for both input and output: "
                                  "a JSON object such as {\"anon\": true}.")
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS),
                                description="Glob patterns of image files (matched recursively).")
    shard_size: int = Field(32, ge=1, description="Images per shard (the unit of work).")
    batch_size: int = Field(8, ge=1, description="Tiles per model call (32-64 on a GPU).")
    cpu_workers: int = Field(0, ge=0, description=(
        "Worker processes for post-processing and measuring, overlapped with the model "
        "(0: in the task's thread). Worth it with spare cores, e.g. beside a GPU."))
    scale: Union[Literal["auto"], float] = Field(
        "auto", description="'auto' (default: estimate each image's nucleus size and resize "
        "images whose nuclei lie outside the model's working range) or a resize factor to the "
        "model's scale (1.0 = as is).")
    tta: bool = Field(False, description="Average the model over four flips (4x the compute).")
    tile_size: Optional[int] = Field(None, ge=1, description=(
        "Tile edge in pixels for every image, a multiple of 16 and 80 or more (default: the "
        "model's, 256, and twice it for the large images it covers computing fewer pixels)."))
    mask_format: Literal["tif", "png", "ome-zarr"] = Field(
        "tif", description="Label mask format: 'ome-zarr' writes OME-Zarr (NGFF 0.4) labels with "
        "a pyramid beside the image, for napari.")
    engine: Literal["auto", "openvino", "keras"] = Field(
        "auto", description="What runs the model: 'openvino' (OpenVINO's CPU runtime; converted "
        "once and cached), 'keras' (Keras' backend: TensorFlow, or JAX with KERAS_BACKEND=jax) or "
        "'auto' (default: OpenVINO where it is installed and Keras runs on TensorFlow).")
    model: Optional[str] = Field(None, description="Path of a .keras model, of a bundle "
                                 "folder (model + spec), or of a BioImage Model Zoo package "
                                 "(.zip or folder with rdf.yaml; a path or fsspec URL). "
                                 "Default: bundled.")
    model_kind: Optional[Literal["instances", "binary", "semantic"]] = Field(
        None, description="Output kind of a BioImage Model Zoo package whose outputs do not "
        "tell it (default: from the package's channel names and post-processing).")
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="Images larger than this fail.")
    retry_failed: bool = Field(False, description="Try unchanged images that failed before again.")
    follow_external_links: bool = Field(False, description=(
        "Read files through symbolic links whose real path lies outside the input folder "
        "(default: such links are skipped and counted). Local folders only."))
    trust_model: bool = Field(False, description="Load a model that carries Python code "
                              "(Keras safe mode off); only for files you trust.")
    tiled_above: int = Field(TILED_ABOVE, ge=1, description=(
        "TIFFs with more pixels than this are segmented block by block (bounded memory, tiled "
        "pyramidal label TIFF); max_pixels does not apply to them."))
    block_size: int = Field(4096, ge=256, multiple_of=256,
                            description="Block edge in pixels for the block-wise path "
                                        "(a multiple of 256).")
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
        if isinstance(value, str) and value.strip().lower() != "auto":
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, str):
            value = value.strip().lower()
        return _as_value_error(validate_scale, value)

    @field_serializer("storage_options", when_used="json")
    def _redact_storage_options(self, value):
        """Give keys only in JSON (Prefect's stored parameters): values may be credentials.

        The flow itself gets the real options.
        """
        return redact(value)

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, value):
        return _as_value_error(parse_channel, value)

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


def _as_value_error(check, value):
    """``check(value)``, a wrong kind reported as pydantic reports a wrong value."""
    try:
        return check(value)
    except TypeError as exc:  # pydantic turns ValueError, not TypeError, into its errors
        raise ValueError(str(exc)) from None


def redact(value):
    """Replace every leaf of ``value`` by ``'***'``, keeping dict keys and list lengths.

    Parameters
    ----------
    value : object
        Nested dicts, lists and tuples of anything.

    Returns
    -------
    object
    """
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return "***"


class ReportOptions(BaseModel):
    """The options of ``segflow report``: the output whose report.html is made again."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(description="The OUTPUT folder or fsspec URL of earlier segflow runs; "
                        "its report.html is written from its tables.")
    storage_options: dict = Field(
        default_factory=dict, description=RunOptions.model_fields["storage_options"].description
        + " Also used to read the inputs again for the thumbnails.")

    _storage_options = field_validator("storage_options", mode="before")(
        RunOptions._parse_storage_options.__func__)
    _known_scheme = field_validator("output")(RunOptions._known_scheme.__func__)
