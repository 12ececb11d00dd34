"""The access checks of a run's configuration: each refusal is one line, before the model loads.

Local folders with real permissions, and S3 through a real S3 protocol server (moto) on
loopback: one that accepts any credentials, and one that enforces IAM policies.
"""

import json
import os
import socket
import subprocess
import sys
import time

import fsspec
import pytest

from segmodel.pipeline.config import configure
from segmodel.pipeline.options import RunOptions
from segmodel.storage.io import (
    S3_CLIENT_DEFAULTS,
    Store,
    check_readable,
    check_writable,
    with_client_defaults,
)
from tests.conftest import port_answers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


root_only = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")


def _configure(src, out, **options):
    return configure(RunOptions(input=str(src), output=str(out), **options))


def _one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture
def model_loads(monkeypatch):
    """Records whether the run's configuration got as far as loading the model."""
    from segmodel.pipeline import config

    calls = []
    real = config.load_model
    monkeypatch.setattr(config, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


@root_only
def test_a_read_only_output_folder_is_refused_before_the_model_loads(tmp_path, model_loads):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as err:
            _configure(tmp_path / "in", out)
    finally:
        out.chmod(0o755)
    assert _one_line(err) == (
        f"output={str(out)!r} is not writable (Permission denied: {str(out)!r}). Fix the "
        "folder's permissions, or choose a folder you can write to.")
    assert model_loads == [] and list(out.iterdir()) == []


@root_only
def test_an_unreadable_input_folder_is_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    src.chmod(0o000)
    try:
        with pytest.raises(PermissionError) as err:
            _configure(src, tmp_path / "out")
    finally:
        src.chmod(0o755)
    assert _one_line(err).startswith(f"input={str(src)!r} cannot be read (Permission denied")


def test_the_write_check_leaves_nothing_behind(tmp_path):
    (tmp_path / "in").mkdir()
    _configure(tmp_path / "in", tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()  # the folders it made for the check are gone
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("x")
    _configure(tmp_path / "in", tmp_path / "kept")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]


def test_a_file_where_the_output_folder_would_be_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError) as err:
        _configure(tmp_path / "in", tmp_path / "taken" / "out")
    assert _one_line(err).startswith(
        f"output={str(tmp_path / 'taken' / 'out')!r} cannot be a folder: a file is in the way")


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """An environment in which botocore finds no credentials anywhere."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_s3_without_credentials_is_one_line_naming_the_input(s3_server, no_aws_credentials,
                                                            tmp_path, model_loads):
    options = {"client_kwargs": {"endpoint_url": s3_server, "region_name": "eu-west-1"}}
    with pytest.raises(PermissionError) as err:
        _configure("s3://lab-in/plate", tmp_path / "out", storage_options=options)
    assert _one_line(err).startswith(
        "no credentials for input='s3://lab-in/plate' (Unable to locate credentials). Pass "
        "them in --storage-options")
    assert model_loads == []


def test_s3_output_in_a_missing_bucket_is_refused(s3_server, s3_options, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        _configure(tmp_path / "in", "s3://no-such-bucket/seg", storage_options=s3_options)
    assert _one_line(err) == (
        "output bucket not found: 'no-such-bucket' (output='s3://no-such-bucket/seg'). Create "
        "it, or check the URL and --storage-options.")


@pytest.fixture(scope="module")
def iam_s3():
    """A moto S3 server that enforces IAM: buckets ``lab-in`` (one image) and ``lab-out``, and
    the keys of a user allowed to read (``s3:Get*``, ``s3:List*``) but not to write."""
    pytest.importorskip("moto")
    import boto3

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="6")  # the set-up below, then IAM
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    if not port_answers(port):
        pytest.fail(f"moto server did not start on port {port}")
    admin = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing")
    s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
    for bucket in ("lab-in", "lab-out"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="lab-in", Key="plate/a.png", Body=b"x")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    yield {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"],
           "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    proc.terminate()
    proc.wait(10)




def test_s3_a_read_only_user_may_read_the_input_but_not_write_the_output(iam_s3):
    assert check_readable(Store("s3://lab-in/plate", iam_s3), "input") is True
    with pytest.raises(PermissionError) as err:
        check_writable(Store("s3://lab-out/seg", iam_s3), "output")
    assert _one_line(err).startswith(
        "access denied to output='s3://lab-out/seg' (Access Denied). Check the credentials")


def test_s3_unknown_keys_are_access_denied_naming_the_input(iam_s3, tmp_path, model_loads):
    options = {**iam_s3, "key": "AKIAUNKNOWNKEY000000", "secret": "wrong"}
    with pytest.raises(PermissionError) as err:
        _configure("s3://lab-in/plate", tmp_path / "out", storage_options=options)
    assert _one_line(err).startswith("access denied to input='s3://lab-in/plate' (")
    assert model_loads == []


def test_an_endpoint_that_refuses_connections_fails_within_seconds(tmp_path, model_loads):
    options = {"key": "k", "secret": "s",
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"}}
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError) as err:
        _configure("s3://lab-in/plate", tmp_path / "out", storage_options=options)
    assert time.perf_counter() - t0 < 20
    assert _one_line(err).startswith(
        "cannot reach the storage of input='s3://lab-in/plate' (Could not connect to the "
        "endpoint URL")
    assert model_loads == []


def test_a_connect_that_hangs_gives_up_after_the_storage_options_timeout(tmp_path):
    """A server whose listen queue is full: connecting hangs, as to a host that drops packets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = [socket.socket() for _ in range(8)]
    for s in queued:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    options = {"key": "k", "secret": "s", "config_kwargs": {"connect_timeout": 1},
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    t0 = time.perf_counter()
    try:
        with pytest.raises(ConnectionError) as err:
            check_writable(Store("s3://lab-out/seg", options), "output")
    finally:
        for s in [*queued, server]:
            s.close()
    assert time.perf_counter() - t0 < 12  # 3 tries of 1 s and botocore's backoff
    assert _one_line(err).startswith("cannot reach the storage of output='s3://lab-out/seg' "
                                     "(Connect timeout on endpoint URL")


def test_s3_client_defaults_fill_only_what_neither_options_nor_fsspec_config_set(monkeypatch):
    assert Store("s3://b/x", {"anon": True}).fs.config_kwargs == S3_CLIENT_DEFAULTS
    mine = {"anon": True, "config_kwargs": {"connect_timeout": 30}}
    assert with_client_defaults("s3://b/x", mine)["config_kwargs"] == {
        "connect_timeout": 30, "retries": {"max_attempts": 2}}
    assert mine == {"anon": True, "config_kwargs": {"connect_timeout": 30}}  # not modified
    monkeypatch.setitem(fsspec.config.conf, "s3",
                        {"config_kwargs": {"retries": {"mode": "adaptive"}}})
    assert with_client_defaults("s3://b/x")["config_kwargs"] == {
        "connect_timeout": 5, "retries": {"mode": "adaptive"}}
    assert with_client_defaults("memory://x", {"a": 1}) == {"a": 1}
