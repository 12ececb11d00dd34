"""What the pipeline knows about a model besides its weights, declared once.

:class:`ModelSpec` is the sidecar (``.json``/``.yaml``) of every model: the shipped nuclei model
and any bundle (see :mod:`segmodel.model.bundle`, which reads and checks it from these
declarations). :class:`PostprocessSettings` holds the thresholds that travel with the weights.
"""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from segmodel.inference.steps import check_steps

#: The instance model's output maps, in channel order.
OUTPUTS = ("foreground", "boundary", "distance")
#: Allowed values of the spec's string fields.
CHOICES = {
    "kind": ("instances", "binary", "semantic"),
    "axes": ("YXC", "CYX"),
    "normalization": ("percentile", "range", "none", "preprocessing"),
    "split": ("components", "watershed"),
    "invert": ("auto", "never"),
}


@dataclass(frozen=True)
class PostprocessSettings:
    """Thresholds turning the three maps into labels (tuned on training data, saved with model).

    Attributes
    ----------
    foreground : float, optional
        Pixels whose foreground probability is above this are objects (default 0.5).
    marker : float, optional
        The marker score above which a pixel seeds an object (default 0.5).
    boundary_weight : float, optional
        Weight of the boundary map in the marker score (default 1.0).
    min_area : int, optional
        Objects of fewer pixels are dropped (default 8).
    min_marker_area : int, optional
        Markers of fewer pixels are ignored (default 0: every marker counts).
    min_mean_foreground : float, optional
        Objects whose mean foreground probability is below this are dropped (default 0.0).
    split_step, split_fraction : float, optional
        Marker splitting: steps above ``marker`` (default 0.0: no splitting) and the least share
        of a marker's pixels each part must hold (default 0.1).
    """

    foreground: float = 0.5
    marker: float = 0.5
    boundary_weight: float = 1.0
    min_area: int = 8
    #: Markers (instances) of fewer pixels are ignored: a speck of high distance at the rim of
    #: a large nucleus, or in textured stain, would otherwise split it (0: every marker counts).
    min_marker_area: int = 0
    #: Objects (instances) whose mean foreground probability is below this are dropped: the
    #: model's doubtful detections (0: none dropped).
    min_mean_foreground: float = 0.0
    #: Markers are split where the marker score, raised above ``marker`` in steps of
    #: ``split_step``, breaks one of them into parts that each hold at least
    #: ``split_fraction`` of its pixels (and ``min_marker_area``): touching nuclei whose
    #: saddle stays above ``marker`` get a marker each (0: no splitting).
    split_step: float = 0.0
    split_fraction: float = 0.1


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about a model besides its weights.

    Every field has a default describing the shipped instance model; each field's comment in
    the source says more. :func:`spec_from_dict` validates the fields of a spec file.

    Attributes
    ----------
    name : str
        The model's name.
    channels, divisor, tile, overlap : int
        Input channels, the multiple tile sizes must be, the tile edge and the overlap (pixels).
    p_low, p_high : float
        Percentiles of percentile normalisation.
    invert : {'auto', 'never'}
        Whether images with a bright background are inverted.
    object_diameter : float
        The nucleus diameter (pixels) the model works at; 0: unknown.
    object_diameter_range : tuple of float
        ``(low, high)`` diameters segmented as they are; empty: within 20% of the above.
    postprocess : PostprocessSettings
        Thresholds that travel with the weights.
    training : dict
        A record of how the model was trained.
    kind : {'instances', 'binary', 'semantic'}
        The output kind.
    classes : tuple of str
        A semantic model's class names in output channel order (0 = background).
    object_class : str
        The class whose components become objects ("" = none).
    split : {'components', 'watershed'}
        How a binary model's foreground becomes objects.
    axes : {'YXC', 'CYX'}
        Axes of the model's input.
    normalization : {'percentile', 'range', 'none', 'preprocessing'}
        How images are scaled for the model.
    pixel_size : float
        Micrometres per pixel of the training images; 0: unknown.
    preprocessing : tuple of dict
        The steps of ``normalization: preprocessing`` (see :mod:`segmodel.inference.steps`).
    """

    name: str = "nuclei-unet"
    channels: int = 3
    divisor: int = 16
    tile: int = 256
    overlap: int = 32
    p_low: float = 1.0
    p_high: float = 99.8
    invert: str = "auto"
    #: The typical nucleus diameter (pixels) the model works at: automatic scale (the default)
    #: resizes an image whose nuclei lie outside ``object_diameter_range`` towards it (see
    #: :mod:`segmodel.autoscale`). 0: unknown (images keep their own scale).
    object_diameter: float = 0.0
    #: ``(low, high)``: median nucleus diameters (pixels) the model segments as they are, so
    #: automatic scale leaves such images at their own resolution. Empty: within 20% of
    #: ``object_diameter``.
    object_diameter_range: tuple = ()
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    training: dict = field(default_factory=dict)
    # Model bundles (see segmodel.bundle); the defaults describe the shipped instance model.
    #: Output kind: "instances" (foreground/boundary/distance maps, watershed), "binary"
    #: (one sigmoid foreground map) or "semantic" (softmax over ``classes``).
    kind: str = "instances"
    #: Class names of a semantic model, in the order of its output channels (0 = background).
    classes: tuple = ()
    #: Semantic models: the class whose connected components become the objects table's rows
    #: ("" = no objects, only the class map and the per-class table).
    object_class: str = ""
    #: Binary models: "components" (connected components of the foreground) or "watershed"
    #: (distance-transform watershed, splitting touching objects).
    split: str = "components"
    #: Axes of the model's input: "YXC" (channels last) or "CYX" (channels first).
    axes: str = "YXC"
    #: "percentile" (p_low/p_high/invert), "range" (divide by the dtype's maximum), "none" or
    #: "preprocessing" (the steps listed in ``preprocessing``).
    normalization: str = "percentile"
    #: Pixel size (micrometres) of the images the model was trained on; 0: unknown.
    pixel_size: float = 0.0
    #: Steps of ``normalization: preprocessing``, each ``{step: name, setting: value}``
    #: (BioImage Model Zoo names: scale_range, zero_mean_unit_variance, scale_linear, clip,
    #: ...; see :mod:`segmodel.inference.steps`), estimated once per image, applied per tile.
    preprocessing: tuple = ()

    @classmethod
    def from_dict(cls, d):
        """A spec from :meth:`to_dict`'s fields (lists back to tuples; no validation).

        Parameters
        ----------
        d : dict
            Fields of a spec, ``postprocess`` a nested dict; missing ones keep their defaults.

        Returns
        -------
        ModelSpec

        Raises
        ------
        TypeError
            If ``d`` or its ``postprocess`` holds an unknown field.
        """
        d = dict(d)
        d["postprocess"] = PostprocessSettings(**d.get("postprocess", {}))
        for key in _LISTS:
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_dict(self):
        """The spec's fields as a plain dict (``postprocess`` nested).

        Returns
        -------
        dict
        """
        return asdict(self)


SPEC_SUFFIXES = (".json", ".yaml", ".yml")
#: Fields held as tuples (lists in spec files).
_LISTS = ("classes", "object_diameter_range", "preprocessing")


class BundleError(ValueError):
    """A bundle or its spec is wrong; the message names the file, the field and the fix."""


def find_spec(model_path):
    """The spec file beside ``model_path`` (``.json``, ``.yaml`` or ``.yml``), or None.

    Parameters
    ----------
    model_path : str or Path
        A ``.keras`` file.

    Returns
    -------
    Path or None

    Raises
    ------
    BundleError
        If more than one spec lies beside the model.
    """
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
    ``checkpoint.keras`` has none); a folder with a single ``.keras`` file needs no spec. A path
    that is not a folder is returned as it is.

    Parameters
    ----------
    path : str or Path
        A ``.keras`` file or a bundle folder.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        If the folder holds no ``.keras`` file.
    BundleError
        If the folder holds several models and no single one with a spec.
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
    return {f.name: f for f in fields(ModelSpec)}


def _json_type(annotation):
    """The JSON type a spec file gives for a field annotated ``annotation``."""
    return {PostprocessSettings: dict, tuple: list}.get(annotation, annotation)


_TYPES = {f.name: _json_type(f.type) for f in fields(ModelSpec)}


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
    """A validated :class:`ModelSpec` from a spec's fields.

    Parameters
    ----------
    data, source : dict, str
        The spec's fields (missing ones default), and its name in errors (default ``"<spec>"``).

    Returns
    -------
    ModelSpec

    Raises
    ------
    BundleError
        An unknown field, a wrong type, choice or range, or fields that contradict ``kind``.
    """
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
        if key in _LISTS and isinstance(value, tuple):
            ok, value = True, list(value)
        if not ok:
            raise BundleError(f"spec {source!r}: field {key!r} must be a {want.__name__}. "
                              f"Received: {key}={value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise BundleError(f"spec {source!r}: field {key!r} must be one of "
                              f"{', '.join(CHOICES[key])}. Received: {key}={value!r}")
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
    spec = ModelSpec.from_dict(_check_preprocessing(clean, source))
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


def _check_preprocessing(clean, source):
    """``clean`` with its ``preprocessing`` steps checked and filled in."""
    steps = clean.get("preprocessing", [])
    try:
        clean["preprocessing"] = list(check_steps(steps))
    except ValueError as exc:
        raise BundleError(f"spec {source!r}: field 'preprocessing': {exc}") from None
    chosen = clean.get("normalization", "percentile")
    if chosen == "preprocessing" and not steps:
        raise BundleError(f"spec {source!r}: normalization: preprocessing needs the steps in "
                          "'preprocessing' (e.g. [{step: scale_range, max_percentile: 99.8}]); "
                          "or set normalization: none.")
    if steps and chosen != "preprocessing":
        raise BundleError(f"spec {source!r}: 'preprocessing' steps are applied only with "
                          f"normalization: preprocessing; this spec has normalization: {chosen}. "
                          "Set normalization: preprocessing, or remove the steps.")
    return clean


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
    """Read and validate a spec file (JSON, or YAML for ``.yaml``/``.yml``).

    Parameters
    ----------
    path : str or Path
        The spec file.

    Returns
    -------
    ModelSpec

    Raises
    ------
    BundleError
        If the file is not valid JSON / YAML, not a mapping, or its fields are wrong (see
        :func:`spec_from_dict`).
    FileNotFoundError
        If the file does not exist.
    """
    return spec_from_dict(_load_text(path), str(path))
