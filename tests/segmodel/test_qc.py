"""QC flags and outline thumbnails on real DSB2018 images and their true masks."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segmodel.pipeline import qc
from segmodel.pipeline.outputs import encode_parquet, table
from segmodel.storage.io import Store

FLUOR = "3bfd6bb152310f93daa6f4e1867c10572946e874b3a30c9ba8e0fcdeb590300b"  # 32 nuclei
BRIGHT = "1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e"  # 1024 x 1024


def _pair(dsb2018, image_id):
    image = np.asarray(Image.open(dsb2018 / "images" / f"{image_id}.png"))[..., :3]
    labels = np.asarray(Image.open(dsb2018 / "labels" / f"{image_id}.png")).astype(np.int32)
    return image, labels


def test_a_typical_image_with_its_true_mask_has_no_flags(dsb2018):
    image, labels = _pair(dsb2018, FLUOR)
    assert qc.image_flags(image, labels) == []


def test_dsb2018_true_masks_are_rarely_flagged(dsb2018):
    index = pd.read_csv(dsb2018 / "index.csv").iloc[::10]
    flagged = {}
    for image_id in index["id"]:
        flags = qc.image_flags(*_pair(dsb2018, image_id))
        flagged.update({f: flagged.get(f, 0) + 1 for f in flags})
    assert not {"no_objects", "flat", "saturated", "objects_large"} & set(flagged)
    assert sum(flagged.values()) <= 0.1 * len(index)


def test_a_blank_frame_is_flat_with_no_objects(dsb2018):
    image, labels = _pair(dsb2018, FLUOR)
    blank = np.full_like(image, int(np.median(image)))
    assert qc.image_flags(blank, np.zeros_like(labels)) == ["no_objects", "flat"]


def test_a_clipped_exposure_is_saturated(dsb2018):
    image, labels = _pair(dsb2018, FLUOR)
    clipped = np.clip(image.astype(np.int32) * 8, 0, 255).astype(np.uint8)
    assert qc.image_flags(clipped, labels) == ["saturated"]


def test_a_16_bit_image_is_judged_on_the_bit_depth_its_values_show(dsb2018):
    image, labels = _pair(dsb2018, FLUOR)
    assert qc.image_flags(image.astype(np.uint16) * 257, labels) == []  # all 16 bits
    assert qc.image_flags(image.astype(np.uint16) * 16, labels) == []  # a 12-bit camera
    assert qc.image_flags(image.astype(np.uint16), labels) == []  # 8-bit data in 16 bits
    assert qc.value_top(image.astype(np.uint16) * 16) == 4095
    dim = (image.astype(np.uint16) * 100 // 255 + 1000)  # 100 levels of a 12-bit range
    assert qc.image_flags(dim, labels) == ["flat"]
    clipped = np.minimum(image.astype(np.uint16) * 16 * 8, 4095)  # 12-bit, over-exposed
    assert qc.image_flags(clipped, labels) == ["saturated"]


def test_a_single_nucleus_is_sparse_foreground(dsb2018):
    image, labels = _pair(dsb2018, FLUOR)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    keep = ids[np.argsort(areas)[len(areas) // 2]]  # one nucleus of median size
    assert qc.image_flags(image, np.where(labels == keep, labels, 0)) == ["sparse_foreground"]


@pytest.mark.parametrize("scale, flag", [(0.25, "objects_small"), (8.0, "objects_large")],
                         ids=["shrunk", "enlarged"])
def test_nuclei_far_from_the_working_size_are_flagged(dsb2018, scale, flag):
    image, labels = _pair(dsb2018, FLUOR)
    assert qc.image_flags(image, labels, scale=scale) == [flag]


def test_image_and_labels_of_different_shapes_are_refused(dsb2018):
    image, labels = _pair(dsb2018, FLUOR)
    with pytest.raises(ValueError, match="same height and width"):
        qc.image_flags(image[:100], labels)


def test_outliers_are_counts_far_from_the_median():
    counts = [20, 22, 25, 18, 30, 24, 21, 19, 23, 2, 200, 0]
    assert qc.outlier_flags(counts) == [""] * 9 + ["few_objects", "many_objects", ""]


def test_a_spread_out_run_or_a_tiny_one_has_no_outliers():
    assert qc.outlier_flags([5, 10, 20, 40, 80, 15, 30]) == [""] * 7
    assert qc.outlier_flags([1, 500, 20, 20]) == [""] * 4
    # nine images, one a tenth of the others: too few to call it an outlier
    assert qc.outlier_flags([20, 22, 25, 18, 30, 24, 21, 19, 2]) == [""] * 9


def test_flags_join_and_split():
    assert qc.join_flags(["a", "", "b", "a"]) == "a;b"
    assert qc.split_flags("a;b") == ["a", "b"] and qc.split_flags(None) == []


def test_outline_thumbnail_is_a_small_png_with_outlines(dsb2018):
    image, labels = _pair(dsb2018, BRIGHT)
    data = qc.outline_thumbnail(image, labels, max_size=200)
    thumb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert thumb.shape == (200, 200, 3)
    outline = np.all(thumb == (255, 220, 0), axis=-1)
    assert 0.002 < outline.mean() < 0.3  # 84 nuclei of ~4 px at this size
    assert len(data) < 40_000


def test_outline_thumbnail_does_not_enlarge_small_images(dsb2018):
    image, labels = _pair(dsb2018, FLUOR)
    thumb = Image.open(io.BytesIO(qc.outline_thumbnail(image, labels, max_size=512)))
    assert thumb.size == (image.shape[1], image.shape[0])


def _images_part(ids, counts, flags):
    rows = [{"image_id": i, "n_objects": n, "qc_flags": f, "uri": i, "height": 1, "width": 1,
             "mean_object_area": 1.0, "foreground_fraction": 0.1, "scale": 1.0,
             "model_name": "m", "model_fingerprint": "x", "segflow_version": "0",
             "seconds": 0.1, "mask_path": f"labels/{i}", "fingerprint": "f", "config_key": "k",
             "shard": "s"} for i, n, f in zip(ids, counts, flags)]
    return encode_parquet(table("images", rows))


@pytest.mark.parametrize("indexed", [False, True], ids=["parts", "index"])
def test_run_outliers_are_written_into_this_runs_images_only(tmp_path, indexed):
    """The reference counts come from the parts, or from the index of current records that
    the run's last reconcile wrote: the same flags either way."""
    store = Store(str(tmp_path))
    store.write_bytes("images/old.parquet",
                      _images_part(list("abcdeijk"), [20, 22, 25, 18, 1, 24, 19, 23], [""] * 8))
    store.write_bytes("images/new.parquet",
                      _images_part(["f", "g"], [300, 21], ["saturated", "many_objects"]))
    if indexed:
        from segmodel.pipeline import outputs

        outputs.reconcile(store)
        assert outputs.read_index(store) is not None
        store.write_bytes("images/zzz.parquet", _images_part(["h"], [23], [""]))  # unindexed
    rows = qc.flag_run_outliers(store, ["new"])
    assert dict(zip(rows["image_id"], rows["qc_flags"])) == {
        "f": "saturated;many_objects", "g": ""}
    old = pd.read_parquet(tmp_path / "images" / "old.parquet")
    assert list(old["qc_flags"]) == [""] * 8  # "e" is an outlier, but from an earlier run
    before = (tmp_path / "images" / "new.parquet").read_bytes()
    qc.flag_run_outliers(store, ["new"])
    assert (tmp_path / "images" / "new.parquet").read_bytes() == before
