"""Output layout, shard commits and reconciliation on memory://."""

import time

import pytest

from segmodel.pipeline import outputs
from segmodel.storage.io import Store


def test_mask_paths_replace_the_extension():
    assert outputs.mask_paths(["x/a.png", "b.tiff"]) == \
        {"x/a.png": "labels/x/a.tif", "b.tiff": "labels/b.tif"}


def test_ids_differing_only_by_extension_get_distinct_masks():
    paths = outputs.mask_paths(["a.png", "a.tif", "c.png"], "png")
    assert paths == {"a.png": "labels/a.png.png", "a.tif": "labels/a.tif.png",
                     "c.png": "labels/c.png"}
    assert len(set(paths.values())) == 3


def test_an_id_that_is_another_id_plus_the_mask_suffix_gets_its_own_mask():
    ids = ["x.png", "x.jpg", "x.png.tif", "y.tif.tif", "y.tif"]
    paths = outputs.mask_paths(ids)
    assert len(set(paths.values())) == len(ids)
    assert paths["x.jpg"] == "labels/x.jpg.tif"
    assert paths["x.png"].startswith("labels/x.png-") and paths["x.png"].endswith(".tif")
    assert paths == outputs.mask_paths(ids)  # the same on every run


def test_unknown_mask_format_is_refused():
    with pytest.raises(ValueError, match="mask_format must be one of"):
        outputs.mask_paths(["a.png"], "jpg")


def _images_row(image_id, fp, shard):
    return {"image_id": image_id, "uri": image_id, "height": 1, "width": 1, "n_objects": 0,
            "mean_object_area": 0.0, "foreground_fraction": 0.0, "scale": 1.0,
            "model_name": "m", "model_fingerprint": "f", "segflow_version": "0",
            "seconds": 0.0, "mask_path": "labels/x.tif", "fingerprint": fp,
            "config_key": "k", "shard": shard}


def _write(store, shard, rows, objects=()):
    outputs.write_shard(store, shard, {
        "objects": outputs.table("objects", list(objects)),
        "intensities": outputs.table("intensities", [_intensity(o) for o in objects]),
        "failures": outputs.table("failures", []),
        "images": outputs.table("images", rows)})


@pytest.fixture
def store():
    return Store(f"memory://out{time.perf_counter_ns()}")


def _object(image_id, label):
    row = {c: 0 for c in outputs.SCHEMAS["objects"]}
    row.update(image_id=image_id, label=label)
    return row


def _intensity(obj):
    return {"image_id": obj["image_id"], "label": obj["label"], "channel": 0,
            "channel_name": "DAPI", "mean": 1.0, "min": 0.0, "max": 2.0}


def test_reconcile_keeps_only_the_newest_record_of_each_image(store):
    _write(store, "20260101T000000Z-00000",
           [_images_row("a", "old", "s1"), _images_row("b", "b1", "s1")],
           [_object("a", 1), _object("b", 1)])
    _write(store, "20260102T000000Z-00000", [_images_row("a", "new", "s2")],
           [_object("a", 1), _object("a", 2)])
    latest = outputs.reconcile(store)
    assert latest == {"a": ("done", "new", "k"), "b": ("done", "b1", "k")}
    import pandas as pd

    images = pd.read_parquet(store.path("images"), filesystem=store.fs)
    objects = pd.read_parquet(store.path("objects"), filesystem=store.fs)
    assert sorted(images["image_id"]) == ["a", "b"]
    assert sorted(zip(objects["image_id"], objects["label"])) == [("a", 1), ("a", 2), ("b", 1)]
    values = pd.read_parquet(store.path("intensities"), filesystem=store.fs)
    assert sorted(zip(values["image_id"], values["label"])) == [("a", 1), ("a", 2), ("b", 1)]


def test_reconcile_removes_parts_of_shards_that_never_committed(store):
    for name, row in (("objects", _object("z", 1)), ("intensities", _intensity(_object("z", 1)))):
        store.write_bytes(f"{name}/20260101T000000Z-00007.parquet",
                          outputs.encode_parquet(outputs.table(name, [row])))
    assert outputs.reconcile(store) == {}
    assert store.list("objects", ".parquet") == store.list("intensities", ".parquet") == []


def test_pending_skips_done_images_with_the_same_fingerprint_and_config():
    from segmodel.storage.io import ImageRef

    refs = [ImageRef("a", "a", "a", 1, "f1"), ImageRef("b", "b", "b", 1, "f2"),
            ImageRef("c", "c", "c", 1, "f3")]
    latest = {"a": ("done", "f1", "k"), "b": ("done", "old", "k"), "c": ("failed", "f3", "k")}
    assert [r.image_id for r in outputs.pending(refs, latest, "k")] == ["b"]
    assert [r.image_id for r in outputs.pending(refs, latest, "k", retry_failed=True)] == \
        ["b", "c"]
    assert len(outputs.pending(refs, latest, "other")) == 3


def test_a_clean_up_interrupted_at_any_step_leaves_outputs_a_rerun_reads(store):
    """Reconcile drops a wholly superseded shard; killed after any of its removals, the next
    reconcile still reads the output and keeps the newer record."""
    old, new = "20260101T000000Z-00000", "20260102T000000Z-00000"
    for step in range(4):
        root = Store(f"{store.root}-{step}")
        _write(root, old, [_images_row("a", "f1", old)], [_object("a", 1)])
        _write(root, new, [_images_row("a", "f2", new)], [_object("a", 1)])
        removed, remove = [], root.remove

        def dying_remove(path, step=step, removed=removed, remove=remove):
            if len(removed) == step:
                raise KeyboardInterrupt("killed")
            removed.append(path)
            remove(path)

        root.remove = dying_remove
        try:
            outputs.reconcile(root)
        except KeyboardInterrupt:
            pass
        root.remove = remove
        assert outputs.reconcile(root) == {"a": ("done", "f2", "k")}
        assert root.list("images", ".parquet") == [root.path("images", f"{new}.parquet")]


def test_a_committed_shard_missing_a_part_is_read_as_without_it(store):
    _write(store, "20260101T000000Z-00000", [_images_row("a", "f1", "s")])
    store.remove(store.path("failures", "20260101T000000Z-00000.parquet"))
    assert outputs.reconcile(store) == {"a": ("done", "f1", "k")}


def test_recorded_masks_are_kept_and_never_given_to_another_image(store):
    _write(store, "20260101T000000Z-00000", [_images_row("a.png", "f1", "s")])
    recorded = {}
    outputs.reconcile(store, masks=recorded)
    assert recorded == {"a.png": "labels/x.tif"}  # the row's own mask path
    recorded = {"a.png": "labels/a.tif"}  # a.png was alone when it was segmented
    paths = outputs.mask_paths(["a.png", "a.png.png"], "tif", recorded)
    assert paths["a.png"] == "labels/a.tif"
    paths = outputs.mask_paths(["a.png", "a.jpg"], "tif", recorded)  # a new neighbour
    assert paths["a.png"] == "labels/a.tif" and paths["a.jpg"] == "labels/a.jpg.tif"
    paths = outputs.mask_paths(["b.png", "a.tif"], "tif", recorded)  # a.png gone, still recorded
    assert paths["a.tif"].startswith("labels/a.tif-") and paths["b.png"] == "labels/b.tif"
    assert outputs.mask_paths(["a.png"], "png", recorded) == {"a.png": "labels/a.png"}


def _shards_read(store):
    """Reconcile, and the shards whose parts it read (the store's reads of table parts)."""
    read, many = [], store.read_many

    def counting(paths, chunk=256):
        for path, data in many(paths, chunk):
            read.append(path.rsplit("/", 1)[-1][: -len(".parquet")])
            yield path, data

    store.read_many = counting
    try:
        latest = outputs.reconcile(store)
    finally:
        store.read_many = many
    return latest, sorted(set(read))


def test_a_rerun_reads_the_index_and_only_the_shards_committed_since(store):
    s1, s2, s3 = "20260101T000000Z-00000", "20260102T000000Z-00000", "20260103T000000Z-00000"
    _write(store, s1, [_images_row("a", "f1", s1), _images_row("b", "f1", s1)])
    _write(store, s2, [_images_row("c", "f1", s2)])
    first, read = _shards_read(store)
    assert read == [s1, s2] and store.exists(outputs.INDEX)
    stamp = store.fs.info(store.path(outputs.INDEX))
    again, read = _shards_read(store)
    assert again == first and read == []  # nothing new: no part read, the index as it was
    assert store.fs.info(store.path(outputs.INDEX)) == stamp
    _write(store, s3, [_images_row("b", "f2", s3), _images_row("d", "f1", s3)])
    latest, read = _shards_read(store)
    assert read == [s3]
    expected = {"a": ("done", "f1", "k"), "b": ("done", "f2", "k"), "c": ("done", "f1", "k"),
                "d": ("done", "f1", "k")}
    assert latest == expected
    import pandas as pd

    images = pd.read_parquet(store.path("images"), filesystem=store.fs)  # b's old row gone
    assert sorted(zip(images["image_id"], images["fingerprint"])) == \
        [("a", "f1"), ("b", "f2"), ("c", "f1"), ("d", "f1")]
    store.remove(store.path(outputs.INDEX))
    assert outputs.reconcile(store) == expected  # the same from the parts alone


def test_a_damaged_index_is_rebuilt_from_the_parts(store):
    s1 = "20260101T000000Z-00000"
    _write(store, s1, [_images_row("a", "f1", s1)])
    store.write_bytes(outputs.INDEX, b"not parquet")
    latest, read = _shards_read(store)
    assert latest == {"a": ("done", "f1", "k")} and read == [s1]
    assert _shards_read(store) == (latest, [])  # rewritten, and read the next time


def test_a_shard_removed_by_hand_is_redone_despite_the_index(store):
    s1, s2 = "20260101T000000Z-00000", "20260102T000000Z-00000"
    _write(store, s1, [_images_row("a", "f1", s1)])
    _write(store, s2, [_images_row("b", "f1", s2)])
    outputs.reconcile(store)
    store.remove(store.path("images", f"{s2}.parquet"))  # its commit marker: b is redone
    assert outputs.reconcile(store) == {"a": ("done", "f1", "k")}
    assert store.list("objects", ".parquet") == [store.path("objects", f"{s1}.parquet")]
    store.remove(store.path("images", f"{s1}.parquet"))
    assert outputs.reconcile(store) == {} and not store.exists(outputs.INDEX)
