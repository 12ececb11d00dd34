"""Automatic scale: each image's typical nucleus size, and the resize factor it calls for.

The pyramid stage of the pipeline. A network learns nuclei over a range of sizes; outside it,
large nuclei are cut into pieces and small ones merged or missed. For each image the engine
(:func:`segmodel.inference.passes.predict_labels` with ``auto``) segments its coarse pyramid levels
first,
coarsest first, and takes the first level whose nuclei the model resolves (a median diameter of
at least :attr:`AutoScale.min_level_diameter` pixels at that level, from at least
:attr:`AutoScale.min_objects` objects): at a coarse level a large nucleus is small enough to be
seen whole, and most of a large image's pixels are never needed for this. The median diameter
there, in the image's own pixels, is the estimate. :func:`choose_scale` then leaves images whose
nuclei lie in the model's working range (``ModelSpec.object_diameter_range``) at their own
resolution and resizes the others so their nuclei come inside it, a margin from its edge.

An image with too few objects at every level (an empty field, a single nucleus) keeps scale 1
and is flagged ``scale_fallback`` in the images table's QC flags.
"""

import math
from dataclasses import dataclass

import numpy as np

#: The QC flag of an image whose nucleus size could not be estimated (kept at scale 1).
FALLBACK_FLAG = "scale_fallback"


@dataclass(frozen=True)
class AutoScale:
    """How the nucleus size is estimated and the scale chosen from it.

    Chosen on the tune split of DSB2018 rendered at 0.5x to 4x: README, "Automatic scale".

    Parameters
    ----------
    levels : tuple of float, optional
        Pyramid levels tried, coarsest first (1.0 = the image itself, always last; default
        ``(0.25, 1.0)``).
    min_level_diameter : float, optional
        A level is trusted when its median nucleus is at least this many pixels across at that
        level (default 10.0).
    min_objects : int, optional
        Objects a level must hold to be measured (default 5).
    margin : float, optional
        An image outside the working range ``(low, high)`` is resized so its median nucleus
        comes to ``low * margin`` or ``high / margin`` (never past ``object_diameter``; default
        1.3).
    clip : (float, float), optional
        The automatic factor is kept within this range (default ``(0.25, 4.0)``).
    """

    levels: tuple = (0.25, 1.0)
    min_level_diameter: float = 10.0
    min_objects: int = 5
    margin: float = 1.3
    clip: tuple = (0.25, 4.0)


DEFAULT = AutoScale()


@dataclass(frozen=True)
class Estimate:
    """The automatic-scale outcome for one image.

    Parameters
    ----------
    scale : float
        The resize factor chosen.
    diameter : float, optional
        The median nucleus diameter in the image's own pixels (default nan: not measured).
    level : float, optional
        The pyramid level it was measured at (default 1.0).
    """

    scale: float
    diameter: float = math.nan
    level: float = 1.0

    @property
    def fallback(self):
        """True when no diameter was measured (too few nuclei): the image kept scale 1."""
        return math.isnan(self.diameter)


def median_diameter(labels):
    """Median equivalent diameter (pixels) of the objects in ``labels``; 0.0 when there are none.

    Parameters
    ----------
    labels : (H, W) array_like of int
        A label image (non-negative).

    Returns
    -------
    float
        ``sqrt(4 * median area / pi)``.
    """
    return _median_and_count(labels)[0]


def _median_and_count(labels):
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    if not len(areas):
        return 0.0, 0
    return float(np.sqrt(4 * np.median(areas) / np.pi)), len(areas)


def level_diameter(labels, level, rule=DEFAULT, *, last=False):
    """The image's median nucleus diameter from the labels of one pyramid level.

    Parameters
    ----------
    labels : (h, w) array_like of int
        Labels of the image resized by ``level``.
    level : float
        The pyramid level (resize factor).
    rule : AutoScale, optional
        Default :data:`DEFAULT`.
    last : bool, optional
        True for the last level tried, whose small nuclei are measured as they are.

    Returns
    -------
    float or None
        In the image's own pixels; None when the level cannot be trusted (see
        :func:`trusted_diameter`).
    """
    diameter, n_objects = _median_and_count(labels)
    return trusted_diameter(diameter, n_objects, level, rule, last=last)


def trusted_diameter(diameter, n_objects, level, rule=DEFAULT, *, last=False):
    """An estimate's diameter in the image's own pixels, or None when untrusted.

    A level cannot be trusted with fewer than ``rule.min_objects`` objects, or nuclei smaller
    than ``rule.min_level_diameter`` at a level other than the ``last``, whose small nuclei are
    measured as they are.

    Parameters
    ----------
    diameter : float
        Median diameter (pixels at pyramid ``level``).
    n_objects : int
        The objects it was measured on.
    level : float
        The pyramid level.
    rule : AutoScale, optional
        Default :data:`DEFAULT`.
    last : bool, optional
        Whether ``level`` is the last tried (default False).

    Returns
    -------
    float or None
        ``diameter / level``, or None.
    """
    if n_objects < rule.min_objects or not diameter:
        return None
    if not last and diameter < rule.min_level_diameter:
        return None
    return diameter / level


def working_sizes(diameters):
    """Working nucleus size and range of a model trained at the images' own scale.

    The median, and the 5th to 95th percentiles, of its training images' median nucleus
    diameters (rounded to whole pixels).

    Parameters
    ----------
    diameters : iterable of float
        Median nucleus diameter of each training image; values <= 0 are left out.

    Returns
    -------
    object_diameter : float
        0.0 when there is no positive diameter.
    object_diameter_range : tuple of float
        ``(low, high)``, or ``()`` when there is no positive diameter.
    """
    d = np.asarray([x for x in diameters if x > 0], float)
    if not len(d):
        return 0.0, ()
    low, mid, high = np.round(np.percentile(d, [5, 50, 95]))
    return float(mid), (float(low), float(high))


def choose_scale(diameter, spec, rule=DEFAULT):
    """The resize factor for an image whose median nucleus is ``diameter`` pixels across.

    1.0 where ``diameter`` is unknown (None, nan or <= 0), where the model has no working size
    (``spec.object_diameter`` 0) or where it lies within the working range
    (:func:`working_range`); otherwise the factor bringing it ``rule.margin`` inside the
    range's nearer edge (but not past ``spec.object_diameter``), within ``rule.clip``.

    Parameters
    ----------
    diameter : float or None
        The image's median nucleus diameter in its own pixels.
    spec : ModelSpec
        The model's working size and range.
    rule : AutoScale, optional
        Default :data:`DEFAULT`.

    Returns
    -------
    float
        Rounded to 4 decimals.

    Examples
    --------
    >>> from segmodel.model.loading import ModelSpec
    >>> spec = ModelSpec(object_diameter=18.0, object_diameter_range=(10.0, 50.0))
    >>> choose_scale(30.0, spec), choose_scale(100.0, spec), choose_scale(5.0, spec)
    (1.0, 0.3846, 2.6)
    """
    if diameter is None or math.isnan(diameter) or diameter <= 0 or not spec.object_diameter:
        return 1.0
    low, high = working_range(spec)
    if low <= diameter <= high:
        return 1.0
    if diameter < low:
        target = min(low * rule.margin, spec.object_diameter)
    else:
        target = max(high / rule.margin, spec.object_diameter)
    return round(float(np.clip(target / diameter, *rule.clip)), 4)


def working_range(spec):
    """``(low, high)`` nucleus diameters a model segments at the image's own resolution.

    Parameters
    ----------
    spec : ModelSpec
        The model's spec.

    Returns
    -------
    (float, float)
        ``spec.object_diameter_range``, or within 20% of ``spec.object_diameter`` without one.
    """
    if spec.object_diameter_range:
        low, high = spec.object_diameter_range
        return float(low), float(high)
    return spec.object_diameter / 1.2, spec.object_diameter * 1.2
