"""Pre-processing steps declared in a model's spec: estimated once per image, then applied.

A spec with ``normalization: preprocessing`` lists its steps in ``preprocessing``, each a
mapping with a ``step`` name and that step's settings (the names and meanings are those of the
BioImage Model Zoo's pre-processing, see :data:`STEPS`)::

    preprocessing:
      - {step: scale_range, min_percentile: 1.0, max_percentile: 99.8, per_channel: true}
      - {step: clip, min: 0.0, max: 1.0}

:func:`estimate_steps` computes the statistics of every step on the whole image once (the
percentiles of ``scale_range``, the mean and deviation of ``zero_mean_unit_variance``) and gives
fixed operations; :func:`apply_steps` applies them to the image or any tile of it. Images are
``(H, W, C)`` throughout.
"""

import numpy as np

_NUMBERS = "a number or a list of numbers (one per channel)"

#: Every step: its settings with their defaults (``None``: required or unset) and meaning.
STEPS = {
    "scale_range": {"min_percentile": 0.0, "max_percentile": 100.0, "eps": 1e-6,
                    "per_channel": True},
    "zero_mean_unit_variance": {"eps": 1e-6, "per_channel": True},
    "fixed_zero_mean_unit_variance": {"mean": None, "std": None, "eps": 1e-6},
    "scale_linear": {"gain": 1.0, "offset": 0.0},
    "clip": {"min": None, "max": None, "min_percentile": None, "max_percentile": None,
             "per_channel": True},
    "ensure_dtype": {"dtype": None},
    "binarize": {"threshold": None},
    "sigmoid": {},
    "softmax": {},
}
#: Settings that hold one number or one per channel.
_PER_CHANNEL = {"mean", "std", "gain", "offset", "threshold"}
_DTYPES = ("float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32",
           "uint64", "int64", "bool")


def check_steps(steps):
    """Validate a spec's ``preprocessing`` list.

    Parameters
    ----------
    steps : list of dict
        Each ``{"step": name, setting: value, ...}``.

    Returns
    -------
    tuple of dict
        The steps with every setting filled in (defaults where unset).

    Raises
    ------
    ValueError
        An unknown step or setting, a missing required setting or a wrong value; the message
        names the step and the supported ones.
    """
    if not isinstance(steps, (list, tuple)):
        raise ValueError(f"must be a list of steps. Received: {steps!r}")
    return tuple(_check_step(i, s) for i, s in enumerate(steps))


def _check_step(i, step):
    if not isinstance(step, dict) or step.get("step") not in STEPS:
        name = step.get("step") if isinstance(step, dict) else step
        raise ValueError(f"step {i} ({name!r}) is not supported. Supported steps: "
                         f"{', '.join(STEPS)}.")
    name, known = step["step"], STEPS[step["step"]]
    unknown = sorted(set(step) - set(known) - {"step"})
    if unknown:
        raise ValueError(f"step {i} ({name}) has unknown settings {unknown}. Known: "
                         f"{', '.join(known) or 'none'}.")
    full = {"step": name, **known, **step}
    for key, value in full.items():
        if key == "step" or value is None:
            continue
        if key == "per_channel":
            ok = isinstance(value, bool)
        elif key == "dtype":
            ok = value in _DTYPES
        elif key in _PER_CHANNEL:
            ok = _is_number(value) or (isinstance(value, (list, tuple)) and value
                                       and all(_is_number(v) for v in value))
        else:
            ok = _is_number(value)
        if not ok:
            want = ("true or false" if key == "per_channel" else
                    f"one of {', '.join(_DTYPES)}" if key == "dtype" else
                    _NUMBERS if key in _PER_CHANNEL else "a number")
            raise ValueError(f"step {i} ({name}): setting {key!r} must be {want}. Received: "
                             f"{key}={value!r}")
        if isinstance(value, tuple):
            full[key] = list(value)
    required = {"fixed_zero_mean_unit_variance": ("mean", "std"), "ensure_dtype": ("dtype",),
                "binarize": ("threshold",)}.get(name, ())
    missing = [k for k in required if full[k] is None]
    if missing:
        raise ValueError(f"step {i} ({name}) needs {', '.join(missing)}.")
    return full


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def estimate_steps(image, steps):
    """The fixed operations of ``steps`` for one image (statistics of the whole image).

    Parameters
    ----------
    image : (H, W, C) array_like
        The image, channels last.
    steps : sequence of dict
        Checked steps (:func:`check_steps`).

    Returns
    -------
    tuple of tuple
        Operations for :func:`apply_steps`: ``("affine", gain, offset)``, ``("clip", low,
        high)``, ``("cast", dtype)``, ``("binarize", threshold)``, ``("sigmoid",)`` or
        ``("softmax",)``; numbers are ``(C,)`` arrays.

    Examples
    --------
    >>> x = np.arange(10, dtype=np.float32).reshape(5, 2, 1)
    >>> ops = estimate_steps(x, [{"step": "scale_range", "min_percentile": 0.0,
    ...                          "max_percentile": 100.0, "eps": 0.0, "per_channel": True}])
    >>> float(apply_steps(x, ops).max())
    1.0
    """
    x = np.asarray(image, dtype=np.float32)
    ops = []
    for step in steps:
        op = _operation(x, step)
        ops.append(op)
        x = _apply(x, op)
    return tuple(ops)


def _operation(x, step):
    """One step as a fixed operation, its statistics taken from ``x`` (the image so far)."""
    name, channels = step["step"], x.shape[-1]
    if name == "scale_range":
        lo, hi = _stat(x, step, np.percentile, step["min_percentile"], step["max_percentile"])
        gain = 1.0 / (hi - lo + step["eps"])
        return ("affine", gain, -lo * gain)
    if name == "zero_mean_unit_variance":
        mean, std = _stat(x, step, None)
        gain = 1.0 / (std + step["eps"])
        return ("affine", gain, -mean * gain)
    if name == "fixed_zero_mean_unit_variance":
        mean, std = _vector(step["mean"], channels), _vector(step["std"], channels)
        gain = 1.0 / (std + step["eps"])
        return ("affine", gain, -mean * gain)
    if name == "scale_linear":
        return ("affine", _vector(step["gain"], channels), _vector(step["offset"], channels))
    if name == "clip":
        lo, hi = (_vector(-np.inf if step["min"] is None else step["min"], channels),
                  _vector(np.inf if step["max"] is None else step["max"], channels))
        if step["min_percentile"] is not None or step["max_percentile"] is not None:
            plo, phi = _stat(x, step, np.percentile, step["min_percentile"] or 0.0,
                             100.0 if step["max_percentile"] is None else step["max_percentile"])
            lo = plo if step["min_percentile"] is not None else lo
            hi = phi if step["max_percentile"] is not None else hi
        return ("clip", lo, hi)
    if name == "ensure_dtype":
        return ("cast", step["dtype"])
    if name == "binarize":
        return ("binarize", _vector(step["threshold"], channels))
    return (name,)  # sigmoid, softmax


def _stat(x, step, fn, *qs):
    """Two statistics per channel (or over all channels): percentiles ``qs``, or mean and std."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    axis = 0 if step["per_channel"] else None
    if fn is None:
        first, second = flat.mean(axis=axis), flat.std(axis=axis)
    else:
        first, second = (np.percentile(flat, q, axis=axis) for q in qs)
    return _vector(first, x.shape[-1]), _vector(second, x.shape[-1])


def _vector(value, channels):
    """``value`` (a number or one per channel) as a ``(channels,)`` float32 array."""
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size not in (1, channels):
        raise ValueError(f"a per-channel setting has {v.size} values but the image has "
                         f"{channels} channels. Received: {list(v)}")
    return np.broadcast_to(v, (channels,)).astype(np.float32)


def apply_steps(image, ops):
    """Apply :func:`estimate_steps`' operations to an image or a tile of it.

    Parameters
    ----------
    image : (..., C) array_like
        The image or tile, channels last.
    ops : tuple of tuple
        From :func:`estimate_steps`.

    Returns
    -------
    (..., C) ndarray of float32
    """
    x = np.asarray(image, dtype=np.float32)
    for op in ops:
        x = _apply(x, op)
    return x.astype(np.float32, copy=False)


def _apply(x, op):
    kind = op[0]
    if kind == "affine":
        return (x * op[1] + op[2]).astype(np.float32, copy=False)
    if kind == "clip":
        return np.clip(x, op[1], op[2]).astype(np.float32, copy=False)
    if kind == "cast":
        return x.astype(op[1]).astype(np.float32)
    if kind == "binarize":
        return (x > op[1]).astype(np.float32)
    if kind == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # softmax over the channels
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def depends_on_image(step):
    """Whether a checked step takes statistics of the image (so it cannot run per tile alone).

    Parameters
    ----------
    step : dict
        A checked step (:func:`check_steps`).

    Returns
    -------
    bool
    """
    return step["step"] in ("scale_range", "zero_mean_unit_variance") or (
        step["step"] == "clip" and (step["min_percentile"] is not None
                                    or step["max_percentile"] is not None))
