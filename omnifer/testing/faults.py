"""Hostile infrastructure for tests and benchmarks: a faulty S3 proxy, rows of a clean run.

:class:`FaultProxy` is a real HTTP reverse proxy on 127.0.0.1 in front of an S3 server (moto
in tests). It forwards every request, except that it can answer the first *N* matching
requests with 500/503 (S3's ``InternalError``/``SlowDown``), delay them, or fail every
matching request. Clients (boto3, pyarrow) talk to it as if it were S3, so their real retry
code is exercised.

:func:`catalog_rows` and :func:`compare_rows` say whether a catalog holds exactly the rows
of a clean run: rows lost, rows duplicated (by key: ``source_uri`` in images, ``face_id`` in
faces, ``(face_id, model_version)`` in scores).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_ERROR_BODY = {
    500: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
         b"<Message>We encountered an internal error. Please try again.</Message></Error>",
    503: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
         b"<Message>Please reduce your request rate.</Message></Error>",
}


@dataclass
class FaultPlan:
    """What the proxy does to requests for which ``match(method, path)`` is true.

    The first ``fail_first`` matching requests get an error status (cycling through
    ``statuses``); the first ``delay_first`` are held ``delay_s`` before forwarding;
    ``fail_always`` makes every matching request fail. With ``per_path`` the counts are
    per request path (every object fails its first ``fail_first`` reads), else global.
    """

    match: Callable[[str, str], bool] = lambda method, path: True
    fail_first: int = 0
    statuses: tuple[int, ...] = (503, 500)
    delay_first: int = 0
    delay_s: float = 0.0
    fail_always: bool = False
    per_path: bool = False
    seen: int = 0
    seen_by_path: Counter = field(default_factory=Counter)
    injected: Counter = field(default_factory=Counter)


class _Proxy(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        srv = self.server
        body = self._body()
        action: tuple[str, Any] | None = None
        with srv.lock:
            srv.requests[self.command] += 1
            for plan in srv.plans:
                if not plan.match(self.command, self.path):
                    continue
                plan.seen += 1
                path = self.path.split("?")[0]
                plan.seen_by_path[path] += 1
                nth = plan.seen_by_path[path] if plan.per_path else plan.seen
                if plan.fail_always or nth <= plan.fail_first:
                    failures = sum(v for k, v in plan.injected.items() if k != "delay")
                    status = plan.statuses[failures % len(plan.statuses)]
                    plan.injected[status] += 1
                    action = ("fail", status)
                elif nth <= plan.delay_first:
                    plan.injected["delay"] += 1
                    action = ("delay", plan.delay_s)
                break
        if action and action[0] == "fail":
            payload = _ERROR_BODY.get(action[1], b"")
            self.send_response(action[1])
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        if action and action[0] == "delay":
            time.sleep(action[1])
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        conn = http.client.HTTPConnection(srv.upstream_host, srv.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body if body or self.command in (
                "PUT", "POST") else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length",
                                   "server", "date"):
                self.send_header(key, value)
        # HEAD: the upstream's Content-Length is the object's size, not this empty body's.
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a stalled answer): that is the point

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``).

    ``with FaultProxy(url) as proxy:`` then point clients at ``proxy.endpoint`` and add
    :class:`FaultPlan` s with :meth:`add` (the first matching plan applies).
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
        self._server.daemon_threads = True
        self._server.upstream_host = parts.hostname
        self._server.upstream_port = parts.port or 80
        self._server.lock = threading.Lock()
        self._server.plans = []
        self._server.requests = Counter()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, plan: FaultPlan) -> FaultPlan:
        with self._server.lock:
            self._server.plans.append(plan)
        return plan

    def clear(self) -> None:
        with self._server.lock:
            self._server.plans.clear()

    @property
    def requests(self) -> Counter:
        return self._server.requests

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- rows of a clean run --------------------------------------------------------------------
KEYS = {
    "images": ("source_uri",),
    "faces": ("face_id",),
    "scores": ("face_id", "model_version"),
}
"""Each dataset's row key: one row per key in a correct catalog."""

CONTENT = {
    "images": "source_uri, sha256, status, n_faces",
    "faces": "face_id, image_sha256, face_index",
    "scores": "face_id, model_version, label, round(confidence, 4)",
}
"""What must equal a clean run's (minus run ids and times, which legitimately differ)."""


def catalog_rows(catalog: Any, content: dict[str, str] | None = None
                 ) -> dict[str, list[tuple]]:
    """Sorted rows per dataset of the columns in ``content`` (default :data:`CONTENT`)."""
    con = catalog.connect()
    return {name: sorted(con.execute(f"SELECT {cols} FROM {name}").fetchall(), key=repr)
            for name, cols in (content or CONTENT).items()}


def compare_rows(clean: dict[str, list[tuple]], other: dict[str, list[tuple]]
                 ) -> dict[str, int]:
    """``{"lost": n, "duplicated": n, "changed": n}`` of ``other`` against a clean run.

    Lost: clean rows whose key is absent; duplicated: extra rows for a key; changed: keys
    present once in both whose content differs.
    """
    lost = duplicated = changed = 0
    for name, key_cols in KEYS.items():
        width = len(key_cols)
        clean_by = {r[:width]: r for r in clean[name]}
        seen = Counter(r[:width] for r in other[name])
        other_by = {r[:width]: r for r in other[name]}
        lost += sum(1 for k in clean_by if k not in seen)
        duplicated += sum(n - 1 for n in seen.values() if n > 1)
        changed += sum(1 for k, r in clean_by.items()
                       if seen.get(k) == 1 and repr(other_by[k]) != repr(r))
        changed += sum(1 for k in seen if k not in clean_by)  # rows a clean run lacks
    return {"lost": lost, "duplicated": duplicated, "changed": changed}


def duplicate_keys(catalog: Any) -> dict[str, int]:
    """Extra rows per dataset beyond one per key (0 everywhere in a correct catalog)."""
    con = catalog.connect()
    out = {}
    for name, key_cols in KEYS.items():
        cols = ", ".join(key_cols)
        out[name] = con.execute(
            f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT {cols}, count(*) AS n FROM {name} "
            f"GROUP BY {cols})").fetchone()[0]
    return out


# -- a model that loads, for runs that need a scorer but no accuracy --------------------------
def tiny_checkpoint(out: Path, seed: int = 0) -> Path:
    """A randomly initialised ``fercnn_tiny`` checkpoint (safetensors + card) in ``out``."""
    import torch

    from omnifer.labels import CLASSES
    from omnifer.models.architectures import create_model
    from omnifer.models.checkpoints import ModelCard, save_checkpoint

    torch.manual_seed(seed)
    model = create_model("fercnn_tiny", len(CLASSES))
    dim = int(model.embedding_dim)
    card = ModelCard(arch="fercnn_tiny", classes=list(CLASSES), input_size=64,
                     mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], embedding_dim=dim, seed=seed)
    protos = torch.nn.functional.normalize(torch.randn(len(CLASSES), dim), dim=1)
    save_checkpoint(out, model, card, protos)
    return out


def promote_tiny_model(catalog: Any, out: Path, version: str = "v1") -> None:
    """Register and promote :func:`tiny_checkpoint` as the catalog's primitive model."""
    from omnifer.models import versions

    tiny_checkpoint(out)
    versions.register_version(catalog, out, version, metrics={"accuracy": 0.0})
    versions.record_event(catalog, version, "promoted", {"accuracy": 0.0})


# -- one night without Prefect ----------------------------------------------------------------
@dataclass
class NightResult:
    plan_id: str
    shards: int
    committed: int
    failed: dict[str, str]  # shard id → the error's one line


def run_night(catalog: Any, sources: list[str], date: str, shard_size: int = 4,
              run_id: str = "test-run") -> NightResult:
    """Plan and process every shard like the nightly flow does, minus Prefect.

    A failing shard (an :class:`~omnifer.errors.OmniferError`) is recorded and the others
    go on, as in ``flows/ingest.py``; a rerun does only what did not commit.
    """
    from omnifer.errors import OmniferError
    from omnifer.models.versions import primitive_model
    from omnifer.pipeline import ingest
    from omnifer.sources import parse_source

    version, uri = primitive_model(catalog)
    params = ingest.IngestParams(model_version=version, model_uri=uri)
    plan = ingest.plan_ingest(catalog, [parse_source(s) for s in sources], date, params,
                              shard_size)
    failed: dict[str, str] = {}
    committed = 0
    for shard in plan.shards:
        try:
            ingest.process_shard(catalog, plan, shard, run_id)
            committed += 1
        except OmniferError as exc:
            failed[shard.shard_id] = str(exc).splitlines()[0]
    return NightResult(plan.plan_id, len(plan.shards), committed, failed)


def make_catalog(root: Path, name: str, data_root: str | None = None) -> tuple[Any, Path]:
    """A fresh catalog (the repository's ``data_catalog.yaml``, root moved) and its file."""
    import yaml

    from omnifer.catalog import DataCatalog
    from omnifer.config import load_catalog

    repo = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((repo / "data_catalog.yaml").read_text())
    raw["root"] = data_root or str(root / name)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return DataCatalog(load_catalog(path)), path


def face_folder(root: Path, n: int = 6, seed: int = 0, broken: int = 1) -> Path:
    """``n`` distinct one-face JPEGs plus ``broken`` truncated ones, in nested folders."""
    from omnifer.testing.badinput import drawn_faces, encode_pil, to_pil

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / f"cam-{i % 2}"
        sub.mkdir(exist_ok=True)
        (sub / f"face-{i:03d}.jpg").write_bytes(
            encode_pil(to_pil(drawn_faces(1, 1, 192, seed + 100 + i)), "JPEG", quality=90))
    for i in range(broken):
        (root / f"broken-{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    return root
