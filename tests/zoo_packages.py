"""BioImage Model Zoo packages written with bioimageio.spec's own classes, for the tests.

:func:`write_package` describes a model (its weights files, axes, channel names, pre- and
post-processing) as a ``ModelDescr`` and saves it as a folder or a ``.zip`` with
``save_bioimageio_package``, so every package the tests run is a valid zoo package.
"""

from pathlib import Path

import numpy as np
from bioimageio.spec import save_bioimageio_package
from bioimageio.spec.generic.v0_3 import Author, CiteEntry
from bioimageio.spec.model import v0_5 as m

_WEIGHTS = {
    "keras_v3": lambda p: m.KerasV3WeightsDescr(source=p, keras_version="3.0",
                                                backend=("tensorflow", "2.16")),
    "keras_hdf5": lambda p: m.KerasHdf5WeightsDescr(source=p, tensorflow_version="2.16"),
    "onnx": lambda p: m.OnnxWeightsDescr(source=p, opset_version=13),
    "tensorflow_saved_model_bundle": lambda p: m.TensorflowSavedModelBundleWeightsDescr(
        source=p, tensorflow_version="2.16"),
    "torchscript": lambda p: m.TorchscriptWeightsDescr(source=p, pytorch_version="2.1"),
    "tensorflow_js": lambda p: m.TensorflowJsWeightsDescr(source=p, tensorflow_version="2.16"),
}


def _axes(letters, channel_names, *, tensor, size, step=16, z=1):
    axes = []
    for a in letters:
        if a == "b":
            axes.append(m.BatchAxis())
        elif a == "c":
            axes.append(m.ChannelAxis(channel_names=[m.Identifier(n) for n in channel_names]))
        elif a == "z":
            axes.append(m.SpaceInputAxis(id=m.AxisId(a), size=z))
        elif tensor is None:  # an input axis
            fixed = size if step is None else m.ParameterizedSize(min=size, step=step)
            axes.append(m.SpaceInputAxis(id=m.AxisId(a), size=fixed))
        else:
            axes.append(m.SpaceOutputAxis(id=m.AxisId(a), size=m.SizeReference(
                tensor_id=m.TensorId(tensor), axis_id=m.AxisId(a))))
    return axes


def _shape(letters, channels, size, z=1):
    return tuple({"b": 1, "c": channels, "z": z}.get(a, size) for a in letters)


def write_package(out, weights, *, in_axes="byxc", in_names=("dapi",), out_axes=None,
                  out_names=("foreground", "boundary", "distance"), preprocessing=(),
                  postprocessing=(), config=None, size=64, step=16, test_io=None,
                  description="", out_id="maps", z=1):
    """Write a zoo package and return its path (a folder, or a zip where ``out`` ends .zip).

    ``weights`` maps a format to its file; ``preprocessing`` and ``postprocessing`` are
    bioimageio ``*Descr`` steps; ``test_io`` is ``(input, output)`` arrays in the package's axes
    (default: random values of the right shapes); ``z`` is the size of a ``z`` axis in ``in_axes``.
    """
    out = Path(out)
    work = out.with_suffix("") if out.suffix == ".zip" else out
    work = work.parent / f"{work.name}-src" if out.suffix == ".zip" else work
    work.mkdir(parents=True, exist_ok=True)
    out_axes = out_axes or in_axes.replace("z", "")
    if test_io is None:
        rng = np.random.default_rng(0)
        test_io = (rng.uniform(0, 1, _shape(in_axes, len(in_names), size, z)).astype("f4"),
                   rng.uniform(0, 1, _shape(out_axes, len(out_names), size)).astype("f4"))
    np.save(work / "test_input.npy", test_io[0])
    np.save(work / "test_output.npy", test_io[1])
    (work / "README.md").write_text("# A test model\n\nWritten by segflow's tests.\n")
    inp = m.InputTensorDescr(
        id=m.TensorId("raw"), axes=_axes(in_axes, in_names, tensor=None, size=size, step=step,
                                         z=z),
        test_tensor=m.FileDescr(source=work / "test_input.npy"),
        preprocessing=list(preprocessing))
    output = m.OutputTensorDescr(
        id=m.TensorId(out_id), description=description,
        axes=_axes(out_axes, out_names, tensor="raw", size=size),
        test_tensor=m.FileDescr(source=work / "test_output.npy"),
        postprocessing=list(postprocessing))
    descr = m.ModelDescr(
        name="segflow test model", description="A tiny model trained in segflow's tests.",
        authors=[Author(name="segflow tests")],
        cite=[CiteEntry(text="segflow", url="https://example.org/segflow")], license="MIT",
        documentation=m.FileDescr(source=work / "README.md"), inputs=[inp], outputs=[output],
        weights=m.WeightsDescr(**{f: _WEIGHTS[f](Path(p)) for f, p in weights.items()}),
        config=config or {})
    if out.suffix == ".zip":
        return save_bioimageio_package(descr, output_path=out)
    return _save_folder(descr, out)


def _save_folder(descr, folder):
    """The package as a folder: the zip unpacked (bioimageio.spec writes the files it names)."""
    import zipfile

    zipped = save_bioimageio_package(descr, output_path=folder.parent / f"{folder.name}.zip")
    with zipfile.ZipFile(zipped) as z:
        z.extractall(folder)
    return folder
