"""The segmentation network: a lean U-Net builder, and loading of shipped models.

The network maps a normalised ``(H, W, 3)`` image to three maps in [0, 1]:

- ``foreground``: probability that a pixel belongs to a nucleus;
- ``boundary``: probability that a pixel lies on a nucleus' outline (where touching nuclei meet);
- ``distance``: distance to the nucleus' own border, divided by its maximum inside that nucleus
  (1 at each nucleus' centre, falling to 0 at its edge; 0 on background).

:mod:`segmodel.postprocess` turns them into instance labels by marker-controlled watershed.
A shipped model is a ``.keras`` file plus a ``.json`` sidecar with its settings (tile size,
normalisation, post-processing thresholds) so the thresholds travel with the weights.
Other Keras models (binary and semantic heads too) come as bundles: see :mod:`segmodel.bundle`.
"""

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

OUTPUTS = ("foreground", "boundary", "distance")
DEFAULT_MODEL = Path(__file__).parent / "weights" / "nuclei.keras"


def _conv_block(x, filters, name):
    """Two 3x3 convolutions, each with batch normalisation and ReLU."""
    from keras import layers

    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(*, channels=3, filters=(16, 32, 64, 128), bottleneck=256, name="nuclei_unet",
               outputs=3, activation="sigmoid"):
    """Build a U-Net with ``len(filters)`` 2x downsamplings and three sigmoid output maps.

    Parameters
    ----------
    channels : int, optional
        Input channels.
    filters : tuple of int, optional
        Filters per encoder level; the input size must be a multiple of ``2**len(filters)``.
    bottleneck : int, optional
        Filters at the lowest resolution.
    outputs, activation : optional
        Output channels and their activation (``"softmax"`` for a semantic model).

    Returns
    -------
    keras.Model
        Input ``(None, None, channels)``, output ``(None, None, 3)`` ordered as :data:`OUTPUTS`.
    """
    import keras
    from keras import layers

    if channels < 1:
        raise ValueError(f"channels must be >= 1. Received: channels={channels}")
    if not filters or any(f < 1 for f in filters):
        raise ValueError(f"filters must be a non-empty tuple of positive ints. Received: {filters}")
    inputs = keras.Input((None, None, channels), name="image")
    x, skips = inputs, []
    for level, f in enumerate(filters):
        x = _conv_block(x, f, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, bottleneck, "bottleneck")
    for level in reversed(range(len(filters))):
        f = filters[level]
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, f, f"dec{level}")
    maps = layers.Conv2D(outputs, 1, activation=activation, name="maps", dtype="float32")(x)
    return keras.Model(inputs, maps, name=name)


@dataclass(frozen=True)
class PostprocessSettings:
    """Thresholds turning the three maps into labels (tuned on training data, saved with the
    model)."""

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
    """What the pipeline needs to know about a model besides its weights."""

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
    #: "percentile" (p_low/p_high/invert), "range" (divide by the dtype's maximum) or "none".
    normalization: str = "percentile"
    #: Pixel size (micrometres) of the images the model was trained on; 0: unknown.
    pixel_size: float = 0.0

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["postprocess"] = PostprocessSettings(**d.get("postprocess", {}))
        for key in ("classes", "object_diameter_range"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_dict(self):
        return asdict(self)


def spec_path(model_path):
    """The spec beside a ``.keras`` file: ``.json``, else ``.yaml``/``.yml`` (``.json`` if none)."""
    from segmodel.bundle import find_spec

    return find_spec(model_path) or Path(str(model_path)).with_suffix(".json")


def save_model(model, spec, path):
    """Save ``model`` and its :class:`ModelSpec` sidecar to ``path`` (``.keras``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
    tmp_spec = path.with_name(f".{path.stem}.tmp.json")
    tmp_spec.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp_spec, path.with_suffix(".json"))
    for old in (path.with_suffix(".yaml"), path.with_suffix(".yml")):  # one spec per model
        old.unlink(missing_ok=True)


_FINGERPRINTS = {}


def fingerprint(path):
    """Content hash (first 16 hex digits of sha256) of a model file and its sidecar.

    Memoised by the files' size and mtime, so asking again (every task asks) costs two
    ``stat`` calls, not a read of the model.
    """
    files = (Path(path), spec_path(path))
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists())
    if stamp not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p in files:
            if p.exists():
                h.update(p.read_bytes())
        _FINGERPRINTS[stamp] = h.hexdigest()[:16]
    return _FINGERPRINTS[stamp]


@dataclass
class LoadedModel:
    """A Keras model with its spec and fingerprint; see :func:`load_model`."""

    keras_model: object
    spec: ModelSpec
    fingerprint: str
    path: str

    @property
    def any_batch_size(self):
        """Whether a batch smaller than the usual costs only its share of a call.

        True on the TensorFlow backend: Keras traces its predict function with
        ``reduce_retracing``, so the second batch shape gives a trace that takes every batch
        size, and a call costs in proportion to its batch. Elsewhere (JAX compiles each shape;
        an accelerator costs nearly the same for any batch up to its width) batches keep one
        fixed shape.
        """
        import keras

        return keras.backend.backend() == "tensorflow"

    def predict_batch(self, batch):
        """Predict a fixed-shape ``(N, T, T, C)`` float32 batch; returns ``(N, T, T, 3)``.

        Uses Keras' compiled predict step, traced once per batch shape (the pipeline only ever
        sends one shape).
        """
        if self.spec.axes == "CYX":  # a channels-first model: same batch, axes moved
            channels_first = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
            out = self.keras_model.predict_on_batch(channels_first)
            return np.asarray(out).transpose(0, 2, 3, 1)
        return self.keras_model.predict_on_batch(batch)


_CACHE = {}
_CACHE_LOCK = threading.Lock()


def load_model(path=None, *, trust=False):
    """Load a model once per process, cached by its file's fingerprint.

    Models load in Keras' safe mode: a file carrying Python code (a ``Lambda`` layer's
    function, ...) is refused, because loading it would run that code.

    Parameters
    ----------
    path : str or Path, optional
        A ``.keras`` file with a ``.json`` sidecar. Default: the bundled nuclei model.
    trust : bool, optional
        Load with safe mode off. Only for files from a source you trust.

    Returns
    -------
    LoadedModel

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file carries Python code and ``trust`` is False.
    """
    from segmodel.bundle import read_spec, resolve_bundle

    path = resolve_bundle(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise FileNotFoundError(
            f"model file not found: {str(path)!r}. Pass the path of a .keras file, or omit it "
            "to use the bundled nuclei model."
        )
    key = (fingerprint(path), bool(trust))
    with _CACHE_LOCK:
        if key not in _CACHE:
            sp = spec_path(path)
            spec = read_spec(sp) if sp.exists() else ModelSpec()
            kmodel = _load_keras(path, trust)
            _CACHE[key] = LoadedModel(kmodel, spec, key[0], str(path))
        return _CACHE[key]


def _load_keras(path, trust):
    import zipfile

    import keras

    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"model {str(path)!r} is not a Keras 3 model file: a .keras file is a zip archive "
            "(keras.Model.save('model.keras')); convert an older .h5 or SavedModel by loading "
            "it in Keras and saving it as .keras."
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except ValueError as exc:
        if trust or "safe_mode" not in str(exc):
            raise
        raise ValueError(
            f"model {str(path)!r} refused: it carries Python code (e.g. a Lambda layer's "
            "function) that would run when it is loaded, and models load in Keras' safe mode. "
            "Only if you trust where the file came from, pass --trust-model "
            f"(SegmentParams.trust_model=True). Keras said: {exc}"
        ) from None
