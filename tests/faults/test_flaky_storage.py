"""Flaky object storage: S3 (moto) behind a proxy that resets, errors and stalls.

Runs over 220 small real images at 10% and 30% fault rates must end with every image
processed exactly once: the tables equal a clean run's, row for row. A permanent error (403)
fails fast with a clear message and is not retried.
"""

import json
import time

import pytest
from flaky_proxy import FlakyProxy
from runs import compare, read_tables, record, run, segflow_env, small_png

from segmodel.training.datasets import list_samples

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

N_IMAGES = 220
SIDE = 96


@pytest.fixture(scope="module")
def s3(s3_server, samples, dsb2018):
    """A bucket of 220 small real images (shipped samples + shared set), read directly."""
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", skip_instance_cache=True, client_kwargs={
        "endpoint_url": s3_server, "region_name": "eu-west-1"})
    fs.mkdir("flaky-in")
    fs.mkdir("flaky-out")
    paths = [p for p, _ in samples] + [s.image_path for s in list_samples(dsb2018)]
    for i, path in enumerate(paths[:N_IMAGES]):
        fs.pipe_file(f"flaky-in/{i % 4}/{path.stem[:16]}.png", small_png(path, SIDE))
    yield fs
    fs.rm("flaky-in", recursive=True)
    fs.rm("flaky-out", recursive=True)


def _options(endpoint):
    return json.dumps({"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": endpoint, "region_name": "eu-west-1"},
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 1}})


@pytest.fixture(scope="module")
def clean(s3, s3_server):
    code, out, rss = run(["s3://flaky-in", "s3://flaky-out/clean", "--shard-size", "16",
                          "--storage-options", _options(s3_server)], segflow_env())
    assert code == 0, out
    s3.invalidate_cache()
    tables = read_tables(s3, "flaky-out/clean")
    assert len(tables["images"]) == N_IMAGES and len(tables["failures"]) == 0
    record({"fault": "none (clean run, S3)", "injected": 0, "runs": 1, "images": N_IMAGES,
            "rows_lost": 0, "rows_duplicated": 0, "max_memory_mb": round(rss)})
    return tables


@pytest.mark.parametrize("rate", [0.1, 0.3], ids=["10pc", "30pc"])
def test_flaky_storage_loses_and_duplicates_nothing(s3, s3_server, clean, rate):
    with FlakyProxy(s3_server, rate=rate, seed=int(rate * 100), stall=1.5) as proxy:
        t0 = time.perf_counter()
        code, out, rss = run(["s3://flaky-in", f"s3://flaky-out/f{int(rate * 100)}",
                              "--shard-size", "16", "--storage-options", _options(proxy.url)],
                             segflow_env())
        seconds = time.perf_counter() - t0
    assert code == 0, out
    injected = sum(proxy.injected.values())
    assert injected >= rate * proxy.requests * 0.5 and set(proxy.injected) >= {"reset", "503"}
    s3.invalidate_cache()
    root = f"flaky-out/f{int(rate * 100)}"
    tables = read_tables(s3, root)
    lost, dup = compare(clean, tables)
    assert lost == 0 and dup == 0
    masks = sorted(p for p in s3.find(f"{root}/labels"))
    assert len(masks) == N_IMAGES and not [p for p in s3.find(root) if ".tmp" in p]
    for p in masks[::20]:  # the masks are the clean run's, byte for byte
        assert s3.cat_file(p) == s3.cat_file(p.replace(root, "flaky-out/clean"))
    detail = ", ".join(f"{k} {v}" for k, v in sorted(proxy.injected.items()))
    record({"fault": f"flaky S3 at {rate:.0%} of {proxy.requests} requests ({detail})",
            "injected": injected, "runs": 1, "images": N_IMAGES, "rows_lost": lost,
            "rows_duplicated": dup, "max_memory_mb": round(rss)})
    print(f"{rate:.0%}: {proxy.requests} requests, {injected} faults, {seconds:.0f} s")


def test_access_denied_fails_fast_with_a_clear_message_and_is_not_retried(s3, s3_server):
    with FlakyProxy(s3_server, deny=True) as proxy:
        t0 = time.perf_counter()
        code, out, _ = run(["s3://flaky-in", "s3://flaky-out/denied",
                            "--storage-options", _options(proxy.url)], segflow_env())
        seconds = time.perf_counter() - t0
    assert code != 0
    assert "access denied" in out.lower() and "s3://flaky-in" in out
    assert "Traceback" not in out
    assert proxy.requests <= 10  # one or two calls per check, none repeated
    assert seconds < 120
