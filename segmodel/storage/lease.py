"""One run at a time per OUTPUT: a lease file that a run holds while it writes there.

Two runs writing to one OUTPUT at once would undo each other's work: a run's start removes
the parts of shards that never committed and the temporary files of interrupted writes, and
another run's work in progress looks exactly like that. So a run first takes
``OUTPUT/run.lock`` (a small JSON file: run, host, process id, when started, when last
renewed), renews it from a background thread while it runs, and removes it at the end.

A lease is abandoned, and the next run takes it over, when it was not renewed for
:data:`STALE_AFTER` seconds (a run killed without cleaning up, anywhere), or at once when its
holder was a process of this host that no longer exists. Object stores have no atomic
"create unless it exists", so taking a lease is write-then-read-back: of two runs starting
at the same moment, the one whose write landed last keeps it and the other stops.
"""

import json
import os
import socket
import threading
import time

LEASE = "run.lock"
#: Seconds without renewal after which a lease counts as abandoned.
STALE_AFTER = 300.0
#: Seconds between renewals of a held lease.
RENEW_EVERY = 30.0


class OutputBusy(RuntimeError):
    """Another run holds the output's lease; the message names it and what to do."""


def read_holder(store):
    """The lease's content as a dict, or None where there is none (or it is unreadable).

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The OUTPUT store.

    Returns
    -------
    dict or None
        Keys ``run``, ``host``, ``pid``, ``started``, ``renewed``; None when there is no lease or
        it is not valid JSON with a ``run``.
    """
    try:
        data = json.loads(store.read_text(LEASE))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):  # none, or not ours to read
        return None
    return data if isinstance(data, dict) and "run" in data else None


def is_live(holder, now=None, stale_after=STALE_AFTER):
    """Whether ``holder`` (from :func:`read_holder`) may still be running.

    A lease is dead when not renewed for ``stale_after`` seconds, when its holder was a process
    of this host that no longer exists, or when the record is malformed.

    Parameters
    ----------
    holder : dict
        A lease record from :func:`read_holder`.
    now : float, optional
        The current time in seconds since the epoch (default ``time.time()``).
    stale_after : float, optional
        Seconds without renewal after which the lease is dead (default :data:`STALE_AFTER`).

    Returns
    -------
    bool
    """
    now = time.time() if now is None else now
    try:
        if now - float(holder["renewed"]) >= stale_after:
            return False
        if holder.get("host") == socket.gethostname():
            return _process_exists(int(holder["pid"]))
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class Lease:
    """The lease of ``store`` (an OUTPUT :class:`segmodel.storage.io.Store`) for run ``run``.

    Use as a context manager, or :meth:`acquire` then :meth:`release`. :meth:`acquire` raises
    :class:`OutputBusy` while another live run holds it.

    Parameters
    ----------
    store : segmodel.storage.io.Store
        The OUTPUT store.
    run : str
        The id of this run.
    stale_after : float, optional
        Seconds without renewal after which a lease is abandoned (default :data:`STALE_AFTER`).
    renew_every : float, optional
        Seconds between renewals (default :data:`RENEW_EVERY`).

    Attributes
    ----------
    lost : bool
        Set when another run took the lease over while this one held it.
    """

    def __init__(self, store, run, *, stale_after=STALE_AFTER, renew_every=RENEW_EVERY):
        self.store, self.run = store, run
        self.stale_after, self.renew_every = stale_after, renew_every
        self.started = time.time()
        #: Set when another run took the lease over while this one held it.
        self.lost = False
        self._stop = threading.Event()
        self._thread = None

    def _record(self):
        return {"run": self.run, "host": socket.gethostname(), "pid": os.getpid(),
                "started": self.started, "renewed": time.time()}

    def acquire(self):
        """Take the output's lease and start renewing it.

        Returns
        -------
        Lease
            ``self``.

        Raises
        ------
        OutputBusy
            If another live run holds the lease, or another run's write landed after ours.
        """
        holder = read_holder(self.store)
        if holder is not None and holder["run"] != self.run and is_live(
                holder, stale_after=self.stale_after):
            raise OutputBusy(self._busy_message(holder))
        self.store.write_json(LEASE, self._record())
        holder = read_holder(self.store)  # another run may have written at the same moment
        if holder is None or holder["run"] != self.run:
            raise OutputBusy(self._busy_message(holder or {}))
        self._thread = threading.Thread(target=self._renew, name="segflow-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self):
        while not self._stop.wait(self.renew_every):
            try:
                holder = read_holder(self.store)
                if holder is not None and holder["run"] != self.run:
                    self.lost = True
                    return
                self.store.write_json(LEASE, self._record())
            except Exception:  # storage down for a moment: the next renewal tries again
                continue

    def release(self):
        """Stop renewing and remove the lease, unless another run has taken it over."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = read_holder(self.store)
        if holder is not None and holder["run"] == self.run:
            self.store.remove(self.store.path(LEASE))  # retried inside on transient errors

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def _busy_message(self, holder):
        where = self.store.uri(self.store.path(LEASE))
        age = time.time() - float(holder.get("renewed", time.time()))
        started = holder.get("started")
        since = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(started)))
                 if started else "an unknown time")
        return (
            f"another segflow run is writing to output={self.store.url!r}: run "
            f"{holder.get('run', '?')!r}, process {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')!r}, started {since}, last renewed {age:.0f} s ago. "
            f"Wait for it to finish (two runs on one output would undo each other's work). If "
            f"it is gone, its lease {where} expires {self.stale_after:.0f} s after its last "
            f"renewal, or delete that file."
        )


__all__ = ["LEASE", "Lease", "OutputBusy", "RENEW_EVERY", "STALE_AFTER", "is_live",
           "read_holder"]
