"""Inference engines: the model run by Keras, or converted once and run by OpenVINO.

``keras`` runs the model with Keras' own backend (TensorFlow here; JAX where
``KERAS_BACKEND=jax``). ``openvino`` converts the model to OpenVINO's format once, caches it
under :func:`cache_dir` keyed by the model's fingerprint and OpenVINO's version, and runs it
with OpenVINO's CPU runtime, which computes in bfloat16 on CPUs with native bfloat16 (AVX512-BF16
or AMX) and in float32 elsewhere. ``auto`` picks ``openvino`` where it is installed and Keras
runs on TensorFlow, ``keras`` otherwise (on JAX, where an accelerator is the reason to use it).
"""

import os
import shutil
import tempfile
import threading
from pathlib import Path

ENGINES = ("auto", "openvino", "keras")


class EngineError(RuntimeError):
    """The chosen engine cannot run this model here (not installed, or the model converts not)."""


def openvino_installed():
    """Whether the ``openvino`` package imports.

    Returns
    -------
    bool
    """
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine):
    """The engine ``engine`` names here: ``auto`` becomes ``openvino`` or ``keras``.

    Parameters
    ----------
    engine : {'auto', 'openvino', 'keras'}

    Returns
    -------
    {'openvino', 'keras'}

    Raises
    ------
    ValueError
        If ``engine`` is not one of :data:`ENGINES`.
    EngineError
        If ``engine`` is ``'openvino'`` and OpenVINO is not installed.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}. Received: engine={engine!r}")
    if engine == "keras":
        return engine
    usable = openvino_installed()
    if engine == "openvino" and not usable:
        raise EngineError("engine='openvino' needs the openvino package: pip install openvino "
                          "(or choose engine 'keras').")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return "openvino" if usable and (engine == "openvino" or backend == "tensorflow") else "keras"


def cache_dir():
    """Where converted models are kept: ``$SEGFLOW_CACHE_DIR``, else the user's cache folder.

    Returns
    -------
    Path
        ``$SEGFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/segflow``, else ``~/.cache/segflow``.
    """
    if os.environ.get("SEGFLOW_CACHE_DIR"):
        return Path(os.environ["SEGFLOW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segflow"


class OpenVinoModel:
    """A model converted to OpenVINO (:func:`converted`), compiled for the CPU.

    Calls are thread-safe: each thread gets its own inference request. The input takes any
    batch size and tile size.

    Parameters
    ----------
    xml : str or Path
        The converted model's ``model.xml``.
    """

    def __init__(self, xml):
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(xml), "CPU")
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._local = threading.local()

    def __call__(self, batch):
        """Maps for ``batch`` (``(N, ...) float32``), as the Keras model's first output."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request.infer({0: batch})[0].copy()


def _folder(fingerprint, trust):
    """The cache folder of one model's conversion.

    Named by fingerprint, OpenVINO's version and whether the model was loaded trusted (its code
    run), so an untrusted run never skips Keras' safe-mode check through a conversion made by a
    trusted one.
    """
    import openvino as ov

    name = f"{fingerprint}-{ov.__version__.split('-')[0]}" + ("-trusted" if trust else "")
    return cache_dir() / "openvino" / name


def cached(fingerprint, trust=False):
    """The cached conversion of the model with ``fingerprint``, or None.

    Parameters
    ----------
    fingerprint : str
        The model's content hash.
    trust : bool, optional
        Whether the model is loaded trusted (default False).

    Returns
    -------
    Path or None
        Its ``model.xml``.
    """
    xml = _folder(fingerprint, trust) / "model.xml"
    return xml if xml.is_file() else None


def converted(keras_model, fingerprint, trust=False):
    """The OpenVINO model file for ``keras_model``, converted now unless cached.

    Parameters
    ----------
    keras_model : keras.Model
    fingerprint : str
        The model's content hash.
    trust : bool, optional
        Whether the model was loaded trusted (default False): kept apart in the cache.

    Returns
    -------
    Path
        ``model.xml`` (weights in ``model.bin`` beside it) under :func:`cache_dir`.

    Raises
    ------
    EngineError
        If the model does not convert (the message carries the converter's reason).
    """
    return _convert_once(lambda xml: _export(keras_model, xml), fingerprint, trust)


def converted_file(source, fingerprint):
    """The OpenVINO model file for an ONNX file or TensorFlow SavedModel folder, cached.

    OpenVINO's converter reads both formats itself: no Keras or TensorFlow model is built.

    Parameters
    ----------
    source : str or Path
        A ``.onnx`` file or a SavedModel folder.
    fingerprint : str
        A content hash of the model (the cache key).

    Returns
    -------
    Path
        ``model.xml`` under :func:`cache_dir`.

    Raises
    ------
    EngineError
        If OpenVINO is not installed or the model does not convert.
    """
    if not openvino_installed():
        raise EngineError("this model runs with OpenVINO, which is not installed: pip install "
                          "openvino.")
    return _convert_once(lambda xml: _export_file(source, xml), fingerprint, False)


def _convert_once(export, fingerprint, trust):
    """Run ``export(xml)`` into the cache folder of ``fingerprint`` unless it is there already."""
    folder = _folder(fingerprint, trust)
    if (folder / "model.xml").is_file():
        return folder / "model.xml"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        export(tmp / "model.xml")
        try:
            os.rename(tmp, folder)  # atomic; another process may have won the race
        except OSError:
            if not (folder / "model.xml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "model.xml"


def _export_file(source, xml):
    """Write an ONNX file or SavedModel folder as OpenVINO IR at ``xml``, in float32."""
    import openvino as ov

    try:
        model = ov.convert_model(str(source))
        ov.save_model(model, str(xml), compress_to_fp16=False)
    except Exception as exc:  # the converter's own error types vary by format and version
        raise EngineError(f"{Path(source).name} does not convert to OpenVINO "
                          f"({type(exc).__name__}: {str(exc)[:300]}).") from exc


def _export(keras_model, xml):
    """Write ``keras_model`` as OpenVINO IR at ``xml``, its weights in float32."""
    try:
        keras_model.export(str(xml), format="openvino", verbose=False)
    except Exception as exc:  # the converter's own error types vary by layer and version
        raise EngineError(f"the model does not convert to OpenVINO ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); run it with engine 'keras'.") from exc
