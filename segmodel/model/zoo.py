"""BioImage Model Zoo packages as segflow models: read the package, map it to a spec, run it.

A package is a ``.zip`` or a folder holding ``rdf.yaml`` (or ``bioimageio.yaml``), local or at
any fsspec URL. :func:`local_package` gives its folder (zips and remote packages are unpacked
under ``cache_dir()/zoo/<content hash>``); :func:`read_package` reads it with
``bioimageio.spec`` and maps it to a :class:`~segmodel.model.spec.ModelSpec`:

- a package made by segflow carries its spec as ``config: {segflow: {...}}``, used as it is;
- otherwise the spec is inferred: input channels and axes, tile and divisor from the input's
  sizes, the input's pre-processing as ``normalization: preprocessing`` steps, the kind from
  the output's channel names (foreground/boundary/distance: instances; one channel: binary;
  softmax or class channels: semantic) unless ``kind`` is given.

Weights run in the order of :data:`WEIGHTS_ORDER`: Keras weights on Keras or OpenVINO (as a
bundle's), ONNX and TensorFlow SavedModel weights through OpenVINO's converter. A
:class:`PackageRunner` moves the pipeline's batches into the package's axes and back, applies
its element-wise post-processing and orders the output channels as the kind expects.
"""

import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, replace
from math import gcd
from pathlib import Path

import numpy as np

from segmodel.inference.steps import STEPS, apply_steps, depends_on_image, estimate_steps
from segmodel.model.engines import cache_dir
from segmodel.model.spec import BundleError, spec_from_dict

#: Names of a package's description file.
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Weight formats segflow runs, in the order it picks them (Keras first: the path a bundle
#: takes, the same maps as a bundle of the same model).
WEIGHTS_ORDER = ("keras_v3", "keras_hdf5", "onnx", "tensorflow_saved_model_bundle")
KERAS_FORMATS = ("keras_v3", "keras_hdf5")
_ALL_FORMATS = ("keras_v3", "keras_hdf5", "onnx", "tensorflow_saved_model_bundle",
                "torchscript", "pytorch_state_dict", "tensorflow_js")
KINDS = ("instances", "binary", "semantic")
#: Channel-name words of each instance map (a channel matches when a word of its name does).
INSTANCE_WORDS = {
    "foreground": {"foreground", "fg", "probability", "prob", "mask"},
    "boundary": {"boundary", "boundaries", "contour", "contours", "edge", "edges", "border"},
    "distance": {"distance", "dist", "distances", "edt"},
}
#: Class-name words of the class whose components become objects (semantic packages).
OBJECT_WORDS = {"foreground", "interior", "nucleus", "nuclei", "cell", "cells", "object",
                "objects"}


class ZooError(BundleError):
    """A package segflow cannot run; the message names the package, what was found, the fix."""


def is_package(model):
    """Whether ``model`` names a BioImage Model Zoo package rather than a Keras bundle.

    Parameters
    ----------
    model : str or Path
        A ``.zip`` file, a folder holding ``rdf.yaml`` / ``bioimageio.yaml``, such a file, or
        an fsspec URL of any of these (a remote ``.keras`` is not a package).

    Returns
    -------
    bool
    """
    text = str(model)
    if text.lower().endswith(".zip") or text.rsplit("/", 1)[-1] in RDF_NAMES:
        return True
    if _is_remote(text):
        return not text.lower().endswith(".keras")
    path = Path(text)
    return path.is_dir() and any((path / n).is_file() for n in RDF_NAMES)


def _is_remote(text):
    return "://" in text and not text.startswith("file://")


_FETCHED = {}
_FETCH_LOCK = threading.Lock()


def local_package(model, storage_options=None):
    """The local folder of a package: a folder as it is, a zip or remote package unpacked.

    Zips and remote packages are unpacked under ``cache_dir()/zoo/<content hash>`` (see
    :func:`segmodel.model.engines.cache_dir`), once per content; a remote URL is fetched once
    per process (an explicit cache).

    Parameters
    ----------
    model : str or Path
        See :func:`is_package`.
    storage_options : dict, optional
        fsspec options for a remote URL (default none).

    Returns
    -------
    Path
        The folder holding the description file.

    Raises
    ------
    FileNotFoundError
        If a local package does not exist.
    ZooError
        If a zip is not a zip or holds no description file.
    """
    text = str(model)
    if _is_remote(text):
        with _FETCH_LOCK:
            if text not in _FETCHED:
                _FETCHED[text] = _fetch(text, storage_options)
            return _FETCHED[text]
    path = Path(text.removeprefix("file://"))
    if path.name in RDF_NAMES:
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"model package not found: {text!r}. Pass a BioImage Model Zoo "
                                "package (.zip, or a folder holding rdf.yaml).")
    return path if path.is_dir() else _unpacked(path.read_bytes(), text)


def _fetch(url, storage_options):
    """A remote package (zip, folder or description file) copied into the cache."""
    from segmodel.storage.io import open_url

    fs, path = open_url(url, storage_options, parameter="model")
    if path.rsplit("/", 1)[-1] in RDF_NAMES:
        path = path.rsplit("/", 1)[0]
    if not fs.exists(path):
        raise FileNotFoundError(f"model package not found: {url!r}.")
    if not fs.isdir(path):
        return _unpacked(fs.cat_file(path), url)
    files = {f[len(path) + 1:]: fs.cat_file(f) for f in sorted(fs.find(path))}
    h = hashlib.sha256()
    for rel, data in files.items():
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return _into_cache(h.hexdigest()[:16], lambda tmp: _write_files(tmp, files), url)


def _write_files(folder, files):
    for rel, data in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _unpacked(data, source):
    """A zip's content unpacked into the cache (by its content hash)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ZooError(f"model package {source!r} is not a zip archive: pass a BioImage Model "
                       "Zoo package (.zip) or a folder holding rdf.yaml.")
    digest = hashlib.sha256(data).hexdigest()[:16]
    return _into_cache(digest, lambda tmp: zipfile.ZipFile(io.BytesIO(data)).extractall(tmp),
                       source)


def _into_cache(digest, write, source):
    folder = cache_dir() / "zoo" / digest
    if not any((folder / n).is_file() for n in RDF_NAMES):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder.parent))
        try:
            write(tmp)  # zipfile drops absolute and ".." parts of member names
            if not any((tmp / n).is_file() for n in RDF_NAMES):
                raise ZooError(f"model package {source!r} holds no rdf.yaml or bioimageio.yaml "
                               "at its top: it is not a BioImage Model Zoo package.")
            try:
                os.rename(tmp, folder)  # atomic; another process may have won the race
            except OSError:
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


_DIGESTS = {}


def package_digest(root):
    """Content hash (16 hex digits) of a package folder's files, memoised by their stat.

    Parameters
    ----------
    root : str or Path
        The package folder.

    Returns
    -------
    str
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _DIGESTS:
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
        _DIGESTS[stamp] = h.hexdigest()[:16]
    return _DIGESTS[stamp]


@dataclass(frozen=True)
class Layout:
    """How a package's tensors map to the pipeline's batches.

    Attributes
    ----------
    spec_axes : {'byxc', 'bcyx'}
        The batches the pipeline sends and expects back (the spec's ``axes``).
    inputs, outputs : str
        The package's input and output axes, one letter each (``b``, ``c``, ``y``, ``x`` and
        size-1 ``z``, ``t`` or ``i`` axes), e.g. ``'bcyx'``.
    channels : tuple of int
        Output channels to keep, in the order the kind expects (empty: all, as they are).
    per_item : bool
        The package takes one image per call (no batch axis, or a batch of size 1).
    post : tuple of dict
        The output's element-wise post-processing steps.
    """

    spec_axes: str
    inputs: str
    outputs: str
    channels: tuple = ()
    per_item: bool = False
    post: tuple = ()


@dataclass(frozen=True)
class ZooPackage:
    """A package read by :func:`read_package`.

    Attributes
    ----------
    root : Path
        Its local folder.
    spec : ModelSpec
        What the pipeline knows about it.
    weights_format : str
        The weights chosen (one of :data:`WEIGHTS_ORDER`).
    weights : Path
        Their file (or folder).
    layout : Layout
    fingerprint : str
        Content hash of the package, the weights chosen and the kind asked for.
    any_size : bool
        The input takes any multiple of the divisor (min/step sizes), so larger tiles too.
    test_tensors : tuple of Path
        The package's test input and output (``.npy``), or empty where it has none.
    """

    root: Path
    spec: object
    weights_format: str
    weights: Path
    layout: Layout
    fingerprint: str
    any_size: bool = False
    test_tensors: tuple = ()


def read_package(root, *, kind=None, formats=WEIGHTS_ORDER, name=None):
    """Read a package folder and map it to a spec, weights and a layout.

    Parameters
    ----------
    root : str or Path
        The folder (see :func:`local_package`).
    kind : {'instances', 'binary', 'semantic'}, optional
        The output kind where the package does not tell (default: inferred).
    formats : sequence of str, optional
        Weight formats the chosen engine runs, in order of preference (default
        :data:`WEIGHTS_ORDER`).
    name : str, optional
        The package as the user gave it, for messages (default: ``root``).

    Returns
    -------
    ZooPackage

    Raises
    ------
    ZooError
        The package is not valid, has no weights segflow runs, a pre-processing step or an
        axis segflow does not support, or an output whose kind cannot be told.
    """
    root = Path(root)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"model_kind must be one of {', '.join(KINDS)}. Received: {kind!r}")
    descr, source = _describe(root, name or str(root))
    inp, out = descr.inputs[0], _output(descr, source)
    weights_format, weights = _weights(descr, source, formats)
    segflow = (descr.config.model_extra or {}).get("segflow") if descr.config else None
    layout = _layout(inp, out, source)
    if segflow is not None:
        spec = spec_from_dict(dict(segflow), f"{source} config.segflow")
        if kind is not None and kind != spec.kind:
            raise ZooError(f"{source}: model_kind={kind!r} but the package's segflow spec has "
                           f"kind {spec.kind!r}; leave model_kind unset.")
        layout = replace(layout, spec_axes="bcyx" if spec.axes == "CYX" else "byxc")
    else:
        fields, channels = _inferred_fields(descr, inp, out, layout.spec_axes, source, kind)
        spec = spec_from_dict(fields, source)
        layout = replace(layout, channels=channels)
    digest = hashlib.sha256(f"{package_digest(root)}|{weights_format}|{kind}".encode())
    sizes = [a.size for a in inp.axes if a.type == "space" and str(a.id) in ("y", "x")]
    any_size = all(hasattr(s, "step") and spec.divisor % s.step == 0 == s.min % s.step
                   for s in sizes)
    tests = tuple(Path(t.test_tensor.source.absolute()) for t in (inp, out)
                  if t.test_tensor is not None and hasattr(t.test_tensor.source, "absolute"))
    return ZooPackage(root, spec, weights_format, weights, layout, digest.hexdigest()[:16],
                      any_size, tests if len(tests) == 2 else ())


def _describe(root, name):
    """The package's model description (format 0.4 is updated to 0.5), and its name."""
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model import v0_5

    rdf = next((root / n for n in RDF_NAMES if (root / n).is_file()), None)
    source = f"model package {name!r}"
    if rdf is None:
        raise ZooError(f"{source} holds no rdf.yaml or bioimageio.yaml.")
    descr = load_model_description(rdf, format_version="latest")
    if not isinstance(descr, v0_5.ModelDescr):
        errors = getattr(getattr(descr, "validation_summary", None), "details", [])
        first = next((e for d in errors for e in getattr(d, "errors", [])), None)
        raise ZooError(f"{source} is not a valid model description"
                       + (f" ({first.loc}: {first.msg})" if first else "")
                       + ". Check it with: bioimageio validate PACKAGE.")
    if len(descr.inputs) != 1:
        raise ZooError(f"{source} has {len(descr.inputs)} inputs "
                       f"({', '.join(str(t.id) for t in descr.inputs)}); segflow runs models "
                       "with one image input.")
    return descr, source


def _output(descr, source):
    """The output segflow uses: the only one, else the one named ``maps`` or ``classes``."""
    if len(descr.outputs) == 1:
        return descr.outputs[0]
    named = [t for t in descr.outputs if str(t.id) in ("maps", "classes")]
    if len(named) == 1:
        return named[0]
    raise ZooError(f"{source} has {len(descr.outputs)} outputs "
                   f"({', '.join(str(t.id) for t in descr.outputs)}) and none named maps or "
                   "classes; segflow runs models with one output of maps.")


def _weights(descr, source, formats):
    """The first format of ``formats`` the package has, and its file."""
    found = [f for f in _ALL_FORMATS if getattr(descr.weights, f, None) is not None]
    chosen = next((f for f in formats if f in found), None)
    if chosen is None and not set(found) & set(WEIGHTS_ORDER):
        raise ZooError(f"{source} has weights in {', '.join(found)} only, which segflow cannot "
                       f"run. segflow runs {', '.join(WEIGHTS_ORDER)}: add such weights to the "
                       "package (e.g. export the model to ONNX).")
    if chosen is None:
        raise ZooError(f"{source} has weights in {', '.join(found)}, which run with OpenVINO, "
                       "not with engine 'keras': choose engine 'auto' or 'openvino'.")
    src = getattr(descr.weights, chosen).source
    if not hasattr(src, "absolute"):
        raise ZooError(f"{source}: its {chosen} weights are at {src}, outside the package. "
                       "Download the package with its weights (a zip from bioimage.io).")
    return chosen, Path(src.absolute())


def _letter(axis, source, tensor):
    """One letter for an axis; z, time and index axes only with size 1."""
    kind = axis.type
    if kind in ("batch", "channel"):
        return kind[0]
    if kind == "space" and str(axis.id) in ("y", "x"):
        return str(axis.id)
    size = axis.size if isinstance(axis.size, int) else getattr(axis.size, "min", None)
    if size != 1 or not isinstance(axis.size, int):
        raise ZooError(f"{source}: tensor {tensor!r} has a {kind} axis {str(axis.id)!r} of size "
                       f"{axis.size}; segflow segments 2-D images only (batch, channel, y, x; "
                       "other axes of size 1).")
    return {"space": "z", "time": "t"}.get(kind, "i")


def _layout(inp, out, source):
    ins = "".join(_letter(a, source, str(inp.id)) for a in inp.axes)
    outs = "".join(_letter(a, source, str(out.id)) for a in out.axes)
    for name, letters in ((str(inp.id), ins), (str(out.id), outs)):
        if "y" not in letters or "x" not in letters:
            raise ZooError(f"{source}: tensor {name!r} has axes {letters!r} without both y and "
                           "x; segflow segments 2-D images.")
    batch = next((a for a in inp.axes if a.type == "batch"), None)
    per_item = batch is None or batch.size == 1
    spec_axes = "bcyx" if "c" in ins and ins.index("c") < ins.index("y") else "byxc"
    post = _steps(out.postprocessing, source, f"output {str(out.id)!r} post-processing")
    bad = [s["step"] for s in post if depends_on_image(s)]
    if bad:
        raise ZooError(f"{source}: output {str(out.id)!r} post-processing step {bad[0]!r} is "
                       "not supported (it takes statistics of the whole output; segflow "
                       "post-processes tile by tile). Supported: scale_linear, clip (min/max), "
                       "sigmoid, softmax, binarize, ensure_dtype.")
    return Layout(spec_axes, ins, outs, (), per_item, post)


def _steps(processing, source, where):
    """The bioimageio processing steps as segflow steps (float32 casts left out)."""
    steps = []
    for p in processing:
        name = str(p.id)
        if name not in STEPS:
            raise ZooError(f"{source}: {where} step {name!r} is not supported. Supported: "
                           f"{', '.join(STEPS)}.")
        kw = p.kwargs.model_dump() if getattr(p, "kwargs", None) is not None else {}
        if name == "ensure_dtype" and kw["dtype"] == "float32":
            continue
        steps.append(_step(name, kw, source, where))
    return tuple(steps)


def _step(name, kw, source, where):
    """One step's settings in segflow's terms (reductions: ``per_channel``)."""
    along = kw.pop("axis", None)
    if along is not None and along != "channel":
        raise ZooError(f"{source}: {where} step {name!r} along axis {along!r} is not "
                       "supported: steps take one value or one per channel (axis 'channel'). "
                       f"Supported: {', '.join(STEPS)}.")
    if kw.pop("reference_tensor", None) is not None:
        raise ZooError(f"{source}: {where} step {name!r} with a reference_tensor is not "
                       "supported: statistics come from the image itself.")
    if "axes" in kw:
        axes = kw.pop("axes")
        kw["per_channel"] = axes is not None and "channel" not in axes
    step = {"step": name, **{k: v for k, v in kw.items() if k in STEPS[name]}}
    if name == "fixed_zero_mean_unit_variance" and "eps" not in step:
        step["eps"] = 1e-6
    return step


def _inferred_fields(descr, inp, out, spec_axes, source, kind):
    """Spec fields of a package without a segflow spec, and the output channels to keep."""
    tile, divisor = _tiling(inp, source)
    halo = max((getattr(a, "halo", 0) or 0 for a in out.axes), default=0)
    overlap = max(halo, min(32, tile // 4))
    if overlap >= tile // 2:
        raise ZooError(f"{source}: output halo {halo} needs tiles over {2 * halo} pixels but "
                       f"the input is {tile} pixels.")
    channel = next((a for a in inp.axes if a.type == "channel"), None)
    steps = _steps(inp.preprocessing, source, f"input {str(inp.id)!r} pre-processing")
    fields = {"name": str(descr.name), "channels": len(channel.channel_names) if channel else 1,
              "axes": "CYX" if spec_axes == "bcyx" else "YXC",
              "tile": tile, "divisor": divisor, "overlap": overlap,
              "normalization": "preprocessing" if steps else "none",
              "preprocessing": list(steps)}
    space = [a for a in inp.axes if a.type == "space" and str(a.id) in ("y", "x")]
    if all(a.unit == "micrometer" for a in space) and space[0].scale == space[1].scale != 1.0:
        fields["pixel_size"] = float(space[0].scale)
    names_kind, channels = _kind(out, source, kind)
    fields.update(names_kind)
    return fields, channels


def _tiling(inp, source):
    """``(tile, divisor)`` from the input's y and x sizes (divisor = tile: that size only)."""
    sizes = [a.size for a in inp.axes if a.type == "space" and str(a.id) in ("y", "x")]
    if all(isinstance(s, int) for s in sizes):
        if sizes[0] != sizes[1]:
            raise ZooError(f"{source}: input takes {sizes[0]}x{sizes[1]} images only; segflow "
                           "tiles are square.")
        return sizes[0], sizes[0]
    if not all(hasattr(s, "step") for s in sizes):
        raise ZooError(f"{source}: input sizes {sizes} mix fixed and parameterized y and x, "
                       "or refer to another tensor; segflow needs both fixed or both min/step.")
    step = sizes[0].step * sizes[1].step // gcd(sizes[0].step, sizes[1].step)
    low = max(s.min for s in sizes)
    if low % step == 0:
        return max(low, -(-256 // step) * step), step
    tile = next(n for n in range(max(low, 256), max(low, 256) + 64 * step)
                if all((n - s.min) % s.step == 0 for s in sizes))
    return tile, tile


def _kind(out, source, kind):
    """``({kind, classes, object_class}, channels)`` from the output's channel names."""
    channel = next((a for a in out.axes if a.type == "channel"), None)
    names = [str(n) for n in channel.channel_names] if channel else [str(out.id)]
    text = " ".join([out.description, channel.description if channel else ""]).lower()
    softmax = any(str(p.id) == "softmax" for p in out.postprocessing)
    roles = _instance_channels(names)
    if kind is None:
        if len(names) == 1:
            kind = "binary"
        elif roles is not None:
            kind = "instances"
        elif softmax or re.search(r"\b(softmax|class|classes|semantic)\b", text):
            kind = "semantic"
        else:
            raise ZooError(
                f"{source}: cannot tell the kind of output {str(out.id)!r} ({len(names)} "
                f"channels named {names}, no softmax): instances needs channels named "
                "foreground, boundary and distance, semantic a softmax or class description. "
                "Pass --model-kind instances|binary|semantic (SegmentParams.model_kind).")
    need = {"instances": len(names) == 3, "binary": len(names) == 1,
            "semantic": len(names) >= 2}[kind]
    if not need:
        raise ZooError(f"{source}: model_kind={kind!r} does not fit output {str(out.id)!r} with "
                       f"{len(names)} channels {names} (instances: 3, binary: 1, semantic: 2 "
                       "or more).")
    if kind == "instances":  # channels reordered by name, where needed
        return {"kind": kind}, tuple(roles) if roles not in (None, [0, 1, 2]) else ()
    if kind == "binary":
        return {"kind": kind}, ()
    return {"kind": kind, "classes": names, "object_class": _object_class(names)}, ()


def _words(name):
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def _instance_channels(names):
    """Indices of the foreground, boundary and distance channels, or None."""
    if len(names) != 3:
        return None
    found = []
    for words in INSTANCE_WORDS.values():
        hits = [i for i, n in enumerate(names) if _words(n) & words]
        if len(hits) != 1:
            return None
        found.append(hits[0])
    return found if len(set(found)) == 3 else None


def _object_class(classes):
    hits = [c for c in classes[1:] if _words(c) & OBJECT_WORDS]
    if hits:
        return hits[0]
    return classes[1] if len(classes) == 2 else ""


def weights_for_openvino(package):
    """The file OpenVINO's converter reads: the ONNX file, or the SavedModel folder.

    A zipped SavedModel is unpacked under ``cache_dir()/zoo`` first.

    Parameters
    ----------
    package : ZooPackage

    Returns
    -------
    Path
    """
    path = package.weights
    if package.weights_format == "tensorflow_saved_model_bundle" and path.is_file():
        folder = cache_dir() / "zoo" / f"savedmodel-{package.fingerprint}"
        if not folder.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder.parent))
            zipfile.ZipFile(path).extractall(tmp)
            os.replace(tmp, folder)
        inner = [p.parent for p in folder.rglob("saved_model.pb")]
        return inner[0] if inner else folder
    return path


def reproduce(package, runner, prepare):
    """Largest difference between the package's test output and segflow's for its test input.

    Parameters
    ----------
    package : ZooPackage
    runner : PackageRunner
        The model on its engine (a :class:`~segmodel.model.loading.LoadedModel`'s runner).
    prepare : callable
        ``prepare((H, W, C) image) -> (H, W, C) float32``: the spec's normalisation, its
        statistics estimated on the whole test input.

    Returns
    -------
    float or None
        The maximum absolute difference; None where the package has no test tensors.
    """
    if not package.test_tensors:
        return None
    lay = package.layout
    raw, want = (np.load(p) for p in package.test_tensors)
    x = prepare(_moved(raw, lay.inputs, "byxc")[0])
    got = _moved(runner(_moved(x[None], "byxc", lay.spec_axes)), lay.spec_axes, "byxc")
    want = _moved(want.astype(np.float32), lay.outputs, "byxc")
    if lay.channels:
        want = want[..., list(lay.channels)]
    return float(np.abs(got - want).max())


class PackageRunner:
    """Runs a package's model on the pipeline's batches (its axes, post-processing, channels).

    Parameters
    ----------
    run : callable
        The model: a batch in the package's input axes to its output.
    layout : Layout
        How batches map to the package's axes.
    precision : str, optional
        What the model computes in (default ``'f32'``).
    """

    def __init__(self, run, layout, precision="f32"):
        self.run, self.layout, self.precision = run, layout, precision

    def __call__(self, batch):
        """Maps for ``batch`` (the spec's axes) in the spec's axes, channels as the kind wants."""
        batch = np.asarray(batch, dtype=np.float32)
        if self.layout.per_item:
            return np.concatenate([self._call(batch[i:i + 1]) for i in range(len(batch))])
        return self._call(batch)

    def _call(self, batch):
        lay = self.layout
        y = np.asarray(self.run(_moved(batch, lay.spec_axes, lay.inputs)))
        maps = _moved(y, lay.outputs, "byxc")
        if lay.post:
            maps = apply_steps(maps, estimate_steps(maps[:1], lay.post))
        if lay.channels:
            maps = maps[..., list(lay.channels)]
        return np.ascontiguousarray(_moved(maps, "byxc", lay.spec_axes))


def _moved(x, src, dst):
    """``x`` with axes ``src`` (letters) rearranged to ``dst``: size-1 axes dropped or added."""
    for i in reversed(range(len(src))):
        if src[i] not in dst:
            x = np.take(x, 0, axis=i)
    kept = [a for a in src if a in dst]
    x = np.transpose(x, [kept.index(a) for a in dst if a in kept])
    for i, a in enumerate(dst):
        if a not in kept:
            x = np.expand_dims(x, i)
    return x
