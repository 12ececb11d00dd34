"""`segflow model export --format bioimageio`: real packages, validated by bioimageio.spec,
reopened and checked field by field; the packaged weights rerun on the declared pre-processing
reproduce the test output."""

import io
import json
import time
import zipfile

import fsspec
import numpy as np
import pytest
import yaml
from PIL import Image

from flows.cli import main
from segmodel.inference.preprocess import extract_tile
from segmodel.model.bundle import save_bundle
from segmodel.model.spec import ModelSpec
from segmodel.model.unet import build_unet
from segmodel.model.zoo_export import (
    SAMPLE,
    ExportOptions,
    export_package,
    validate_package,
)

CLASSES = ["background", "interior", "boundary"]


def _channels_first_unet():
    """A tiny 3-class semantic U-Net taking and giving channels first (axes CYX)."""
    import keras
    from keras import layers

    inner = build_unet(channels=3, filters=(4, 8), bottleneck=8, outputs=3,
                       activation="softmax", name="inner")
    x = keras.Input((3, None, None), name="image")
    maps = layers.Permute((3, 1, 2), name="to_cyx")(inner(layers.Permute((2, 3, 1),
                                                                         name="to_yxc")(x)))
    return keras.Model(x, maps, name="tiny_cyx")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    spec = ModelSpec(name="tiny semantic", kind="semantic", classes=tuple(CLASSES),
                     object_class="interior", axes="CYX", divisor=4, tile=64, overlap=8,
                     p_low=2.0, p_high=99.0)
    path = tmp_path_factory.mktemp("cyx") / "tiny.keras"
    save_bundle(_channels_first_unet(), spec, path, fmt="yaml")
    return path, spec


@pytest.fixture(scope="module")
def package(bundle, tmp_path_factory):
    """The bundle exported to memory:// (through fsspec), copied to a local zip."""
    done = export_package(ExportOptions(model=str(bundle[0]), out="memory://zoo/tiny.zip"))
    local = tmp_path_factory.mktemp("pkg") / "tiny.zip"
    local.write_bytes(fsspec.filesystem("memory").cat_file("/zoo/tiny.zip"))
    return local, done


def _rdf(path):
    with zipfile.ZipFile(path) as z:
        return yaml.safe_load(z.read("rdf.yaml")), set(z.namelist())


def _npy(path, name):
    with zipfile.ZipFile(path) as z:
        return np.load(io.BytesIO(z.read(name)))


def _declared_preprocessing(raw, steps):
    """The rdf's pre-processing, applied by plain numpy from its own values (per sample)."""
    x = raw.astype(np.float32)
    for step in steps:
        kw = step.get("kwargs", {})
        if step["id"] == "scale_range":
            low = np.percentile(x, kw["min_percentile"], axis=(1, 2, 3), keepdims=True)
            high = np.percentile(x, kw["max_percentile"], axis=(1, 2, 3), keepdims=True)
            x = (x - low) / (high - low + kw.get("eps", 1e-6))
        elif step["id"] == "clip":
            x = np.clip(x, kw["min"], kw["max"])
    return x.astype(np.float32)


def _run_packaged(path, rdf, weights="keras_v3"):
    import keras

    name = rdf["weights"][weights]["source"]
    with zipfile.ZipFile(path) as z, z.open(name) as f:
        local = path.with_name(f"unzipped-{name}")
        local.write_bytes(f.read())
    model = keras.saving.load_model(local, compile=False)
    raw = _npy(path, rdf["inputs"][0]["test_tensor"]["source"])
    return model.predict_on_batch(_declared_preprocessing(raw, rdf["inputs"][0]["preprocessing"]))


def test_a_bundle_package_validates_with_no_error(package):
    path, done = package
    errors, warnings = validate_package(path)
    assert errors == []
    assert warnings == list(done.warnings)
    assert done.weights == ("keras_v3", "keras_hdf5") and done.notes == ()
    assert done.size == path.stat().st_size


def test_the_rdf_holds_the_bundle_spec_and_the_tensor_contract(package, bundle):
    rdf, names = _rdf(package[0])
    spec = bundle[1]
    assert rdf["config"]["segflow"] == json.loads(json.dumps(spec.to_dict()))
    assert rdf["format_version"].startswith("0.5.") and rdf["license"] == "Apache-2.0"
    assert rdf["authors"] == [{"name": "segflow contributors"}]
    (raw,), (maps,) = rdf["inputs"], rdf["outputs"]
    assert (raw["id"], maps["id"]) == ("raw", "maps")
    assert [a.get("id", a["type"]) for a in raw["axes"]] == ["batch", "channel", "y", "x"]
    assert [a.get("id", a["type"]) for a in maps["axes"]] == ["batch", "channel", "y", "x"]
    assert raw["axes"][2]["size"] == {"min": 4, "step": 4}
    assert maps["axes"][1]["channel_names"] == CLASSES
    assert maps["axes"][3]["size"] == {"tensor_id": "raw", "axis_id": "x"}
    steps = [s for s in raw["preprocessing"] if s["id"] != "ensure_dtype"]
    assert steps == [{"id": "scale_range", "kwargs": {"axes": ["y", "x", "channel"],
                                                      "min_percentile": 2.0,
                                                      "max_percentile": 99.0}},
                     {"id": "clip", "kwargs": {"min": -0.5, "max": 1.5}}]
    assert {"rdf.yaml", "README.md", "cover.png", "tiny.keras", "tiny.h5", "test_input.npy",
            "test_output.npy"} <= names


def test_the_test_input_is_the_shipped_sample_tile_channels_first(package):
    path = package[0]
    raw = _npy(path, "test_input.npy")
    sample = np.asarray(Image.open(SAMPLE))[..., :3]
    assert raw.dtype == np.float32 and raw.shape == (1, 3, 256, 256)
    np.testing.assert_array_equal(raw[0].transpose(1, 2, 0), extract_tile(sample, (0, 0), 256))


@pytest.mark.parametrize("weights", ["keras_v3", "keras_hdf5"])
def test_the_packaged_weights_reproduce_the_test_output(package, weights):
    path = package[0]
    rdf, _ = _rdf(path)
    expected = _npy(path, "test_output.npy")
    assert expected.dtype == np.float32 and expected.shape == (1, 3, 256, 256)
    np.testing.assert_allclose(_run_packaged(path, rdf, weights), expected, atol=1e-5)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)  # softmax over classes


def test_the_readme_says_how_to_get_labels_and_what_cannot_be_declared(package):
    with zipfile.ZipFile(package[0]) as z:
        text = z.read("README.md").decode()
    assert "segflow run INPUT OUTPUT --model package.zip" in text
    assert "`invert: auto`" in text and "## Validation" in text
    assert "connected components of class `interior`" in text


def test_the_cover_is_the_tile_beside_its_maps(package):
    with zipfile.ZipFile(package[0]) as z:
        cover = Image.open(io.BytesIO(z.read("cover.png")))
    assert cover.size == (512, 256)


@pytest.fixture(scope="module")
def scaled_layer():
    """A custom layer class (registered, so this process loads it; plain Keras elsewhere not)."""
    import keras

    @keras.saving.register_keras_serializable(package="segflow_tests")
    class Doubled(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    return Doubled


def test_a_model_with_a_custom_layer_gets_keras_v3_weights_only(scaled_layer, tmp_path):
    import keras

    x = keras.Input((64, 64, 1), name="image")
    y = keras.layers.Conv2D(1, 1, activation="sigmoid", name="maps")(scaled_layer()(x))
    spec = ModelSpec(name="fixed-binary", kind="binary", channels=1, divisor=1, tile=64,
                     overlap=8, normalization="range")
    save_bundle(keras.Model(x, y), spec, tmp_path / "fixed.keras")
    out = tmp_path / "fixed.zip"
    done = export_package(ExportOptions(model=str(tmp_path / "fixed.keras"), out=str(out)))
    assert done.weights == ("keras_v3",)
    assert "keras_hdf5 left out" in done.notes[0] and "Doubled" in done.notes[0]
    assert validate_package(out)[0] == []
    rdf, names = _rdf(out)
    assert "fixed.h5" not in names and set(rdf["weights"]) == {"keras_v3"}
    (raw,), (maps,) = rdf["inputs"], rdf["outputs"]
    assert [a.get("size") for a in raw["axes"][1:3]] == [64, 64]
    assert raw["axes"][3]["channel_names"] == ["gray"]
    assert maps["axes"][3]["channel_names"] == ["foreground"]
    steps = [s for s in raw["preprocessing"] if s["id"] != "ensure_dtype"]
    assert steps == [{"id": "scale_linear", "kwargs": {"gain": 1 / 255, "offset": 0.0}}]
    gray = np.asarray(Image.open(SAMPLE))[:64, :64, :3].astype(np.float32).mean(-1)
    np.testing.assert_allclose(_npy(out, "test_input.npy")[0, ..., 0], gray, rtol=1e-6)


def test_a_spec_that_does_not_fit_its_model_is_refused(bundle, tmp_path):
    misfit = tmp_path / "misfit.keras"
    misfit.write_bytes(bundle[0].read_bytes())
    misfit.with_suffix(".json").write_text(json.dumps({"kind": "binary", "axes": "CYX"}))
    with pytest.raises(ValueError, match="field 'kind' is 'binary'.*segflow model inspect"):
        export_package(ExportOptions(model=str(misfit), out=str(tmp_path / "p.zip")))
    assert not (tmp_path / "p.zip").exists()


@pytest.mark.parametrize("options, match", [
    ({"out": "pkg.tar"}, "OUT must be a .zip file .* Received: 'pkg.tar'"),
    ({"out": "pkg.zip", "model": "no/such.keras"}, "MODEL 'no/such.keras' not found"),
    ({"out": "pkg.zip", "format": "onnx"}, "format"),
], ids=["not-zip", "missing-model", "unknown-format"])
def test_bad_options_are_refused_before_any_work(options, match, tmp_path, monkeypatch):
    from pydantic import ValidationError

    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError, ValidationError), match=match):
        export_package(ExportOptions(**options))
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_a_spec_is_refused(bundle, tmp_path):
    lone = tmp_path / "lone.keras"
    lone.write_bytes(bundle[0].read_bytes())
    with pytest.raises(ValueError, match="has no spec beside it"):
        export_package(ExportOptions(model=str(lone), out=str(tmp_path / "p.zip")))


def test_an_out_under_a_file_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    started = time.monotonic()
    with pytest.raises(ValueError, match="OUT"):
        export_package(ExportOptions(out=str(tmp_path / "notes.txt" / "p.zip")))
    assert time.monotonic() - started < 1.0  # refused before the model loads


@pytest.mark.parametrize("argv, message", [
    (["model", "export", "default", "out.tar"], "segflow: OUT must be a .zip file"),
    (["model", "export", "no-such.keras", "out.zip"], "segflow: MODEL 'no-such.keras' not found"),
], ids=["not-zip", "missing-model"])
def test_segflow_model_export_errors_are_one_line(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_segflow_model_export_refuses_an_unknown_format(capsys):
    with pytest.raises(SystemExit) as err:
        main(["model", "export", "out.zip", "--format", "onnx"])
    assert err.value.code == 2
    assert "argument --format: invalid choice: 'onnx'" in capsys.readouterr().err


@pytest.mark.slow
def test_segflow_model_export_writes_the_shipped_model_as_a_valid_package(tmp_path, capsys):
    from segmodel.inference.postprocess import labels_from_maps
    from segmodel.model.loading import DEFAULT_MODEL
    from segmodel.model.spec import read_spec

    out = tmp_path / "nuclei.zip"
    assert main(["model", "export", str(out)]) == 0  # MODEL omitted: the shipped model
    printed = capsys.readouterr().out
    assert f"wrote {out}: a bioimageio model package" in printed
    assert validate_package(out)[0] == []
    rdf, _ = _rdf(out)
    shipped = read_spec(DEFAULT_MODEL.with_suffix(".json"))
    assert rdf["config"]["segflow"] == json.loads(json.dumps(shipped.to_dict()))
    assert rdf["outputs"][0]["axes"][3]["channel_names"] == ["foreground", "boundary",
                                                            "distance"]
    assert [a.get("id", a["type"]) for a in rdf["inputs"][0]["axes"]] == ["batch", "y", "x",
                                                                          "channel"]
    assert {"doi": "10.1038/s41592-019-0612-7"}.items() <= rdf["cite"][0].items()
    expected = _npy(out, "test_output.npy")
    assert expected.shape == (1, 256, 256, 3)
    np.testing.assert_allclose(_run_packaged(out, rdf, "keras_v3"), expected, atol=1e-5)
    labels = labels_from_maps(expected[0], read_spec(DEFAULT_MODEL.with_suffix(".json"))
                              .postprocess)
    assert 28 <= labels.max() <= 36  # the sample's tile holds 32 annotated nuclei
