"""Model bundles: spec files (JSON and YAML), their errors, the heads, and
`segflow model inspect`."""

import json
import shutil

import keras
import numpy as np
import pytest
import yaml

from flows.cli import main
from segmodel.inference import heads
from segmodel.model import bundle
from segmodel.model import spec as specs
from segmodel.model.loading import DEFAULT_MODEL, load_model
from segmodel.model.spec import ModelSpec

SEMANTIC = {"name": "three-class", "kind": "semantic",
            "classes": ["background", "interior", "boundary"], "object_class": "interior",
            "divisor": 4, "tile": 64, "overlap": 8}


def _tiny(path, *, channels=3, outputs=3, activation="softmax", pools=2):
    """A small untrained fully convolutional model with ``pools`` 2x downsamplings."""
    inputs = keras.Input((None, None, channels))
    x = inputs
    for i in range(pools):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"c{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"p{i}")(x)
    for i in range(pools):
        x = keras.layers.UpSampling2D(2, name=f"u{i}")(x)
    outputs = keras.layers.Conv2D(outputs, 1, activation=activation, name="maps")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def test_the_shipped_sidecar_reads_as_a_bundle_spec_with_todays_defaults():
    spec = specs.read_spec(DEFAULT_MODEL.with_suffix(".json"))
    assert spec.kind == "instances" and spec.classes == () and spec.axes == "YXC"
    raw = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert spec.normalization == "percentile"
    assert spec.postprocess.foreground == raw["postprocess"]["foreground"]
    assert load_model(DEFAULT_MODEL.parent).path == str(DEFAULT_MODEL)  # folder = bundle
    assert bundle.n_outputs(spec) == 3


def test_a_yaml_spec_loads_and_matches_the_same_spec_in_json(tmp_path):
    model = _tiny(tmp_path / "seg.keras")
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(SEMANTIC))
    loaded = load_model(tmp_path)
    assert loaded.spec.kind == "semantic"
    assert loaded.spec.classes == ("background", "interior", "boundary")
    assert loaded.spec.object_class == "interior" and loaded.spec.tile == 64
    other = tmp_path / "json"
    other.mkdir()
    shutil.copy(model, other / "seg.keras")
    (other / "seg.json").write_text(json.dumps(SEMANTIC))
    assert load_model(other / "seg.keras").spec == loaded.spec
    assert loaded.fingerprint != load_model(other / "seg.keras").fingerprint  # spec is hashed


def test_a_spec_gives_the_working_range_of_automatic_scale(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"object_diameter": 30, "object_diameter_range": [15, 80]}))
    spec = specs.read_spec(path)
    assert (spec.object_diameter, spec.object_diameter_range) == (30.0, (15.0, 80.0))


def test_saving_a_bundle_in_another_format_leaves_one_spec(tmp_path):
    model = keras.saving.load_model(_tiny(tmp_path / "seg.keras"))
    spec = specs.spec_from_dict(SEMANTIC)
    bundle.save_bundle(model, spec, tmp_path / "m.keras", fmt="yaml")
    bundle.save_bundle(model, spec, tmp_path / "m.keras", fmt="json")
    assert sorted(p.name for p in tmp_path.glob("m.*")) == ["m.json", "m.keras"]
    bundle.save_bundle(model, spec, tmp_path / "m.keras", fmt="yaml")
    assert sorted(p.name for p in tmp_path.glob("m.*")) == ["m.keras", "m.yaml"]
    assert load_model(tmp_path / "m.keras").spec == spec


@pytest.mark.parametrize("fields, message", [
    ({"kind": "panoptic"}, ("field 'kind' must be one of instances, binary, semantic. "
                           "Received: kind='panoptic'")),
    ({"kind": "semantic"}, "a semantic model needs 'classes'"),
    ({**SEMANTIC, "object_class": "nucleus"}, "field 'object_class' must be one of the classes"),
    ({"tile": "big"}, "field 'tile' must be a int. Received: tile='big'"),
    ({"tiles": 256}, "unknown field 'tiles'"),
    ({"classes": ["a", "b"]}, "'classes' and 'object_class' are for kind: semantic"),
    ({"postprocess": {"threshold": 0.5}}, "unknown field 'postprocess.threshold'"),
    ({"postprocess": {"foreground": "0.5"}},
     "field 'postprocess.foreground' must be a number >= 0. Received: foreground='0.5'"),
    ({"postprocess": {"min_area": 2.5}}, "field 'postprocess.min_area' must be a whole number"),
    ({"tile": 256, "overlap": 160}, "field 'overlap' must be at least 0 and less than half"),
    ({"object_diameter": -3}, "field 'object_diameter' must be >= 0"),
    ({"object_diameter": 18, "object_diameter_range": [20, 50]},
     "field 'object_diameter_range' must be [low, high] pixels with 0 < low <= object_diameter "
     "<= high (object_diameter is 18.0). Received: object_diameter_range=[20, 50]"),
    ({"object_diameter": 18, "object_diameter_range": [10]},
     "field 'object_diameter_range' must be [low, high]"),
    ({"object_diameter_range": "10-50"}, "field 'object_diameter_range' must be a list"),
], ids=["kind", "no-classes", "object-class", "type", "unknown", "classes-not-semantic",
        "postprocess", "postprocess-type", "postprocess-int", "overlap", "diameter",
        "range-order", "range-length", "range-type"])
def test_a_wrong_spec_names_the_file_field_and_value(tmp_path, fields, message):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(fields))
    with pytest.raises(specs.BundleError) as err:
        specs.read_spec(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_binary_head_components_and_watershed_split_touching_discs():
    yy, xx = np.mgrid[:40, :60]
    fg = ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 < 100)
    prob = fg.astype(np.float32)[..., None]
    spec = ModelSpec(kind="binary")
    assert heads.mask_from_maps(prob, spec).max() == 1  # one component: the two discs touch
    split = heads.mask_from_maps(prob, ModelSpec(kind="binary", split="watershed",
                                                 object_diameter=20))
    assert split.max() == 2 and (split > 0).sum() == fg.sum()
    assert split[20, 15] != split[20, 42]


def test_semantic_head_class_map_and_per_class_table():
    spec = ModelSpec(kind="semantic", classes=("background", "interior", "boundary"),
                     object_class="interior")
    truth = np.zeros((30, 40), np.uint8)
    truth[5:10, 5:10] = 1
    truth[15:25, 20:30] = 1
    truth[4, 4:11] = 2
    maps = np.eye(3, dtype=np.float32)[truth] * 0.8 + 0.05
    mask = heads.mask_from_maps(maps, spec)
    assert mask.dtype == np.uint8 and (mask == truth).all()
    rows = heads.class_rows(mask, spec, "img")
    assert rows["class"].tolist() == ["background", "interior", "boundary"]
    assert rows["pixels"].tolist() == [30 * 40 - 125 - 7, 125, 7]
    assert rows["fraction"].sum() == pytest.approx(1.0)
    assert rows["components"].tolist() == [1, 2, 1]
    assert heads.object_labels(mask, spec).max() == 2
    assert heads.object_labels(mask, ModelSpec(kind="semantic", classes=spec.classes)).max() == 0


def _inspect(path, capsys):
    code = main(["model", "inspect", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_prints_the_spec_and_passes_a_fitting_bundle(tmp_path, capsys):
    _tiny(tmp_path / "seg.keras")
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(SEMANTIC))
    code, out, err = _inspect(tmp_path, capsys)
    assert code == 0, err
    assert "kind: semantic" in out and "classes: ['background', 'interior', 'boundary']" in out
    assert "downsampling 4x" in out and "ok: the spec fits the model" in out


@pytest.mark.parametrize("model, spec, message", [
    ({"channels": 1}, SEMANTIC, ("field 'channels' is 3 but the model's input shape "
                                "(None, None, None, 1) takes 1 channels")),
    ({}, {**SEMANTIC, "classes": ["bg", "interior", "b", "c"]},
     "needs one softmax channel per class (4 classes"),
    ({"outputs": 1, "activation": "sigmoid"}, {"kind": "instances", "divisor": 4},
     ("outputs 1 channels (shape (None, None, None, 1)). Fix the spec: set kind to the model's "
     "output kind (binary)")),
    ({"pools": 3}, SEMANTIC, "field 'divisor' is 4 but the model downsamples 8x"),
    ({}, {**SEMANTIC, "tile": 66}, "field 'tile' (66) is not a multiple of field 'divisor' (4)"),
], ids=["channels", "classes", "kind", "divisor", "tile"])
def test_inspect_catches_a_spec_that_does_not_fit_its_model(tmp_path, capsys, model, spec,
                                                            message):
    _tiny(tmp_path / "m.keras", **model)
    (tmp_path / "m.json").write_text(json.dumps(spec))
    code, _out, err = _inspect(tmp_path / "m.keras", capsys)
    assert code == 1
    assert message in err and str(tmp_path / "m.json") in err


def test_inspect_reports_a_missing_spec_and_an_unknown_kind(tmp_path, capsys):
    _tiny(tmp_path / "m.keras")
    code, _, err = _inspect(tmp_path / "m.keras", capsys)
    assert code == 1 and "has no spec beside it" in err and "m.json or" in err
    (tmp_path / "m.yml").write_text("kind: panoptic\n")
    code, _, err = _inspect(tmp_path, capsys)
    assert code == 1 and "field 'kind' must be one of" in err and "m.yml" in err
    (tmp_path / "m.yml").write_text("kind: [unclosed\n")
    code, _, err = _inspect(tmp_path, capsys)
    assert code == 1 and "is not valid YAML" in err
