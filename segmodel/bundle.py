"""Model bundles: any Keras segmentation model plus a small spec telling the pipeline how to use it.

A bundle is a ``.keras`` file with a spec beside it, ``<stem>.json`` or ``<stem>.yaml``
(``.yml``), given either as the ``.keras`` path or as the folder holding both. The spec holds
the fields of :class:`segmodel.model.ModelSpec`; every field is optional and defaults to the
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
from dataclasses import fields
from pathlib import Path

import numpy as np

KINDS = ("instances", "binary", "semantic")
AXES = ("YXC", "CYX")
NORMALIZATIONS = ("percentile", "range", "none")
SPLITS = ("components", "watershed")
SPEC_SUFFIXES = (".json", ".yaml", ".yml")


class BundleError(ValueError):
    """A bundle or its spec is wrong; the message names the file, the field and the fix."""


def find_spec(model_path):
    """The spec file beside ``model_path`` (``.json``, ``.yaml`` or ``.yml``), or None."""
    model_path = Path(str(model_path))
    found = [model_path.with_suffix(s) for s in SPEC_SUFFIXES
             if model_path.with_suffix(s).is_file()]
    if len(found) > 1:
        raise BundleError(
            f"model {str(model_path)!r} has {len(found)} specs beside it "
            f"({', '.join(p.name for p in found)}): keep one of them.")
    return found[0] if found else None


def resolve_bundle(path):
    """The ``.keras`` file of a bundle given as that file or as the folder holding it.

    In a folder, the ``.keras`` file with a spec beside it is the model (a training run's
    ``checkpoint.keras`` has none); a folder with a single ``.keras`` file needs no spec.
    """
    path = Path(str(path))
    if not path.is_dir():
        return path
    models = sorted(path.glob("*.keras"))
    with_spec = [m for m in models if find_spec(m) is not None]
    if len(with_spec) == 1:
        return with_spec[0]
    if not with_spec and len(models) == 1:
        return models[0]
    if not models:
        raise FileNotFoundError(
            f"no .keras model in bundle folder {str(path)!r}. A bundle folder holds the model "
            "(NAME.keras) and its spec (NAME.json or NAME.yaml).")
    names = ", ".join(m.name for m in (with_spec or models))
    raise BundleError(
        f"bundle folder {str(path)!r} holds several models ({names}) and no single one with a "
        "spec beside it: pass the path of the .keras file itself.")


def _spec_fields():
    from segmodel.model import ModelSpec

    return {f.name: f for f in fields(ModelSpec)}


_TYPES = {"name": str, "channels": int, "divisor": int, "tile": int, "overlap": int,
          "p_low": float, "p_high": float, "invert": str, "object_diameter": float,
          "object_diameter_range": list,
          "postprocess": dict, "training": dict, "kind": str, "classes": list,
          "object_class": str, "split": str, "axes": str, "normalization": str,
          "pixel_size": float}
_CHOICES = {"kind": KINDS, "axes": AXES, "normalization": NORMALIZATIONS, "split": SPLITS,
            "invert": ("auto", "never")}


def _load_text(path):
    text = Path(path).read_text()
    kind = "YAML" if Path(path).suffix in (".yaml", ".yml") else "JSON"
    if kind == "YAML":
        import yaml

        errors = (yaml.YAMLError,)
    else:
        errors = (json.JSONDecodeError,)
    try:
        data = yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except errors as exc:  # the parsers' messages name the line
        raise BundleError(f"spec {str(path)!r} is not valid {kind}: {exc}. Fix the file "
                          "(see README, 'Using your own Keras model').") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BundleError(f"spec {str(path)!r} must hold a mapping of fields (name: value). "
                          f"Received: a {type(data).__name__}")
    return data


def spec_from_dict(data, source="<spec>"):
    """A validated :class:`ModelSpec` from a spec's fields; ``source`` names it in errors."""
    from segmodel.model import ModelSpec, PostprocessSettings

    known = _spec_fields()
    for key in data:
        if key not in known:
            raise BundleError(f"spec {source!r}: unknown field {key!r}. Known fields: "
                              f"{', '.join(sorted(known))}.")
    clean = {}
    for key, value in data.items():
        want = _TYPES[key]
        ok = (isinstance(value, want) and not isinstance(value, bool)) or (
            want is float and isinstance(value, int) and not isinstance(value, bool))
        if key in ("classes", "object_diameter_range") and isinstance(value, tuple):
            ok, value = True, list(value)
        if not ok:
            raise BundleError(f"spec {source!r}: field {key!r} must be a {want.__name__}. "
                              f"Received: {key}={value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise BundleError(f"spec {source!r}: field {key!r} must be one of "
                              f"{', '.join(_CHOICES[key])}. Received: {key}={value!r}")
        clean[key] = float(value) if want is float else value
    post = {f.name: f.type for f in fields(PostprocessSettings)}
    for key, value in clean.get("postprocess", {}).items():
        if key not in post:
            raise BundleError(f"spec {source!r}: unknown field 'postprocess.{key}'. Known: "
                              f"{', '.join(sorted(post))}.")
        want = int if post[key] in (int, "int") else float
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                want is int and value != int(value)):
            kind = "a whole number" if want is int else "a number"
            raise BundleError(f"spec {source!r}: field 'postprocess.{key}' must be {kind} "
                              f">= 0. Received: {key}={value!r}")
    for key in ("channels", "divisor", "tile"):
        if key in clean and clean[key] < 1:
            raise BundleError(f"spec {source!r}: field {key!r} must be >= 1. "
                              f"Received: {key}={clean[key]}")
    tile = clean.get("tile", known["tile"].default)
    if "overlap" in clean and not 0 <= clean["overlap"] < tile // 2:
        raise BundleError(f"spec {source!r}: field 'overlap' must be at least 0 and less than "
                          f"half the tile ({tile}): each tile keeps its centre. Received: "
                          f"overlap={clean['overlap']}")
    _check_diameters(clean, source)
    spec = ModelSpec.from_dict(clean)
    _check_kind(spec, source)
    return spec


def _check_diameters(clean, source):
    diameter = clean.get("object_diameter", 0.0)
    if diameter < 0:
        raise BundleError(f"spec {source!r}: field 'object_diameter' must be >= 0 (0: unknown). "
                          f"Received: object_diameter={diameter}")
    span = clean.get("object_diameter_range", [])
    if not span:
        return
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in span)
    if len(span) != 2 or not numbers or not 0 < span[0] <= diameter <= span[1]:
        raise BundleError(
            f"spec {source!r}: field 'object_diameter_range' must be [low, high] pixels with "
            f"0 < low <= object_diameter <= high (object_diameter is {diameter}). Received: "
            f"object_diameter_range={list(span)!r}")
    clean["object_diameter_range"] = [float(v) for v in span]


def _check_kind(spec, source):
    if spec.kind == "semantic":
        if len(spec.classes) < 2 or not all(isinstance(c, str) and c for c in spec.classes):
            raise BundleError(
                f"spec {source!r}: a semantic model needs 'classes', the names of its output "
                f"channels in order (at least 2, class 0 = background). Received: "
                f"classes={list(spec.classes)!r}")
        if len(set(spec.classes)) != len(spec.classes):
            raise BundleError(f"spec {source!r}: field 'classes' repeats a name. Received: "
                              f"classes={list(spec.classes)!r}")
        if spec.object_class and spec.object_class not in spec.classes:
            raise BundleError(
                f"spec {source!r}: field 'object_class' must be one of the classes "
                f"{list(spec.classes)} or \"\" (no objects). Received: "
                f"object_class={spec.object_class!r}")
        if spec.object_class == spec.classes[0]:
            raise BundleError(f"spec {source!r}: 'object_class' cannot be class 0 "
                              f"({spec.classes[0]!r}, the background).")
    elif spec.classes or spec.object_class:
        raise BundleError(f"spec {source!r}: 'classes' and 'object_class' are for "
                          f"kind: semantic; this spec has kind: {spec.kind}. Remove them or "
                          "set kind: semantic.")


def read_spec(path):
    """Read and validate a spec file (JSON, or YAML for ``.yaml``/``.yml``)."""
    return spec_from_dict(_load_text(path), str(path))


def save_bundle(model, spec, path, *, fmt="json"):
    """Save ``model`` as ``path`` (``.keras``) with its spec beside it (``json`` or ``yaml``)."""
    import os

    from segmodel.model import save_model

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
    """Output channels the spec's kind expects from the model."""
    return {"instances": 3, "binary": 1}.get(spec.kind, len(spec.classes))


def normalize(image, spec):
    """Model input of an ``(H, W, C)`` image for ``normalization`` other than percentile."""
    x = np.asarray(image, dtype=np.float32)
    if spec.normalization == "range":
        dtype = np.asarray(image).dtype
        if np.issubdtype(dtype, np.integer):
            x = x / float(np.iinfo(dtype).max)
    return x


def scale_for_pixel_size(image_pixel_size, spec):
    """Resize factor bringing an image of ``image_pixel_size`` um/pixel to the model's; 1.0 if
    either is unknown."""
    if not spec.pixel_size or not image_pixel_size:
        return 1.0
    return float(image_pixel_size) / spec.pixel_size


def downsampling(keras_model):
    """Total downsampling factor of a model (product of pooling sizes and conv strides > 1
    along its layers), or None when it cannot be told (no such layers found)."""
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
    """Errors (list of str) where ``keras_model`` disagrees with ``spec``; ``source`` names it."""
    errors = []
    inputs, outputs = keras_model.inputs, keras_model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        return [(f"{source}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                 "the pipeline needs one image input and one output of maps.")]
    ishape, oshape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(ishape) != 4:
        return [(f"{source}: model input shape {ishape} is not an image batch (N, H, W, C) "
                 "or (N, C, H, W). Export a 2-D image model.")]
    if spec.axes == "CYX":
        c_in, spatial, c_out = ishape[1], ishape[2:], oshape[1] if len(oshape) == 4 else None
    else:
        c_in, spatial, c_out = ishape[3], ishape[1:3], oshape[-1] if len(oshape) == 4 else None
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
    """Describe a bundle and check it: ``(lines, errors)``, errors empty when all is well."""
    from segmodel.model import ModelSpec, _load_keras

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
    data = spec.to_dict()
    data.pop("training", None)
    for key in ("name", "kind", "classes", "object_class", "split", "channels", "axes",
                "divisor", "tile", "overlap", "normalization", "p_low", "p_high", "invert",
                "object_diameter", "object_diameter_range", "pixel_size", "postprocess"):
        value = data[key]
        if key == "classes" and spec.kind != "semantic":
            continue
        if key in ("object_class",) and spec.kind != "semantic":
            continue
        if key == "split" and spec.kind != "binary":
            continue
        if key in ("p_low", "p_high", "invert") and spec.normalization != "percentile":
            continue
        lines.append(f"  {key}: {list(value) if isinstance(value, tuple) else value}")
    try:
        kmodel = _load_keras(model_path, trust)
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
