"""BioImage Model Zoo packages through the whole pipeline: tiny models trained here on real
DSB2018 images, written as zoo packages with bioimageio.spec's classes (keras_v3, keras_hdf5 and
ONNX weights; byxc and bcyx axes), run with ``segmodel.api.run`` and checked against the same
Keras model run as a plain segflow bundle with the package's spec."""

import json
import shutil

import keras
import numpy as np
import onnx
import pytest
import tifffile
from bioimageio.spec.model import v0_5 as m
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage.segmentation import find_boundaries

from segmodel import api
from segmodel.inference.steps import apply_steps, check_steps, estimate_steps
from segmodel.model import zoo
from segmodel.model.bundle import inspect, save_bundle
from segmodel.model.loading import load_model
from segmodel.training.train import TrainConfig, train
from tests.zoo_packages import write_package

pytestmark = pytest.mark.slow

CLASSES = ("background", "interior", "boundary")


def _train(kind, own_data, out):
    config = TrainConfig(images_dir=str(own_data / "images"), labels_dir=str(own_data / "labels"),
                         kind=kind, filters=(8, 16), bottleneck=32, patch=64, batch_size=4,
                         steps=20, steps_per_epoch=20, learning_rate=5e-3, warmup_steps=2,
                         object_diameter=0.0)
    return train(out, config, log=lambda msg: None)


def _test_io(model_fn, image, steps, size=64):
    """A real test input (raw pixels) and the model's output for it, batch axis first."""
    raw = image[:size, :size].astype(np.float32)
    x = apply_steps(raw, estimate_steps(raw, check_steps(steps)))
    return raw[None], np.asarray(model_fn(x[None]), np.float32)


def _masks(out):
    images = api.read_table(str(out), "images").set_index("image_id").sort_index()
    return images, {i: tifffile.imread(out / r["mask_path"]) for i, r in images.iterrows()}


def _reproduces(package, tolerance=1e-3):
    """``segflow model inspect`` runs the package's test input and meets its test output."""
    lines, errors = inspect(package)
    assert errors == [], errors
    diff = float(lines[-1].split("largest difference ")[1].split()[0])
    assert lines[-1].startswith("test tensors:") and diff <= tolerance, lines[-1]
    return diff


def _run_both(package, bundle, own_inputs, tmp_path, **options):
    """Masks and image tables of the package and the bundle, run the same way."""
    runs = {}
    for name, model in (("zoo", package), ("bundle", bundle)):
        out = tmp_path / name
        summary = api.run(str(own_inputs), str(out), model=str(model), engine="keras", **options)
        assert summary["failed"] == 0 and summary["images"] == 3
        runs[name] = _masks(out)
    return runs["zoo"], runs["bundle"]


def test_an_instances_package_with_keras_v3_weights_and_named_channels_runs_as_its_bundle(
        own_data, own_inputs, tmp_path):
    trained = _train("instances", own_data, tmp_path / "trained")
    model = keras.saving.load_model(trained, compile=False)
    # the package's model gives its maps as distance, foreground, boundary: a 1x1 convolution
    # permutes the channels exactly (weights 0 and 1), the names tell segflow the order
    order = keras.layers.Conv2D(3, 1, use_bias=False, name="order")
    permuted = keras.Model(model.inputs, order(model.outputs[0]))
    order.set_weights([np.eye(3, dtype=np.float32)[:, [2, 0, 1]][None, None]])
    permuted.save(tmp_path / "w.keras")
    steps = [{"step": "scale_range", "min_percentile": 1.0, "max_percentile": 99.8,
              "eps": 1e-6, "per_channel": True}]
    image = np.asarray(Image.open(sorted(own_inputs.iterdir())[0]))[..., :3]
    package = write_package(
        tmp_path / "instances.zip", {"keras_v3": tmp_path / "w.keras"},
        in_names=("red", "green", "blue"), out_names=("distance", "foreground", "boundary"),
        preprocessing=[m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
            axes=[m.AxisId("y"), m.AxisId("x")], min_percentile=1.0, max_percentile=99.8))],
        test_io=_test_io(permuted.predict_on_batch, image, steps), step=16)
    lm = load_model(package)
    assert lm.spec.kind == "instances" and lm.package.layout.channels == (1, 2, 0)
    assert lm.spec.normalization == "preprocessing" and lm.spec.tile == 256
    assert list(lm.spec.preprocessing) == steps
    _reproduces(package, 3e-2)  # OpenVINO, in bfloat16 where the CPU has it
    save_bundle(model, lm.spec, tmp_path / "bundle" / "model.keras")  # same spec, plain model
    (zoo_images, zoo), (_, plain) = _run_both(package, tmp_path / "bundle", own_inputs, tmp_path)
    assert zoo.keys() == plain.keys()
    for image_id in zoo:
        assert np.array_equal(zoo[image_id], plain[image_id]), image_id
    assert zoo_images["n_objects"].min() > 0
    assert set(zoo_images["model_name"]) == {"segflow test model"}
    objects = api.read_table(str(tmp_path / "zoo"), "objects")
    assert len(objects) == zoo_images["n_objects"].sum()


def test_a_binary_package_with_keras_hdf5_weights_runs_as_its_bundle(own_data, own_inputs,
                                                                    tmp_path):
    trained = _train("binary", own_data, tmp_path / "trained")
    model = keras.saving.load_model(trained, compile=False)
    model.save(tmp_path / "w.h5")
    steps = [{"step": "scale_linear", "gain": 1 / 255, "offset": 0.0},
             {"step": "clip", "min": 0.0, "max": 1.0, "per_channel": False}]
    image = np.asarray(Image.open(sorted(own_inputs.iterdir())[0]))[..., :3]
    package = write_package(
        tmp_path / "binary", {"keras_hdf5": tmp_path / "w.h5"},
        in_names=("red", "green", "blue"), out_names=("nuclei",), out_id="probability",
        preprocessing=[m.ScaleLinearDescr(kwargs=m.ScaleLinearKwargs(gain=1 / 255)),
                       m.ClipDescr(kwargs=m.ClipKwargs(min=0.0, max=1.0))],
        test_io=_test_io(model.predict_on_batch, image, steps), step=4, size=16)
    lm = load_model(package)
    assert lm.spec.kind == "binary" and lm.package.weights_format == "keras_hdf5"
    assert lm.spec.preprocessing == check_steps(steps)
    assert (lm.spec.divisor, lm.spec.tile) == (4, 256)
    _reproduces(package, 3e-2)
    save_bundle(model, lm.spec, tmp_path / "bundle" / "model.keras")
    (images, zoo), (_, plain) = _run_both(package, tmp_path / "bundle", own_inputs, tmp_path,
                                          mask_format="tif")
    for image_id in zoo:
        assert np.array_equal(zoo[image_id], plain[image_id]), image_id
    assert images["n_objects"].min() > 0


def _semantic_net(own_data):
    """A 3-layer convolutional net (no downsampling) trained for a few seconds on gray patches
    with classes background / interior / boundary derived from the instance labels."""
    xs, ys = [], []
    for p in sorted((own_data / "images").iterdir()):
        gray = np.asarray(Image.open(p).convert("L"), np.float32)
        labels = tifffile.imread(own_data / "labels" / f"{p.stem}.tif")
        classes = np.where(find_boundaries(labels, mode="inner"), 2, (labels > 0).astype(int))
        x = (gray - gray.mean()) / (gray.std() + 1e-6)
        for y0 in range(0, gray.shape[0] - 63, 64):
            for x0 in range(0, gray.shape[1] - 63, 64):
                xs.append(x[y0:y0 + 64, x0:x0 + 64, None])
                ys.append(classes[y0:y0 + 64, x0:x0 + 64])
    inputs = keras.Input((None, None, 1), name="raw")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c0")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(h)
    out = keras.layers.Conv2D(3, 1, activation="softmax", name="classes")(h)
    net = keras.Model(inputs, out)
    net.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    net.fit(np.stack(xs), np.stack(ys), batch_size=16, epochs=8, verbose=0)
    return net


def _onnx_of(net, path):
    """The same net as an ONNX graph (channels first), written with onnx's helper API."""
    nodes, weights, last = [], [], "raw"
    for layer in net.layers[1:]:
        kernel, bias = layer.get_weights()
        w, b = f"{layer.name}_w", f"{layer.name}_b"
        weights += [numpy_helper.from_array(kernel.transpose(3, 2, 0, 1), w),
                    numpy_helper.from_array(bias, b)]
        pad = kernel.shape[0] // 2
        nodes.append(helper.make_node("Conv", [last, w, b], [f"{layer.name}_conv"],
                                      pads=[pad] * 4))
        act = "Softmax" if layer.name == "classes" else "Relu"
        extra = {"axis": 1} if act == "Softmax" else {}
        nodes.append(helper.make_node(act, [f"{layer.name}_conv"], [layer.name], **extra))
        last = layer.name
    graph = helper.make_graph(
        nodes, "semantic",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_a_semantic_package_with_onnx_weights_bcyx_axes_and_zero_mean_unit_variance(
        own_data, own_inputs, tmp_path):
    net = _semantic_net(own_data)
    onnx_path = _onnx_of(net, tmp_path / "w.onnx")
    gray = np.asarray(Image.open(sorted(own_inputs.iterdir())[0]).convert("L"), np.float32)
    steps = [{"step": "zero_mean_unit_variance", "eps": 1e-6, "per_channel": True}]
    raw, maps = _test_io(net.predict_on_batch, gray[..., None], steps)
    package = write_package(
        tmp_path / "semantic.zip", {"onnx": onnx_path}, in_axes="bcyx", in_names=("dapi",),
        out_names=CLASSES, out_id="classes", description="class probabilities (softmax)",
        preprocessing=[m.ZeroMeanUnitVarianceDescr(kwargs=m.ZeroMeanUnitVarianceKwargs(
            axes=[m.AxisId("batch"), m.AxisId("y"), m.AxisId("x")]))],
        test_io=(raw.transpose(0, 3, 1, 2), maps.transpose(0, 3, 1, 2)), step=16, size=32)
    lm = load_model(package, engine="auto")
    assert lm.engine == "openvino" and lm.package.weights_format == "onnx"
    assert lm.spec.kind == "semantic" and lm.spec.classes == CLASSES
    assert lm.spec.object_class == "interior" and lm.spec.axes == "CYX"
    assert list(lm.spec.preprocessing) == steps
    # the ONNX graph gives the Keras net's maps (channels first), in OpenVINO's precision:
    # bfloat16 where the CPU has it (8 bits of mantissa), else float32
    batch = np.random.default_rng(0).normal(size=(2, 64, 64, 1)).astype(np.float32)
    got = lm.predict_batch(batch)
    tolerance = 1e-4 if lm.precision == "f32" else 2e-2
    assert np.abs(got - net.predict_on_batch(batch)).max() < tolerance
    _reproduces(package, tolerance)
    wrong = write_package(  # the same package whose test output has its classes swapped
        tmp_path / "wrong", {"onnx": onnx_path}, in_axes="bcyx", in_names=("dapi",),
        out_names=CLASSES, out_id="classes", description="class probabilities (softmax)",
        test_io=(raw.transpose(0, 3, 1, 2), maps.transpose(0, 3, 1, 2)[:, ::-1]), size=32)
    assert "the package's test input gives maps" in inspect(wrong)[1][0]
    spec = type(lm.spec).from_dict({**lm.spec.to_dict(), "axes": "YXC"})
    save_bundle(net, spec, tmp_path / "bundle" / "model.keras")
    outs = {}
    for name, model, engine in (("zoo", package, "auto"), ("bundle", tmp_path / "bundle",
                                                           "keras")):
        summary = api.run(str(own_inputs), str(tmp_path / name), model=str(model), engine=engine)
        assert summary["failed"] == 0 and summary["images"] == 3
        outs[name] = _masks(tmp_path / name)
    (images, zoo), (_, plain) = outs["zoo"], outs["bundle"]
    for image_id in zoo:  # OpenVINO and Keras round differently: near-ties may flip
        assert zoo[image_id].shape == plain[image_id].shape
        agree = (zoo[image_id] == plain[image_id]).mean()
        assert agree > (0.9999 if lm.precision == "f32" else 0.995), (image_id, agree)
    assert images["n_objects"].min() > 0
    classes = api.read_table(str(tmp_path / "zoo"), "classes")
    assert set(classes["class"]) == set(CLASSES) and len(classes) == 9


def test_a_package_carrying_a_segflow_spec_segments_as_the_bundle_it_came_from(
        own_data, own_inputs, tmp_path):
    trained = _train("instances", own_data, tmp_path / "trained")
    spec = json.loads(trained.with_suffix(".json").read_text())
    package = write_package(
        tmp_path / "segflow.zip", {"keras_v3": trained}, in_names=("red", "green", "blue"),
        config={"segflow": spec}, step=16)
    lm = load_model(package)
    assert lm.spec == load_model(trained).spec and lm.package.weights_format == "keras_v3"
    (images, zoo), (_, plain) = _run_both(package, trained.parent, own_inputs, tmp_path)
    for image_id in zoo:
        assert np.array_equal(zoo[image_id], plain[image_id]), image_id
    assert images["n_objects"].min() > 0


def test_a_package_with_tensorflow_saved_model_weights_runs_through_openvino(own_data, own_inputs,
                                                                             tmp_path):
    net = _semantic_net(own_data)
    net.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    bundle = shutil.make_archive(str(tmp_path / "saved_model"), "zip", tmp_path / "saved")
    gray = np.asarray(Image.open(sorted(own_inputs.iterdir())[0]).convert("L"), np.float32)
    steps = [{"step": "zero_mean_unit_variance", "eps": 1e-6, "per_channel": True}]
    package = write_package(
        tmp_path / "savedmodel.zip", {"tensorflow_saved_model_bundle": bundle},
        in_names=("dapi",), out_names=CLASSES, out_id="classes",
        postprocessing=[m.SoftmaxDescr(kwargs=m.SoftmaxKwargs(axis=m.AxisId("channel")))],
        preprocessing=[m.ZeroMeanUnitVarianceDescr(kwargs=m.ZeroMeanUnitVarianceKwargs(
            axes=[m.AxisId("y"), m.AxisId("x")]))],
        test_io=_test_io(net.predict_on_batch, gray[..., None], steps), size=32)
    lm = load_model(package, engine="auto")
    assert lm.engine == "openvino" and lm.package.weights_format == "tensorflow_saved_model_bundle"
    assert lm.spec.kind == "semantic" and lm.spec.axes == "YXC"  # softmax: semantic
    batch = np.random.default_rng(1).normal(size=(3, 32, 48, 1)).astype(np.float32)
    tolerance = 1e-4 if lm.precision == "f32" else 2e-2
    # the model's softmax maps pass the package's softmax once more: both sides get it
    assert np.abs(lm.predict_batch(batch) - keras.ops.convert_to_numpy(keras.ops.softmax(
        net.predict_on_batch(batch), axis=-1))).max() < tolerance
    summary = api.run(str(own_inputs), str(tmp_path / "out"), model=str(package))
    assert summary["failed"] == 0 and summary["images"] == 3
    images, masks = _masks(tmp_path / "out")
    assert images["n_objects"].min() > 0 and all(mk.max() <= 2 for mk in masks.values())
    with pytest.raises(zoo.ZooError, match="which run with OpenVINO, not with engine 'keras'"):
        load_model(package, engine="keras")


def test_an_ambiguous_package_runs_with_model_kind_and_reruns_by_its_configuration(
        own_data, own_inputs, tmp_path):
    net = _semantic_net(own_data)
    package = write_package(  # three channels without names or softmax: instances or classes?
        tmp_path / "ambiguous.zip", {"onnx": _onnx_of(net, tmp_path / "w.onnx")},
        in_axes="bcyx", in_names=("dapi",), out_names=("c0", "c1", "c2"), size=32)
    out = tmp_path / "out"
    with pytest.raises(zoo.ZooError, match="Pass --model-kind"):
        api.run(str(own_inputs), str(out), model=str(package))
    assert not out.exists()  # refused before any work
    first = api.run(str(own_inputs), str(out), model=str(package), model_kind="semantic")
    assert first["images"] == 3 and first["failed"] == 0
    classes = api.read_table(str(out), "classes")
    assert sorted(set(classes["class"])) == ["c0", "c1", "c2"]
    again = api.run(str(own_inputs), str(out), model=str(package), model_kind="semantic")
    assert again["skipped"] == 3 and again["images"] == 0  # same package, same kind: done
    other = api.run(str(own_inputs), str(out), model=str(package), model_kind="instances")
    assert other["images"] == 3  # another kind is another configuration: redone
    keys = set(api.read_table(str(out), "images")["config_key"])
    assert len(keys) == 1


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["keras", "openvino"])
def test_the_shipped_model_exported_then_run_as_a_package_gives_the_same_masks(tmp_path, engine):
    """The round trip: ``segflow model export`` of the shipped model, then ``--model
    package.zip`` over the shipped samples, against the shipped model itself: every mask equal
    and the objects tables equal, on each engine."""
    from flows.cli import SAMPLES
    from segmodel.model.zoo_export import ExportOptions, export_package

    package = tmp_path / "nuclei.zip"
    export_package(ExportOptions(out=str(package)))
    runs = {}
    for name, model in (("package", str(package)), ("shipped", None)):
        out = tmp_path / name
        summary = api.run(str(SAMPLES), str(out), model=model, engine=engine)
        assert summary["failed"] == 0 and summary["images"] == 8
        runs[name] = (*_masks(out), api.read_table(str(out), "objects"))
    (images, zoo, objects), (shipped_images, shipped, shipped_objects) = runs.values()
    assert sorted(zoo) == sorted(shipped)
    for image_id in zoo:
        assert np.array_equal(zoo[image_id], shipped[image_id]), image_id
    assert images["n_objects"].sum() > 100
    assert images["n_objects"].equals(shipped_images["n_objects"])
    columns = ["image_id", "label", "area", "centroid_y", "centroid_x"]
    key = ["image_id", "label"]
    assert (objects[columns].sort_values(key).reset_index(drop=True)
            .equals(shipped_objects[columns].sort_values(key).reset_index(drop=True)))
