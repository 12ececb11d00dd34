"""kill -9 mid-run: SIGKILL ``segflow run`` at 20 moments, rerun, and nothing is lost.

Output folders each take five kills at random moments (triggered by masks appearing, plus a
random delay, so kills land in reading, inference and writing), then one run to completion;
the result must equal a clean run's, with no partial or orphaned file. A run that finishes
before its kill ends its folder's chain, and another folder takes the kills still missing.
"""

import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from runs import compare, read_tables, record, run, segflow_env, small_png, start

from segmodel.training.datasets import list_samples

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

N_IMAGES = 30
CHAINS, KILLS = 4, 5
ARGS = ["--shard-size", "4", "--batch-size", "4"]


@pytest.fixture(scope="module")
def images(tmp_path_factory, dsb2018):
    src = tmp_path_factory.mktemp("kill") / "in"
    (src / "sub").mkdir(parents=True)
    for i, s in enumerate(list_samples(dsb2018)[:N_IMAGES]):
        (src / ("sub" if i % 3 else "") / f"{s.image_path.stem[:12]}.png").write_bytes(
            small_png(s.image_path, 128))
    return src


class LocalFs:
    """The few calls :func:`runs.read_tables` makes, on a local folder."""

    def ls(self, path, detail=False):
        p = Path(path)
        return [str(q) for q in sorted(p.iterdir())] if p.is_dir() else []

    def cat_file(self, path):
        return Path(path).read_bytes()


def _tables(out):
    return read_tables(LocalFs(), str(out))


def _check_consistent(out):
    """No temporaries, no uncommitted parts, every mask with its row and every row with its mask."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], "orphaned partial files"
    committed = {p.stem for p in (out / "images").glob("*.parquet")}
    for name in ("objects", "failures"):
        assert {p.stem for p in (out / name).glob("*.parquet")} <= committed
    rows = pd.read_parquet(out / "images")
    masks = {str(p.relative_to(out)) for p in (out / "labels").rglob("*") if p.is_file()}
    assert set(rows["mask_path"]) == masks
    assert rows["image_id"].is_unique


def test_sigkill_at_twenty_moments_then_rerun_equals_a_clean_run(images, tmp_path):
    env = segflow_env()
    code, out_text, rss = run([str(images), str(tmp_path / "clean"), *ARGS], env)
    assert code == 0, out_text
    clean = _tables(tmp_path / "clean")
    assert len(clean["images"]) == N_IMAGES
    rng = random.Random(8)
    kills, max_rss, moments, chain, n_runs = 0, rss, [], 0, 1
    # a run that finishes before its kill completes its folder: that chain ends and another
    # folder takes the kills still missing (at most two extra folders)
    while kills < CHAINS * KILLS and chain < CHAINS + 2:
        out = tmp_path / f"chain{chain}"
        chain += 1
        for _ in range(KILLS):
            before = len(list(out.rglob("labels/**/*.tif")))
            remaining = N_IMAGES - before
            target = before + rng.randint(0, max(0, min(remaining - 1, 8)))
            delay = rng.uniform(0.0, 0.5)
            proc = start([str(images), str(out), *ARGS], env)
            n_runs += 1
            t0 = time.monotonic()
            while proc.poll() is None and len(list(out.rglob("labels/**/*.tif"))) < target:
                time.sleep(0.05)
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                moments.append(round(time.monotonic() - t0, 1))
            proc.wait()
            proc.stdout.close()
            if not killed:
                break
        code, out_text, rss = run([str(images), str(out), *ARGS], env)
        n_runs += 1
        max_rss = max(max_rss, rss)
        assert code == 0, out_text
        _check_consistent(out)
        lost, dup = compare(clean, _tables(out))
        assert lost == 0 and dup == 0
    assert kills >= CHAINS * KILLS, f"only {kills} runs were still going when killed: {moments}"
    record({"fault": f"kill -9 ({kills} kills at {min(moments)}-{max(moments)} s into a run)",
            "injected": kills, "runs": n_runs, "images": N_IMAGES,
            "rows_lost": 0, "rows_duplicated": 0, "max_memory_mb": round(max_rss)})
