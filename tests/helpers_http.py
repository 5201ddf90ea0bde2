"""A real HTTP server on 127.0.0.1 for source tests: images, redirects, big and flaky bodies.

Routes (GET):
  /img.png              the bytes given at start-up
  /redirect/N           302 → /redirect/N-1 … /redirect/0 → /img.png
  /to-file              302 → file:///etc/passwd
  /big                  1 MiB with Content-Length
  /big-stream           1 MiB without Content-Length (close-delimited; the cap must stream)
  /flaky/KEY            503 on the first request for KEY, then the image
  /always503            503 every time
  /auth                 the image if Basic user:pass and ?token=abc are sent, else 401
  /slow                 sleeps 2 s before answering
  /signed/NAME?sig=S    a PNG of its own for each (NAME, S) (64×64, colour from both); 403
                        without sig; 404 while S is in ``server.down`` (a set, empty at start)
  anything else         404
Every request's path and headers are recorded in ``server.requests``.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

BIG = b"x" * (1 << 20)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, dict(self.headers)))
            srv.hits[self.path.split("?")[0]] += 1
        path, _, query = self.path.partition("?")
        if path == "/img.png":
            self._send(200, srv.image, {"Content-Type": "image/png"})
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            target = "/img.png" if n == 0 else f"/redirect/{n - 1}"
            self._send(302, headers={"Location": target})
        elif path == "/to-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/big":
            self._send(200, BIG)
        elif path == "/big-stream":
            self.close_connection = True
            self._send(200, BIG, length=False)
        elif path.startswith("/flaky/"):
            if srv.hits[path] == 1:
                self._send(503, b"busy")
            else:
                self._send(200, srv.image)
        elif path == "/always503":
            self._send(503, b"busy")
        elif path == "/auth":
            expected = "Basic " + base64.b64encode(b"user:pass").decode()
            ok = self.headers.get("Authorization") == expected and "token=abc" in query
            self._send(200, srv.image) if ok else self._send(401, b"no")
        elif path == "/slow":
            time.sleep(2)
            self._send(200, srv.image)
        elif path.startswith("/signed/"):
            sig = parse_qs(query).get("sig", [None])[0]
            if sig is None:
                self._send(403, b"no signature")
            elif sig in srv.down:
                self._send(404, b"gone for now")
            else:
                self._send(200, signed_png(path, sig), {"Content-Type": "image/png"})
        else:
            self._send(404, b"not found")


def signed_png(path: str, sig: str) -> bytes:
    """The bytes ``/signed/...?sig=S`` serves: a 64×64 PNG whose colour depends on both."""
    import hashlib
    import io

    from PIL import Image

    r, g, b = hashlib.sha256(f"{path}?{sig}".encode()).digest()[:3]
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (r, g, b)).save(buf, "PNG")
    return buf.getvalue()


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler], **attrs: Any) -> Iterator[Any]:
    """A threaded server on 127.0.0.1:<free port> with ``attrs``, ``.lock`` and ``.hits``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.hits = Counter()
    for key, value in attrs.items():
        setattr(server, key, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def http_server(image: bytes) -> Iterator[Any]:
    """Serve on 127.0.0.1:<free port>; yields the server (``.base_url``, ``.hits``)."""
    with _serving(_Handler, image=image, requests=[], down=set()) as server:
        server.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        yield server


class _S3Busy(BaseHTTPRequestHandler):
    """Answers every S3 call with 503 SlowDown, counting attempts."""

    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        with self.server.lock:
            self.server.hits[self.path.split("?")[0]] += 1
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                b"<Message>Please reduce your request rate.</Message></Error>")
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815


@contextmanager
def busy_s3_server() -> Iterator[Any]:
    """An 'S3 endpoint' that is always overloaded; ``.endpoint`` and ``.hits``."""
    with _serving(_S3Busy) as server:
        server.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        yield server
