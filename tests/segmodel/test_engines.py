"""Inference engines: OpenVINO and Keras give the same nuclei on real images; conversion once."""

import numpy as np
import pytest
from PIL import Image

from segmodel.api import segment_many
from segmodel.evaluation.metrics import iou_matrix
from segmodel.inference.preprocess import Tiling
from segmodel.model import engines
from segmodel.model.loading import load_model

openvino = pytest.importorskip("openvino", reason="the openvino package is not installed")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh conversion cache for one test."""
    monkeypatch.setenv("SEGFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_is_openvino_on_tensorflow_and_keras_on_jax(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert engines.resolve_engine("auto") == "openvino"
    assert engines.resolve_engine("keras") == "keras"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert engines.resolve_engine("auto") == "keras"
    assert engines.resolve_engine("openvino") == "openvino"  # asked for by name: used
    with pytest.raises(ValueError, match="engine must be one of auto, openvino, keras. "
                                         "Received: engine='onnx'"):
        engines.resolve_engine("onnx")


def test_openvino_maps_match_keras_maps_on_real_tiles(samples):
    keras_model, ov_model = load_model(engine="keras"), load_model(engine="openvino")
    assert (keras_model.engine, ov_model.engine) == ("keras", "openvino")
    assert ov_model.keras_model is keras_model.keras_model  # one Keras model in the process
    tiles = np.stack([_tile(path) for path, _ in samples[:4]])
    want = keras_model.predict_batch(tiles)
    got = ov_model.predict_batch(tiles)
    assert got.shape == want.shape == (4, 256, 256, 3) and got.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: maps in [0, 1] move by a few thousandths, a rare
    # pixel by a few hundredths
    diff = np.abs(got - want)
    assert diff.mean() < 0.002 and np.quantile(diff, 0.999) < 0.02 and diff.max() < 0.1, (
        diff.mean(), np.quantile(diff, 0.999), diff.max())
    odd = ov_model.predict_batch(tiles[:3, :128, :192])  # any batch and tile size, one model
    assert odd.shape == (3, 128, 192, 3)


def test_openvino_finds_the_same_nuclei_as_keras_within_one_percent(samples):
    images = [np.asarray(Image.open(path)) for path, _ in samples]
    by_keras = segment_many(images, model=load_model(engine="keras"))
    by_openvino = segment_many(images, model=load_model(engine="openvino"))
    n_keras = sum(int(lab.max()) for lab in by_keras)
    matched = sum(int((iou_matrix(k, o).max(axis=1) >= 0.5).sum()) if k.max() else 0
                  for k, o in zip(by_keras, by_openvino))
    n_openvino = sum(int(lab.max()) for lab in by_openvino)
    assert n_keras > 100
    assert abs(n_openvino - n_keras) <= 0.01 * n_keras, (n_openvino, n_keras)
    assert matched >= 0.99 * n_keras, f"{n_keras - matched} of {n_keras} nuclei differ"


def test_openvino_tiling_does_not_change_the_objects(samples):
    """Seam-free stitching holds on the OpenVINO engine too (one 512 px tile vs 256 px tiles)."""
    path = next(p for p, r in samples if r["height"] == "520")
    image = np.asarray(Image.open(path))[:512, :512]
    model = load_model(engine="openvino")
    whole = segment_many([image], model=model, tiling=Tiling(512, 0))[0]
    tiled = segment_many([image], model=model, tiling=Tiling(256, 32))[0]
    best = iou_matrix(whole, tiled).max(axis=1)
    assert whole.max() > 10 and (best >= 0.9).mean() >= 0.9


def test_conversion_happens_once_and_is_kept_by_fingerprint(cache, samples):
    model = load_model(engine="keras")
    first = engines.converted(model.keras_model, model.fingerprint)
    assert first.is_file() and first.with_suffix(".bin").stat().st_size > 1_000_000
    assert first.parent.parent == cache / "openvino"
    assert first.parent.name.startswith(model.fingerprint + "-")
    stamp = first.stat().st_mtime_ns
    again = engines.converted(model.keras_model, model.fingerprint)
    assert again == first and again.stat().st_mtime_ns == stamp  # not converted again
    assert [p.name for p in (cache / "openvino").iterdir()] == [first.parent.name]  # no debris
    assert engines.cached(model.fingerprint) == first
    assert engines.cached(model.fingerprint, trust=True) is None  # trusted loads kept apart
    runner = engines.OpenVinoModel(first)
    out = runner(np.stack([_tile(samples[0][0])]))
    assert out.shape == (1, 256, 256, 3) and 0 <= out.min() and out.max() <= 1


def test_a_model_that_does_not_convert_is_an_engine_error(cache):
    import keras

    unbuilt = keras.Sequential([keras.layers.Dense(2)])  # no input shape: nothing to trace
    with pytest.raises(engines.EngineError, match=r"does not convert to OpenVINO \(\w+Error: "):
        engines.converted(unbuilt, "0123456789abcdef")
    assert not any((cache / "openvino").iterdir())  # the half-written folder is gone


def _tile(path):
    """The top-left 256 x 256 of a sample, normalised as the pipeline does."""
    from segmodel.inference.passes import prepare

    return prepare(np.asarray(Image.open(path)), load_model().spec).x[:256, :256]


def test_the_precision_is_named_as_openvino_names_it():
    assert load_model(engine="openvino").precision in ("bf16", "f16", "f32")
    assert load_model(engine="keras").precision == "f32"


def test_the_shipped_model_fits_its_spec_so_runs_may_skip_the_check():
    from segmodel.model.bundle import check_model
    from segmodel.model.loading import DEFAULT_MODEL, spec_path

    model = load_model()
    assert model.path == str(DEFAULT_MODEL)
    assert check_model(model.keras_model, model.spec, str(spec_path(model.path))) == []


def test_a_run_on_a_cached_conversion_never_loads_tensorflow(cache, tmp_path):
    """The first run converts (Keras and TensorFlow load); the next, in a new process, does not."""
    import json
    import subprocess
    import sys

    from tests.conftest import SAMPLES

    script = ("import sys; from segmodel.api import run; "
              f"s = run({str(SAMPLES)!r}, sys.argv[1], shard_size=4); "
              "print(json.dumps([s['images'], 'tensorflow' in sys.modules, "
              "'keras' in sys.modules]))")
    env = {**__import__("os").environ, "SEGFLOW_CACHE_DIR": str(cache)}
    seen = []
    for out in ("first", "second"):
        proc = subprocess.run([sys.executable, "-c", "import json; " + script,
                               str(tmp_path / out)], capture_output=True, text=True, env=env,
                              check=True, timeout=300)
        seen.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert seen == [[8, True, True], [8, False, False]]


@pytest.mark.slow  # a 2080x2784 mosaic twice per engine: ~30 s each
@pytest.mark.parametrize("engine", ["keras", "openvino"])
def test_large_tiles_find_the_same_nuclei_as_small_ones(samples, engine):
    """A 2080x2784 mosaic of a real 520x696 sample: 512 px tiles (the run's choice for it)
    against 256 px tiles only, on each engine: the same nuclei, seams included."""
    path = next(p for p, r in samples if r["height"] == "520")
    image = np.tile(np.asarray(Image.open(path)), (4, 4, 1))
    model = load_model(engine=engine)
    assert Tiling(256, 32, 512).for_shape(image.shape).tile == 512
    small = segment_many([image], model=model, tiling=Tiling(256, 32), scale=1.0)[0]
    large = segment_many([image], model=model, tiling=Tiling(256, 32, 512), scale=1.0)[0]
    best = iou_matrix(small, large).max(axis=1)
    assert small.max() > 300 and abs(int(large.max()) - int(small.max())) <= 0.01 * small.max()
    assert (best >= 0.9).mean() >= 0.98, f"{(best < 0.9).sum()} of {len(best)} objects changed"


def test_runs_tile_large_images_large_unless_the_tile_size_is_set():
    from segmodel.inference.passes import model_tiling

    model = load_model()
    assert model_tiling(model) == Tiling(256, 32, 512)
    assert model_tiling(model, 256) == Tiling(256, 32)
