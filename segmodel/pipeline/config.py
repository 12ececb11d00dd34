"""A run's frozen configuration: its options, resolved once before any work.

:func:`configure` loads and checks the model, validates the tiling and the scale, opens the
input and output stores and computes the configuration key that decides which images a rerun
redoes. Everything downstream (planning, shards, huge images, finalizing) takes the resulting
:class:`RunConfig`: small, picklable, the same in every process of a run.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from segmodel.inference import autoscale
from segmodel.inference.passes import model_tiling
from segmodel.inference.preprocess import Tiling
from segmodel.model.bundle import check_model
from segmodel.model.engines import EngineError
from segmodel.model.loading import DEFAULT_MODEL, load_model, spec_path
from segmodel.storage.io import Store, check_readable, check_writable


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one run.

    Attributes
    ----------
    options : RunOptions
        The options as given (or a flow's parameters, which extend them).
    input, output : Store
        Where images are read and masks and tables written.
    model_path : str
        The resolved ``.keras`` file of the model, a package's local folder, or the URL of a
        remote package (each process fetches it once into the cache).
    engine : {'keras', 'openvino'}
        What runs the model in every process of the run (``options.engine`` resolved; see
        :mod:`segmodel.model.engines`).
    tile, overlap : int
        The tiling, checked against the model's divisor.
    large_tile : int
        The larger tile size for the images it covers computing fewer pixels, or 0 (``tile``
        alone: the option ``tile_size`` set, or a model with a fixed input size).
    config_key : str
        16 hex digits over everything that changes an image's result (model fingerprint, scale
        rule, tiling, mask format, input choices); an image recorded under another key is redone.
    """

    options: object
    input: Store
    output: Store
    model_path: str
    engine: str
    tile: int
    overlap: int
    large_tile: int
    config_key: str

    def tiling(self):
        """The run's :class:`~segmodel.inference.preprocess.Tiling`."""
        return Tiling(self.tile, self.overlap, self.large_tile)

    def load_model(self):
        """The run's model on its engine, loaded once per process (cached by ``load_model``)."""
        return load_model(self.model_path, trust=self.options.trust_model, engine=self.engine,
                          kind=self.options.model_kind,
                          storage_options=_model_storage(self.options))

    def choices(self):
        """The input choices a reader needs: ``{'channel', 'plane', 'pyramid_level'}``."""
        o = self.options
        return {"channel": o.channel, "plane": o.plane, "pyramid_level": o.pyramid_level}


def configure(options):
    """Check the options against the model and resolve them into a :class:`RunConfig`.

    Parameters
    ----------
    options : RunOptions
        Validated options (:class:`segmodel.pipeline.options.RunOptions` or a subclass).

    Returns
    -------
    config : RunConfig
    model : segmodel.model.loading.LoadedModel
        The loaded model (cached in this process).

    Raises
    ------
    ValueError
        The output is the input or inside it (or a file stands where it would be), the model's
        spec does not fit the model, or the tile size does not fit the model.
    PermissionError
        The input cannot be listed or the output cannot be written: no credentials, access
        denied, a read-only folder (see :func:`segmodel.storage.io.check_writable`).
    ConnectionError
        The storage of the input or output cannot be reached.
    FileNotFoundError
        The model file or the output's bucket does not exist.
    """
    source = Store(options.input, options.storage_options)
    target = Store(options.output, options.storage_options)
    if source.contains(target):  # each rerun would segment the masks of the one before
        raise ValueError(
            f"output={options.output!r} is the input or a folder inside it "
            f"(input={options.input!r}): a rerun would list the masks written there as new "
            "images. Choose an output folder outside the input.")
    check_readable(source, "input")  # before the model loads: a refusal answers in seconds
    check_writable(target, "output")
    model = _load(options)
    # the shipped model fits its spec (its tests check): only another model is loaded in Keras
    # for the check, so a run of the shipped model on a cached conversion never loads Keras
    # a package is checked against its description when read (segmodel.model.zoo)
    skip = Path(model.path) == DEFAULT_MODEL or model.package is not None
    problems = [] if skip else check_model(
        model.keras_model, model.spec, str(spec_path(model.path)))
    if problems:  # a bundle whose spec does not fit its model: say so before any work
        raise ValueError("; ".join(problems) + f" (check with: segflow model inspect {model.path})")
    tiling = model_tiling(model, options.tile_size)
    config = RunConfig(
        options=options, input=source, output=target,
        model_path=options.model if _remote_package(options.model) else model.path,
        engine=model.engine, tile=tiling.tile, overlap=tiling.overlap, large_tile=tiling.large,
        config_key=config_key(options, model, tiling))
    return config, model


def _load(options):
    """The run's model on its engine (``auto`` falls back to Keras where OpenVINO cannot run it)."""
    try:
        return load_model(options.model, trust=options.trust_model, engine=options.engine,
                          kind=options.model_kind, storage_options=_model_storage(options))
    except EngineError as exc:  # the engine asked for by name cannot run here
        raise ValueError(f"engine={options.engine!r}: {exc}") from None


def _remote_package(model):
    return model is not None and "://" in model and not model.startswith("file://")


def _model_storage(options):
    """The storage options for a remote model: the run's where it shares a store's scheme."""
    if not _remote_package(options.model):
        return None
    scheme = options.model.split("://", 1)[0]
    same = any(u.split("://", 1)[0] == scheme for u in (options.input, options.output)
               if "://" in u)
    return options.storage_options if same else None


def config_key(options, model, tiling):
    """Hash everything in a run's configuration that changes an image's result.

    Parameters
    ----------
    options : RunOptions
    model : segmodel.model.loading.LoadedModel
        The model on its engine: its fingerprint, and its engine and precision where OpenVINO
        runs it (their maps differ from Keras' in the third decimal).
    tiling : segmodel.inference.preprocess.Tiling

    Returns
    -------
    str
        16 hex digits (see :class:`RunConfig`).
    """
    scale = [options.scale, repr(autoscale.DEFAULT)] if options.scale == "auto" else [
        options.scale]
    engine = [f"openvino-{model.precision}"] if model.engine == "openvino" else []
    large = [{"large_tile": tiling.large}] if tiling.large else []
    key = json.dumps([model.fingerprint, *scale, tiling.tile, tiling.overlap, *large,
                      options.mask_format, options.max_pixels]
                     + ([True] if options.tta else []) + _input_key(options)
                     + ([options.outlines] if options.outlines != "none" else []) + engine)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _input_key(options):
    """The input choices in the key, only when set (keys of runs without them stay as were)."""
    chosen = {k: getattr(options, k) for k in ("channel", "plane")
              if getattr(options, k) is not None}
    if options.pyramid_level:
        chosen["pyramid_level"] = options.pyramid_level
    return [chosen] if chosen else []
