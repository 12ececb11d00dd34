"""The temporary Prefect server a ``segflow run`` starts before importing Prefect."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prefect import flow, task

from flows.server import SERVER_NICE, EarlyServer, configured_api_url, early_server

TEAM = "http://team.example:4200/api"
REPO = Path(__file__).resolve().parents[2]


def test_the_configured_api_url_comes_from_the_environment_then_the_active_profile(
        tmp_path, monkeypatch):
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert configured_api_url() is None  # no profiles file at all
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n'
        f'\n[profiles.team]\nPREFECT_API_URL = "{TEAM}"\n')
    assert configured_api_url() == TEAM
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")
    assert configured_api_url() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert configured_api_url() == "http://127.0.0.1:4200/api"
    (tmp_path / "profiles.toml").write_text("not [ toml")
    monkeypatch.delenv("PREFECT_API_URL")
    assert configured_api_url() is None  # an unreadable file is Prefect's to report


def test_with_an_api_url_configured_no_server_starts_and_settings_change_nothing(monkeypatch):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", TEAM)
    server = EarlyServer()
    assert server.process is None and server.api_url is None
    assert server.wait() is False
    before = PREFECT_API_URL.value()
    with server.settings():
        assert PREFECT_API_URL.value() == before


@task
def _double(x):
    return 2 * x


@flow
def _tiny():
    return _double.submit(21).result()


def _fresh_env(home):
    """This process' environment without an API URL, with its own Prefect home (a database
    of this Prefect version, whatever ``~/.prefect`` holds) and the repository importable."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO))
    return env


@pytest.fixture
def unconfigured(monkeypatch, tmp_path_factory):
    """No API URL in this test, whatever the session has configured (the test server of
    other tests sets one in Prefect's settings); servers started here get their own home."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    if configured_api_url():
        pytest.skip(f"the Prefect profile here sets an API URL: {configured_api_url()}")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def test_the_early_server_records_the_run_without_heartbeats_and_is_shared(unconfigured):
    from prefect.settings import PREFECT_API_URL, get_current_settings

    server = early_server()
    assert server.process is not None
    assert server.wait() is True, server.problem
    assert httpx.get(f"{server.api_url}/health", timeout=10).status_code == 200
    services = httpx.get(f"{server.api_url}/admin/settings", timeout=10).json()["server"][
        "services"]  # the server's own settings: what runs there
    assert not services["scheduler"]["enabled"] and not services["late_runs"]["enabled"]
    assert services["task_run_recorder"]["enabled"] and services["event_persister"]["enabled"]
    if hasattr(os, "getpriority"):  # it runs below this process, like the task threads
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, server.process.pid) == min(19, ours + SERVER_NICE)
    with server.settings():
        assert PREFECT_API_URL.value() == server.api_url
        assert get_current_settings().flows.heartbeat_frequency is None
        state = _tiny(return_state=True)
    assert state.result() == 42
    flow_run_id = str(state.state_details.flow_run_id)
    runs = httpx.post(f"{server.api_url}/flow_runs/filter", timeout=10,
                      json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"]
    assert early_server() is server  # one server per process, as Prefect's own


def test_a_server_configured_where_the_profile_does_not_say_wins(unconfigured):
    """Prefect's settings may name a server by other means (a test harness, prefect.toml):
    the early server then stops and the flow runs where Prefect says."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = EarlyServer()
    process = server.process
    with temporary_settings(updates={PREFECT_API_URL: TEAM}):
        assert server.wait() is False
    assert server.problem == f"an API URL is configured: {TEAM}"
    assert process.wait(timeout=10) is not None and server.process is None


def test_a_stopped_server_is_gone_and_its_settings_change_nothing(unconfigured):
    from prefect.settings import PREFECT_API_URL

    server = EarlyServer()
    process = server.process
    server.stop()
    assert process.poll() is not None  # terminated
    assert server.wait() is False
    before = PREFECT_API_URL.value()
    with server.settings():
        assert PREFECT_API_URL.value() == before
    server.stop()  # idempotent


def test_segflow_run_in_a_fresh_process_runs_on_its_early_server(samples, tmp_path):
    """The default path of ``segflow run``: no API URL, Prefect's INFO lines shown; Prefect
    never starts a server of its own, and the run completes with its outputs."""
    env = _fresh_env(tmp_path / "prefect-home")
    env["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
    env.pop("PYTHONUNBUFFERED", None)  # stdout to a pipe is then block-buffered, as usual
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for path, _ in samples[:2]:
        shutil.copy(path, src / path.name)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(src), str(out)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-3000:]
    assert "Starting temporary server" not in printed  # Prefect's own start logs that line
    assert "Finished in state Completed()" in printed
    assert json.loads((out / "run.json").read_text())["counts"]["images"] == 2
    # the quick exit (flows.cli.console) flushed the piped, block-buffered summary first
    assert "2 images, 0 failed" in proc.stdout and proc.stdout.rstrip().endswith("report.html")


def test_segflow_exits_with_its_status_and_message(tmp_path):
    """A refused run exits 1 with its message; the quick exit keeps both."""
    env = _fresh_env(tmp_path / "prefect-home")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(tmp_path / "nowhere"),
                           str(tmp_path / "out")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "segflow: input not found:" in proc.stderr and "nowhere" in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_killed_segflow_leaves_no_server_behind(tmp_path):
    """SIGKILL gives no chance to stop the server at exit: the kernel's parent-death signal
    must end it."""
    import signal
    import time

    env = _fresh_env(tmp_path / "prefect-home")
    code = ("import sys, time\nfrom flows.server import early_server\ns = early_server()\n"
            "print(s.process.pid if s.process else 0, s.wait(), flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        pid, ready = parent.stdout.readline().split()
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
    if int(pid) == 0:
        pytest.skip("an API URL is configured in the Prefect profile here")
    assert ready == "True"
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        status = open(f"/proc/{pid}/status").read() if os.path.exists(f"/proc/{pid}") else ""
        if "State:\tZ" in status:  # ended; a zombie until init reaps it
            break
        time.sleep(0.2)
    status = open(f"/proc/{pid}/status").read() if os.path.exists(f"/proc/{pid}") else ""
    assert not status or "State:\tZ" in status, status[:200]


def _database_of_another_version(home):
    """A Prefect home whose database records a migration this Prefect does not know, as one
    upgraded by a newer Prefect in another environment does."""
    import sqlite3

    home.mkdir()
    with sqlite3.connect(home / "prefect.db") as db:
        db.execute("create table alembic_version (version_num varchar(32) primary key)")
        db.execute("insert into alembic_version values ('ffffffffffff')")


def test_startup_problem_names_the_servers_last_error_and_what_to_do():
    log = ("Traceback (most recent call last):\n  File x\nalembic.util.exc.CommandError: "
           "Can't locate revision identified by 'ffffffffffff'\n\nERROR: Application startup "
           "failed. Exiting.\n")
    from flows.server import startup_problem

    text = startup_problem(3, log)
    assert "CommandError: Can't locate revision identified by 'ffffffffffff'." in text
    assert "PREFECT_HOME set to a new folder" in text
    assert startup_problem(1, "").startswith(
        "Prefect's temporary server could not start (exit status 1): (it wrote nothing). Its "
        "database is under PREFECT_HOME (")


def test_a_server_that_cannot_start_stops_the_run_with_its_reason(samples, tmp_path):
    """The server command exits 3 on a failed start; only a port taken meanwhile is worth a
    retry. A database of another Prefect version once made ``segflow run`` restart the server
    for minutes: it now stops at once, naming the reason, and writes nothing."""
    import time

    home = tmp_path / "prefect-home"
    _database_of_another_version(home)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(samples[0][0], src / samples[0][0].name)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(src), str(out)],
                          env=_fresh_env(home), cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert time.monotonic() - t0 < 120  # not Prefect's own server tried after it, nor retries
    assert proc.stderr.strip().splitlines()[-1] == (
        "segflow: Prefect's temporary server could not start (exit status 3): "
        "alembic.util.exc.CommandError: Can't locate revision identified by 'ffffffffffff'. "
        f"Its database is under PREFECT_HOME ({home}). That database was last used by another "
        "Prefect version (a revision this one does not know): install that version (pip "
        "install -U prefect), or run with PREFECT_HOME set to a new folder.")
    assert not out.exists()


def test_ctrl_c_prints_one_line_and_a_rerun_goes_on(dsb2018, tmp_path):
    """An interrupted run says so in one line (no traceback), exits 130, and a rerun of the
    same command skips the shards it wrote."""
    import signal
    import time

    images = sorted((dsb2018 / "images").iterdir())[:40]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for path in images:
        shutil.copy(path, src / path.name)
    env = _fresh_env(tmp_path / "prefect-home")
    command = [sys.executable, "-m", "flows.cli", "run", str(src), str(out), "--shard-size", "4"]
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,  # as in a terminal: SIGINT on
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # the first shard is written: interrupt in the middle of the run
        if line.startswith("shard 1:") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Crash detected" not in err, err[-3000:]  # Prefect's own line about the interrupt
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "segflow: interrupted; the run stopped. Run the same command again to go on: images "
        "already written are skipped.")
    done = len(pd.read_parquet(out / "images"))
    assert 4 <= done < len(images)
    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{done} already done" in again.stdout
    assert len(pd.read_parquet(out / "images")) == len(images)


def test_no_tensorflow_start_up_lines_reach_the_terminal(samples, tmp_path):
    """On Keras (TensorFlow loaded) the output is segflow's own lines and nothing else: none of
    TensorFlow's native "oneDNN custom operations are on" or absl lines (#33 case 9)."""
    env = _fresh_env(tmp_path / "prefect-home")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(samples[0][0], src / samples[0][0].name)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(src),
                           str(tmp_path / "out"), "--engine", "keras"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for line in ("oneDNN", "absl", "cpu_feature_guard", "rebuild TensorFlow"):
        assert line not in proc.stderr and line not in proc.stdout, proc.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["model"]["engine"] == "keras"
