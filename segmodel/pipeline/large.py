"""One huge image as a job of its own: segmented block by block, written as a tiled mask.

Images above ``tiled_above`` pixels (TIFFs) are read region by region
(:mod:`segmodel.inference.blockwise`), so memory stays bounded whatever their size. The label
mask is a tiled pyramidal BigTIFF (or OME-Zarr) written to a local temporary file, then moved or
uploaded into place; the table parts form a shard of one image.
"""

import os
import shutil
import tempfile
import time

from segmodel.inference import blockwise
from segmodel.inference.measure import with_area_um2
from segmodel.inference.preprocess import ImageDecodeError
from segmodel.pipeline import outputs, runtime
from segmodel.pipeline.plan import ShardResult
from segmodel.pipeline.rows import Segmented, failure_row, image_row
from segmodel.storage import export
from segmodel.storage.io import is_transient


def process_large(config, job):
    """Segment one huge TIFF block by block; write its tiled label mask and table parts.

    Parameters
    ----------
    config : RunConfig
    job : ShardJob
        A job of one image.

    Returns
    -------
    ShardResult

    Notes
    -----
    A file the block-wise path cannot read, or whose pixels are bad, becomes a failures row (as
    a bad image does in a shard); storage errors worth retrying are raised for the caller.
    """
    span0, t0 = time.time(), time.perf_counter()
    (ref,) = job.refs
    model = config.load_model()
    try:
        _check_model(config, ref, model)
        seg, tables = _segment(config, job, ref, model)
    except Exception as exc:
        if is_transient(exc):
            raise
        stage = ("decode" if isinstance(exc, ImageDecodeError) else
                 "read" if isinstance(exc, _Unsupported) else "segment")
        message = str(exc) if isinstance(exc, _Unsupported) else f"{ref.image_id}: {exc}"
        kind = "ValueError" if isinstance(exc, _Unsupported) else type(exc).__name__
        failure = {"stage": stage, "error_type": kind, "message": message}
        return _failed(config, job, ref, failure, span0)
    seconds = time.perf_counter() - t0
    row = image_row(ref, Segmented(**{**seg.__dict__, "seconds": seconds}), model=model,
                    config_key=config.config_key, shard=job.name)
    outputs.write_shard(config.output, job.name, {
        **tables, "images": outputs.table("images", [row]),
        "failures": outputs.table("failures", [])})
    for old in job.superseded.values():  # committed: the mask of another format goes
        export.remove_superseded(config.output, old, seg.mask_path)
    return ShardResult(shard=job.name, index=job.index, images=1, failed=0,
                       objects=seg.n_objects, seconds=seconds, timings={},
                       span=(span0, time.time()))


class _Unsupported(ValueError):
    """The model cannot segment block by block (a failures row at the read stage)."""


def _check_model(config, ref, model):
    if model.spec.kind == "semantic" or model.spec.normalization != "percentile":
        raise _Unsupported(
            f"{ref.image_id} is above --tiled-above ({config.options.tiled_above} pixels) and "
            f"model {model.spec.name!r} (kind {model.spec.kind}, normalization "
            f"{model.spec.normalization}) cannot segment block by block: only instance and "
            "binary models with percentile normalisation can. Raise --tiled-above above "
            "the image's pixel count to segment it whole.")


def _segment(config, job, ref, model):
    """Segment and write one huge image's labels; ``(Segmented, {table name: DataFrame})``."""
    o = config.options
    zarr_out = o.mask_format == "ome-zarr"
    relpath = job.mask_paths[ref.image_id]
    if not zarr_out:
        relpath = relpath.rsplit(".", 1)[0] + ".tif"
    tmpdir = tempfile.mkdtemp()
    local = os.path.join(tmpdir, "labels.ome.zarr" if zarr_out else "labels.tif")
    try:
        with config.input.fs.open(ref.path, "rb") as fh, \
                blockwise.TiffRegions(fh, name=ref.image_id) as regions:
            _check_regions(config, regions)
            scale, estimate = _scale(config, regions, model)
            run = blockwise.BlockRun(
                regions, model, image_id=ref.image_id, scale=scale,
                tiling=config.tiling(), batch_size=o.batch_size,
                blocks=blockwise.Blocks(block=o.block_size), lock=runtime.model_lock())
            _write_labels(local, regions, run, model, ref, zarr_out)
        if zarr_out:
            export.upload(config.output, relpath, export.local_files(local))
        else:
            config.output.put_file(local, relpath)
        if o.outlines == "geojson":
            _write_outlines(config, relpath, local, zarr_out, run.objects)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    pixel_size = regions.pixel_size_um
    objects = with_area_um2(run.objects, pixel_size)
    h, w = regions.shape
    seg = Segmented(
        height=h, width=w, n_objects=run.n,
        mean_object_area=float(objects["area"].mean()) if run.n else 0.0,
        foreground_fraction=run.foreground / (h * w), scale=float(scale), estimate=estimate,
        qc_flags="", pixel_size_um=pixel_size, mask_path=relpath, seconds=0.0)
    return seg, {"objects": objects, "intensities": run.intensities}


def _check_regions(config, regions):
    o = config.options
    why = regions.unsupported(plane=o.plane, channel=o.channel, pyramid_level=o.pyramid_level)
    if why:
        raise ImageDecodeError(
            f"above --tiled-above ({o.tiled_above} pixels), so segmented block by "
            f"block, which reads one 2-D gray or RGB picture, but {why}. Convert it to "
            "a plain 2-D TIFF of the channel to segment, or raise --tiled-above above "
            "its pixel count to read it whole (memory permitting).")


def _scale(config, regions, model):
    """``(scale, estimate)``: the option's fixed scale, or the automatic one (and its estimate)."""
    if config.options.scale != "auto":
        return config.options.scale, None
    estimate = blockwise.estimate_scale(
        regions, model, tiling=config.tiling(),
        batch_size=config.options.batch_size, lock=runtime.model_lock())
    return (estimate.scale if estimate is not None else 1.0), estimate


def _write_labels(local, regions, run, model, ref, zarr_out):
    if zarr_out:
        export.build_large_ome_zarr(local, regions, run.rows(), channels=model.spec.channels,
                                    name=ref.image_id, pixel_size=regions.pixel_size_um)
    else:
        blockwise.write_label_tiff(local, regions.shape, run.rows())


def _write_outlines(config, relpath, local, zarr_out, objects):
    """GeoJSON outlines of a huge image from its local label file, read region by region."""
    if zarr_out:
        import zarr

        level0 = zarr.open_array(os.path.join(local, "labels", export.LABEL_NAME, "0"), mode="r")
        features = export.outline_features_by_region(
            lambda y0, y1, x0, x1: level0[y0:y1, x0:x1], objects)
    else:
        with open(local, "rb") as fh, blockwise.TiffRegions(fh) as regions:
            features = export.outline_features_by_region(
                lambda y0, y1, x0, x1: regions.read(y0, y1, x0, x1)[..., 0], objects)
    config.output.write_bytes(export.outline_path(relpath), export.encode_geojson(features))


def _failed(config, job, ref, failure, span0):
    """Write the failures row of a huge image that could not be segmented."""
    row = failure_row(ref, failure, config_key=config.config_key, shard=job.name)
    outputs.write_shard(config.output, job.name, {
        "objects": outputs.table("objects", []), "intensities": outputs.table("intensities", []),
        "images": outputs.table("images", []), "failures": outputs.table("failures", [row])})
    export.remove_outputs(config.output, job.mask_paths[ref.image_id])  # an earlier run's
    for old in job.superseded.values():
        export.remove_superseded(config.output, old, job.mask_paths[ref.image_id])
    return ShardResult(shard=job.name, index=job.index, images=0, failed=1, objects=0,
                       seconds=0.0, timings={}, span=(span0, time.time()), failures=(row,))
