"""Exporting a segflow bundle as a BioImage Model Zoo package (bioimage.io, format 0.5).

A package is a zip holding ``rdf.yaml`` and the files it names::

    rdf.yaml          the description (bioimageio.spec model format 0.5)
    README.md         documentation: the model, its data, its outputs, how to get labels
    cover.png         a sample tile beside the model's maps
    test_input.npy    the ``raw`` test tensor: a shipped sample tile, float32
    test_output.npy   the ``maps`` test tensor: the model run on it (float32)
    sample_*.tif      the same two tensors as TIFF (the zoo's sample tensors, for viewers)
    <name>.keras      weights ``keras_v3``: the bundle's ``.keras`` file as it is
    <name>.h5         weights ``keras_hdf5`` (only where plain Keras loads the model)

The rdf's tensors follow the Keras model: one input ``raw`` (axes ``batch, y, x, channel``,
or ``batch, channel, y, x`` for a ``CYX`` model) and one output ``maps`` with the same axes,
its ``channel`` axis naming the maps (:func:`map_names`). ``config.segflow`` holds the bundle's
whole spec (:meth:`~segmodel.model.spec.ModelSpec.to_dict`), from which segflow runs the
package as the bundle. The zoo's spec has no instance step: the package gives the maps, and
segflow's post-processing turns them into labels.
"""

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field

from segmodel.model.bundle import _layers, check_model, takes_any_size
from segmodel.model.loading import DEFAULT_MODEL, load_keras
from segmodel.model.spec import OUTPUTS, BundleError, find_spec, read_spec, resolve_bundle

#: The shipped sample whose first tile is the test input (fluorescence, 32 nuclei).
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "fluor-3bfd6bb1.png"
#: Tensor ids of the rdf: the contract with :mod:`segmodel.model.zoo`.
INPUT_ID, OUTPUT_ID = "raw", "maps"
#: The test tile's edge (pixels) where the model takes any size: floored to the divisor.
TEST_SIZE = 256
#: The clip segflow applies after percentile normalisation.
CLIP = (-0.5, 1.5)

DSB2018_DOI = "10.1038/s41592-019-0612-7"
UNET_DOI = "10.1007/978-3-319-24574-4_28"


class ExportOptions(BaseModel):
    """The options of ``segflow model export``, declared once (the CLI's options come from it).

    Checked by :func:`export_package` before any work.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="The model: 'default' (the shipped nuclei "
                       "model), a .keras file with its spec beside it, or their folder.")
    out: str = Field(description="The package to write: a path or fsspec URL ending in .zip.")
    format: Literal["bioimageio"] = Field("bioimageio", description="Package format: "
                                          "'bioimageio' (a BioImage Model Zoo model, format "
                                          "0.5).")
    trust_model: bool = Field(False, description="Load a model that carries Python code; only "
                              "for files you trust.")
    storage_options: dict = Field(default_factory=dict, description="Passed to fsspec for OUT: "
                                  "a JSON object such as {\"anon\": false}.")


@dataclass(frozen=True)
class Exported:
    """What :func:`export_package` wrote.

    Attributes
    ----------
    url : str
        The package written.
    weights : tuple of str
        Its weight formats (``'keras_v3'``, then ``'keras_hdf5'`` where written).
    notes : tuple of str
        Why a weight format was left out; empty when none was.
    warnings : tuple of str
        The validator's warnings, one line each (``field: message``).
    size : int
        Bytes written.
    """

    url: str
    weights: tuple
    notes: tuple
    warnings: tuple
    size: int


def export_package(options):
    """Write a bundle as a model package that bioimageio.spec validates with no error.

    Parameters
    ----------
    options : ExportOptions
        The model, where to write, the format.

    Returns
    -------
    Exported

    Raises
    ------
    ValueError
        ``out`` does not end in ``.zip``, the bundle has no spec or its spec does not fit its
        model (:class:`~segmodel.model.spec.BundleError`), or the package does not validate.
    FileNotFoundError
        The model does not exist, or OUT's bucket does not.
    PermissionError, ConnectionError
        OUT's folder is not writable, or its storage cannot be reached.

    Examples
    --------
    >>> export_package(ExportOptions(out="nuclei.zip"))  # doctest: +SKIP
    Exported(url='nuclei.zip', weights=('keras_v3', 'keras_hdf5'), ...)
    """
    from segmodel.storage.io import write_atomic

    _validate(options)
    fs, path = _writable(options.out, options.storage_options)
    model_path, spec, keras_model = load_bundle(options.model, trust=options.trust_model)
    with tempfile.TemporaryDirectory(prefix="segflow-zoo-") as tmp:
        descr, notes = build_description(model_path, spec, keras_model, Path(tmp))
        package = _save(descr, Path(tmp) / "package.zip")
        errors, warnings = validate_package(package)
        if errors:
            raise ValueError(f"the package of {str(model_path)!r} does not validate: "
                             + "; ".join(errors))
        data = package.read_bytes()
    write_atomic(fs, path, data)
    weights = tuple(k for k in ("keras_v3", "keras_hdf5") if getattr(descr.weights, k))
    return Exported(options.out, weights, tuple(notes), tuple(warnings), len(data))


def _validate(options):
    from segmodel.storage.io import check_url

    check_url(options.out, "OUT")
    if not options.out.lower().endswith(".zip"):
        raise ValueError(f"OUT must be a .zip file (a model package is a zip). Received: "
                         f"{options.out!r}. Add .zip to the name.")
    if options.model != "default" and not Path(options.model).exists():
        raise FileNotFoundError(f"MODEL {options.model!r} not found: pass a .keras file with "
                                "its spec beside it, their folder, or 'default'.")


def _writable(out, storage_options):
    """``(fs, path)`` of ``out`` once a probe file was written and removed beside it."""
    import posixpath

    from segmodel.storage.io import Store, check_writable, open_url

    fs, path = open_url(out, storage_options, parameter="OUT")
    check_writable(Store(fs.unstrip_protocol(posixpath.dirname(path)), storage_options), "OUT")
    return fs, path


def load_bundle(model, *, trust=False):
    """The ``.keras`` file, spec and Keras model of a bundle, checked against each other.

    Parameters
    ----------
    model : str or Path
        ``'default'`` (the shipped model), a ``.keras`` file or a bundle folder.
    trust : bool, optional
        Load the model outside Keras' safe mode (default False).

    Returns
    -------
    path : Path
        The ``.keras`` file.
    spec : ModelSpec
    keras_model : keras.Model

    Raises
    ------
    FileNotFoundError
        No model there.
    BundleError
        No spec beside the model, or the spec does not fit it.
    """
    path = DEFAULT_MODEL if str(model) == "default" else resolve_bundle(model)
    if not path.is_file() or path.suffix != ".keras":
        raise FileNotFoundError(f"MODEL {str(model)!r}: no .keras file there. Pass a .keras "
                                "file with its spec beside it, their folder, or 'default'.")
    spec_file = find_spec(path)
    if spec_file is None:
        raise BundleError(f"MODEL {str(path)!r} has no spec beside it "
                          f"({path.with_suffix('.json').name} or .yaml): a package needs one "
                          "(see docs/bundles.md).")
    spec = read_spec(spec_file)
    keras_model = load_keras(path, trust)
    problems = check_model(keras_model, spec, str(spec_file))
    if problems:
        raise BundleError(problems[0] + " (segflow model inspect lists every problem.)")
    return path, spec, keras_model


def map_names(spec):
    """Names of the model's output channels: the ``maps`` tensor's ``channel_names``.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    list of str
        ``['foreground', 'boundary', 'distance']`` for ``instances``, ``['foreground']`` for
        ``binary``, the classes for ``semantic``.
    """
    return {"instances": list(OUTPUTS), "binary": ["foreground"]}.get(spec.kind,
                                                                      list(spec.classes))


def input_names(spec):
    """Names of the model's input channels: ``red, green, blue`` for 3, ``gray`` for 1.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    list of str
    """
    return {1: ["gray"], 3: ["red", "green", "blue"]}.get(
        spec.channels, [f"channel{i}" for i in range(spec.channels)])


def test_tile(spec, size):
    """The test input: the top-left ``size x size`` tile of :data:`SAMPLE`, as segflow reads it.

    Parameters
    ----------
    spec : ModelSpec
        Its ``channels`` are used (gray repeated, colours averaged, as segflow does).
    size : int
        The tile's edge (the sample is zero-padded where smaller).

    Returns
    -------
    (size, size, channels) ndarray of float32
        Raw pixel values (0-255), channels last.
    """
    from PIL import Image

    from segmodel.inference.preprocess import extract_tile, to_channels

    image = to_channels(np.asarray(Image.open(SAMPLE)), spec.channels)
    return extract_tile(image, (0, 0), size).astype(np.float32)


def preprocess(raw, spec):
    """What the rdf's preprocessing gives for ``raw``, computed by segflow's own functions.

    ``percentile``: ``(x - P_low) / (P_high - P_low)`` with the percentiles taken jointly over
    the tile's pixels and channels, clipped to [-0.5, 1.5], never inverted (``scale_range``
    then ``clip``). ``range``: divided by 255 (``scale_linear``). ``none``: as it is.

    Parameters
    ----------
    raw : (H, W, C) ndarray of float32
        From :func:`test_tile`.
    spec : ModelSpec

    Returns
    -------
    (H, W, C) ndarray of float32
    """
    from segmodel.inference.preprocess import (
        Normalization,
        apply_normalization,
        estimate_normalization,
    )

    if spec.normalization == "range":
        return (raw / np.float32(255)).astype(np.float32)
    if spec.normalization == "none":
        return raw.astype(np.float32)
    stats = estimate_normalization(raw, Normalization(spec.p_low, spec.p_high, "never"))
    return apply_normalization(raw, stats)


def preprocessing(spec):
    """The input's ``preprocessing`` in the zoo's terms (see :func:`preprocess`).

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    list of dict
        ``{'id': ..., 'kwargs': {...}}`` entries, in order.
    """
    if spec.normalization == "range":
        return [{"id": "scale_linear", "kwargs": {"gain": 1 / 255, "offset": 0.0}}]
    if spec.normalization == "none":
        return []
    return [{"id": "scale_range",
             "kwargs": {"axes": ["y", "x", "channel"], "min_percentile": spec.p_low,
                        "max_percentile": spec.p_high}},
            {"id": "clip", "kwargs": {"min": CLIP[0], "max": CLIP[1]}}]


def build_description(model_path, spec, keras_model, folder):
    """The package's :class:`bioimageio.spec.model.v0_5.ModelDescr`, its files in ``folder``.

    Parameters
    ----------
    model_path : Path
        The bundle's ``.keras`` file (its weights, as they are).
    spec : ModelSpec
    keras_model : keras.Model
        Runs the test input.
    folder : Path
        Where the test tensors, cover, README and HDF5 weights are written.

    Returns
    -------
    descr : ModelDescr
    notes : list of str
        Why a weight format was left out.
    """
    from bioimageio.spec.model import v0_5

    size = _test_size(keras_model, spec)
    _write_tensors(spec, keras_model, size, folder)
    (folder / "README.md").write_text(readme(spec, model_path))
    weights, notes = _weights(model_path, keras_model, folder)
    shipped = model_path.resolve() == DEFAULT_MODEL.resolve()
    descr = v0_5.ModelDescr(
        name=_name(spec), description=_summary(spec, shipped),
        authors=[{"name": "segflow contributors"}], cite=_cite(spec, shipped),
        license="Apache-2.0", tags=_tags(spec, shipped),
        documentation=v0_5.FileDescr(source=folder / "README.md"),
        covers=[v0_5.FileDescr(source=folder / "cover.png")],
        inputs=[_input(spec, None if takes_any_size(keras_model, spec) else size, folder)],
        outputs=[_output(spec, folder)],
        weights=weights, config={"segflow": json.loads(json.dumps(spec.to_dict()))})
    return descr, notes


def _write_tensors(spec, keras_model, size, folder):
    """Test tensors (``.npy``), sample tensors (``.tif``) and the cover of the test tile."""
    raw = test_tile(spec, size)
    x = _to_model(preprocess(raw, spec), spec)[None]
    maps = np.asarray(keras_model.predict_on_batch(x), np.float32)
    np.save(folder / "test_input.npy", _to_model(raw, spec)[None])
    np.save(folder / "test_output.npy", maps)
    tifffile.imwrite(folder / "sample_input.tif", _to_model(raw, spec))
    tifffile.imwrite(folder / "sample_output.tif", maps[0])
    _cover(raw, _from_model(maps[0], spec), folder / "cover.png")


def _test_size(keras_model, spec):
    if takes_any_size(keras_model, spec):
        return max(spec.divisor, TEST_SIZE // spec.divisor * spec.divisor)
    return spec.tile


def _to_model(x, spec):
    """``(..., H, W, C)`` to the model's axes (channels first for ``CYX``)."""
    return np.moveaxis(x, -1, -3) if spec.axes == "CYX" else x


def _from_model(x, spec):
    return np.moveaxis(x, -3, -1) if spec.axes == "CYX" else x


def _axes(spec, channel, space):
    from bioimageio.spec.model import v0_5

    yx = [space("y"), space("x")]
    inner = [channel] + yx if spec.axes == "CYX" else yx + [channel]
    return [v0_5.BatchAxis()] + inner


def _input(spec, fixed, folder):
    """The ``raw`` tensor: ``fixed`` its height and width, or None for multiples of divisor."""
    from bioimageio.spec.model import v0_5

    size = fixed or v0_5.ParameterizedSize(min=spec.divisor, step=spec.divisor)
    channel = v0_5.ChannelAxis(channel_names=input_names(spec))
    return v0_5.InputTensorDescr(
        id=INPUT_ID, axes=_axes(spec, channel, lambda a: v0_5.SpaceInputAxis(id=a, size=size)),
        description=f"A {spec.channels}-channel image, raw pixel values. {_channels_text(spec)}",
        test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=v0_5.FileDescr(source=folder / "sample_input.tif"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"), preprocessing=preprocessing(spec))


def _output(spec, folder):
    from bioimageio.spec.model import v0_5

    channel = v0_5.ChannelAxis(channel_names=map_names(spec))
    activation = "softmax over the classes" if spec.kind == "semantic" else "sigmoid"
    return v0_5.OutputTensorDescr(
        id=OUTPUT_ID, axes=_axes(spec, channel, lambda a: v0_5.SpaceOutputAxis(
            id=a, size=v0_5.SizeReference(tensor_id=INPUT_ID, axis_id=a))),
        description=f"{', '.join(map_names(spec))}: {activation}, in [0, 1].",
        test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=v0_5.FileDescr(source=folder / "sample_output.tif"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))


def _weights(model_path, keras_model, folder):
    """``keras_v3`` (the file as it is) and ``keras_hdf5`` where plain Keras loads the model."""
    import keras
    import tensorflow as tf
    from bioimageio.spec.model import v0_5

    backend = keras.backend.backend()
    version = keras.__version__ if backend != "tensorflow" else tf.__version__
    v3 = v0_5.KerasV3WeightsDescr(source=model_path, keras_version=keras.__version__,
                                  backend=(backend, version))
    custom = sorted({type(layer).__name__ for layer in _layers(keras_model)
                     if not type(layer).__module__.startswith("keras.")
                     or type(layer).__name__ == "Lambda"})
    if custom:
        return v0_5.WeightsDescr(keras_v3=v3), [
            f"keras_hdf5 left out: the model has layers plain Keras cannot load without "
            f"segflow's code or trust ({', '.join(custom)})."]
    h5 = folder / f"{model_path.stem}.h5"
    keras_model.save(h5)
    hdf5 = v0_5.KerasHdf5WeightsDescr(source=h5, tensorflow_version=tf.__version__,
                                      parent="keras_v3")
    return v0_5.WeightsDescr(keras_v3=v3, keras_hdf5=hdf5), []




def _name(spec):
    """The spec's name in the characters the zoo allows (letters, digits, ``_+- ()``)."""
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", spec.name).strip() or "segflow model"
    return name if len(name) >= 5 else f"segflow {name}"[:128]


def _summary(spec, shipped):
    what = {"instances": "three maps (foreground, boundary, distance) from which segflow's "
                         "marker-controlled watershed gives nucleus instance labels",
            "binary": "a foreground probability map from which segflow gives object labels",
            "semantic": f"per-pixel class probabilities ({', '.join(spec.classes)})"}[spec.kind]
    network = "U-Net" if _is_unet(spec, shipped) else "model"
    data = " trained on the DSB2018 nuclei images" if shipped else ""
    return (f"segflow {spec.kind} model {spec.name!r}: a Keras {network}{data} predicting "
            f"{what}. Labels: segflow run INPUT OUTPUT --model package.zip.")


def _is_unet(spec, shipped):
    """Whether the model is segflow's U-Net: the shipped one, or one ``segflow train`` made."""
    return shipped or "filters" in spec.training


def _cite(spec, shipped):
    cite = []
    if shipped:
        cite.append({"text": "Caicedo et al. 2019. Nucleus segmentation across imaging "
                             "experiments: the 2018 Data Science Bowl. Nature Methods 16, "
                             "1247-1253.", "doi": DSB2018_DOI})
    if _is_unet(spec, shipped):
        cite.append({"text": "Ronneberger, Fischer and Brox 2015. U-Net: Convolutional Networks "
                             "for Biomedical Image Segmentation. MICCAI 2015.", "doi": UNET_DOI})
    return cite


def _tags(spec, shipped):
    kind = {"instances": "instance-segmentation", "binary": "semantic-segmentation",
            "semantic": "semantic-segmentation"}[spec.kind]
    tags = ["segflow", "keras", "2d", kind] + (["unet"] if _is_unet(spec, shipped) else [])
    if shipped:
        tags += ["nuclei", "dsb2018", "fluorescence-light-microscopy", "histology",
                 "brightfield-microscopy"]
    return tags


def _cover(raw, maps, path):
    """The test tile (normalised to 0-255) beside its maps shown as colours: a 2:1 image."""
    from PIL import Image

    low, high = np.percentile(raw, [1, 99.8])
    image = np.clip((raw - low) / max(high - low, 1e-6), 0, 1)
    image = np.repeat(image.mean(-1, keepdims=True), 3, -1) if image.shape[-1] != 3 else image
    if maps.shape[-1] == 3:
        shown = maps
    elif maps.shape[-1] == 1:
        shown = np.repeat(maps, 3, -1)
    else:  # classes: hues of the argmax
        hues = np.linspace(0, 1, maps.shape[-1], endpoint=False)
        palette = np.stack([np.abs(np.sin(np.pi * (hues + k / 3))) for k in range(3)], -1)
        palette[0] = 0
        shown = palette[np.argmax(maps, -1)]
    both = np.concatenate([image, np.clip(shown, 0, 1)], axis=1)
    Image.fromarray((both * 255).round().astype(np.uint8)).save(path)


def _save(descr, path):
    """The package zip of ``descr`` at ``path``."""
    from bioimageio.spec import save_bioimageio_package

    return Path(save_bioimageio_package(descr, output_path=path))


def validate_package(path):
    """Validate a package with bioimageio.spec: its errors and warnings.

    Parameters
    ----------
    path : str or Path
        The package (a ``.zip``) or its ``rdf.yaml``.

    Returns
    -------
    errors, warnings : list of str
        One line each, ``field: message``; both empty for a clean package.
    """
    from bioimageio.spec import load_description

    summary = load_description(Path(path), perform_io_checks=True).validation_summary
    errors, warnings = [], []
    for detail in summary.details:
        errors += [_line(e) for e in detail.errors]
        warnings += [_line(w) for w in detail.warnings]
    return errors, sorted(set(warnings))


def _line(entry):
    where = ".".join(map(str, entry.loc))
    return f"{where}: {entry.msg}" if where else entry.msg


def readme(spec, model_path):
    """The package's documentation (``README.md``): model, data, inputs, outputs, labels.

    Parameters
    ----------
    spec : ModelSpec
    model_path : Path
        The bundle's ``.keras`` file (the shipped model gets its data and accuracy).

    Returns
    -------
    str
        Markdown.
    """
    shipped = Path(model_path).resolve() == DEFAULT_MODEL.resolve()
    names = map_names(spec)
    parts = [f"# {spec.name}: a segflow {spec.kind} model\n",
             _summary(spec, shipped) + "\n",
             "Written by `segflow model export` from a segflow bundle (a Keras 3 `.keras` file "
             "and its spec). The spec travels whole in the rdf's `config.segflow`.\n",
             "## Training data\n", _data_text(spec, shipped),
             "## Input\n", _input_text(spec),
             "## Outputs\n", _output_text(spec, names),
             "## From maps to labels\n", _labels_text(spec),
             "## Validation\n", _validation_text(spec, shipped),
             "## License and citation\n", _license_text(spec, shipped)]
    return "\n".join(parts)


def _license_text(spec, shipped):
    text = "Apache-2.0 (the weights and this package), by the segflow contributors."
    if shipped:
        return text + (" Cite the papers in the rdf's `cite`: the DSB2018 data (Caicedo et "
                       f"al. 2019, Nature Methods, doi:{DSB2018_DOI}) and the U-Net.\n")
    return text + (" Cite the U-Net paper in the rdf's `cite`.\n" if _is_unet(spec, shipped)
                   else "\n")


def _data_text(spec, shipped):
    if shipped:
        steps = spec.training.get("steps", "?")
        return ("The 2018 Data Science Bowl nuclei images (stage-1 training set, BBBC038; CC0): "
                "fluorescence, stained histology and brightfield images with hand-annotated "
                "nuclei. Caicedo et al. 2019, \"Nucleus segmentation across imaging "
                "experiments: the 2018 Data Science Bowl\", Nature Methods, "
                f"doi:{DSB2018_DOI}. Split by image id: "
                f"{spec.training.get('train_images', '?')} images for training, "
                f"{spec.training.get('tune_images', '?')} to tune the post-processing "
                f"thresholds, 77 held out for validation; {steps} steps of "
                f"{spec.training.get('batch_size', '?')} patches of "
                f"{spec.training.get('patch', '?')} px.\n")
    if spec.training:
        return ("Trained with `segflow train` on its owner's annotated images; the training "
                "settings are in `config.segflow.training`.\n")
    return "Not recorded in the bundle's spec.\n"


def _input_text(spec):
    axes = "batch, channel, y, x" if spec.axes == "CYX" else "batch, y, x, channel"
    text = (f"`{INPUT_ID}`: axes {axes}; {spec.channels} channel(s) "
            f"({', '.join(input_names(spec))}); height and width multiples of {spec.divisor}. "
            f"{_channels_text(spec)}\n\n")
    if spec.normalization == "percentile":
        text += (f"Pre-processing, as declared: `scale_range` with percentiles {spec.p_low} and "
                 f"{spec.p_high} taken jointly over y, x and the channels of each image (one "
                 "low and one high value per image, as segflow computes them), then `clip` to "
                 f"[{CLIP[0]}, {CLIP[1]}].\n\n"
                 "What the zoo's pre-processing cannot say, and segflow does:\n\n"
                 + ("- `invert: auto`: an image whose median is above the middle of its "
                    "percentile range (nuclei dark on a light background: brightfield, most "
                    "stained histology) is inverted (`1 - x`) so that nuclei are bright. Other "
                    "tools running this package do not invert: invert such images first, or "
                    "run the package with segflow.\n" if spec.invert == "auto" else "")
                 + "- a flat image (both percentiles equal) is scaled by its minimum and "
                   "maximum instead, and is all zeros when constant;\n"
                   "- percentiles of images over a million pixels come from a regular "
                   "subsample of about a million pixels.\n")
    elif spec.normalization == "range":
        text += ("Pre-processing: `scale_linear` with gain 1/255: segflow divides integer "
                 "images by their type's maximum, which is 255 for the 8-bit images this "
                 "declares; scale 16-bit images by 1/65535 instead.\n")
    else:
        text += "No pre-processing: the model takes raw values.\n"
    text += (f"\nsegflow runs the model on tiles of {spec.tile} px overlapping by "
             f"{spec.overlap} px on each side, keeping each tile's centre.")
    if spec.object_diameter:
        low, high = spec.object_diameter_range or (0.8 * spec.object_diameter,
                                                  1.2 * spec.object_diameter)
        text += (f" It works best on nuclei of about {spec.object_diameter:g} px in diameter: "
                 f"segflow resizes images whose median nucleus diameter lies outside "
                 f"{low:g}-{high:g} px towards it (automatic scale); resize such images "
                 "yourself elsewhere.")
    return text + "\n"


def _channels_text(spec):
    """How segflow brings an image to the model's channels (see ``to_channels``)."""
    if spec.channels == 1:
        return "segflow averages the colour channels of a colour image (alpha dropped)."
    return "segflow repeats a gray image to every channel and drops an alpha channel."


def _output_text(spec, names):
    axes = "batch, channel, y, x" if spec.axes == "CYX" else "batch, y, x, channel"
    text = f"`{OUTPUT_ID}`: axes {axes}, the input's height and width, float32 in [0, 1].\n\n"
    if spec.kind == "instances":
        return text + ("Channels (sigmoid each):\n\n"
                       "- `foreground`: probability that the pixel belongs to a nucleus;\n"
                       "- `boundary`: probability that the pixel lies on a nucleus' outline "
                       "(where touching nuclei meet);\n"
                       "- `distance`: distance to the nucleus' own border divided by its "
                       "maximum inside that nucleus (1 at each centre, 0 at its edge and on "
                       "the background).\n")
    if spec.kind == "binary":
        return text + "Channel `foreground` (sigmoid): probability of an object pixel.\n"
    return text + (f"Channels {', '.join(f'`{n}`' for n in names)}: softmax over the classes "
                   "(they sum to 1 at each pixel; class 0 is the background).\n")


def _labels_text(spec):
    p = spec.postprocess
    text = ("The zoo's spec has no instance step: this package gives the maps. To get labels, "
            "run it with segflow, which reads the spec from `config.segflow`:\n\n"
            "```\nsegflow run INPUT OUTPUT --model package.zip\n```\n\n")
    if spec.kind == "instances":
        return text + (
            "segflow's post-processing (a marker-controlled watershed, thresholds in "
            "`config.segflow.postprocess`):\n\n"
            f"1. foreground: pixels whose `foreground` is above {p.foreground:g};\n"
            f"2. markers: 4-connected regions where `distance - {p.boundary_weight:g} * "
            f"boundary` is above {p.marker:g} inside the foreground"
            + (f", of {p.min_marker_area} pixels or more" if p.min_marker_area > 1 else "")
            + (f"; each split where that score, raised in steps of {p.split_step:g}, breaks "
               f"it into parts holding at least {p.split_fraction:g} of its pixels"
               if p.split_step > 0 else "") + ";\n"
            "3. the watershed of `-distance` floods from the markers within the foreground; "
            "a foreground component without a marker keeps its own label;\n"
            f"4. objects under {p.min_area} pixels are dropped"
            + (f", and those whose mean `foreground` is under {p.min_mean_foreground:g}"
               if p.min_mean_foreground > 0 else "") + ".\n")
    if spec.kind == "binary":
        how = ("connected components (4-connected)" if spec.split == "components" else
               "a watershed on the distance transform of the foreground, from its local maxima")
        return text + (f"segflow thresholds `foreground` at {p.foreground:g} and labels the "
                       f"objects by {how}; objects under {p.min_area} pixels are dropped.\n")
    objects = (f"; objects are the 4-connected components of class `{spec.object_class}` of "
               f"{p.min_area} pixels or more" if spec.object_class else "")
    return text + f"segflow's class map is the argmax over the channels{objects}.\n"


def _validation_text(spec, shipped):
    text = ("The package's test tensors: `test_input.npy` is the top-left tile of a shipped "
            "DSB2018 fluorescence sample (raw values, float32) and `test_output.npy` the maps "
            "the model gives for it after the declared pre-processing.\n")
    if shipped:
        text += ("\nsegflow's labels on its 77 held-out DSB2018 validation images: mean AP "
                 "(IoU 0.50-0.95) 0.603, AP@0.5 0.806 (fluorescence 0.649, histology 0.396, "
                 "brightfield 0.524).\n")
    return text
