"""The rows of the images and failures tables, built in one place for every path.

A shard's images and a huge image's row carry the same columns with the same meaning
(:data:`segmodel.pipeline.outputs.IMAGE_SCHEMA`); both are built here.
"""

from dataclasses import dataclass

from segmodel import __version__
from segmodel.inference.autoscale import FALLBACK_FLAG
from segmodel.pipeline import qc


@dataclass(frozen=True)
class Segmented:
    """What segmenting one image gave, in the image's own pixels.

    Attributes
    ----------
    height, width : int
    n_objects : int
    mean_object_area : float
        Mean object area in pixels (0.0 without objects).
    foreground_fraction : float
    scale : float
        The resize factor the model saw the image at.
    estimate : segmodel.inference.autoscale.Estimate or None
        The automatic scale's estimate (None with a fixed scale).
    qc_flags : str
        The image's QC flags, joined (without the scale flag, added here).
    pixel_size_um : float or None
    mask_path : str
    seconds : float
    """

    height: int
    width: int
    n_objects: int
    mean_object_area: float
    foreground_fraction: float
    scale: float
    estimate: object
    qc_flags: str
    pixel_size_um: object
    mask_path: str
    seconds: float


def image_row(ref, seg, *, model, config_key, shard):
    """The images table's row of one segmented image.

    Parameters
    ----------
    ref : ImageRef
    seg : Segmented
    model : LoadedModel
    config_key, shard : str

    Returns
    -------
    dict
        One value per column of :data:`segmodel.pipeline.outputs.IMAGE_SCHEMA`.
    """
    return {
        "image_id": ref.image_id, "uri": ref.uri, "height": seg.height, "width": seg.width,
        "n_objects": seg.n_objects, "mean_object_area": float(seg.mean_object_area),
        "foreground_fraction": float(seg.foreground_fraction), "scale": float(seg.scale),
        "nucleus_diameter": nucleus_diameter(seg.estimate),
        "model_name": model.spec.name, "model_fingerprint": model.fingerprint,
        "segflow_version": __version__, "seconds": seg.seconds, "mask_path": seg.mask_path,
        "fingerprint": ref.fingerprint, "config_key": config_key, "shard": shard,
        "qc_flags": with_scale_flag(seg.qc_flags, seg.estimate),
        "pixel_size_um": float(seg.pixel_size_um) if seg.pixel_size_um else float("nan"),
    }


def failure_row(ref, failure, *, config_key, shard):
    """The failures table's row of an image that could not be segmented.

    Parameters
    ----------
    ref : ImageRef
    failure : dict
        ``{'stage', 'error_type', 'message'}``; the message is cut at 2,000 characters.
    config_key, shard : str

    Returns
    -------
    dict
    """
    return {"image_id": ref.image_id, "uri": ref.uri, "stage": failure["stage"],
            "error_type": failure["error_type"], "message": failure["message"][:2000],
            "fingerprint": ref.fingerprint, "config_key": config_key, "shard": shard}


def nucleus_diameter(estimate):
    """Give the images table's ``nucleus_diameter``: the automatic estimate.

    Parameters
    ----------
    estimate : segmodel.inference.autoscale.Estimate or None

    Returns
    -------
    float
        The estimate's diameter in the image's pixels; nan without an estimate.
    """
    return float("nan") if estimate is None else float(estimate.diameter)


def with_scale_flag(flags, estimate):
    """``flags`` plus ``scale_fallback`` where automatic scale could not measure the nuclei.

    Such an image was kept at its own resolution.

    Parameters
    ----------
    flags : str
        Joined QC flags.
    estimate : segmodel.inference.autoscale.Estimate or None

    Returns
    -------
    str
    """
    if estimate is None or not estimate.fallback:
        return flags
    return qc.join_flags(qc.split_flags(flags) + [FALLBACK_FLAG])
