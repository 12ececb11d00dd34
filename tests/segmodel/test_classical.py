"""The classical (Otsu + distance watershed) baseline on real DSB2018 images and edge cases."""

import numpy as np
import pytest

from segmodel.evaluation.classical import segment_classical
from segmodel.training.datasets import DEFAULT_DATA, list_samples

MODALITIES = ("fluorescence", "histology", "brightfield")


def _first_per_modality():
    """The first 'train' sample (by id) of each modality present; skips without the data."""
    if not (DEFAULT_DATA / "index.csv").is_file():
        pytest.skip(f"../shared/data/dsb2018 not found: no index.csv under {DEFAULT_DATA}")
    picked = {}
    for sample in list_samples(DEFAULT_DATA, "train"):
        picked.setdefault(sample.modality, sample)
    return picked


@pytest.fixture(scope="module")
def real_samples():
    return _first_per_modality()


@pytest.mark.parametrize("modality", MODALITIES)
def test_output_is_int32_labels_with_the_input_height_and_width(real_samples, modality):
    if modality not in real_samples:
        pytest.skip(f"no {modality} image in the shared set")
    image, _ = real_samples[modality].load()
    labels = segment_classical(image)
    assert labels.dtype == np.int32
    assert labels.shape == image.shape[:2]
    assert labels.min() == 0
    # labels are numbered 1..N without gaps
    np.testing.assert_array_equal(np.unique(labels[labels > 0]), np.arange(1, labels.max() + 1))


def test_fluorescence_count_is_within_40_percent_of_the_true_count(real_samples):
    if "fluorescence" not in real_samples:
        pytest.skip("no fluorescence image in the shared set")
    image, truth = real_samples["fluorescence"].load()
    n_true = len(np.unique(truth[truth > 0]))
    n_pred = int(segment_classical(image).max())
    assert n_true > 0
    assert abs(n_pred - n_true) <= 0.4 * n_true, (n_pred, n_true)


def test_constant_image_gives_no_objects():
    for image in (np.full((64, 80, 4), 128, np.uint8), np.zeros((32, 32), np.float32)):
        labels = segment_classical(image)
        assert labels.shape == image.shape[:2]
        assert labels.dtype == np.int32
        assert labels.max() == 0


def test_two_separate_bright_squares_give_two_objects():
    image = np.zeros((64, 64), np.uint8)
    image[10:20, 10:20] = 200
    image[40:52, 30:42] = 200
    labels = segment_classical(image)
    assert labels.max() == 2
    assert set(np.unique(labels[12:18, 12:18])) == {labels[15, 15]} != {0}


def test_dark_nuclei_on_bright_background_are_found_by_auto_inversion():
    image = np.full((64, 64, 3), 230, np.uint8)
    image[10:20, 10:20] = 40
    image[40:52, 30:42] = 40
    labels = segment_classical(image)
    assert labels.max() == 2
    assert labels[0, 0] == 0 and labels[15, 15] > 0


def test_touching_disks_are_split_by_the_watershed():
    yy, xx = np.mgrid[:64, :96]
    disks = ((yy - 32) ** 2 + (xx - 34) ** 2 < 14**2) | ((yy - 32) ** 2 + (xx - 60) ** 2 < 14**2)
    labels = segment_classical((disks * 200).astype(np.uint8))
    assert labels.max() == 2
    assert labels[32, 34] != labels[32, 60]


@pytest.mark.parametrize("shape", [(10,), (2, 8, 8, 3)])
def test_bad_shape_raises_value_error_with_the_received_shape(shape):
    with pytest.raises(ValueError,
                       match=r"image must be \(H, W\) or \(H, W, C\)\. Received: shape="):
        segment_classical(np.zeros(shape, np.uint8))
