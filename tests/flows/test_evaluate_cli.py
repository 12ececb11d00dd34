"""``segflow evaluate`` says what it matched, refuses a poor match before any scoring, and names
files that are not label masks; ``--debug`` and ``SEGFLOW_DEBUG=1`` add the traceback. Real
DSB2018 label masks, ``segflow`` in a subprocess as a user runs it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from flows.evaluate import EvaluateParams, preflight

REPO = Path(__file__).resolve().parents[2]


def segflow(*args, home, **env):
    """``(exit status, stdout, stderr)`` of ``segflow ARGS`` with its own Prefect home."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("PREFECT_API") and k != "SEGFLOW_DEBUG"}
    base.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", **env)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, env=base, cwd=REPO, timeout=300, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def folders(dsb2018, tmp_path):
    """TRUTH: six real DSB2018 label masks; PRED: a segflow-like OUTPUT whose labels/ holds
    two of them (as TIFFs: a perfect prediction)."""
    ids = sorted(p.stem for p in (dsb2018 / "labels").glob("*.png"))[:6]
    truth, labels = tmp_path / "truth", tmp_path / "out" / "labels"
    truth.mkdir()
    labels.mkdir(parents=True)
    for i in ids:
        shutil.copy(dsb2018 / "labels" / f"{i}.png", truth)
    for i in ids[:2]:
        tifffile.imwrite(labels / f"{i}.tif", np.asarray(Image.open(truth / f"{i}.png")))
    return tmp_path / "out", truth


def test_under_half_matched_is_refused_before_any_scoring(folders, tmp_path):
    out, truth = folders
    code, stdout, stderr = segflow("evaluate", str(out), str(truth), "--out",
                                   str(tmp_path / "scores.parquet"), home=tmp_path / "home")
    assert code == 1 and stdout == ""
    assert stderr.strip() == (
        f"segflow: PRED={str(out)!r} and TRUTH={str(truth)!r} have 2 images in common; 0 are "
        "only in PRED, 4 only in TRUTH: under half of TRUTH's 6 images have a match. Check the "
        "two folders, or pass --allow-missing to score the 2 images in common alone.")
    assert not (tmp_path / "scores.parquet").exists()


def test_allow_missing_scores_the_matched_and_reports_the_rest_apart(folders, tmp_path):
    out, truth = folders
    code, stdout, stderr = segflow("evaluate", str(out), str(truth), "--allow-missing", "--out",
                                   str(tmp_path / "scores.parquet"), home=tmp_path / "home")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == ("2 images with a prediction and a label (scored), 0 with only a "
                        "prediction, 4 with only a label: the scores are over the 2 scored "
                        "images")
    assert lines[1].startswith("only a label: ") and lines[1].count(".png") == 4
    assert lines[2].split() == ["group", "images", "ap", "ap50", "ap75", "count_error",
                                "no_prediction", "no_label"]
    # the two predicted images are perfect: 1.000, not 2/6 as when the rest counted as zeros
    assert lines[3].split() == ["all", "2", "1.000", "1.000", "1.000", "0.000", "4", "0"]
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert scores["found"].value_counts().to_dict() == {"label only": 4, "both": 2}
    assert scores.loc[scores["found"] == "label only", "ap"].isna().all()


def test_swapped_arguments_are_named(folders, tmp_path):
    out, truth = folders
    params = EvaluateParams(pred=str(truth), truth=str(out))
    with pytest.raises(ValueError, match=r"have 0 images in common; 6 are only in PRED, 2 only "
                                         r"in TRUTH: nothing to score\..* the arguments are "
                                         r"swapped \(segflow evaluate PRED TRUTH\)"):
        preflight(params)


def test_preflight_passes_a_majority_match_and_returns_the_pairing(folders):
    out, truth = folders
    for extra in sorted(truth.glob("*.png"))[2:4]:
        tifffile.imwrite(out / "labels" / f"{extra.stem}.tif", np.asarray(Image.open(extra)))
    pairing = preflight(EvaluateParams(pred=str(out), truth=str(truth)))
    assert pairing.counts() == {"both": 4, "pred_only": 0, "truth_only": 2}


@pytest.mark.parametrize("before, after, env", [
    ([], [], {}), (["--debug"], [], {}), ([], ["--debug"], {}), ([], [], {"SEGFLOW_DEBUG": "1"})],
    ids=["plain", "debug-before-the-command", "debug-after-it", "SEGFLOW_DEBUG"])
def test_images_given_as_labels_get_one_line_or_with_debug_the_traceback(
        dsb2018, folders, tmp_path, before, after, env):
    out, _ = folders
    code, stdout, stderr = segflow(*before, "evaluate", str(out), str(dsb2018 / "images"),
                                   *after, home=tmp_path / "home", **env)
    assert code == 1 and stdout == ""
    *trace, last = stderr.strip().splitlines()
    assert last.startswith("segflow: TRUTH holds file://") and ", an RGBA image (shape (" in last
    assert last.endswith("Pass a folder of ground-truth label masks (e.g. DSB2018's labels/, "
                         "not images/) as TRUTH.")
    if before or after or env:
        assert trace[0] == "Traceback (most recent call last):"
        assert trace[-1] == "ValueError: " + last.removeprefix("segflow: ")
        assert any("in read_labels" in line for line in trace)
    else:
        assert trace == []
