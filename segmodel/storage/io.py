"""All storage access: fsspec URLs in, retried reads, atomic writes.

This is the one module that calls :func:`fsspec.core.url_to_fs`; the rest of segflow passes
around a :class:`Store` (a file system plus a root path), which pickles cheaply.
"""

import collections
import contextlib
import copy
import errno
import fnmatch
import hashlib
import heapq
import json
import os
import posixpath
import random
import re
import time
import uuid
from dataclasses import dataclass, field

import fsspec
from fsspec.core import split_protocol, url_to_fs

DEFAULT_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.bmp", "*.zarr")

_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.EPIPE, errno.EAGAIN}
_TRANSIENT_WORDS = ("SlowDown", "Throttl", "RequestTimeout", "ServiceUnavailable", "InternalError",
                    "Connection reset", "Connection aborted", "timed out", "Timeout",
                    "ServerDisconnected", "IncompleteRead")
#: HTTP status codes of "try again" as whole numbers in a message ("503 Slow Down", "HTTP 500"),
#: never digits inside a name such as ``plate_0503``.
_TRANSIENT_STATUS = re.compile(r"(?<![\w./])(500|502|503|504)(?!\w|\.\w)")
#: Error codes of object stores (S3 and the like) that say "try again".
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "RequestLimitExceeded", "TooManyRequests", "InternalError",
                    "ServiceUnavailable", "OperationAborted", "500", "502", "503", "504"}
#: Exception classes (by name, so no client library must be imported) of dropped connections,
#: timeouts and cut-off responses: botocore, aiohttp, urllib3, fsspec.
_TRANSIENT_CLASSES = {"HTTPClientError", "ClientConnectionError", "ServerDisconnectedError",
                      "ClientPayloadError", "ServerTimeoutError", "IncompleteRead",
                      "ResponseParserError", "FSTimeoutError", "ProtocolError", "ConnectionError"}
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
              FileExistsError, TypeError, ValueError, KeyError, AttributeError)


def is_transient(exc):
    """Tell whether an error is worth retrying.

    Connection resets, timeouts, 5xx statuses and throttling are transient. Looks through the
    chain of causes, because file system layers wrap the client's error (s3fs turns a
    ``SlowDown`` ClientError into a plain ``OSError``). Permission errors (403), missing files and
    buckets, and programming errors are not transient.

    Parameters
    ----------
    exc : BaseException
        The error caught; its ``__cause__`` / ``__context__`` chain is inspected too.

    Returns
    -------
    bool
        True when retrying may succeed.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        verdict = _classify(exc)
        if verdict is not None:
            return verdict
        exc = exc.__cause__ or exc.__context__
    return False


def _classify(exc):
    """True / False when ``exc`` alone decides, None to look at its cause."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        code = str(response["Error"].get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(c.__name__ in _TRANSIENT_CLASSES for c in type(exc).__mro__):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    detail = exc.strerror if isinstance(exc, OSError) and exc.filename and exc.strerror else exc
    text = f"{type(exc).__name__}: {detail}"  # without the path: its digits are not a status
    if any(word in text for word in _TRANSIENT_WORDS) or _TRANSIENT_STATUS.search(text):
        return True
    return None


def retry(fn, *args, attempts=5, base_delay=0.2, max_delay=5.0, transient=None, **kwargs):
    """Call ``fn(*args, **kwargs)``, retrying transient errors with jittered exponential backoff.

    Parameters
    ----------
    fn : callable
        The call to make.
    *args
        Positional arguments of ``fn``.
    attempts : int, optional
        Calls at most, the first included (default 5).
    base_delay, max_delay : float, optional
        Seconds before the first retry (default 0.2), doubled each time up to ``max_delay``
        (default 5.0), times a random factor in [0.5, 1.5).
    transient : callable, optional
        Tells whether an error is worth retrying (default :func:`is_transient`).
    **kwargs
        Keyword arguments of ``fn``.

    Returns
    -------
    object
        What ``fn`` returns.

    Raises
    ------
    Exception
        The error of ``fn`` itself when it is not transient (see :func:`is_transient`) or the
        last attempt fails.
    """
    transient = transient or is_transient
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            delay = min(max_delay, base_delay * 2**attempt) * (0.5 + random.random())
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ImageRef:
    """One input image: its id (path relative to the input root), full path and fingerprint.

    Attributes
    ----------
    image_id : str
        The path relative to the input root, e.g. ``"plate1/a01.tif"``.
    path : str
        The full path in the store's file system.
    uri : str
        A URL of ``path`` that fsspec opens with the store's storage options.
    size : int
        Bytes (for an OME-Zarr folder, the sum of its files).
    fingerprint : str
        A 16-hex-digit digest of size and ETag / mtime / checksum: changes whenever the file does.
    """

    image_id: str
    path: str
    uri: str
    size: int
    fingerprint: str


@dataclass
class Store:
    """A file system and a root path inside it, from a URL and storage options.

    Pickles as its URL and options only; the file system is opened again on unpickling.

    Parameters
    ----------
    url : str
        A local path or an fsspec URL (``s3://bucket/prefix``, ``memory://x``, ...).
    storage_options : dict, optional
        Options of the fsspec file system (credentials, endpoint); default none.

    Attributes
    ----------
    fs : fsspec.AbstractFileSystem
        The file system of ``url``.
    root : str
        The root path inside ``fs``, without a trailing slash.

    Raises
    ------
    TypeError
        If ``url`` is not a string.
    ValueError
        If ``url`` is empty, its scheme is unknown, or its file system package is not installed.
    """

    url: str
    storage_options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.fs, self.root = open_url(self.url, self.storage_options, parameter="url")

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state):
        self.url, self.storage_options = state["url"], state["storage_options"]
        self.__post_init__()

    def path(self, *parts):
        """The full path of ``parts`` joined under the root (the root itself without any).

        Parameters
        ----------
        *parts : str
            Path components relative to the root.

        Returns
        -------
        str
            The full path in :attr:`fs`.
        """
        return posixpath.join(self.root, *parts) if parts else self.root

    def uri(self, path):
        """A URL for ``path`` that fsspec opens with the same storage options.

        Parameters
        ----------
        path : str
            A full path in :attr:`fs`.

        Returns
        -------
        str
            ``path`` with this file system's protocol, e.g. ``"s3://bucket/key"``.
        """
        return self.fs.unstrip_protocol(path)

    def contains(self, other):
        """True when ``other``'s root is this root or lies under it, on the same file system.

        Local paths are compared after resolving symbolic links.

        Parameters
        ----------
        other : Store

        Returns
        -------
        bool
        """
        mine, theirs = self._resolved_uri(), other._resolved_uri()
        return theirs == mine or theirs.startswith(mine.rstrip("/") + "/")

    def _resolved_uri(self):
        protocol = self.fs.protocol
        if "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,)):
            return "file://" + os.path.realpath(self.root)
        return self.uri(self.root)

    def exists(self, *parts):
        """True when the path of ``parts`` under the root exists (retried on transient errors).

        Parameters
        ----------
        *parts : str
            Path components relative to the root; none tests the root itself.

        Returns
        -------
        bool
        """
        return retry(self.fs.exists, self.path(*parts))

    def container(self):
        """The bucket (container) of an object-store root, or None for local and memory paths.

        Returns
        -------
        str or None
            The first component of the root on an object store, else None.
        """
        if _is_local(self.fs) or self.root.startswith("/"):
            return None
        return self.root.split("/", 1)[0] or None

    def read_bytes(self, path):
        """The bytes of the file at full ``path`` (retried on transient errors).

        Parameters
        ----------
        path : str
            A full path in :attr:`fs` (see :meth:`path`).

        Returns
        -------
        bytes

        Raises
        ------
        FileNotFoundError
            If there is no file at ``path`` (from the file system).
        """
        return retry(self.fs.cat_file, path)

    def read_many(self, paths, chunk=256):
        """Read many files, yielding ``(path, bytes)`` for each of ``paths`` in order.

        Object stores fetch a chunk of files concurrently (one ``cat`` call, the way
        :meth:`write_many` puts them), so reading thousands of small table parts costs about as many
        round trips as chunks, not as files; at most ``chunk`` files are held at once.

        Parameters
        ----------
        paths : iterable of str
            Full paths in :attr:`fs`.
        chunk : int, optional
            Files fetched per request on object stores (default 256).

        Yields
        ------
        path : str
            Each of ``paths``, in order.
        data : bytes or None
            Its content; None for a missing file.
        """
        paths = list(paths)
        batch = not _is_local(self.fs) and not any(c in p for p in paths for c in "*?[")
        for start in range(0, len(paths), chunk if batch else 1):
            part = paths[start:start + chunk] if batch else paths[start:start + 1]
            got = (retry(self.fs.cat, part, on_error="return") if batch and len(part) > 1
                   else {p: _missing_or_raise(self.read_bytes, p) for p in part})
            for p in part:
                data = got.get(p)
                if isinstance(data, FileNotFoundError):
                    data = None
                elif isinstance(data, BaseException) or p not in got:  # retried alone: a
                    data = _missing_or_raise(self.read_bytes, p)  # bug raises, a blip waits
                yield p, data

    def read_text(self, *parts):
        """The file at ``parts`` under the root, decoded as UTF-8.

        Parameters
        ----------
        *parts : str
            Path components relative to the root.

        Returns
        -------
        str

        Raises
        ------
        FileNotFoundError
            If the file does not exist (from the file system).
        """
        return self.read_bytes(self.path(*parts)).decode()

    def write_bytes(self, relpath, data):
        """Write ``data`` under the root atomically: readers see the old or the whole new file.

        Parameters
        ----------
        relpath : str
            The path relative to the root.
        data : bytes
            The file's content.

        Raises
        ------
        ValueError
            If ``relpath`` is absolute or leads outside the root (``..``).
        """
        norm = posixpath.normpath(relpath)
        if posixpath.isabs(relpath) or norm == ".." or norm.startswith("../"):
            raise ValueError(f"refusing to write outside {self.url!r}: {relpath!r}")
        write_atomic(self.fs, self.path(relpath), data)

    def write_many(self, files):
        """Write ``{relpath: bytes}`` (each file atomically).

        Object stores get the PUTs concurrently in one batch, in no particular order.

        Parameters
        ----------
        files : dict of str to bytes
            Content by path relative to the root.

        Raises
        ------
        ValueError
            If a path is absolute or leads outside the root (``..``).
        """
        if _is_local(self.fs) or len(files) < 2:
            for relpath, data in files.items():
                self.write_bytes(relpath, data)
            return
        for relpath in files:
            norm = posixpath.normpath(relpath)
            if posixpath.isabs(relpath) or norm == ".." or norm.startswith("../"):
                raise ValueError(f"refusing to write outside {self.url!r}: {relpath!r}")
        retry(self.fs.pipe, {self.path(r): d for r, d in files.items()})

    def put_many(self, files):
        """Upload ``{relpath: local path}`` (each file atomically).

        Object stores get the uploads concurrently in one batch, in no particular order.

        Parameters
        ----------
        files : dict of str to str
            Local file paths by destination path relative to the root.
        """
        if _is_local(self.fs) or len(files) < 2:
            for relpath, local_path in files.items():
                self.put_file(local_path, relpath)
            return
        rels = list(files)
        retry(self.fs.put, [files[r] for r in rels], [self.path(r) for r in rels])

    def put_file(self, local_path, relpath):
        """Move or upload a local file under the root atomically (big outputs, never in memory).

        Parameters
        ----------
        local_path : str
            The local file to upload.
        relpath : str
            The destination relative to the root.
        """
        path = self.path(relpath)
        if _is_local(self.fs):
            parent = posixpath.dirname(path)
            self.fs.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
            self.fs.put_file(local_path, tmp)
            self.fs.mv(tmp, path)
        else:
            retry(self.fs.put_file, local_path, path)

    def zarr_store(self, path):
        """A read-only zarr store of the folder ``path`` (an OME-Zarr image) of this store.

        Parameters
        ----------
        path : str
            A full path in :attr:`fs` of a zarr folder.

        Returns
        -------
        zarr.storage.LocalStore or zarr.storage.FsspecStore
            Read-only, with this store's storage options.
        """
        import zarr.storage

        if _is_local(self.fs):
            return zarr.storage.LocalStore(path, read_only=True)
        uri = self.uri(path)
        return zarr.storage.FsspecStore.from_url(
            uri, read_only=True, storage_options=with_client_defaults(uri, self.storage_options))

    def write_json(self, relpath, obj):
        """Write ``obj`` as indented, key-sorted JSON at ``relpath`` (atomically).

        Parameters
        ----------
        relpath : str
            The path relative to the root.
        obj : object
            JSON-serialisable; other values are written as ``str(value)``.

        Raises
        ------
        ValueError
            If ``relpath`` is absolute or leads outside the root (``..``).
        """
        self.write_bytes(relpath, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def list(self, relpath, suffix=""):
        """Sorted full paths of files directly under ``relpath`` ending in ``suffix``.

        Hidden files (name starting with ``.``) are left out.

        Parameters
        ----------
        relpath : str
            A folder relative to the root.
        suffix : str, optional
            Keep only names ending in it (default ``""``: all).

        Returns
        -------
        list of str
            Empty when the folder does not exist.
        """
        base = self.path(relpath)
        if not retry(self.fs.exists, base):
            return []
        return sorted(p for p in retry(self.fs.ls, base, detail=False)
                      if p.endswith(suffix) and not posixpath.basename(p).startswith("."))

    def remove_temporaries(self):
        """Delete temporary files of atomic writes that a killed process left behind.

        Only local folders have them (object stores write in one PUT). Call it only while no
        other run writes to this root.

        Returns
        -------
        int
            The number of files deleted.
        """
        if not _is_local(self.fs) or not self.fs.isdir(self.root):
            return 0
        stale = [p for p in self.fs.find(self.root, withdirs=False)
                 if posixpath.basename(p).startswith(".") and p.endswith(".tmp")]
        for p in stale:
            self.remove(p)
        return len(stale)

    def remove(self, path):
        """Delete the file at full ``path``; a missing file is not an error.

        Parameters
        ----------
        path : str
            A full path in :attr:`fs`.
        """
        try:
            retry(self.fs.rm_file, path)
        except FileNotFoundError:
            pass

    def remove_tree(self, relpath):
        """Delete the folder (prefix) ``relpath`` under the root and everything in it.

        A path holding ``*``, ``?`` or ``[`` (an image id such as ``plate[1].png``) is removed
        file by file: ``fs.rm`` would take it as a glob pattern and delete other folders. A missing
        folder is not an error.

        Parameters
        ----------
        relpath : str
            The folder relative to the root.
        """
        path = self.path(relpath)
        try:
            if not retry(self.fs.exists, path):
                return
            if not any(c in path for c in "*?["):
                retry(self.fs.rm, path, recursive=True)
                return
            for file in retry(self.fs.find, path, withdirs=False):
                self.remove(file)
            if _is_local(self.fs) or "memory" in _protocols(self.fs):  # folders of their own
                dirs = [p for p, d in retry(self.fs.find, path, withdirs=True, detail=True).items()
                        if d["type"] == "directory"] + [path]
                for d in sorted(dirs, key=len, reverse=True):  # innermost first
                    with contextlib.suppress(OSError):
                        self.fs.rmdir(d)
        except FileNotFoundError:
            pass

    def find_dirs(self, relpath, suffix):
        """Relative paths of folders under ``relpath`` whose names end in ``suffix``.

        Outermost only: nothing inside a matched folder is returned.

        Parameters
        ----------
        relpath : str
            The folder to search, relative to the root.
        suffix : str
            The name ending, e.g. ``".zarr"``.

        Returns
        -------
        list of str
            Sorted paths relative to the root; empty when ``relpath`` does not exist.
        """
        base = self.path(relpath)
        if not retry(self.fs.exists, base):
            return []
        found = set()
        for p in retry(self.fs.find, base, withdirs=False):
            rel = posixpath.relpath(p, self.root).split("/")
            for i, part in enumerate(rel[:-1]):
                if part.endswith(suffix):
                    found.add("/".join(rel[: i + 1]))
                    break
        return sorted(found)


def check_url(url, parameter="url"):
    """Check a path or URL before any storage is touched.

    Parameters
    ----------
    url : str
        A local path or an fsspec URL.
    parameter : str, optional
        The name the error messages give the URL (default ``"url"``).

    Raises
    ------
    TypeError
        If ``url`` is not a string.
    ValueError
        If ``url`` is empty or its scheme is not one fsspec knows.
    """
    if not isinstance(url, str):
        raise TypeError(f"{parameter} must be a non-empty path or URL. Received: {url!r}")
    if not url:
        raise ValueError(f"{parameter} must be a non-empty path or URL. Received: {url!r}")
    protocol, _ = split_protocol(url)
    if protocol is not None and protocol not in fsspec.available_protocols():
        raise ValueError(
            f"{parameter} uses an unknown URL scheme {protocol!r}. Received: {url!r}. "
            "Use a local path or a scheme fsspec knows (file://, s3://, gs://, memory://, ...)."
        )


#: The name of the empty file :func:`check_writable` writes (atomically) and deletes: hidden,
#: so listings and tables never take it for output.
PROBE_NAME = ".segflow-write-check-{}"

#: Exception classes (by name) of a storage that cannot be reached at all: the connection
#: is refused or times out, or the host name does not resolve (botocore, aiohttp, the OS).
_UNREACHABLE_CLASSES = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                        "ConnectionRefusedError", "gaierror"}
_NO_CREDENTIALS_CLASSES = {"NoCredentialsError", "PartialCredentialsError"}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def check_readable(store, parameter="input"):
    """List the root of ``store`` once, turning a refusal into a one-line error.

    Object stores first get one small request (``info``), and a listing only where that is
    refused or finds nothing; local folders are listed. Transient errors are retried; a storage
    that cannot be reached is not.

    Parameters
    ----------
    store : Store
    parameter : str, optional
        The name the error gives the URL (default ``"input"``).

    Returns
    -------
    bool
        True when the root exists, False when it does not.

    Raises
    ------
    PermissionError
        No credentials were found, or access is denied.
    ConnectionError
        The storage's endpoint cannot be reached.
    """
    try:
        return _readable(store)
    except Exception as exc:
        problem = access_error(exc, parameter, store.url)
        if problem is None:
            raise
        raise problem from exc


def _readable(store):
    """True when the root exists, False when not; the storage's error when it cannot be listed."""
    if not _is_local(store.fs):  # some stores refuse a HEAD the listing would be allowed
        with contextlib.suppress(FileNotFoundError, PermissionError):
            _probe(store.fs.info, store.root)
            return True
    try:
        _probe(store.fs.ls, store.root)
    except FileNotFoundError:
        return False
    return True


def check_writable(store, parameter="output"):
    """Write and delete a small file under the root of ``store`` (see :data:`PROBE_NAME`).

    Local folders the probe had to create are removed again, so nothing is left behind.

    Parameters
    ----------
    store : Store
    parameter : str, optional
        The name the error gives the URL (default ``"output"``).

    Raises
    ------
    PermissionError
        The folder is not writable, no credentials were found, or access is denied.
    ConnectionError
        The storage's endpoint cannot be reached.
    FileNotFoundError
        The bucket does not exist.
    ValueError
        A file stands where the folder (or one of its parents) would be.
    """
    path = store.path(PROBE_NAME.format(uuid.uuid4().hex[:8]))
    local = _is_local(store.fs)
    created = _missing_folders(store.root) if local else []
    try:  # object stores: one PUT, not write_atomic, whose own retries would wait on a dead host
        _probe(write_atomic if local else _put, store.fs, path, b"")
        _probe(store.fs.rm_file, path)
    except Exception as exc:
        problem = access_error(exc, parameter, store.url, bucket=store.container())
        if problem is None:
            raise
        raise problem from exc
    finally:
        for folder in reversed(created):  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _probe(fn, *args):
    """``fn(*args)``, retried on transient errors but not when the storage cannot be reached."""
    return retry(fn, *args, attempts=3, transient=lambda e: is_transient(e) and not (
        _in_chain(e, _UNREACHABLE_CLASSES) or _in_chain(e, _NO_CREDENTIALS_CLASSES)))


def _put(fs, path, data):
    fs.pipe_file(path, data)


def _missing_folders(path):
    """The local folders from the first missing ancestor of ``path`` down to ``path``."""
    missing = []
    while path and not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        path = None if parent == path else parent
    return missing[::-1]


def _in_chain(exc, names):
    """The first error in ``exc``'s chain of causes of a class (or base class) in ``names``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(c.__name__ in names for c in type(exc).__mro__):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def access_error(exc, parameter, url, bucket=None):
    """A one-line error for a storage that refuses access or cannot be reached, else None.

    Parameters
    ----------
    exc : BaseException
        The error caught; its chain of causes is inspected too.
    parameter : {'input', 'output'}
        Which of the run's URLs it is.
    url : str
        The URL, as the user gave it.
    bucket : str, optional
        The bucket of an object-store ``url``: a missing file is then a missing bucket.

    Returns
    -------
    Exception or None
        ``PermissionError`` (no credentials, access denied, not writable),
        ``ConnectionError`` (unreachable), ``FileNotFoundError`` (no such bucket),
        ``ValueError`` (a file in the way); None for any other error.
    """
    where = f"{parameter}={url!r}"
    if (found := _in_chain(exc, _NO_CREDENTIALS_CLASSES)) is not None:
        return PermissionError(
            f"no credentials for {where} ({_first_line(found)}). Pass them in --storage-options "
            "(e.g. {\"profile\": \"lab\"}; {\"anon\": true} for a public bucket) or the "
            "environment (AWS_PROFILE, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).")
    if (found := _in_chain(exc, _UNREACHABLE_CLASSES)) is not None:
        return ConnectionError(
            f"cannot reach the storage of {where} ({_first_line(found)}). Check the URL, "
            "endpoint_url in --storage-options and the network; a connection attempt gives up "
            "after config_kwargs' connect_timeout (default 5 s) and retries (default 2).")
    if _denied(exc):
        return PermissionError(_denied_message(exc, where, url))
    if isinstance(exc, FileNotFoundError) and bucket is not None:
        return FileNotFoundError(f"output bucket not found: {bucket!r} ({where}). Create it, "
                                 "or check the URL and --storage-options.")
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return ValueError(f"{where} cannot be a folder: a file is in the way "
                          f"({_first_line(exc)}). Choose another folder.")
    return None


def _denied(exc):
    return isinstance(exc, PermissionError) or (
        isinstance(exc, OSError) and exc.errno in _DENIED_ERRNOS)


def _denied_message(exc, where, url):
    protocol = split_protocol(url)[0]
    if protocol not in (None, "file", "local"):
        return (f"access denied to {where} ({_first_line(exc)}). Check the credentials "
                "(--storage-options or the environment) and the bucket's permissions: segflow "
                "lists the input, and writes and deletes files under the output.")
    name = getattr(exc, "filename", None)
    if name and PROBE_NAME.format("") in str(name):  # the folder, not the probe's name
        name = os.path.dirname(name)
    detail = f"{exc.strerror}: {name!r}" if name else exc
    if where.startswith("output"):
        return (f"{where} is not writable ({detail}). Fix the folder's permissions, or "
                "choose a folder you can write to.")
    return (f"{where} cannot be read ({detail}). Fix the folder's permissions, or run as a "
            "user who can read it.")


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _missing_or_raise(read, path):
    """``read(path)``, or None where the file does not exist."""
    try:
        return read(path)
    except FileNotFoundError:
        return None


def open_url(url, storage_options=None, *, parameter="url"):
    """``(fs, path)`` for a local path or fsspec URL, with a clear error for unknown schemes.

    Parameters
    ----------
    url : str
        A local path or an fsspec URL.
    storage_options : dict, optional
        Options of the fsspec file system (default none).
    parameter : str, optional
        The name the error messages give the URL (default ``"url"``).

    Returns
    -------
    fs : fsspec.AbstractFileSystem
    path : str
        The path inside ``fs``, without a trailing slash.

    Raises
    ------
    TypeError
        If ``url`` is not a string.
    ValueError
        If ``url`` is empty, its scheme is unknown, or the package of its file system is not
        installed.
    """
    check_url(url, parameter)
    try:
        fs, path = url_to_fs(url, **with_client_defaults(url, storage_options))
    except ImportError as exc:
        raise ValueError(
            f"{parameter}={url!r} needs a package that is not installed ({exc}). "
            f"Install it, e.g. pip install s3fs for s3:// or gcsfs for gs://."
        ) from exc
    return fs, path.rstrip("/") or path


#: S3 client settings segflow gives where neither the storage options nor fsspec's configuration
#: (``FSSPEC_S3``) set them: an endpoint that does not answer fails in seconds, not minutes.
S3_CLIENT_DEFAULTS = {"connect_timeout": 5, "retries": {"max_attempts": 2}}


def with_client_defaults(url, storage_options=None):
    """The storage options of ``url`` with segflow's client defaults filled in.

    For ``s3://``, ``config_kwargs`` (botocore's ``Config``) gets :data:`S3_CLIENT_DEFAULTS`
    for each key that neither ``storage_options`` nor fsspec's configuration sets; other
    schemes get the options unchanged.

    Parameters
    ----------
    url : str
        A local path or an fsspec URL.
    storage_options : dict, optional
        Options of the fsspec file system (default none); not modified.

    Returns
    -------
    dict
        A new dict of options.

    Examples
    --------
    >>> with_client_defaults("s3://b/x", {"config_kwargs": {"connect_timeout": 1}})
    {'config_kwargs': {'connect_timeout': 1, 'retries': {'max_attempts': 2}}}
    """
    options = dict(storage_options or {})
    protocol = split_protocol(url)[0]
    if protocol not in ("s3", "s3a"):
        return options
    configured = fsspec.config.conf.get("s3", {}).get("config_kwargs") or {}  # s3fs reads "s3"
    options["config_kwargs"] = copy.deepcopy(  # botocore rewrites ``retries`` in place
        {**S3_CLIENT_DEFAULTS, **configured, **(options.get("config_kwargs") or {})})
    return options


def write_atomic(fs, path, data):
    """Write bytes so no half-written file is ever visible under ``path``.

    Local files are written to a hidden temporary name in the same folder and renamed; object
    stores (S3, GCS, memory) make a single PUT visible only once it is complete.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The file system.
    path : str
        The full destination path in ``fs``.
    data : bytes
        The file's content.
    """
    parent = posixpath.dirname(path)
    if _is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm_file(tmp)
    else:
        retry(fs.pipe_file, path, data)


def _protocols(fs):
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _is_local(fs):
    return "file" in _protocols(fs)


@dataclass(frozen=True)
class Listing:
    """The images under an input, and what the listing skipped.

    Attributes
    ----------
    refs : list of ImageRef
        Sorted by id.
    skipped : dict
        ``{reason: count}`` of what was not listed under a local folder (keys of
        :data:`SKIPPED`); empty when nothing was, and always for object stores.
    """

    refs: list
    skipped: dict


#: Why a local listing left something out: ``{reason: (one, several)}``.
SKIPPED = {
    "outside": ("link leading outside the input", "links leading outside the input"),
    "repeat": ("link to a folder already listed (a loop or a second link)",
               "links to folders already listed (loops or second links)"),
    "broken": ("broken link", "broken links"),
    "unreadable": ("folder that cannot be read", "folders that cannot be read"),
}


def describe_skipped(skipped):
    """One sentence saying what a listing skipped (see :class:`Listing`).

    Parameters
    ----------
    skipped : dict
        ``{reason: count}``, reasons among the keys of :data:`SKIPPED`.

    Returns
    -------
    str
        Empty when nothing was skipped.

    Examples
    --------
    >>> describe_skipped({"broken": 1, "repeat": 2})
    'skipped under the input: 2 links to folders already listed (loops or second links), 1 broken link.'
    """  # noqa: E501
    parts = []
    for reason, (one, several) in SKIPPED.items():
        n = skipped.get(reason, 0)
        if n:
            hint = " (--follow-external-links follows them)" if reason == "outside" else ""
            parts.append(f"{n} {several if n != 1 else one}{hint}")
    return f"skipped under the input: {', '.join(parts)}." if parts else ""


def list_images(store, patterns=DEFAULT_PATTERNS, *, follow_external_links=False):
    """Images under the store's root matching ``patterns``: :func:`scan_images`'s ``refs``.

    Parameters
    ----------
    store : Store
    patterns : sequence of str, optional
        Globs of names or relative paths (default :data:`DEFAULT_PATTERNS`).
    follow_external_links : bool, optional
        Also list files whose real path lies outside a local root (default False).

    Returns
    -------
    list of ImageRef
    """
    return scan_images(store, patterns, follow_external_links=follow_external_links).refs


def scan_images(store, patterns=DEFAULT_PATTERNS, *, follow_external_links=False):
    """Images under the store's root matching ``patterns`` (case-insensitive), sorted by id.

    A ``*.zarr`` folder (OME-Zarr) is one image; its size and fingerprint sum up its files.
    Under a local folder, symbolic links are followed where their real path stays inside the
    root, each real folder listed once (a link to a folder already listed, such as a loop, is
    skipped); a link leading outside the root is skipped unless ``follow_external_links``, and
    a broken link or a folder that cannot be read is skipped. Object stores have no links.

    Parameters
    ----------
    store : Store
    patterns : sequence of str, optional
        Globs of names or relative paths (default :data:`DEFAULT_PATTERNS`).
    follow_external_links : bool, optional
        Also follow links whose real path lies outside a local root (default False).

    Returns
    -------
    Listing

    Raises
    ------
    FileNotFoundError
        The root does not exist.
    """
    root = store.root
    if not retry(store.fs.exists, root):
        raise FileNotFoundError(
            f"input not found: {store.url!r}. Check the path or URL (and --storage-options)."
        )
    infos, base, skipped = _find(store, follow_external_links)
    pats = [p.lower() for p in patterns]
    refs = []
    for rel, (path, info) in _group_zarrs(infos, base).items():
        name = posixpath.basename(rel)
        if name.startswith(".") or not any(fnmatch.fnmatch(rel.lower(), p) or
                                           fnmatch.fnmatch(name.lower(), p) for p in pats):
            continue
        refs.append(ImageRef(rel, path, store.uri(path), int(info.get("size") or 0),
                             _fingerprint(info)))
    return Listing(sorted(refs, key=lambda r: r.image_id), skipped)


def _find(store, follow_external):
    """``({path: info}, base, skipped)``: the files under the root, and the folder ids start in."""
    root, fs = store.root, store.fs
    if retry(fs.isfile, root):
        return {root: retry(fs.info, root)}, posixpath.dirname(root), {}
    base = posixpath.dirname(root) if _zarr_name(root) else root
    if _is_local(fs):
        infos, skipped = _LocalWalk(fs, root, follow_external).run()
        return infos, base, skipped
    return retry(fs.find, root, detail=True), base, {}


def _group_zarrs(infos, base):
    """``{id: (path, info)}``: each file, but the files of an OME-Zarr folder as that folder."""
    entries, zarrs = {}, {}
    for path, info in infos.items():
        rel = posixpath.relpath(path, base) if base else path
        parts = rel.split("/")
        inside = next((k for k, part in enumerate(parts[:-1]) if _zarr_name(part)), None)
        if inside is not None:  # a file of an OME-Zarr: it counts towards the folder
            zrel = "/".join(parts[: inside + 1])
            zarrs.setdefault(zrel, []).append((rel, info))
        else:
            entries[rel] = (path, info)
    for zrel, files in zarrs.items():
        path = posixpath.join(base, zrel) if base else zrel
        size = sum(int(info.get("size") or 0) for _, info in files)
        prints = "|".join(f"{rel}={_fingerprint(info)}" for rel, info in sorted(
            files, key=lambda f: f[0]))
        entries[zrel] = (path, {"size": size,
                                "digest": hashlib.sha1(prints.encode()).hexdigest()})
    return entries


class _LocalWalk:
    """The files under a local folder, following symbolic links as :func:`scan_images` says.

    Real folders are listed before links to folders, so a folder reached both ways keeps its
    own path; every real folder is listed once (loop protection by real path).
    """

    def __init__(self, fs, root, follow_external):
        self.fs, self.root, self.follow_external = fs, root, follow_external
        self.top = os.path.realpath(root)
        self.infos, self.skipped, self.seen = {}, collections.Counter(), {self.top}
        self.folders, self.links = collections.deque([(root, self.top)]), []

    def run(self):
        """``({path: info}, {reason: count})`` of the files and of what was skipped."""
        while self.folders or self.links:
            if self.folders:
                self._list(*self.folders.popleft())
            else:
                self._enter(heapq.heappop(self.links))
        return self.infos, dict(self.skipped)

    def _list(self, path, real):
        try:
            entries = sorted(self.fs.ls(path, detail=True), key=lambda i: i["name"])
        except PermissionError:
            if path == self.root:
                raise
            self.skipped["unreadable"] += 1
            return
        for info in entries:
            name = info["name"]
            if info.get("islink"):
                self._link(name)
            elif info["type"] == "directory":
                self._enter(name, posixpath.join(real, posixpath.basename(name)))
            else:
                self.infos[name] = info

    def _link(self, path):
        real = os.path.realpath(path)
        if not os.path.exists(real):
            self.skipped["broken"] += 1
        elif not (self.follow_external or _inside(real, self.top)):
            self.skipped["outside"] += 1
        elif os.path.isdir(real):
            heapq.heappush(self.links, path)  # after the real folders
        else:
            self.infos[path] = self.fs.info(path)  # the target's size and times

    def _enter(self, path, real=None):
        real = real or os.path.realpath(path)
        if real in self.seen:
            self.skipped["repeat"] += 1
        else:
            self.seen.add(real)
            self.folders.append((path, real))


def _inside(real, top):
    return real == top or real.startswith(top.rstrip("/") + "/")


def _zarr_name(path):
    return posixpath.basename(path.rstrip("/")).lower().endswith(".zarr")


def _fingerprint(info):
    """Size plus ETag / mtime / checksum from a listing: changes whenever the file does."""
    parts = [str(info.get("size"))]
    for key in ("digest", "ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "updated",
                "created"):
        if info.get(key) is not None:
            parts.append(f"{key}={info[key]}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
