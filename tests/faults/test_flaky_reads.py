"""Batched reads (``Store.read_many``, how a rerun reads its table parts) from S3 behind a
proxy that resets connections, answers 500/503 and stalls: every file comes back whole, a
missing one as None, and a permanent error (403) is raised, not taken for a missing file."""

import pytest
from flaky_proxy import FlakyProxy

from segmodel.storage.io import Store

pytestmark = pytest.mark.slow


def _store(endpoint, bucket):
    return Store(f"s3://{bucket}/out", {
        "key": "k", "secret": "s", "skip_instance_cache": True,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"},
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 1}})


@pytest.fixture(scope="module")
def parts(s3_server):
    store = _store(s3_server, "flaky-reads")
    store.fs.mkdir("flaky-reads")
    files = {f"images/{i:03d}.parquet": bytes([i % 251]) * (100 + i) for i in range(60)}
    store.write_many(files)
    return files


def test_read_many_survives_flaky_storage(s3_server, parts):
    with FlakyProxy(s3_server, rate=0.3, seed=7, stall=0.3) as proxy:
        store = _store(proxy.url, "flaky-reads")
        names = sorted(parts) + ["images/missing.parquet"]
        got = dict(store.read_many([store.path(n) for n in names], chunk=16))
    assert proxy.injected.total() > 5  # faults were injected, and every file came back whole
    assert {n: got[store.path(n)] for n in parts} == parts
    assert got[store.path("images/missing.parquet")] is None


def test_read_many_raises_access_denied(s3_server, parts):
    with FlakyProxy(s3_server, deny=True) as proxy:
        store = _store(proxy.url, "flaky-reads")
        with pytest.raises(PermissionError):
            list(store.read_many([store.path(n) for n in sorted(parts)[:4]]))
