"""Prefect's temporary API server for a ``segflow run``, started before Prefect is imported.

Without ``PREFECT_API_URL`` the first API call of a flow starts a temporary server and waits for
it: Prefect imports its server package in the calling process (about 2 s on 2 cores), then
starts the server in a subprocess and polls its health (the subprocess' imports and database
migrations, several seconds). :func:`early_server` instead starts ``prefect server start`` (the
public command, on a free loopback port, without the UI and the services a run of one process
does not use) first thing in the run and without importing Prefect, so the server starts on
another core while Prefect and TensorFlow are imported and the model loads and warms up. The
flow is then pointed at it through the public ``PREFECT_API_URL`` setting. This module imports
nothing of Prefect until :meth:`EarlyServer.wait`.
"""

import os
import sys


def configured_api_url():
    """The API URL set for this process by the environment or the active Prefect profile
    (read from its ``profiles.toml`` without importing Prefect), or None."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    from pathlib import Path

    import tomllib

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(active, {})
    return profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None


#: Nice levels the temporary server runs below this process (Linux and macOS): like the task
#: threads around the model (:func:`segmodel.inference.workers.lower_priority`), its work
#: (recording task
#: runs, logs and artifacts) then fills the moments the model leaves a core idle instead of
#: taking cores from it. A run hardly waits on it: task-run states travel as events, logs in
#: batches, from Prefect's background threads; the flow's progress update after each shard
#: comes while the next shard is already in flight.
SERVER_NICE = 10

#: Prefect's public settings that turn off the server's services a run in one process does not
#: use (scheduling deployments, marking late or stuck runs, workers' health): the services that
#: record task runs, events and logs keep running, as on Prefect's own temporary server.
SERVICES_OFF = {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in (
    "SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS",
    "REPOSSESSOR")}


def _child_setup():
    """For ``Popen(preexec_fn=...)``: the server process runs :data:`SERVER_NICE` levels
    lower; on Linux it also gets SIGTERM when the thread that started it ends, so a killed
    ``segflow`` (SIGKILL, out of memory) leaves no server behind. Resolved here, before the
    fork: the child only makes the calls, and a refusal changes nothing. None on Windows (no
    fork)."""
    if os.name == "nt":
        return None
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass
    import signal

    sigterm = int(signal.SIGTERM)

    def setup():
        if prctl is not None:
            prctl(1, sigterm)  # PR_SET_PDEATHSIG
        if SERVER_NICE:
            try:
                os.nice(SERVER_NICE)
            except OSError:
                pass

    return setup


class EarlyServer:
    """Prefect's temporary API server, started as early as possible in its own process.

    :meth:`wait` blocks until it answers; :meth:`settings` is the context under which the flow
    must run (it points ``PREFECT_API_URL`` at this server). If the early start fails, or
    Prefect turns out to be configured with an API URL after all (a source other than the
    environment and the profile), :meth:`settings` changes nothing and the flow runs as it
    would have.
    The process is stopped when :meth:`stop` is called or this process exits; on Linux also
    when this process is killed (start it from a thread that lives as long as the runs, the
    main thread). Use :func:`early_server`: one server per process, like Prefect's own.
    """

    def __init__(self):
        self.process = None
        self.port = None
        self.ready = False
        self.problem = None  # why the early start failed, if it did
        #: True when the server process itself exited at start (not a port taken meanwhile):
        #: Prefect's own temporary server would fail the same way, so the run should stop.
        self.exited = False
        self._log = None  # what the server process printed, read back when it exits
        if configured_api_url():
            return
        self._spawn()
        import atexit

        atexit.register(self.stop)

    def _spawn(self):
        import socket
        import subprocess
        import tempfile

        with socket.socket() as sock:  # a free loopback port (the command refuses one taken)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = dict(os.environ)
        if "prefect.settings" in sys.modules:  # settings made in this process, as Prefect does
            from prefect.settings import get_current_settings

            env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        env.update(SERVICES_OFF)
        if self._log is not None:
            self._log.close()
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-ui", "--log-level", "ERROR", "--analytics-off",
             "--no-prompt"], env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, preexec_fn=_child_setup())

    def _output_tail(self, limit=20000):
        """The last ``limit`` bytes the server process printed, as text."""
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - limit))
        return self._log.read().decode(errors="replace")

    @property
    def api_url(self):
        return f"http://127.0.0.1:{self.port}/api" if self.port else None

    def wait(self, timeout=None):
        """Block until the server answers its health check; False if it could not start
        (the flow then starts Prefect's own temporary server)."""
        if self.process is None or self.ready:
            return self.ready
        import time

        import httpx
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        from flows.runners import api_url

        if api_url():  # configured where configured_api_url does not look
            self.stop()
            self.problem = f"an API URL is configured: {api_url()}"
            return False

        deadline = time.monotonic() + (timeout or
                                       PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        respawns = 0
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    log = self._output_tail()
                    # only a port taken since it was chosen is worth another try
                    if "already in use" in log.lower() and respawns < 5:
                        respawns += 1
                        self._spawn()
                        continue
                    self.problem = startup_problem(code, log)
                    self.exited = True
                    break
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        self.ready = True
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            else:
                self.problem = "the server did not answer in time"
        self.stop()
        return False

    def settings(self):
        """Context under which the flow runs on this server (a no-op if it is not ready).

        It also turns off flow-run heartbeats unless ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is
        set: they let a lasting server detect crashed runs, but this server ends with the
        process, and a synchronous flow run waits up to a second on exit for its heartbeat
        thread to wake.
        """
        import contextlib

        if not self.ready:
            return contextlib.nullcontext()
        from prefect.settings import PREFECT_API_URL, temporary_settings

        updates = {PREFECT_API_URL: self.api_url}
        if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
            updates["flows.heartbeat_frequency"] = None
        return temporary_settings(updates=updates)

    def stop(self):
        """Stop the server process (idempotent)."""
        process, self.process, self.ready = self.process, None, False
        if process is not None and process.poll() is None:
            process.terminate()
            import subprocess

            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def startup_problem(code, log):
    """Why the server process exited at start, for a user: its last error line, and what to
    do where that is a database of another Prefect version."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error:" in ln or "Exception:" in ln]
    last = (errors or lines or ["(it wrote nothing)"])[-1]
    home = os.environ.get("PREFECT_HOME") or "~/.prefect"
    text = (f"Prefect's temporary server could not start (exit status {code}): {last}. Its "
            f"database is under PREFECT_HOME ({home}).")
    if "revision" in last.lower():
        text += (" That database was last used by another Prefect version (a revision this "
                 "one does not know): install that version (pip install -U prefect), or run "
                 "with PREFECT_HOME set to a new folder.")
    return text


_EARLY = []


def early_server():
    """This process' :class:`EarlyServer`, started on the first call (and again if it has
    stopped); it does nothing where an API URL is configured."""
    if not _EARLY or (_EARLY[0].process is None and not configured_api_url()):
        _EARLY[:] = [EarlyServer()]
    return _EARLY[0]


def early_settings():
    """The settings context of this process' early server if it runs (to read back what runs
    on it recorded), else a no-op context."""
    import contextlib

    return _EARLY[0].settings() if _EARLY else contextlib.nullcontext()
