"""Credentials never leak: planted secrets are absent from every output (report.html included),
log and message.

Also: a model carrying Python code (a Lambda layer) is refused unless --trust-model.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest

from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server")

REPO = Path(__file__).resolve().parents[2]
KEY = "AKIAPLANTEDKEY7Q3ZX9"
SECRET = "planted-Secret/Value+9f8e7d6c5b4a"


def _needles():
    return [KEY, SECRET, SECRET.replace("/", "%2F").replace("+", "%2B")]


@pytest.fixture
def buckets(s3_server, samples):
    import s3fs

    fs = s3fs.S3FileSystem(key="setup", secret="setup",
                           client_kwargs={"endpoint_url": s3_server, "region_name": "eu-west-1"})
    fs.mkdir("secret-in")
    fs.mkdir("secret-out")
    fs.pipe_file("secret-in/a.png", samples[1][0].read_bytes())
    fs.pipe_file("secret-in/broken.png", b"not an image")
    yield fs
    for b in ("secret-in", "secret-out"):
        fs.rm(b, recursive=True)


def _scan_prefect_api():
    """Every flow run's parameters and every log line the Prefect API holds, as text."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)  # this session's runs
        logs, offset = [], 0
        while page := client.read_logs(limit=200, offset=offset):
            logs += page
            offset += len(page)
        artifacts = client.read_artifacts(limit=200)
    return "\n".join([json.dumps([r.parameters for r in runs], default=str),
                      "\n".join(log.message for log in logs),
                      json.dumps([a.data for a in artifacts], default=str)])


def _segflow(*args, env):
    """``segflow`` in a subprocess (as a user runs it): exit code and everything it printed."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("source", ["storage-options", "environment"])
def test_planted_credentials_appear_in_no_output_log_or_message(buckets, s3_server, source):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PYTHONPATH": str(REPO), "PREFECT_LOGGING_LEVEL": "DEBUG"}
    options = {"client_kwargs": {"endpoint_url": s3_server, "region_name": "eu-west-1"}}
    if source == "storage-options":
        options.update(key=KEY, secret=SECRET)
    else:
        env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    opts = json.dumps(options)
    code, printed = _segflow("run", "s3://secret-in", "s3://secret-out/run",
                             "--storage-options", opts, env=env)
    assert code == 0, printed
    transcripts = [printed]
    for bad in (["s3://secret-in", "s3://no-such-bucket-xyz/run"],
                ["s3://no-such-bucket-xyz/in", "s3://secret-out/run2"],
                ["s3://secret-in", "s3://secret-out/run3"]):  # malformed JSON below
        code, printed = _segflow("run", *bad, "--storage-options",
                                 opts[:-1] if bad[1].endswith("run3") else opts, env=env)
        assert code != 0
        transcripts.append(printed)
    assert "output bucket not found: 'no-such-bucket-xyz'" in transcripts[1]
    assert "input not found: 's3://no-such-bucket-xyz/in'" in transcripts[2]
    assert "storage_options must be a JSON object" in transcripts[3]
    code, printed = _segflow("report", "s3://secret-out/run", "--storage-options", opts, env=env)
    assert (code, printed.splitlines()[-1]) == (0, "report: s3://secret-out/run/report.html")
    transcripts.append(printed)

    buckets.invalidate_cache()
    files = buckets.find("secret-out")
    assert any(f.endswith("run.json") for f in files) and len(files) >= 5
    page = buckets.cat_file("secret-out/run/report.html").decode()  # the run's, then report's
    assert '<img alt="a.png" src="data:image/png;base64,' in page  # a.png read back from S3
    assert "Failed images (1)" in page and "storage_options" not in page
    contents = [buckets.cat_file(f) for f in files]
    tables = [pd.read_parquet(io.BytesIO(c)).to_csv()
              for f, c in zip(files, contents) if f.endswith(".parquet")]
    haystacks = {"output files": b"\n".join(contents).decode("latin-1"),
                 "tables": "\n".join(tables), "printed output": "\n".join(transcripts),
                 "prefect api (parameters, logs, artifacts)": _scan_prefect_api()}
    for where, text in haystacks.items():
        for needle in _needles():
            assert needle not in text, f"planted credential found in {where}"


@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    """A .keras model whose Lambda layer carries a Python function."""
    path = tmp_path_factory.mktemp("model") / "lambda.keras"
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    outputs = keras.layers.Conv2D(3, 1, activation="sigmoid", name="maps")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def test_a_model_with_a_lambda_layer_is_refused_without_trust_model(lambda_model, samples,
                                                                    tmp_path):
    src = samples[1][0].parent
    with pytest.raises(SystemExit) as err:
        main(["run", str(src), str(tmp_path / "out"), "--model", str(lambda_model),
              "--pattern", "fluor-62570c4f.png"])
    assert "refused" in str(err.value) and "--trust-model" in str(err.value)
    assert "Lambda" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_trust_model_loads_it(lambda_model, samples, tmp_path):
    src = samples[1][0].parent
    assert main(["run", str(src), str(tmp_path / "out"), "--model", str(lambda_model),
                 "--pattern", "fluor-62570c4f.png", "--trust-model"]) == 0
    assert len(pd.read_parquet(tmp_path / "out" / "images")) == 1
