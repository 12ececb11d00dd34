"""The shipped model against the classical baseline on real validation images."""

import numpy as np

from segmodel.api import segment_many
from segmodel.evaluation.classical import segment_classical
from segmodel.evaluation.metrics import score_image
from segmodel.training.datasets import list_samples


def test_shipped_model_beats_the_classical_baseline_on_validation_images(dsb2018):
    samples = list_samples(dsb2018, "val")[:24]
    loaded = [s.load() for s in samples]
    model = segment_many([im for im, _ in loaded])
    model_ap = np.mean([score_image(t, p)["ap"] for (_, t), p in zip(loaded, model)])
    base_ap = np.mean([score_image(t, segment_classical(im))["ap"] for im, t in loaded])
    assert model_ap > base_ap + 0.05, f"model {model_ap:.3f} vs classical {base_ap:.3f}"
