"""A fault-injecting HTTP proxy on loopback, for an S3 server (moto) behind it.

On a chosen fraction of requests it resets the connection (before or after the request
reached the server), answers 500 InternalError or 503 SlowDown, or stalls (bounded) before
forwarding. Every other request is forwarded unchanged. ``deny=True`` answers every request
with 403 AccessDenied instead (a permanent error). ``latency`` delays every request by that
many seconds, like a store across a network (benchmarks/rerun.py).
"""

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("reset", "reset-after", "500", "503", "stall")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade",
        "content-length"}
_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
              "<Message>{message}</Message><RequestId>flaky</RequestId></Error>")


class FlakyProxy:
    """Start with ``with FlakyProxy(upstream, rate=0.1) as proxy: proxy.url ...``."""

    def __init__(self, upstream, *, rate=0.0, stall=2.5, seed=0, deny=False, latency=0.0):
        self.upstream = urlsplit(upstream).netloc
        self.rate, self.stall, self.deny, self.latency = rate, stall, deny, latency
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.injected, self.requests = Counter(), 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # the connections this proxy resets on purpose

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _choose(self):
        with self.lock:
            self.requests += 1
            if self.deny:
                self.injected["403"] += 1
                return "403"
            if self.rng.random() >= self.rate:
                return None
            fault = self.rng.choice(FAULTS)
            self.injected[fault] += 1
            return fault

    def _handle(self, h):
        body = _read_body(h)
        if self.latency:
            time.sleep(self.latency)
        fault = self._choose()
        if fault == "reset":
            return _reset(h)
        if fault in ("500", "503", "403"):
            code, message = {"500": ("InternalError", "We encountered an internal error."),
                             "503": ("SlowDown", "Please reduce your request rate."),
                             "403": ("AccessDenied", "Access Denied")}[fault]
            return _send(h, int(fault), {"Content-Type": "application/xml"},
                         _ERROR_XML.format(code=code, message=message).encode())
        if fault == "stall":
            time.sleep(self.stall)
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            length = resp.getheader("Content-Length")
        finally:
            conn.close()
        if fault == "reset-after":  # the server did the work, the answer is lost
            return _reset(h)
        _send(h, resp.status, out, data, length=length if h.command == "HEAD" else None)


def _read_body(h):
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(h.rfile.read(size))
            h.rfile.readline()
    n = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(n) if n else b""


def _send(h, status, headers, data, length=None):
    """Answer; ``length`` is a HEAD answer's Content-Length (the object's, with no body)."""
    h.send_response(status)
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)) if length is None else length)
    h.end_headers()
    if length is None:
        h.wfile.write(data)


def _reset(h):
    """Close the client's connection with a TCP RST, without an answer."""
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.close_connection = True
    h.connection.close()
