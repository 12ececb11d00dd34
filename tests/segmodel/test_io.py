"""Storage: URL checks, listing, fingerprints, atomic writes, retries (memory:// and local)."""

import errno
import posixpath
import time

import fsspec
import pytest

from segmodel.storage.io import Store, check_url, is_transient, list_images, retry


@pytest.fixture
def mem_store():
    fs = fsspec.filesystem("memory")
    root = f"/t{time.perf_counter_ns()}"
    for name in ("b/2.png", "a.PNG", "b/1.tif", "notes.txt", ".hidden.png", "c/3.jpeg"):
        fs.pipe_file(f"{root}/in/{name}", b"x" * 10)
    yield Store(f"memory://{root}/in")
    fs.rm(root, recursive=True)


def test_images_are_listed_recursively_sorted_with_relative_ids(mem_store):
    ids = [r.image_id for r in list_images(mem_store)]
    assert ids == ["a.PNG", "b/1.tif", "b/2.png", "c/3.jpeg"]


def test_patterns_override_the_default(mem_store):
    assert [r.image_id for r in list_images(mem_store, ["*.tif"])] == ["b/1.tif"]


def test_a_changed_file_changes_its_fingerprint(mem_store):
    before = {r.image_id: r.fingerprint for r in list_images(mem_store)}
    time.sleep(0.01)
    mem_store.fs.pipe_file(mem_store.path("b/2.png"), b"y" * 11)
    after = {r.image_id: r.fingerprint for r in list_images(mem_store)}
    assert before["b/2.png"] != after["b/2.png"] and before["a.PNG"] == after["a.PNG"]


def test_missing_input_raises_file_not_found_naming_it():
    with pytest.raises(FileNotFoundError, match="memory://nowhere/at/all"):
        list_images(Store("memory://nowhere/at/all"))


def test_unknown_scheme_names_the_parameter_and_value():
    with pytest.raises(ValueError, match="input uses an unknown URL scheme 'nope'"):
        check_url("nope://bucket/x", "input")


def test_local_atomic_write_leaves_no_temporary_file(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("deep/er/file.bin", b"123")
    store.write_bytes("deep/er/file.bin", b"4567")
    assert (tmp_path / "deep/er/file.bin").read_bytes() == b"4567"
    assert [p.name for p in (tmp_path / "deep/er").iterdir()] == ["file.bin"]


def test_store_pickles_to_its_url_only():
    import pickle

    store = pickle.loads(pickle.dumps(Store("memory://x/y", {})))
    from fsspec.implementations.memory import MemoryFileSystem

    assert store.root == "/x/y" and isinstance(store.fs, MemoryFileSystem)


@pytest.mark.parametrize("exc, expected", [
    (ConnectionResetError(errno.ECONNRESET, "reset"), True),
    (TimeoutError("read timed out"), True),
    (OSError("An error occurred (SlowDown) when calling the PutObject operation"), True),
    (OSError("An error occurred (503) ServiceUnavailable"), True),
    (PermissionError("Forbidden (403)"), False),
    (FileNotFoundError("s3://b/k"), False),
    (ValueError("bad value"), False),
    (ZeroDivisionError(), False),
    (OSError("HTTP 502."), True),
    (OSError(errno.EINVAL, "Invalid argument", "s3://lab/plate_0503/well_A1.tif"), False),
    (OSError("Forbidden: s3://lab/run_2504/a.tif"), False),
    (OSError("Forbidden: s3://lab/500/503.tif"), False),
], ids=["reset", "timeout", "slowdown", "503", "403", "missing", "valueerror", "bug", "502",
        "digits-in-path", "digits-in-message-path", "status-like-folders"])
def test_only_storage_hiccups_are_transient(exc, expected):
    assert is_transient(exc) is expected


def test_retry_recovers_from_transient_errors_but_not_from_bugs():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return "ok"

    assert retry(flaky, base_delay=0.001) == "ok" and len(calls) == 3
    calls.clear()

    def forbidden():
        calls.append(1)
        raise PermissionError("403")

    with pytest.raises(PermissionError):
        retry(forbidden, base_delay=0.001)
    assert len(calls) == 1


def _store(where, name, tmp_path, request):
    """An empty store on ``memory``, ``local`` disk or ``s3`` (the loopback moto server)."""
    if where == "s3":
        import s3fs

        options = request.getfixturevalue("s3_options")
        s3fs.S3FileSystem(**options).mkdir(f"{name}-bucket")
        return Store(f"s3://{name}-bucket/out", options)
    return Store(f"memory://{name}{time.perf_counter_ns()}" if where == "memory"
                 else str(tmp_path))


@pytest.mark.parametrize("where", ["memory", "local", "s3"])
def test_remove_tree_takes_a_name_with_glob_characters_literally(where, tmp_path, request):
    """``plate[1].ome.zarr`` goes, ``plate1.ome.zarr`` (which the pattern matches) stays."""
    store = _store(where, "glob", tmp_path, request)
    for folder in ("labels/plate1.ome.zarr", "labels/plate[1].ome.zarr", "labels/plate?"):
        for name in ("zarr.json", "0/c/0/0"):
            store.write_bytes(f"{folder}/{name}", b"x")
    store.remove_tree("labels/plate[1].ome.zarr")
    store.remove_tree("labels/plate?")
    left = sorted(posixpath.relpath(p, store.root)
                  for p in store.fs.find(store.path("labels"), withdirs=False))
    assert left == ["labels/plate1.ome.zarr/0/c/0/0", "labels/plate1.ome.zarr/zarr.json"]


@pytest.mark.parametrize("where", ["memory", "local", "s3"])
def test_read_many_gives_every_file_in_order_and_none_for_a_missing_one(where, tmp_path,
                                                                        request):
    store = _store(where, "many", tmp_path, request)
    names = [f"images/part-{i:02d}.parquet" for i in range(8)]
    for i, name in enumerate(names):
        if i != 5:
            store.write_bytes(name, f"content {i}".encode() * (i + 1))
    paths = [store.path(n) for n in reversed(names)]  # any order, chunks of 3 files
    got = list(store.read_many(paths, chunk=3))
    assert [p for p, _ in got] == paths
    assert [d for _, d in got] == [None if i == 5 else f"content {i}".encode() * (i + 1)
                                   for i in reversed(range(8))]
