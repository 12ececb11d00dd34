"""Non-default Keras models through the whole pipeline: tiny binary and 3-class semantic models
trained here on real DSB2018 images (classes background / interior / boundary derived from the
instance labels), saved as bundles, run by `segflow run --model`, checked on masks and tables."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image
from scipy import ndimage as ndi

from flows.cli import main
from segmodel.inference.heads import CLASS_SCHEMA
from segmodel.model.loading import load_model
from segmodel.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("prefect_server")

CLASSES = ["background", "interior", "boundary"]


def _tiny(kind, own_data, out):
    config = TrainConfig(images_dir=str(own_data / "images"), labels_dir=str(own_data / "labels"),
                         kind=kind, filters=(8, 16), bottleneck=32, patch=64, batch_size=4,
                         steps=20, steps_per_epoch=20, learning_rate=5e-3, warmup_steps=2,
                         object_diameter=0.0)
    return train(out, config, log=lambda m: None)


@pytest.fixture(scope="module")
def binary_bundle(tmp_path_factory, own_data):
    """A binary model (foreground) trained for 20 steps; its folder is the bundle."""
    out = tmp_path_factory.mktemp("binary")
    _tiny("binary", own_data, out)
    return out


@pytest.fixture(scope="module")
def semantic_bundle(tmp_path_factory, own_data):
    """A 3-class semantic model trained for 20 steps, its spec rewritten as YAML."""
    out = tmp_path_factory.mktemp("semantic")
    model = _tiny("semantic", own_data, out)
    spec = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".yaml").write_text(yaml.safe_dump(spec))
    model.with_suffix(".json").unlink()
    return out


def test_a_semantic_bundle_writes_class_maps_and_a_per_class_table(semantic_bundle, own_inputs,
                                                                   tmp_path):
    lm = load_model(semantic_bundle)
    assert lm.spec.kind == "semantic" and list(lm.spec.classes) == CLASSES
    assert str(lm.path).endswith("model.keras") and lm.spec.object_class == "interior"
    out = tmp_path / "out"
    assert main(["run", str(own_inputs), str(out), "--model", str(semantic_bundle)]) == 0
    images = pd.read_parquet(out / "images").set_index("image_id")
    classes = pd.read_parquet(out / "classes")
    objects = pd.read_parquet(out / "objects")
    assert len(images) == 3 and set(images["model_name"]) == {"semantic-unet"}
    assert list(classes.columns) == list(CLASS_SCHEMA)
    for image_id, row in images.iterrows():
        mask = tifffile.imread(out / row["mask_path"])
        assert mask.dtype == np.uint8 and mask.shape == (row["height"], row["width"])
        assert mask.min() >= 0 and mask.max() <= 2
        rows = classes[classes["image_id"] == image_id].sort_values("class_index")
        assert rows["class"].tolist() == CLASSES and rows["class_index"].tolist() == [0, 1, 2]
        assert rows["pixels"].sum() == mask.size
        assert rows["pixels"].tolist() == np.bincount(mask.ravel(), minlength=3).tolist()
        assert rows["fraction"].sum() == pytest.approx(1.0)
        assert rows["components"].tolist() == [ndi.label(mask == k)[1] for k in range(3)]
        # objects: the interior class's components of at least min_area pixels
        comps, _ = ndi.label(mask == 1)
        areas = np.bincount(comps.ravel())[1:]
        kept = areas[areas >= lm.spec.postprocess.min_area]
        mine = objects[objects["image_id"] == image_id]
        assert len(mine) == row["n_objects"] == len(kept)
        assert sorted(mine["area"].astype(int)) == sorted(kept.tolist())
        assert row["foreground_fraction"] == pytest.approx((mask > 0).mean())
    assert classes["image_id"].nunique() == 3
    assert main(["run", str(own_inputs), str(out), "--model", str(semantic_bundle)]) == 0
    last = sorted((out / "runs").glob("*.json"))[-1]  # run.json keeps the run that segmented
    counts = json.loads(last.read_text())["counts"]
    assert counts["skipped"] == 3 and counts["images"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "classes"), classes)


def test_a_binary_bundle_labels_components_and_its_tables_match_the_masks(binary_bundle,
                                                                          own_inputs, tmp_path):
    lm = load_model(binary_bundle)
    assert lm.spec.kind == "binary" and lm.spec.divisor == 4
    out = tmp_path / "out"
    assert main(["run", str(own_inputs), str(out), "--model", str(binary_bundle / "model.keras"),
                 "--mask-format", "png"]) == 0
    assert not (out / "classes").exists()
    images = pd.read_parquet(out / "images").set_index("image_id")
    objects = pd.read_parquet(out / "objects")
    assert len(images) == 3 and images["n_objects"].sum() > 0
    for image_id, row in images.iterrows():
        mask = np.asarray(Image.open(out / row["mask_path"]))
        assert mask.shape == (row["height"], row["width"]) and mask.max() == row["n_objects"]
        mine = objects[objects["image_id"] == image_id].sort_values("label")
        assert mine["label"].tolist() == list(range(1, row["n_objects"] + 1))
        assert mine["area"].astype(int).tolist() == np.bincount(mask.ravel())[1:].tolist()
        for label in mine["label"]:  # each object is one connected region
            assert ndi.label(mask == label)[1] == 1
        assert row["foreground_fraction"] == pytest.approx((mask > 0).mean())


def test_bundles_predict_in_fixed_shape_batches_with_the_model_loaded_once(semantic_bundle,
                                                                           own_inputs):
    from segmodel.api import segment_many

    lm = load_model(semantic_bundle)
    assert load_model(semantic_bundle / "model.keras") is lm
    shapes, real = [], lm.keras_model.predict_on_batch
    lm.keras_model.predict_on_batch = lambda batch: shapes.append(batch.shape) or real(batch)
    try:
        images = [np.asarray(Image.open(p)) for p in sorted(own_inputs.iterdir())]
        images.append(images[0][:100, :77])
        maps = segment_many(images, lm, batch_size=4)
    finally:
        del lm.keras_model.predict_on_batch
    assert set(shapes) == {(4, 256, 256, 3)}
    assert [m.shape for m in maps] == [im.shape[:2] for im in images]


def test_a_bundle_whose_spec_does_not_fit_fails_before_any_work(binary_bundle, own_inputs,
                                                                tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.keras").write_bytes((binary_bundle / "model.keras").read_bytes())
    spec = json.loads((binary_bundle / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**spec, "kind": "semantic", "classes": CLASSES}))
    with pytest.raises(SystemExit) as err:
        main(["run", str(own_inputs), str(tmp_path / "out"), "--model", str(bad)])
    assert "field 'kind' is 'semantic'" in str(err.value) and "outputs 1 channels" in str(err.value)
    assert not (tmp_path / "out" / "images").exists()


@pytest.mark.slow
def test_segflow_train_on_own_folders_gives_a_bundle_that_inspect_passes_and_run_uses(
        own_data, own_inputs, tmp_path):
    out = tmp_path / "bundle"
    assert main(["train", str(out), "--images", str(own_data / "images"), "--labels",
                 str(own_data / "labels"), "--steps", "2", "--steps-per-epoch", "1",
                 "--object-diameter", "0", "--name", "my-nuclei"]) == 0
    assert sorted(p.name for p in out.glob("model.*")) == ["model.json", "model.keras"]
    assert main(["model", "inspect", str(out)]) == 0
    spec = load_model(out).spec
    assert spec.name == "my-nuclei" and spec.kind == "instances" and spec.divisor == 16
    assert main(["run", str(own_inputs), str(tmp_path / "seg"), "--model", str(out)]) == 0
    images = pd.read_parquet(tmp_path / "seg" / "images")
    assert len(images) == 3 and set(images["model_name"]) == {"my-nuclei"}


def test_segflow_train_names_an_unpaired_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels" / "b.png")
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path / "out"), "--images", str(tmp_path / "images"),
              "--labels", str(tmp_path / "labels")])
    assert "no image of" in str(err.value) and "a01.png -> a01.png" in str(err.value)


def test_segflow_train_names_a_bad_architecture(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path / "out"), "--filters", "16,32,x"])
    assert "--filters must be positive integers separated by commas" in str(err.value)
    assert "'16,32,x'" in str(err.value)
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path / "out"), "--filters", "16,0"])
    assert "--filters must be positive integers" in str(err.value) and "'16,0'" in str(err.value)
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path / "out"), "--bottleneck", "0"])
    assert "--bottleneck:" in str(err.value) and "greater than or equal to 1" in str(err.value)
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path / "out"), "--filters", "16,32,64", "--patch", "100"])
    assert "--patch must be a multiple of 8 with 3 levels" in str(err.value)
    assert "Received: --patch 100" in str(err.value)
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path / "out"), "--contact-weight", "-1"])
    assert "--contact-weight:" in str(err.value) and "greater than or equal to 0" in str(err.value)


def test_a_huge_tiff_with_a_semantic_bundle_becomes_a_failures_row(semantic_bundle, own_data,
                                                                   tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    image = np.asarray(Image.open(sorted((own_data / "images").iterdir())[0]))
    tifffile.imwrite(src / "big.tif", image)
    out = tmp_path / "out"
    assert main(["run", str(src), str(out), "--model", str(semantic_bundle),
                 "--tiled-above", "1000"]) == 1  # its only image failed
    failures = pd.read_parquet(out / "failures")
    assert failures["image_id"].tolist() == ["big.tif"]
    assert "cannot segment block by block" in failures["message"][0]
    assert "--tiled-above" in failures["message"][0]
