"""A real HTTP server on 127.0.0.1 for download tests.

``LocalServer`` serves files from a temporary folder with ``Range`` and ``If-Range`` support, ``ETag`` and
``Last-Modified`` validators, and switches to misbehave: drop or stall the connection part-way through the
first response, ignore ``Range``, answer an HTTP error first, redirect, send a chosen ``Content-Type``,
omit the validators, send slowly (throttle). It records every request it receives.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving ``root``, with fault switches and a request log.

    Switches (plain attributes, set them before the request):
        drop_after: the first GET sends only this many body bytes, then closes the connection
            (``drop_mode="close"``) or stops sending without closing (``"stall"``, a read timeout).
        ignore_range: answer 200 with the whole file even when the request asks for a range.
        fail_first: answer the first GET with this HTTP status.
        redirects: path -> path answered with a 302.
        content_types: name -> ``Content-Type`` sent with it (default ``application/octet-stream``).
        validators: send ``ETag`` (the first 16 hex digits of the body's sha256, quoted) and
            ``Last-Modified`` (the file's mtime); ``False`` sends neither. An ``If-Range`` that matches
            neither current validator makes a range request answer 200 with the whole file.
        rate: when set, bodies are sent at about this many bytes per second (8 KiB writes).

    ``requests`` logs each request's path, ``Range`` and ``If-Range``; ``bodies`` counts the responses that
    started sending a body (200 or 206), by path.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.requests: list[dict[str, str | None]] = []
        self.drop_after: int | None = None
        self.drop_mode = "close"
        self.ignore_range = False
        self.fail_first: int | None = None
        self.redirects: dict[str, str] = {}
        self.content_types: dict[str, str] = {}
        self.validators = True
        self.rate: float | None = None
        self.bodies: dict[str, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # client hung up on purpose: stay quiet
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` as ``/name``; return its URL."""
        (self.root / name).write_bytes(data)
        return f"{self.base}/{name}"

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append({"path": h.path, "range": h.headers.get("Range"),
                                  "if_range": h.headers.get("If-Range")})
            first = len(self.requests) == 1
            drop, self.drop_after = self.drop_after, None
        name = h.path.lstrip("/")
        if name in self.redirects:
            h.send_response(302)
            h.send_header("Location", f"{self.base}/{self.redirects[name]}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if first and self.fail_first:
            h.send_error(self.fail_first)
            return
        path = self.root / name
        if not path.is_file():
            h.send_error(404)
            return
        data = path.read_bytes()
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if_range = h.headers.get("If-Range")
        if if_range is not None and (not self.validators or if_range not in (etag, modified)):
            m = None  # the file changed since the validator was taken: send all of it
        if m and not self.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Type", self.content_types.get(name, "application/octet-stream"))
        if self.validators:
            h.send_header("ETag", etag)
            h.send_header("Last-Modified", modified)
        h.end_headers()
        with self._lock:
            self.bodies[h.path] = self.bodies.get(h.path, 0) + 1
        if drop is None and self.rate:
            step = 8192
            for i in range(0, len(body), step):
                h.wfile.write(body[i:i + step])
                h.wfile.flush()
                time.sleep(step / self.rate)
            return
        if drop is None:
            h.wfile.write(body)
            return
        h.wfile.write(body[:drop])
        h.wfile.flush()
        if self.drop_mode == "stall":
            self._release.wait(10)


def closed_port_url(name: str = "w.bin") -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/{name}"
