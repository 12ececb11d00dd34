"""Training on the real set: targets, patches, and a run that resumes from its checkpoint."""

import json
import re

import numpy as np
import pytest

from segmodel.model.loading import load_model
from segmodel.training import datasets
from segmodel.training.train import PatchSampler, TrainConfig, make_targets, train, tuning_record


def test_targets_separate_touching_nuclei():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 3:15] = 1
    labels[5:15, 15:27] = 2  # touching along column 15
    t = make_targets(labels)
    assert t.shape == (20, 30, 3) and t.dtype == np.float32
    assert t[..., 0].sum() == (labels > 0).sum()
    assert t[10, 14, 1] == 1 and t[10, 15, 1] == 1  # both sides of the contact are boundary
    assert t[10, 8, 2] == 1.0 and t[10, 20, 2] == 1.0 and t[10, 14, 2] < 0.5
    assert (t[labels == 0] == 0).all()


def test_contact_map_marks_only_where_two_nuclei_meet():
    from segmodel.training.train import contact_map

    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 3:15] = 1
    labels[5:15, 16:27] = 2  # one background column between 1 and 2
    labels[5:15, 32:38] = 3  # alone: 5 columns from 2
    c = contact_map(labels, radius=2)
    assert c[5:15, 14:17].all()  # both sides and the gap between them
    assert not c[10, 13] and not c[10, 17]  # 3 pixels from the other nucleus
    assert not c[:, 28:].any() and not c[:3].any() and not c[17:].any()  # a square window
    assert not contact_map(np.zeros((5, 5), np.uint16)).any()
    touching = np.array([[254, 255]], np.uint8)  # the dtype's largest value is a label too
    assert contact_map(touching, radius=1).all()


def test_contact_weight_weights_the_loss_where_nuclei_touch(dsb2018):
    from keras import ops

    from segmodel.training.train import _load_items, _loss

    samples = [s for s in datasets.list_samples(dsb2018, "train") if s.modality == "histology"]
    plain = _load_items(samples[:1], log=lambda m: None)[0][2]
    items = _load_items(samples[:1], log=lambda m: None, contact_weight=4.0)
    targets = items[0][2]
    assert targets.shape[-1] == 4 and np.array_equal(targets[..., :3], plain)
    assert set(np.unique(targets[..., 3])) == {1.0, 5.0}
    y = targets[None, :64, :64]
    pred = np.full(y.shape[:-1] + (3,), 0.5, np.float32)
    unweighted = float(ops.convert_to_numpy(_loss(y[..., :3], pred)))
    ones = np.concatenate([y[..., :3], np.ones_like(y[..., :1])], axis=-1)
    assert float(ops.convert_to_numpy(_loss(ones, pred))) == pytest.approx(unweighted, rel=1e-6)
    heavy = y.copy()
    heavy[..., 3] = 3.0
    assert float(ops.convert_to_numpy(_loss(heavy, pred))) > unweighted * 2


def test_every_split_is_a_fixed_function_of_the_id(dsb2018):
    samples = datasets.list_samples(dsb2018)
    splits = [datasets.split_of(s.id) for s in samples]
    assert splits == [datasets.split_of(s.id) for s in datasets.list_samples(dsb2018)]
    val = splits.count("val") / len(splits)
    assert 0.10 < val < 0.20 and "tune" in splits and "train" in splits


def test_patches_have_fixed_shape_and_nuclei(dsb2018):
    samples = datasets.list_samples(dsb2018, "train")[:6]
    from segmodel.training.train import _load_items

    sampler = PatchSampler(_load_items(samples, log=lambda m: None), TrainConfig(batch_size=4))
    x, y = sampler.batch(np.random.default_rng(0))
    assert x.shape == (4, 128, 128, 3) and y.shape == (4, 128, 128, 3)
    assert np.isfinite(x).all() and 0 <= y.min() and y.max() <= 1 and y[..., 0].sum() > 0


@pytest.mark.slow  # trains three times on real images: ~1.5 min on 2 cores
def test_an_interrupted_run_resumes_from_its_last_checkpoint(dsb2018, tmp_path):
    config = TrainConfig(data_dir=str(dsb2018), steps=2, steps_per_epoch=1, batch_size=2,
                         patch=64, tune_images=2, train_images=12)
    messages = []
    first = TrainConfig(**{**config.__dict__, "steps": 1})
    train(tmp_path, first, log=messages.append)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1
    messages.clear()
    final = train(tmp_path, config, log=messages.append)
    assert any("resuming" in m and "after epoch 1/2" in m for m in messages)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 2
    model = load_model(final)
    assert model.spec.training["steps"] == 2 and 0 < model.spec.postprocess.foreground < 1
    # size-normalised: automatic scale brings every image to the training diameter
    assert (model.spec.object_diameter, model.spec.object_diameter_range) == (24.0, ())
    assert {k: model.spec.training[k] for k in tuning_record()} == tuning_record()
    messages.clear()  # 2 steps done, then 2 more as one epoch of 2: epochs counted in steps
    train(tmp_path, TrainConfig(**{**config.__dict__, "steps": 4, "steps_per_epoch": 2}),
          log=messages.append)
    assert any("after epoch 1/2" in m for m in messages)
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["steps_per_epoch"]) == (2, 2)


@pytest.mark.slow  # trains and tunes on real images: ~40 s on 2 cores
def test_a_model_trained_at_the_images_own_scale_records_their_range_of_sizes(dsb2018, tmp_path):
    """The sidecar's working size and range are the median and 5th-95th percentiles of the
    training images' median nucleus diameters: automatic scale leaves such images as they are."""
    from segmodel.inference.autoscale import median_diameter, working_sizes
    from segmodel.training.datasets import list_samples

    config = TrainConfig(data_dir=str(dsb2018), steps=1, steps_per_epoch=1, batch_size=2,
                         patch=64, tune_images=2, train_images=12, object_diameter=0.0)
    spec = load_model(train(tmp_path, config, log=lambda m: None)).spec
    train_set = list_samples(dsb2018, "train")[:12]
    size, span = working_sizes(median_diameter(s.load_labels()) for s in train_set)
    assert spec.object_diameter == size > 0 and spec.object_diameter_range == span
    assert span[0] < size < span[1]


def test_retune_rewrites_only_the_thresholds_of_the_sidecar(dsb2018, tmp_path):
    import shutil

    from segmodel.model.loading import DEFAULT_MODEL, fingerprint, spec_path
    from segmodel.training.train import (
        TUNING_AP_TOLERANCE,
        TUNING_GRID,
        TUNING_MIN_AREAS,
        TUNING_OBJECT_FILTERS,
        TUNING_SPLITS,
    )
    from segmodel.training.tune import retune

    path = tmp_path / "nuclei.keras"
    shutil.copyfile(DEFAULT_MODEL, path)
    shutil.copyfile(spec_path(DEFAULT_MODEL), spec_path(path))
    from segmodel.model.spec import ModelSpec

    before = ModelSpec.from_dict(json.loads(spec_path(path).read_text())).to_dict()
    fp = fingerprint(path)
    messages = []
    settings = retune(path, dsb2018, images=3, log=messages.append)
    after = ModelSpec.from_dict(json.loads(spec_path(path).read_text())).to_dict()
    assert after["postprocess"] == {"foreground": settings.foreground, "marker": settings.marker,
                                    "boundary_weight": settings.boundary_weight,
                                    "min_area": settings.min_area,
                                    "min_marker_area": settings.min_marker_area,
                                    "min_mean_foreground": settings.min_mean_foreground,
                                    "split_step": settings.split_step,
                                    "split_fraction": settings.split_fraction}
    assert settings.foreground in TUNING_GRID[0] and settings.marker in TUNING_GRID[1]
    assert settings.boundary_weight in TUNING_GRID[2]
    assert settings.min_area in TUNING_MIN_AREAS + (before["postprocess"]["min_area"],)
    assert settings.min_marker_area in TUNING_OBJECT_FILTERS[0]
    assert settings.min_mean_foreground in TUNING_OBJECT_FILTERS[1]
    # splitting off (step 0) where no searched pair beat the best without it
    assert settings.split_step in TUNING_SPLITS[0] + (0.0,)
    assert settings.split_fraction in TUNING_SPLITS[1] + (before["postprocess"]["split_fraction"],)
    assert after["training"]["tuning_object_filters"] == [list(v) for v in TUNING_OBJECT_FILTERS]
    assert after["training"]["tuning_splits"] == [list(v) for v in TUNING_SPLITS]
    assert after["training"]["tuning_ap_tolerance"] == TUNING_AP_TOLERANCE
    # the choice: within the tolerance of the best mean AP, and no worse a count than the best's
    found = re.search(r"mean AP ([\d.]+), relative count error ([\d.]+); best mean AP "
                      r"([\d.]+), with count error ([\d.]+)", messages[-1])
    ap, count_error, best_ap, best_count_error = map(float, found.groups())
    assert best_ap - TUNING_AP_TOLERANCE - 0.001 <= ap <= best_ap  # printed to 3 decimals
    assert count_error <= best_count_error
    assert after["training"]["tune_images"] == 3
    assert {k: v for k, v in after.items() if k not in ("postprocess", "training")} == \
        {k: v for k, v in before.items() if k not in ("postprocess", "training")}
    assert fingerprint(path) != fp  # outputs made with the old thresholds get redone


def test_a_deeper_unet_starts_from_the_levels_it_shares_with_a_trained_one():
    import pytest

    from segmodel.model.unet import build_unet
    from segmodel.training.train import init_weights

    small = build_unet(filters=(4, 8), bottleneck=8)
    for w in small.weights:  # weights no fresh model has
        w.assign(np.full(w.shape, 0.25, "float32"))
    deeper = build_unet(filters=(4, 8, 16), bottleneck=16)
    fresh = {w.path: w.numpy().copy() for w in deeper.weights}
    copied, new = init_weights(deeper, small)
    assert set(new) == {"enc2_conv1", "enc2_bn1", "enc2_conv2", "enc2_bn2", "bottleneck_conv1",
                        "bottleneck_bn1", "bottleneck_conv2", "bottleneck_bn2", "dec2_up",
                        "dec2_conv1", "dec2_bn1", "dec2_conv2", "dec2_bn2", "dec1_up"}
    # enc0, enc1, dec0, dec1 (2 convs + 2 norms each), dec0's upsampling and the output conv
    assert copied == 18
    for layer in deeper.layers:
        for w in layer.weights:
            if layer.name in new:
                np.testing.assert_array_equal(w.numpy(), fresh[w.path])
            else:
                assert (w.numpy() == 0.25).all(), w.path
    copied, new = init_weights(build_unet(filters=(4, 8), bottleneck=8), small)
    assert (copied, new) == (23, [])  # the same architecture copies whole
    with pytest.raises(ValueError, match="shares no layer"):
        init_weights(build_unet(filters=(3, 6), bottleneck=5), small)


def test_filters_option_values_parse_to_positive_levels():
    import pytest

    from segmodel.training.train import parse_filters

    assert parse_filters("16,32,64,128") == (16, 32, 64, 128)
    assert parse_filters(" 8 , 16 ") == (8, 16)
    for bad in ("", "16,,32", "16,0", "-8", "16.5"):
        with pytest.raises(ValueError, match=r"--filters must be positive integers.*Received"):
            parse_filters(bad)


def test_training_takes_exactly_the_steps_asked_and_says_how_far_it_is(dsb2018, tmp_path):
    """--steps 3 with epochs of 2 steps: an epoch of 2, then one of 1 (it ran whole epochs)."""
    import keras

    from segmodel.training.train import LOSSES

    config = TrainConfig(data_dir=str(dsb2018), steps=3, steps_per_epoch=2, batch_size=2,
                         patch=64, tune_images=1, train_images=6)
    messages = []
    train(tmp_path, config, log=messages.append)
    checkpoint = keras.saving.load_model(tmp_path / "checkpoint.keras", custom_objects={
        f.__name__: f for f in LOSSES.values()})
    assert int(checkpoint.optimizer.iterations.numpy()) == 3
    assert json.loads((tmp_path / "state.json").read_text())["steps"] == 3
    assert "training steps 1-3 in epochs 1-2 of up to 2 steps; a line per epoch" in messages
    epochs = [m for m in messages if m.startswith("epoch ")]
    assert [m.split(" loss")[0] for m in epochs] == ["epoch 1/2 step 2/3", "epoch 2/2 step 3/3"]
    assert epochs[-1].endswith("about 0s left)")
