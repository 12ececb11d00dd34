"""BioImage Model Zoo packages: pre-processing steps, the spec read from a package, the
runner's axes and channels, and the one-line errors for packages segflow cannot run."""

import hashlib
import zipfile

import fsspec
import numpy as np
import pytest
from bioimageio.spec.model import v0_5 as m

from segmodel.inference import steps
from segmodel.model import spec as specs
from segmodel.model import zoo
from segmodel.model.loading import load_model
from tests.zoo_packages import write_package

SCALE_RANGE = m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
    axes=[m.AxisId("y"), m.AxisId("x")], min_percentile=1.0, max_percentile=99.8))


def _checked(*raw):
    return steps.check_steps(list(raw))


def test_scale_range_per_channel_and_joint_percentiles():
    rng = np.random.default_rng(0)
    image = np.stack([rng.uniform(0, 10, (40, 50)), rng.uniform(100, 300, (40, 50))], -1)
    per = _checked({"step": "scale_range", "min_percentile": 1.0, "max_percentile": 99.0})
    x = steps.apply_steps(image, steps.estimate_steps(image, per))
    for c in range(2):
        lo, hi = np.percentile(image[..., c], [1.0, 99.0])
        assert np.allclose(x[..., c], (image[..., c] - lo) / (hi - lo + 1e-6), atol=1e-5)
    joint = _checked({"step": "scale_range", "max_percentile": 100.0, "per_channel": False})
    y = steps.apply_steps(image, steps.estimate_steps(image, joint))
    assert y.min() == pytest.approx(0.0, abs=1e-6) and y.max() == pytest.approx(1.0, abs=1e-6)
    assert y[..., 0].max() < 0.05  # channel 0 is scaled by both channels' range


def test_zero_mean_unit_variance_per_sample_and_fixed():
    rng = np.random.default_rng(1)
    image = rng.normal(5, 3, (30, 30, 1))
    x = steps.apply_steps(image, steps.estimate_steps(
        image, _checked({"step": "zero_mean_unit_variance"})))
    assert x.mean() == pytest.approx(0.0, abs=1e-5) and x.std() == pytest.approx(1.0, abs=1e-4)
    fixed = _checked({"step": "fixed_zero_mean_unit_variance", "mean": 5.0, "std": 2.0})
    assert np.allclose(steps.apply_steps(image, steps.estimate_steps(image, fixed)),
                       (image - 5.0) / (2.0 + 1e-6), atol=1e-5)


def test_scale_linear_clip_binarize_and_dtype_per_channel():
    image = np.array([[[10.0, 2.0], [300.0, 4.0]]])  # (1, 2, 2)
    ops = steps.estimate_steps(image, _checked(
        {"step": "ensure_dtype", "dtype": "uint8"},  # 300 wraps as numpy casts
        {"step": "scale_linear", "gain": [0.5, 2.0], "offset": 1.0},
        {"step": "clip", "min": 0.0, "max": 8.0}))
    assert steps.apply_steps(image, ops).tolist() == [[[6.0, 5.0], [8.0, 8.0]]]
    ops = steps.estimate_steps(image, _checked({"step": "binarize", "threshold": [20.0, 3.0]}))
    assert steps.apply_steps(image, ops).tolist() == [[[0.0, 0.0], [1.0, 1.0]]]


def test_steps_estimated_on_the_image_apply_to_a_tile_as_to_the_whole():
    rng = np.random.default_rng(2)
    image = rng.gamma(2.0, 50.0, (64, 80, 3)).astype(np.float32)
    ops = steps.estimate_steps(image, _checked(
        {"step": "scale_range", "min_percentile": 2.0, "max_percentile": 98.0},
        {"step": "clip", "max_percentile": 90.0}))
    whole = steps.apply_steps(image, ops)
    assert np.array_equal(steps.apply_steps(image[10:30, 20:60], ops), whole[10:30, 20:60])
    assert steps.apply_steps(image, ops).dtype == np.float32


def test_a_spec_with_an_unknown_step_names_it_and_the_supported_ones():
    with pytest.raises(specs.BundleError, match=r"field 'preprocessing': step 0 \('gamma'\) is "
                       r"not supported. Supported steps: scale_range, zero_mean_unit_variance"):
        specs.spec_from_dict({"normalization": "preprocessing",
                              "preprocessing": [{"step": "gamma"}]}, "m.json")
    with pytest.raises(specs.BundleError, match="applied only with normalization: preprocess"):
        specs.spec_from_dict({"preprocessing": [{"step": "sigmoid"}]}, "m.json")
    spec = specs.spec_from_dict({"normalization": "preprocessing", "preprocessing": [
        {"step": "scale_range", "max_percentile": 99.5}]})
    assert spec.preprocessing == ({"step": "scale_range", "min_percentile": 0.0,
                                   "max_percentile": 99.5, "eps": 1e-6, "per_channel": True},)
    assert specs.spec_from_dict(spec.to_dict()) == spec  # round-trips through its dict


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Stand-in weight files: the errors tested here come before any weights load."""
    folder = tmp_path_factory.mktemp("weights")
    for name in ("w.keras", "w.pt", "w.zip"):
        (folder / name).write_bytes(b"not read")
    return folder


def test_a_package_maps_to_a_spec_tile_channels_and_steps(tmp_path, weights):
    pkg = write_package(tmp_path / "p", {"keras_v3": weights / "w.keras"}, in_axes="bcyx",
                        in_names=("dapi", "actin"), out_names=("dist", "fg", "contour"),
                        preprocessing=[SCALE_RANGE], size=48, step=16)
    read = zoo.read_package(pkg)
    assert read.spec.kind == "instances" and read.spec.channels == 2
    assert (read.spec.axes, read.spec.tile, read.spec.divisor, read.spec.overlap) == (
        "CYX", 256, 16, 32)
    assert read.spec.normalization == "preprocessing"
    assert read.spec.preprocessing == ({"step": "scale_range", "min_percentile": 1.0,
                                        "max_percentile": 99.8, "eps": 1e-6,
                                        "per_channel": True},)
    assert read.layout.channels == (1, 2, 0) and read.any_size
    assert read.weights_format == "keras_v3" and read.weights.name == "w.keras"


def test_the_runner_moves_axes_and_orders_channels_by_name():
    # the package's model: input bcyx, output byxc with channels distance, foreground, boundary
    layout = zoo.Layout("byxc", "bcyx", "byxc", channels=(1, 2, 0), per_item=True,
                        post=steps.check_steps([{"step": "scale_linear", "gain": 2.0}]))
    calls = []

    def model(x):  # channels (c0, c0 + 1, c0 + 2), channels last
        calls.append(x.shape)
        return np.stack([x[:, 0], x[:, 0] + 1, x[:, 0] + 2], -1)

    batch = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5, 1)
    out = zoo.PackageRunner(model, layout)(batch)
    assert calls == [(1, 1, 4, 5)] * 2  # one image per call, channels first
    assert np.array_equal(out, 2 * np.concatenate([batch + 1, batch + 2, batch], -1))


@pytest.mark.parametrize("fmt, files, message", [
    ("weights", {"torchscript": "w.pt"},
     "has weights in torchscript only, which segflow cannot run. segflow runs keras_v3, "
     "keras_hdf5, onnx, tensorflow_saved_model_bundle"),
    ("step", {"keras_v3": "w.keras"},
     "input 'raw' pre-processing step 'scale_linear' along axis 'x' is not supported: steps "
     "take one value or one per channel (axis 'channel'). Supported: scale_range, "
     "zero_mean_unit_variance"),
    ("post", {"keras_v3": "w.keras"},
     "output 'maps' post-processing step 'scale_mean_variance' is not supported. Supported: "
     "scale_range, zero_mean_unit_variance"),
    ("3d", {"keras_v3": "w.keras"},
     "has a space axis 'z' of size 8; segflow segments 2-D images only"),
    ("kind", {"keras_v3": "w.keras"},
     "cannot tell the kind of output 'maps' (3 channels named ['a', 'b', 'c'], no softmax)"),
], ids=["unsupported-weights", "unsupported-preprocessing", "unsupported-postprocessing",
        "3d-axes", "ambiguous-kind"])
def test_a_package_segflow_cannot_run_fails_in_one_line(tmp_path, weights, fmt, files, message):
    extra = {"step": {"preprocessing": [m.ScaleLinearDescr(kwargs=m.ScaleLinearAlongAxisKwargs(
                 axis=m.AxisId("x"), gain=[2.0] * 64, offset=[0.0] * 64))]},
             "post": {"postprocessing": [m.ScaleMeanVarianceDescr(
                 kwargs=m.ScaleMeanVarianceKwargs(reference_tensor=m.TensorId("raw")))]},
             "3d": {"in_axes": "bzyxc", "z": 8},
             "kind": {"out_names": ("a", "b", "c")}}.get(fmt, {})
    pkg = write_package(tmp_path / "p", {f: weights / p for f, p in files.items()}, **extra)
    with pytest.raises(zoo.ZooError) as err:
        load_model(pkg)
    assert message in str(err.value) and str(pkg) in str(err.value)
    assert "\n" not in str(err.value)
    if fmt == "kind":
        assert "Pass --model-kind instances|binary|semantic" in str(err.value)
        assert zoo.read_package(pkg, kind="semantic").spec.classes == ("a", "b", "c")
        assert zoo.read_package(pkg, kind="instances").layout.channels == ()


def test_a_remote_package_is_fetched_into_the_cache_by_its_content(tmp_path, weights,
                                                                   monkeypatch):
    monkeypatch.setenv("SEGFLOW_CACHE_DIR", str(tmp_path / "cache"))
    pkg = write_package(tmp_path / "p.zip", {"keras_v3": weights / "w.keras"})
    fs = fsspec.filesystem("memory")
    url = f"memory://zoo-{tmp_path.name}"
    fs.pipe(f"{url}/p.zip", pkg.read_bytes())
    root = zoo.local_package(f"{url}/p.zip")
    assert root == tmp_path / "cache" / "zoo" / hashlib.sha256(pkg.read_bytes()).hexdigest()[:16]
    assert zoo.read_package(root).spec.kind == "instances"
    with zipfile.ZipFile(pkg) as z:  # the same package as a remote folder
        for name in z.namelist():
            fs.pipe(f"{url}/folder/{name}", z.read(name))
    folder = zoo.local_package(f"{url}/folder/rdf.yaml")
    assert folder.parent == root.parent and folder != root
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in root.iterdir())
    with pytest.raises(FileNotFoundError, match="model package not found"):
        zoo.local_package(f"{url}/missing.zip")


def test_model_kind_is_refused_for_a_bundle_whose_spec_says_another():
    with pytest.raises(specs.BundleError, match="model_kind='binary' but the bundle .*nuclei"
                       r"\.keras' has kind 'instances' in its spec"):
        load_model(None, kind="binary")  # refused before the model loads
