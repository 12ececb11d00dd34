"""The output lease: one run at a time per OUTPUT, abandoned leases taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from segmodel.storage.io import Store
from segmodel.storage.lease import LEASE, Lease, OutputBusy, is_live, read_holder


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(str(tmp_path / "out"))
    return Store(f"memory://lease{time.perf_counter_ns()}/out")


def _holder(store, **fields):
    record = {"run": "other-run", "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.time() - 60, "renewed": time.time(), **fields}
    store.write_json(LEASE, record)
    return record


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_holds_the_lease_while_it_runs_and_removes_it_after(store):
    with Lease(store, "run-a") as lease:
        holder = read_holder(store)
        assert holder["run"] == "run-a" and holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname() and not lease.lost
    assert read_holder(store) is None and not store.exists(LEASE)


def test_a_second_run_is_refused_while_the_first_holds_it_naming_the_holder(store):
    with Lease(store, "run-a"):
        with pytest.raises(OutputBusy) as err:
            Lease(store, "run-b").acquire()
        message = str(err.value)
        assert f"another segflow run is writing to output={store.url!r}: run 'run-a'" in message
        assert f"process {os.getpid()} on host {socket.gethostname()!r}" in message
        assert "expires 300 s after its last renewal, or delete that file" in message
        assert read_holder(store)["run"] == "run-a"  # the refused run changed nothing
    Lease(store, "run-b").acquire().release()  # free again once the first ended


def test_a_lease_of_a_process_gone_from_this_host_is_taken_over_at_once(store):
    _holder(store, pid=_dead_pid())
    with Lease(store, "run-b"):
        assert read_holder(store)["run"] == "run-b"


def test_a_lease_elsewhere_counts_until_it_goes_unrenewed_for_stale_after(store):
    _holder(store, host="another-host.example", pid=1)
    with pytest.raises(OutputBusy, match="host 'another-host.example'"):
        Lease(store, "run-b").acquire()
    _holder(store, host="another-host.example", pid=1, renewed=time.time() - 301)
    with Lease(store, "run-b"):
        assert read_holder(store)["run"] == "run-b"


def test_a_held_lease_is_renewed_and_a_taken_over_one_is_given_up(store):
    lease = Lease(store, "run-a", renew_every=0.05).acquire()
    try:
        first = read_holder(store)["renewed"]
        deadline = time.monotonic() + 10
        while read_holder(store)["renewed"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_holder(store)["renewed"] > first
        _holder(store, run="run-b")  # taken over (say this run had stalled past stale_after)
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.lost
    finally:
        lease.release()
    assert read_holder(store)["run"] == "run-b"  # release leaves the other run's lease alone


def test_an_unreadable_lease_file_is_written_over(store):
    store.write_bytes(LEASE, b"{not json")
    assert read_holder(store) is None
    with Lease(store, "run-a"):
        assert json.loads(store.read_text(LEASE))["run"] == "run-a"


def test_is_live_reads_renewal_age_host_and_process():
    here = {"run": "r", "host": socket.gethostname(), "pid": os.getpid(), "renewed": 1000.0}
    assert is_live(here, now=1100.0)
    assert not is_live(here, now=1300.0)  # 300 s without renewal
    assert not is_live({**here, "pid": _dead_pid()}, now=1100.0)
    assert is_live({**here, "host": "elsewhere", "pid": _dead_pid()}, now=1100.0)
    assert not is_live({"run": "r"}, now=1100.0)  # a record without its fields
