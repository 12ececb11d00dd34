"""The Prefect task for one image above the block-wise threshold (see :mod:`segmodel.large`).

One task run per large image: such an image is a unit of work of its own (minutes, bounded
memory). Its label mask is a tiled pyramidal BigTIFF written to a local temporary file and then
moved or uploaded into place; its table parts form a shard of one image.
"""

import os
import shutil
import tempfile
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from segmodel import __version__, export, large, outputs, shards
from segmodel.api import default_tiling
from segmodel.io import is_transient
from segmodel.model import load_model
from segmodel.preprocess import ImageDecodeError
from tasks.shards import ShardContext, ShardJob, model_lock


def find_large(ctx: ShardContext, refs):
    """Split ``refs`` into ``(regular, large)``: TIFFs over ``ctx.tiled_above`` pixels are large.

    Only TIFFs bigger than ``min(1 MB, tiled_above / 64)`` bytes have their header read (one
    small read each); smaller files cannot hold that many pixels at any usual compression.
    """
    regular, big = [], []
    probe_above = min(1_000_000, ctx.tiled_above // 64)
    for ref in refs:
        shape = None
        if ref.size > probe_above and ref.image_id.lower().endswith((".tif", ".tiff")):
            with ctx.input.fs.open(ref.path, "rb") as fh:
                shape = large.tiff_shape(fh)
        (big if shape and shape[0] * shape[1] > ctx.tiled_above else regular).append(ref)
    return regular, big


@task(name="segment-large", task_run_name="segment large image {job.index}/{job.total}",
      cache_policy=NO_CACHE)
def segment_large(ctx: ShardContext, job: ShardJob) -> dict:
    """Segment one large TIFF block by block; write its tiled label TIFF and table parts.

    A file the block-wise path cannot read, or whose pixels are bad, becomes a row of the
    failures table (as a bad image does in a shard); storage errors worth retrying are raised
    for the task's retries.
    """
    t_start, t0 = time.time(), time.perf_counter()
    (ref,) = job.refs
    model = load_model(ctx.model_path, trust=ctx.trust_model)
    if model.spec.kind == "semantic" or model.spec.normalization != "percentile":
        return _failed(ctx, job, ref, t_start, "read", "ValueError", (
            f"{ref.image_id} is above --tiled-above ({ctx.tiled_above} pixels) and model "
            f"{model.spec.name!r} (kind {model.spec.kind}, normalization "
            f"{model.spec.normalization}) cannot segment block by block: only instance and "
            "binary models with percentile normalisation can. Raise --tiled-above above "
            "the image's pixel count to segment it whole."))
    try:
        row, objects = _segment(ctx, job, ref, model)
    except Exception as exc:
        if is_transient(exc):
            raise
        stage = "decode" if isinstance(exc, ImageDecodeError) else "segment"
        return _failed(ctx, job, ref, t_start, stage, type(exc).__name__,
                       f"{ref.image_id}: {exc}")
    seconds = time.perf_counter() - t0
    row["seconds"] = seconds
    outputs.write_shard(ctx.output, job.name, {
        "objects": objects, "images": outputs.table("images", [row]),
        "failures": outputs.table("failures", [])})
    get_run_logger().info("%s: %dx%d pixels, %d objects in %.1f s", ref.image_id, row["height"],
                          row["width"], row["n_objects"], seconds)
    return {"shard": job.name, "index": job.index, "images": 1, "failed": 0,
            "objects": row["n_objects"], "seconds": seconds, "timings": {},
            "busy": [(t_start, time.time())]}


def _segment(ctx, job, ref, model):
    """Segment and write one large image's labels; return its images row and objects."""
    tiling = default_tiling(model.spec, ctx.tile_size, ctx.overlap)
    zarr_out = ctx.mask_format == "ome-zarr"
    relpath = job.mask_paths[ref.image_id]
    if not zarr_out:
        relpath = relpath.rsplit(".", 1)[0] + ".tif"
    tmpdir = tempfile.mkdtemp()
    local = os.path.join(tmpdir, "labels.ome.zarr" if zarr_out else "labels.tif")
    try:
        with ctx.input.fs.open(ref.path, "rb") as fh, \
                large.TiffRegions(fh, name=ref.image_id) as regions:
            why = regions.unsupported(plane=ctx.plane, channel=ctx.channel,
                                      pyramid_level=ctx.pyramid_level)
            if why:
                raise ImageDecodeError(
                    f"above --tiled-above ({ctx.tiled_above} pixels), so segmented block by "
                    f"block, which reads one 2-D gray or RGB picture, but {why}. Convert it to "
                    "a plain 2-D TIFF of the channel to segment, or raise --tiled-above above "
                    "its pixel count to read it whole (memory permitting).")
            pixel_size = regions.pixel_size_um
            scale, estimate = ctx.scale, None
            if scale == "auto":
                estimate = large.estimate_scale(regions, model, tiling=tiling,
                                                batch_size=ctx.batch_size, lock=model_lock())
                scale = estimate.scale if estimate is not None else 1.0
            run = large.BlockRun(regions, model, image_id=ref.image_id, scale=scale,
                                 tiling=tiling, batch_size=ctx.batch_size,
                                 blocks=large.Blocks(block=ctx.block_size),
                                 lock=model_lock())
            if zarr_out:
                export.build_large_ome_zarr(local, regions, run.rows(),
                                            channels=model.spec.channels, name=ref.image_id,
                                            pixel_size=pixel_size)
            else:
                large.write_label_tiff(local, regions.shape, run.rows())
        if zarr_out:
            export.upload(ctx.output, relpath, export.local_files(local))
        else:
            ctx.output.put_file(local, relpath)
        if ctx.outlines == "geojson":
            _write_outlines(ctx, relpath, local, zarr_out, run.objects)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    objects = run.objects
    if pixel_size:
        objects["area_um2"] = objects["area"] * pixel_size**2
    h, w = regions.shape
    row = {"image_id": ref.image_id, "uri": ref.uri, "height": h, "width": w,
           "n_objects": run.n, "mean_object_area": float(objects["area"].mean()) if run.n else 0.0,
           "foreground_fraction": run.foreground / (h * w), "scale": float(scale),
           "nucleus_diameter": shards.nucleus_diameter(estimate),
           "qc_flags": shards.with_scale_flag("", estimate),
           "model_name": model.spec.name, "model_fingerprint": model.fingerprint,
           "segflow_version": __version__, "seconds": 0.0, "mask_path": relpath,
           "fingerprint": ref.fingerprint, "config_key": ctx.config_key, "shard": job.name,
           "pixel_size_um": float(pixel_size) if pixel_size else float("nan")}
    return row, objects


def _write_outlines(ctx, relpath, local, zarr_out, objects):
    """GeoJSON outlines of a large image from its local label file, read region by region."""
    if zarr_out:
        import zarr

        level0 = zarr.open_array(os.path.join(local, "labels", export.LABEL_NAME, "0"), mode="r")
        features = export.outline_features_by_region(
            lambda y0, y1, x0, x1: level0[y0:y1, x0:x1], objects)
    else:
        with open(local, "rb") as fh, large.TiffRegions(fh) as regions:
            features = export.outline_features_by_region(
                lambda y0, y1, x0, x1: regions.read(y0, y1, x0, x1)[..., 0], objects)
    ctx.output.write_bytes(export.outline_path(relpath), export.encode_geojson(features))


def _failed(ctx, job, ref, t_start, stage, error_type, message):
    """The failures row of a large image that could not be segmented."""
    failure = {"image_id": ref.image_id, "uri": ref.uri, "stage": stage,
               "error_type": error_type, "message": message[:2000],
               "fingerprint": ref.fingerprint, "config_key": ctx.config_key, "shard": job.name}
    outputs.write_shard(ctx.output, job.name, {
        "objects": outputs.table("objects", []), "images": outputs.table("images", []),
        "failures": outputs.table("failures", [failure])})
    export.remove_outputs(ctx.output, job.mask_paths[ref.image_id])  # an earlier run's
    get_run_logger().warning("failed %s: %s", ref.image_id, message)
    return {"shard": job.name, "index": job.index, "images": 0, "failed": 1, "objects": 0,
            "seconds": 0.0, "timings": {}, "busy": [(t_start, time.time())]}
