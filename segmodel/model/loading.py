"""Loading and saving models: a ``.keras`` file with its spec beside it.

A shipped model is a ``.keras`` file plus a ``.json`` sidecar (:class:`~segmodel.model.spec.
ModelSpec`: tile size, normalisation, post-processing thresholds) so the thresholds travel with
the weights. Other Keras models (binary and semantic heads too) come as bundles: see
:mod:`segmodel.model.bundle`. Loaded models are cached per process (:func:`load_model`).
"""

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from segmodel.model import zoo
from segmodel.model.engines import (
    EngineError,
    OpenVinoModel,
    cached,
    converted,
    converted_file,
    resolve_engine,
)
from segmodel.model.keras_import import import_keras
from segmodel.model.spec import BundleError, ModelSpec, find_spec, read_spec, resolve_bundle

_log = logging.getLogger("segflow")

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "nuclei.keras"


def spec_path(model_path):
    """The spec beside a ``.keras`` file: ``.json``, else ``.yaml``/``.yml`` (``.json`` if none).

    Parameters
    ----------
    model_path : str or Path
        A ``.keras`` file.

    Returns
    -------
    Path
        The spec found, or the ``.json`` path where none exists yet.

    Raises
    ------
    BundleError
        If more than one spec lies beside the model.
    """
    return find_spec(model_path) or Path(str(model_path)).with_suffix(".json")


def save_model(model, spec, path):
    """Save ``model`` and its :class:`ModelSpec` sidecar to ``path`` (``.keras``) atomically.

    The spec is written as ``.json``; a ``.yaml`` / ``.yml`` spec beside it is removed.

    Parameters
    ----------
    model : keras.Model
        The model.
    spec : ModelSpec
        Its spec.
    path : str or Path
        The ``.keras`` file to write; its folder is created.
    """
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
    ``stat`` calls, not a read of the model. A missing file is left out of the hash.

    Parameters
    ----------
    path : str or Path
        A ``.keras`` file.

    Returns
    -------
    str

    Raises
    ------
    BundleError
        If more than one spec lies beside the model.
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
    """A Keras model with its spec and fingerprint; see :func:`load_model`.

    Attributes
    ----------
    keras_model : keras.Model
        The model, uncompiled. Where OpenVINO runs a conversion cached earlier, the Keras model
        (and TensorFlow with it) loads only when first asked for (see ``loader``).
    spec : ModelSpec
        Its spec (defaults where the file has none).
    fingerprint : str
        :func:`fingerprint` of its files.
    path : str
        The ``.keras`` file.
    engine : {'keras', 'openvino'}
        What runs :meth:`predict_batch` (see :mod:`segmodel.model.engines`).
    runner : callable or None
        The OpenVINO model where ``engine`` is ``'openvino'``, else None (Keras runs it).
    loader : callable or None
        ``() -> keras.Model``, called once where the model was given as None.
    package : segmodel.model.zoo.ZooPackage or None
        The BioImage Model Zoo package the model came from (``path`` is its folder), or None.
    """

    loaded: object
    spec: ModelSpec
    fingerprint: str
    path: str
    engine: str = "keras"
    runner: object = field(default=None, repr=False)
    loader: object = field(default=None, repr=False, compare=False)
    package: object = field(default=None, repr=False)

    @property
    def keras_model(self):
        """The Keras model, loaded now if it was not yet (once, under the cache's lock)."""
        if self.loaded is None:
            with _KERAS_LOCK:
                if self.loaded is None:
                    self.loaded = self.loader()
        return self.loaded

    @property
    def precision(self):
        """The precision the model computes in: ``'f32'``, or OpenVINO's choice here."""
        return self.runner.precision if self.runner is not None else "f32"

    @property
    def any_batch_size(self):
        """Whether a batch smaller than the usual costs only its share of a call.

        True on the TensorFlow backend: Keras traces its predict function with
        ``reduce_retracing``, so the second batch shape gives a trace that takes every batch
        size, and a call costs in proportion to its batch. Elsewhere (JAX compiles each shape;
        an accelerator costs nearly the same for any batch up to its width) batches keep one
        fixed shape. True with OpenVINO, whose CPU runtime takes any batch size.
        """
        if self.engine == "openvino":
            return True
        return import_keras().backend.backend() == "tensorflow"

    def predict_batch(self, batch):
        """Predict a fixed-shape float32 batch.

        Uses the OpenVINO model where :attr:`engine` is ``'openvino'``, else Keras' compiled
        predict step, traced once per batch shape (the pipeline only ever sends one shape).
        A ``'CYX'`` model gets the batch channels first and its output is moved back to
        channels last.

        Parameters
        ----------
        batch : (N, T, T, C) ndarray of float32
            Normalised tiles, channels last.

        Returns
        -------
        (N, T, T, K) ndarray
            The model's maps, channels last (``K`` = 3 for the instance model).
        """
        run = self.runner or self.keras_model.predict_on_batch
        if self.spec.axes == "CYX":  # a channels-first model: same batch, axes moved
            channels_first = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
            return np.asarray(run(channels_first)).transpose(0, 2, 3, 1)
        return np.asarray(run(batch))


_CACHE = {}
_CACHE_LOCK = threading.Lock()
_KERAS_LOCK = threading.Lock()


def load_model(path=None, *, trust=False, engine="keras", kind=None, storage_options=None):
    """Load a model once per process, cached by its file's fingerprint and engine.

    Models load in Keras' safe mode: a file carrying Python code (a ``Lambda`` layer's
    function, ...) is refused, because loading it would run that code.

    Parameters
    ----------
    path : str or Path, optional
        A ``.keras`` file with a ``.json`` sidecar, a bundle folder, or a BioImage Model Zoo
        package (``.zip`` or folder with ``rdf.yaml``, local or an fsspec URL; see
        :mod:`segmodel.model.zoo`). Default: the bundled nuclei model.
    trust : bool, optional
        Load with safe mode off. Only for files from a source you trust.
    engine : {'keras', 'openvino', 'auto'}, optional
        What runs the model (default ``'keras'``; see :mod:`segmodel.model.engines`). With
        ``'openvino'`` the model is converted on first use and the conversion cached;
        ``'auto'`` falls back to Keras, with a warning, where the model does not convert.
    kind : {'instances', 'binary', 'semantic'}, optional
        A package's output kind where it does not tell (default: inferred; a bundle's spec
        gives its own, and another ``kind`` is refused).
    storage_options : dict, optional
        fsspec options for a remote package (default none).

    Returns
    -------
    LoadedModel

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file carries Python code and ``trust`` is False, or ``engine`` is unknown.
    EngineError
        ``engine`` is ``'openvino'`` and OpenVINO is missing or the model does not convert.
    BundleError
        A package segflow cannot run (:class:`segmodel.model.zoo.ZooError`), or ``kind``
        contradicts a bundle's spec.
    """
    if path is not None and zoo.is_package(path):
        return _load_package(zoo.local_package(path, storage_options), trust, engine, kind,
                             str(path))
    path = resolve_bundle(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise FileNotFoundError(
            f"model file not found: {str(path)!r}. Pass the path of a .keras file, or omit it "
            "to use the bundled nuclei model."
        )
    chosen = resolve_engine(engine)
    key = (fingerprint(path), bool(trust), chosen)
    with _CACHE_LOCK:
        if key not in _CACHE:
            sp = spec_path(path)
            spec = _same_kind(read_spec(sp) if sp.exists() else ModelSpec(), kind, path)
            model = LoadedModel(None, spec, key[0], str(path), chosen,
                                loader=partial(_keras_for, path, trust, key[0]))
            _CACHE[key] = _with_runner(model, trust, engine)
        _same_kind(_CACHE[key].spec, kind, path)  # checked before loading, and when cached
        return _CACHE[key]


def _same_kind(spec, kind, path):
    """``spec``, unless ``kind`` is given and the bundle's spec says another."""
    if kind is not None and kind != spec.kind:
        raise BundleError(f"model_kind={kind!r} but the bundle {str(path)!r} has kind "
                          f"{spec.kind!r} in its spec; model_kind is for BioImage Model Zoo "
                          "packages whose kind cannot be told. Leave it unset.")
    return spec


def _load_package(root, trust, engine, kind, name):
    """A BioImage Model Zoo package's model on its engine (cached as :func:`load_model`)."""
    chosen = resolve_engine(engine)
    formats = zoo.KERAS_FORMATS if chosen == "keras" else zoo.WEIGHTS_ORDER
    key = ("zoo", zoo.package_digest(root), kind, bool(trust), chosen)
    with _CACHE_LOCK:
        if key not in _CACHE:
            package = zoo.read_package(root, kind=kind, formats=formats, name=name)
            model = LoadedModel(None, package.spec, package.fingerprint, str(root), chosen,
                                loader=partial(_package_keras, package, trust), package=package)
            _CACHE[key] = _with_package_runner(model, trust, engine)
        return _CACHE[key]


def _with_package_runner(model, trust, engine):
    """``model`` with a :class:`~segmodel.model.zoo.PackageRunner` on its engine."""
    package = model.package
    keras_weights = package.weights_format in zoo.KERAS_FORMATS
    if model.engine == "openvino":
        try:
            if keras_weights:
                xml = cached(model.fingerprint, trust) or converted(
                    model.keras_model, model.fingerprint, trust)
            else:
                xml = converted_file(zoo.weights_for_openvino(package), model.fingerprint)
            ov_model = OpenVinoModel(xml)
            model.runner = zoo.PackageRunner(ov_model, package.layout, ov_model.precision)
            return model
        except EngineError as exc:
            if engine != "auto" or not keras_weights:
                raise
            _log.warning("engine 'auto': the model runs with Keras, as %s", exc)
            model.engine = "keras"
    model.keras_model  # loaded now: a bad file fails here, not mid-run
    model.runner = zoo.PackageRunner(lambda batch: model.keras_model.predict_on_batch(batch),
                                     package.layout)
    return model


def _package_keras(package, trust):
    """A package's Keras weights (``keras_v3`` or ``keras_hdf5``), safe mode unless ``trust``."""
    if package.weights_format == "keras_v3":
        return load_keras(package.weights, trust)
    keras = import_keras()
    try:
        return keras.saving.load_model(str(package.weights), compile=False, safe_mode=not trust)
    except ValueError as exc:
        if trust or "safe_mode" not in str(exc):
            raise
        raise ValueError(f"model {str(package.weights)!r} refused: it carries Python code that "
                         "would run when it is loaded. Only if you trust where it came from, "
                         "pass --trust-model.") from None


def _keras_for(path, trust, fingerprint):
    """One Keras model per file in the process: the one another engine loaded, else a new one."""
    for engine in ("keras", "openvino"):
        other = _CACHE.get((fingerprint, bool(trust), engine))
        if other is not None and other.loaded is not None:
            return other.loaded
    return load_keras(path, trust)


def _with_runner(model, trust, engine):
    """``model`` with its OpenVINO runner where its engine is OpenVINO.

    The runner comes from the conversion cache without loading Keras, else from converting now.
    Where ``auto`` cannot convert, the model runs with Keras.
    """
    if model.engine == "keras":
        model.keras_model  # loaded now: a bad file fails here, not mid-run
        return model
    try:
        xml = cached(model.fingerprint, trust) or converted(model.keras_model, model.fingerprint,
                                                            trust)
        model.runner = OpenVinoModel(xml)
    except EngineError as exc:
        if engine != "auto":
            raise
        _log.warning("engine 'auto': the model runs with Keras, as %s", exc)
        model.engine = "keras"  # kept under the key: asked again, no retry
        model.keras_model
    return model


def load_keras(path, trust):
    """Load a ``.keras`` file uncompiled, in Keras' safe mode unless ``trust``.

    Parameters
    ----------
    path : str or Path
        A Keras 3 ``.keras`` file (a zip archive).
    trust : bool
        Allow Python code in the file (e.g. a Lambda layer's function) to run while loading.

    Returns
    -------
    keras.Model

    Raises
    ------
    ValueError
        If ``path`` is not a zip archive (not a ``.keras`` file), or it carries Python code
        and ``trust`` is False.
    """
    import zipfile

    keras = import_keras()

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
