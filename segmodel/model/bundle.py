"""Model bundles: any Keras segmentation model plus a small spec telling the pipeline how to use it.

A bundle is a ``.keras`` file with a spec beside it, ``<stem>.json`` or ``<stem>.yaml``
(``.yml``), given either as the ``.keras`` path or as the folder holding both. The spec holds
the fields of :class:`segmodel.model.spec.ModelSpec`; every field is optional and defaults to the
shipped model's behaviour, so the shipped ``nuclei.json`` is a bundle spec too::

    name: dsb-semantic
    kind: semantic                # instances | binary | semantic
    classes: [background, interior, boundary]
    object_class: interior        # objects = connected components of this class ("" = none)
    channels: 3                   # input channels ...
    axes: YXC                     # ... and axes (YXC channels last, CYX channels first)
    divisor: 16                   # tile sizes must be multiples of this
    tile: 256
    overlap: 32
    normalization: percentile     # percentile (p_low, p_high, invert) | range | none
    p_low: 1.0
    p_high: 99.8
    object_diameter: 0            # pixels the model works best at; enables automatic scale
    object_diameter_range: []     # [low, high] pixels segmented as they are (default: +-20%)
    pixel_size: 0                 # micrometres per pixel the model was trained at (0: unknown)
    postprocess: {foreground: 0.5, min_area: 8}

:func:`inspect` checks a bundle against its model (``segflow model inspect BUNDLE``).
"""

import json
from functools import partial
from pathlib import Path

import numpy as np

from segmodel.inference.preprocess import (
    Normalization,
    apply_normalization,
    estimate_normalization,
)
from segmodel.inference.steps import apply_steps, estimate_steps
from segmodel.model import zoo
from segmodel.model.loading import load_keras, load_model, save_model
from segmodel.model.spec import BundleError, ModelSpec, find_spec, read_spec, resolve_bundle


def save_bundle(model, spec, path, *, fmt="json"):
    """Save ``model`` as ``path`` (``.keras``) with its spec beside it.

    Parameters
    ----------
    model : keras.Model
        The model.
    spec : ModelSpec
        Its spec.
    path : str or Path
        The ``.keras`` file to write.
    fmt : {'json', 'yaml'}, optional
        The spec's format (default ``'json'``; any other value than ``'yaml'`` writes JSON).

    Returns
    -------
    Path
        ``path``.
    """
    import os

    path = Path(path)
    save_model(model, spec, path)
    if fmt == "yaml":
        import yaml

        data = json.loads(path.with_suffix(".json").read_text())
        tmp = path.with_name(f".{path.stem}.tmp.yaml")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path.with_suffix(".yaml"))
        path.with_suffix(".json").unlink()
    return path


def n_outputs(spec):
    """Output channels the spec's kind expects from the model.

    Parameters
    ----------
    spec : ModelSpec
        The spec.

    Returns
    -------
    int
        3 for ``instances``, 1 for ``binary``, the number of classes for ``semantic``.
    """
    return {"instances": 3, "binary": 1}.get(spec.kind, len(spec.classes))


def normalize(image, spec):
    """Model input of an ``(H, W, C)`` image for ``normalization`` other than percentile.

    ``'range'`` divides integer images by their dtype's maximum; ``'none'`` (and real-valued
    images) only convert to float32; ``'preprocessing'`` estimates the spec's steps on the whole
    image once and applies them (:mod:`segmodel.inference.steps`).

    Parameters
    ----------
    image : (H, W, C) array_like
        The image.
    spec : ModelSpec
        Its ``normalization`` is read.

    Returns
    -------
    (H, W, C) ndarray of float32
    """
    if spec.normalization == "preprocessing":
        return apply_steps(image, estimate_steps(image, spec.preprocessing))
    x = np.asarray(image, dtype=np.float32)
    if spec.normalization == "range":
        dtype = np.asarray(image).dtype
        if np.issubdtype(dtype, np.integer):
            x = x / float(np.iinfo(dtype).max)
    return x


def model_input(image, spec):
    """Model input of an ``(H, W, C)`` image under any ``normalization`` (statistics of the image).

    Parameters
    ----------
    image : (H, W, C) array_like
        The image, with the model's channels.
    spec : ModelSpec
        Its normalisation fields are read.

    Returns
    -------
    (H, W, C) ndarray of float32
    """
    if spec.normalization != "percentile":
        return normalize(image, spec)
    settings = Normalization(spec.p_low, spec.p_high, spec.invert)
    return apply_normalization(image, estimate_normalization(image, settings))


def scale_for_pixel_size(image_pixel_size, spec):
    """Resize factor bringing an image to the model's pixel size.

    Parameters
    ----------
    image_pixel_size : float or None
        The image's micrometres per pixel.
    spec : ModelSpec
        Its ``pixel_size`` is the model's.

    Returns
    -------
    float
        ``image_pixel_size / spec.pixel_size``; 1.0 if either is unknown (None or 0).
    """
    if not spec.pixel_size or not image_pixel_size:
        return 1.0
    return float(image_pixel_size) / spec.pixel_size


def downsampling(keras_model):
    """Total downsampling factor of a model, or None when it cannot be told.

    The product of pooling sizes and convolution strides above 1 along its layers (nested
    models included; transposed convolutions and global pooling left out).

    Parameters
    ----------
    keras_model : keras.Model
        The model.

    Returns
    -------
    int or None
        None when no such layer is found.
    """
    factor, found = 1, False
    for layer in _layers(keras_model):
        cfg = layer.get_config() if hasattr(layer, "get_config") else {}
        name = type(layer).__name__
        step = None
        if "Pooling" in name and "Global" not in name:
            step = cfg.get("strides") or cfg.get("pool_size")
        elif (name.startswith(("Conv", "SeparableConv", "DepthwiseConv"))
              and "Transpose" not in name):
            step = cfg.get("strides")
        if step is None:
            continue
        s = int(step[0] if isinstance(step, (tuple, list)) else step)
        if s > 1:
            factor, found = factor * s, True
    return factor if found else None


def _layers(model):
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and layer.layers:
            yield from _layers(layer)
        else:
            yield layer


def check_model(keras_model, spec, source):
    """Check a Keras model against a spec: inputs, outputs, channels, kind and tiling.

    Parameters
    ----------
    keras_model : keras.Model
    spec : ModelSpec
    source : str
        Names the bundle in each message.

    Returns
    -------
    list of str
        One message per problem, each naming the field and the fix; empty when the model fits.
        Problems are returned, never raised.
    """
    inputs, outputs = keras_model.inputs, keras_model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        return [(f"{source}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                 "the pipeline needs one image input and one output of maps.")]
    ishape, oshape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(ishape) != 4:
        return [(f"{source}: model input shape {ishape} is not an image batch (N, H, W, C) "
                 "or (N, C, H, W). Export a 2-D image model.")]
    return (_channel_errors(ishape, oshape, spec, source)
            + _tiling_errors(keras_model, ishape, spec, source))


def takes_any_size(keras_model, spec):
    """Whether the model's input takes any height and width (both spatial sizes are None).

    Parameters
    ----------
    keras_model : keras.Model
    spec : ModelSpec
        Gives the axes.

    Returns
    -------
    bool
    """
    shape = tuple(keras_model.inputs[0].shape)
    spatial = shape[2:] if spec.axes == "CYX" else shape[1:3]
    return len(shape) == 4 and all(d is None for d in spatial)


def _channel_errors(ishape, oshape, spec, source):
    """Problems with the model's input channels and its output maps."""
    errors = []
    channel_axis = 1 if spec.axes == "CYX" else -1
    c_in = ishape[channel_axis]
    c_out = oshape[channel_axis] if len(oshape) == 4 else None
    if c_in is not None and c_in != spec.channels:
        other = ishape[1] if spec.axes == "YXC" else ishape[3]
        hint = (f" (its axes look like {'CYX' if spec.axes == 'YXC' else 'YXC'}: set axes)"
                if other == spec.channels else "")
        errors.append(f"{source}: field 'channels' is {spec.channels} but the model's input "
                      f"shape {ishape} takes {c_in} channels with axes {spec.axes}{hint}. Set "
                      f"channels: {c_in} in the spec, or pass the matching model.")
    want = n_outputs(spec)
    if len(oshape) != 4:
        errors.append(f"{source}: model output shape {oshape} is not a batch of maps.")
    elif c_out is not None and c_out != want:
        what = {"instances": "3 maps (foreground, boundary, distance)",
                "binary": "1 sigmoid foreground map",
                "semantic": f"one softmax channel per class ({len(spec.classes)} classes "
                            f"{list(spec.classes)})"}[spec.kind]
        fix = (f"list {c_out} names in 'classes'" if spec.kind == "semantic" else
               "set kind to the model's output kind" + (
                   " (binary)" if c_out == 1 else
                   " (semantic, with its class names)" if c_out != 3 else " (instances)"))
        errors.append(f"{source}: field 'kind' is {spec.kind!r}, which needs {what}, but the "
                      f"model outputs {c_out} channels (shape {oshape}). Fix the spec: {fix}.")
    return errors


def _tiling_errors(keras_model, ishape, spec, source):
    """Problems with the spec's tile, overlap and divisor for this model."""
    errors = []
    spatial = ishape[2:] if spec.axes == "CYX" else ishape[1:3]
    fixed = [d for d in spatial if d is not None]
    if fixed and (len(fixed) != 2 or fixed[0] != fixed[1] or fixed[0] != spec.tile):
        errors.append(f"{source}: the model only takes {spatial[0]}x{spatial[1]} inputs but "
                      f"field 'tile' is {spec.tile}. Set tile: {fixed[0]} and overlap below it, "
                      "or export the model with a (None, None) spatial input.")
    if spec.tile % spec.divisor:
        errors.append(f"{source}: field 'tile' ({spec.tile}) is not a multiple of field "
                      f"'divisor' ({spec.divisor}). Set tile to a multiple of {spec.divisor}.")
    if not 0 <= spec.overlap < spec.tile // 2:
        errors.append(f"{source}: field 'overlap' ({spec.overlap}) must be >= 0 and smaller "
                      f"than half the tile ({spec.tile}).")
    down = downsampling(keras_model)
    if down and spec.divisor % down:
        errors.append(f"{source}: field 'divisor' is {spec.divisor} but the model downsamples "
                      f"{down}x; tiles that are not multiples of {down} break it. Set divisor: "
                      f"{down} (or a multiple of it).")
    return errors


def inspect(path, *, trust=False):
    """Describe a bundle and check it against its model (``segflow model inspect``).

    Parameters
    ----------
    path : str or Path
        A ``.keras`` file, a bundle folder, or a BioImage Model Zoo package (the spec segflow
        reads from it is described; see :mod:`segmodel.model.zoo`).
    trust : bool, optional
        Load the model outside Keras' safe mode (default False); only for files you trust.

    Returns
    -------
    lines : list of str
        The description: model and spec files, the spec's fields, the Keras model's shapes.
    errors : list of str
        Problems found; empty when all is well. Problems are returned, never raised.
    """
    if zoo.is_package(path):
        return _inspect_package(path, trust)
    lines, errors = [], []
    path = Path(str(path))
    if not path.exists():
        return lines, [f"{str(path)!r} not found: pass a .keras file or a bundle folder."]
    try:
        model_path = resolve_bundle(path)
        spec_file = find_spec(model_path)
    except (BundleError, FileNotFoundError) as exc:
        return lines, [str(exc)]
    if model_path.suffix != ".keras":
        return lines, [(f"{str(model_path)!r} is not a .keras file: save the model with "
                        "model.save('NAME.keras') (Keras 3 format).")]
    lines.append(f"model: {model_path}")
    if spec_file is None:
        stem = model_path.with_suffix("")
        errors.append(f"{str(model_path)!r} has no spec beside it ({stem}.json or {stem}.yaml); "
                      "the defaults of the shipped instance model would be assumed. Write a "
                      "spec (see README, 'Using your own Keras model').")
        spec = ModelSpec()
    else:
        lines.append(f"spec: {spec_file}")
        try:
            spec = read_spec(spec_file)
        except BundleError as exc:
            return lines, [str(exc)]
    lines += _spec_lines(spec)
    try:
        kmodel = load_keras(model_path, trust)
    except Exception as exc:  # noqa: BLE001 (any Keras error is the report's)
        errors.append(f"{str(model_path)!r} could not be loaded by Keras: {exc}")
        return lines, errors
    ishape = tuple(kmodel.inputs[0].shape) if kmodel.inputs else ()
    oshape = tuple(kmodel.outputs[0].shape) if kmodel.outputs else ()
    down = downsampling(kmodel)
    lines.append(f"keras model: {kmodel.name}, {kmodel.count_params():,} parameters, input "
                 f"{ishape}, output {oshape}, downsampling "
                 f"{f'{down}x' if down else 'not detected'}")
    errors += check_model(kmodel, spec, str(spec_file or model_path))
    return lines, errors


def _inspect_package(path, trust):
    """``inspect`` of a zoo package: what segflow reads from it, and its test tensors run."""
    try:
        model = load_model(path, trust=trust, engine="auto")
    except (BundleError, FileNotFoundError) as exc:
        return [], [str(exc)]
    package, lay = model.package, model.package.layout
    lines = [f"package: {package.root}",
             f"weights: {package.weights_format} ({package.weights.name}), engine "
             f"{model.engine} ({model.precision})",
             f"axes: input {lay.inputs}, output {lay.outputs}"
             + (f", output channels taken {list(lay.channels)}" if lay.channels else "")
             + (f", post-processing {[s['step'] for s in lay.post]}" if lay.post else "")]
    lines += _spec_lines(package.spec)
    diff = zoo.reproduce(package, model.runner, partial(model_input, spec=package.spec))
    tolerance = 1e-3 if model.precision == "f32" else 3e-2  # bfloat16 keeps 8 bits
    lines.append("test tensors: none in the package" if diff is None else
                 f"test tensors: largest difference {diff:.2g} (tolerance {tolerance:g})")
    if diff is not None and diff > tolerance:
        return lines, [f"{path}: the package's test input gives maps {diff:.2g} away from its "
                       f"test output (tolerance {tolerance:g}): its axes, pre-processing or "
                       "weights are not read as they were meant."]
    return lines, []


def _spec_lines(spec):
    """The spec's fields that matter for its kind and normalisation, one line each."""
    data, lines = spec.to_dict(), []
    for key in ("name", "kind", "classes", "object_class", "split", "channels", "axes",
                "divisor", "tile", "overlap", "normalization", "preprocessing", "p_low",
                "p_high", "invert",
                "object_diameter", "object_diameter_range", "pixel_size", "postprocess"):
        value = data[key]
        if key in ("classes", "object_class") and spec.kind != "semantic":
            continue
        if key == "split" and spec.kind != "binary":
            continue
        if key in ("p_low", "p_high", "invert") and spec.normalization != "percentile":
            continue
        if key == "preprocessing" and not value:
            continue
        lines.append(f"  {key}: {list(value) if isinstance(value, tuple) else value}")
    return lines
