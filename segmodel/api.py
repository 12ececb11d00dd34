"""segflow from a notebook, without Prefect: one image, a list of images, or a whole folder.

>>> from segmodel.api import segment, intensities, run, read_table
>>> labels, objects = segment(image)                  # doctest: +SKIP
>>> per_channel = intensities(labels, image)          # doctest: +SKIP
>>> summary = run("images/", "out/")                   # doctest: +SKIP
>>> objects = read_table("out/", "objects")           # doctest: +SKIP
"""

import numpy as np

from segmodel.inference.heads import object_labels
from segmodel.inference.measure import measure_intensities, measure_objects
from segmodel.inference.passes import (
    AUTO,
    ModelCalls,
    model_tiling,
    predict_labels,
    prepare,
    resolve_model,
    validate_scale,
)
from segmodel.inference.preprocess import check_values


def segment_many(images, model=None, *, scale=AUTO, batch_size=8, tiling=None, tta=False):
    """Instance labels for a list of ``(H, W[, C])`` images, tiles batched across images.

    Parameters
    ----------
    images : list of ndarray
        Gray, RGB or RGBA images of any size and dtype.
    model : str, Path or LoadedModel, optional
        Default: the bundled nuclei model.
    scale : float or "auto", optional
        Resize factor to the model's working scale (1.0 = as is). Default ``"auto"``: each
        image's nucleus size is estimated from its pyramid levels, and images whose nuclei lie
        outside the model's working range are resized to its nucleus size (labels are
        returned at the image's own resolution; see :mod:`segmodel.autoscale`).
    batch_size : int, optional
        Tiles per model call.
    tiling : Tiling, optional
        Default: the model's own tile size and overlap, and twice the tile size for images it
        covers computing fewer pixels (as ``segflow run`` tiles; see
        :func:`segmodel.inference.passes.model_tiling`).
    tta : bool, optional
        Test-time augmentation: average the model's maps over the four flips of each tile
        (four times the model calls).

    Returns
    -------
    list of (H, W) ndarray of int32
        Instance labels; for a semantic model, class maps (see :mod:`segmodel.heads`).
    """
    lm = resolve_model(model)
    scale = validate_scale(scale)
    if tiling is None:
        tiling = model_tiling(lm)
    else:
        tiling.validate(lm.spec.divisor)
    images = [np.asarray(im) for im in images]
    for i, im in enumerate(images):  # arrays, not files: nothing has checked them yet
        check_values(im, f"images[{i}]")
    prepared = [prepare(im, lm.spec, scale) for im in images]
    labels, _ = predict_labels(lm, prepared, tiling, auto=scale == AUTO,
                               calls=ModelCalls(batch_size=batch_size, tta=tta))
    return labels


def segment(image, model=None, *, scale=AUTO, tta=False, image_id=""):
    """Segment one image and measure its objects.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
        Gray, RGB or RGBA, any size and dtype.
    model : str, Path or LoadedModel, optional
        Default: the bundled nuclei model.
    scale : float or 'auto', optional
        See :func:`segment_many` (default ``'auto'``).
    tta : bool, optional
        Average over the four flips (default False).
    image_id : str, optional
        Written into the objects table's ``image_id`` column.

    Returns
    -------
    labels : (H, W) ndarray of int32
        Instance labels (a semantic model's class map).
    objects : pandas.DataFrame
        One row per object (see :data:`segmodel.inference.measure.OBJECT_SCHEMA`); the
        intensities of its channels: :func:`intensities`.

    Raises
    ------
    TypeError
        A scale that is neither ``'auto'`` nor a number.
    ValueError
        A scale out of range, or an image with no pixels or non-finite values.
    """
    lm = resolve_model(model)
    labels = segment_many([image], lm, scale=scale, tta=tta)[0]
    return labels, measure_objects(object_labels(labels, lm.spec), image_id)


def intensities(labels, image, *, image_id=""):
    """Mean, min and max of every channel of ``image`` on every object of ``labels``.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels (as :func:`segment` gives them), 0 = background.
    image : (H, W[, C]) ndarray
        The raw image; an RGBA (or gray + alpha) image's alpha is left out.
    image_id : str, optional
        Written into the ``image_id`` column.

    Returns
    -------
    pandas.DataFrame
        One row per object and channel (see
        :data:`segmodel.inference.measure.INTENSITY_SCHEMA`), by label, then channel.

    Raises
    ------
    ValueError
        If ``image``'s height and width are not ``labels``'.
    """
    image = np.asarray(image)
    planes = image[..., None] if image.ndim == 2 else image
    n = planes.shape[-1] - (1 if planes.shape[-1] in (2, 4) else 0)
    return measure_intensities(np.asarray(labels), planes[..., :n], image_id=image_id)


def run(input, output, **options):
    """Segment every image under ``input`` into ``output``: masks and tables, no Prefect.

    The same work as ``segflow run INPUT OUTPUT`` (the same outputs, safe to repeat: a rerun
    skips images already done), done shard after shard in this process.

    Parameters
    ----------
    input, output : str
        Folder or fsspec URL (``s3://``, ``gs://``, ``memory://``...).
    **options
        Any option of :class:`segmodel.pipeline.options.RunOptions` (``scale``, ``patterns``,
        ``mask_format``, ``model``, ``storage_options``...), with the same defaults as the CLI.

    Returns
    -------
    dict
        The run's summary: ``found``, ``skipped``, ``images``, ``failed``, ``objects``,
        ``seconds`` and timings (see :meth:`segmodel.pipeline.clock.RunMeter.summary`),
        ``not_listed``: symbolic links and folders the listing skipped, by reason, and
        ``report``: the URL of ``OUTPUT/report.html`` (None where no image was segmented).

    Raises
    ------
    pydantic.ValidationError
        An option is unknown or has a wrong value.
    FileNotFoundError
        No image under ``input`` matches the patterns.
    PermissionError, ConnectionError
        ``input`` cannot be listed or ``output`` cannot be written (no credentials, access
        denied, a read-only folder, an endpoint that does not answer): one line says which.
    """
    from segmodel.pipeline.options import RunOptions
    from segmodel.pipeline.run import run as run_pipeline

    return run_pipeline(RunOptions(input=input, output=output, **options))


def read_table(output, name, storage_options=None):
    """One of a run's tables as a DataFrame.

    Parameters
    ----------
    output : str
        The run's output folder or URL.
    name : {'objects', 'intensities', 'images', 'failures', 'classes'}
    storage_options : dict, optional
        Passed to fsspec.

    Returns
    -------
    pandas.DataFrame
    """
    from segmodel.pipeline.outputs import read_table as read

    return read(output, name, storage_options)
