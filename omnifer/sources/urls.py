"""URL manifests as a source: the URLs of a CSV or Parquet column, fetched safely.

Safety choices:

* URIs written to datasets never carry credentials, and redacting them never changes what
  identifies or fetches an object: a manifest URL's ``source_uri`` is :func:`url_identity`,
  the URL without userinfo and credential-like query parameters (:func:`strip_credentials`)
  plus, when those were there, a key ``#omnifer-key=<sha256 of the full URL, 16 hex>``. So
  ``…/a.jpg?sig=1`` and ``…/a.jpg?sig=2`` stay two objects (two rows, two fetches), and the
  same URL listed twice is one. A worker that needs the credentialed URL looks it up in the
  manifest again by that identity (once per process).
* URL fetching uses the standard library's ``http.client`` rather than ``requests`` (no extra
  dependency, and the connection is made to the very address that was checked): every hop's
  host is resolved and *all* its addresses must be public unless ``allow_private``; redirects
  are followed by hand (each hop re-checked, at most ``max_redirects``); bodies are streamed
  and cut at ``max_bytes``; each attempt has a deadline; 5xx/connection errors are retried
  ``retries`` times with exponential backoff. Environment proxies are not used.

Junk and ``exclude`` globs apply to ``host/path`` (percent-decoded) of each URL, as they do to
the paths of folders and buckets (:func:`omnifer.sources.base.filtered`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

from pydantic import Field, field_validator

from omnifer.errors import SourceError
from omnifer.sources.base import FetchError, ObjectLike, Source, SourceObject, filtered, too_large
from omnifer.sources.listing import ListingReport
from omnifer.storage.files import resolve

log = logging.getLogger(__name__)

USER_AGENT = "omnifer/0.1 (+data curation crawler)"


class UrlManifestSource(Source):
    """URLs in column ``column`` of a CSV or Parquet file (local path or ``s3://``)."""

    kind: Literal["urls"] = "urls"
    manifest: str = Field(min_length=1)
    column: str = "url"
    allow_private: bool = False
    allowed_schemes: tuple[str, ...] = ("http", "https")
    max_bytes: int | None = Field(None, ge=1)  # a tighter cap than the caller's, if set
    timeout_s: float = Field(30.0, gt=0)
    max_redirects: int = Field(3, ge=0, le=20)
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0)

    @field_validator("manifest")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if "://" in value and not value.startswith("file://"):
            return value
        if value.startswith("file://"):
            value = url2pathname(urlsplit(value).path)
        return str(Path(value).expanduser().resolve())

    def __str__(self) -> str:
        return f"urls:{self.manifest}"

    def scan(self, report: ListingReport) -> Iterator[SourceObject]:
        return filtered(self, _list_urls(self), report)

    def relative_path(self, uri: str) -> str:
        try:
            parts = urlsplit(uri)
        except ValueError:
            return uri
        return f"{parts.hostname or ''}{unquote(parts.path)}"

    def read_object(self, obj: ObjectLike, max_bytes: int) -> bytes:
        cap = min(max_bytes, self.max_bytes or max_bytes)
        return _fetch_url(self, _original_url(self, obj.uri), cap)


_SENSITIVE_PARAM = re.compile(
    r"(?:^|[_\-.])(?:token|signature|sig|secret|password|passwd|pwd|credential|key|apikey|"
    r"auth|session)$|^(?:awsaccesskeyid|key-pair-id|policy)$",
    re.IGNORECASE,
)


def strip_credentials(uri: str) -> str:
    """``uri`` without userinfo, fragment, or query parameters named like credentials
    (token, signature, key, secret, password, X-Amz-Credential, ...).

    For display only: two URLs that differ only in a secret strip to the same text, so
    identity is :func:`url_identity` (this plus a key), never this alone."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # malformed (e.g. a broken IPv6 host): keep only what is surely safe
        return re.sub(r"^([^:/?#]+://)[^/?#]*@", r"\1", uri).split("?")[0].split("#")[0]
    netloc = parts.netloc.rpartition("@")[2]
    kept = [p for p in parts.query.split("&")
            if p and not _SENSITIVE_PARAM.search(unquote(p.partition("=")[0]))]
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(kept), ""))


def _iter_manifest(spec: UrlManifestSource) -> Iterator[str]:
    """The manifest's URL column, streamed in file order (blank cells skipped)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = resolve(spec.manifest)
    try:
        if spec.manifest.lower().endswith((".parquet", ".pq")):
            parquet = pq.ParquetFile(fs.open_input_file(path))
            if spec.column not in parquet.schema_arrow.names:
                raise KeyError(f"no column '{spec.column}'")
            batches = parquet.iter_batches(columns=[spec.column])
        else:
            convert = pacsv.ConvertOptions(include_columns=[spec.column],
                                           column_types={spec.column: "string"})
            batches = pacsv.open_csv(fs.open_input_stream(path), convert_options=convert)
        for batch in batches:
            for value in batch.column(0).to_pylist():
                if value and str(value).strip():
                    yield str(value).strip()
    except (OSError, KeyError, ValueError) as exc:  # pyarrow raises ArrowInvalid (ValueError)
        raise SourceError(f"cannot read manifest {spec.manifest} "
                          f"(column '{spec.column}'): {exc}") from None


_KEY_FRAGMENT = "omnifer-key="


def _redacts(url: str) -> bool:
    """Whether :func:`strip_credentials` removes something the server would see (userinfo
    or a query parameter), as opposed to the fragment alone, which is never sent."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return strip_credentials(url) != url.split("#", 1)[0]
    return "@" in parts.netloc or any(
        p and _SENSITIVE_PARAM.search(unquote(p.partition("=")[0]))
        for p in parts.query.split("&"))


def url_identity(url: str) -> str:
    """The ``source_uri`` of a manifest URL: what identifies it (plans, the seen set, rows,
    retries) and what may be shown (logs, errors, datasets).

    It is :func:`strip_credentials` of ``url``, plus ``#omnifer-key=<16 hex>`` when that
    stripped userinfo or a parameter: the first 64 bits of the sha256 of ``url`` as fetched
    (without its fragment). Redacting for display then never merges two objects: URLs that
    differ only in ``sig=…`` get different keys, the same URL always the same key. The key
    is a one-way digest of the whole URL (high-entropy signatures cannot be recovered from
    it; a short password in userinfo is better passed some other way). A URL without
    credentials is its own identity (minus any fragment), as before.
    """
    shown = strip_credentials(url)
    if not _redacts(url):
        return shown
    fetched = url.split("#", 1)[0]
    return f"{shown}#{_KEY_FRAGMENT}{hashlib.sha256(fetched.encode()).hexdigest()[:16]}"


def _list_urls(spec: UrlManifestSource) -> Iterator[SourceObject]:
    """One object per distinct URL (by :func:`url_identity`), in manifest order: a URL listed
    twice is fetched once and gives one row."""
    seen: set[bytes] = set()  # 12-byte digests: a 10-million-row manifest stays ~1 GB lighter
    repeats = 0
    for url in _iter_manifest(spec):
        uri = url_identity(url)
        digest = hashlib.sha256(uri.encode()).digest()[:12]
        if digest in seen:
            repeats += 1
            continue
        seen.add(digest)
        yield SourceObject(uri)
    if repeats:
        log.info("%s: %d repeated URL(s) listed once", spec, repeats)


@functools.lru_cache(maxsize=8)
def _manifest_originals(spec: UrlManifestSource) -> dict[str, str]:
    """Identity → original URL, only for rows that carried credentials (usually none).

    Read once per process. A manifest that can no longer be read is not fatal here: its
    URLs are fetched as stored (a credentialed one then fails with its own row status)."""
    mapping: dict[str, str] = {}
    try:
        for url in _iter_manifest(spec):
            uri = url_identity(url)
            if _KEY_FRAGMENT in uri:
                mapping[uri] = url
    except SourceError as exc:
        log.warning("fetching URLs without credential lookup: %s", exc)
    return mapping


def _original_url(spec: UrlManifestSource, uri: str) -> str:
    """The URL to fetch for the row ``uri`` (its credentials looked up in the manifest).

    Raises FetchError ``missing`` for a keyed identity the manifest no longer holds: fetching
    its redacted form would ask for something else (or without its credentials)."""
    url = _manifest_originals(spec).get(uri)
    if url is not None:
        return url
    if f"#{_KEY_FRAGMENT}" in uri:
        raise FetchError("missing", f"{uri}: no longer in the manifest {spec.manifest}, so "
                         "its credentials are unknown")
    return uri


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _Refused(Exception):
    """An address the source does not allow (turned into ``forbidden_url``)."""


def _guarded_connect(allow_private: bool) -> Callable[..., socket.socket]:
    """A ``create_connection`` that resolves the host, checks *every* address, and connects
    to a checked one, so DNS cannot answer differently between the check and the connect."""

    def connect(address: tuple[str, int], timeout: Any = None, source_address: Any = None,
                **_: Any) -> socket.socket:
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not allow_private:
            bad = sorted({info[4][0] for info in infos if not is_public_address(info[4][0])})
            if bad:
                raise _Refused(f"{host} resolves to non-public address {', '.join(bad)}")
        last: OSError | None = None
        for family, socktype, proto, _name, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(f"cannot connect to {host}")

    return connect


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificate-verifying TLS settings, built once (loading the CA store takes ms)."""
    return ssl.create_default_context()


def _connection(url: str, spec: UrlManifestSource) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=spec.timeout_s,
            context=_tls_context(),
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                          timeout=spec.timeout_s)
    conn._create_connection = _guarded_connect(spec.allow_private)  # type: ignore[attr-defined]
    return conn


_URL_SAFE = "/:@!$&'()*+,;=%~"  # keep what is already encoded or reserved; quote the rest


class _Retryable(Exception):
    """A server error or a broken connection: worth another attempt."""


def _fetch_url(spec: UrlManifestSource, url: str, max_bytes: int) -> bytes:
    """GET ``url`` with checked hops, bounded redirects, a byte cap and bounded retries."""
    shown = strip_credentials(url)
    for attempt in range(spec.retries + 1):
        try:
            return _fetch_once(spec, url, shown, max_bytes)
        except _Retryable as exc:
            if attempt == spec.retries:
                raise FetchError("fetch_failed", f"{shown}: {exc} (after {attempt + 1} "
                                 "attempts)") from None
            delay = min(spec.backoff_s * 2**attempt, 30.0)
            log.info("retrying %s in %.2fs: %s", shown, delay, exc)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _fetch_once(spec: UrlManifestSource, url: str, shown: str, max_bytes: int) -> bytes:
    deadline = time.monotonic() + spec.timeout_s
    for _hop in range(spec.max_redirects + 1):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            raise FetchError("forbidden_url", f"{strip_credentials(url)}: {exc}") from None
        if parts.scheme not in spec.allowed_schemes or parts.scheme not in ("http", "https"):
            raise FetchError("forbidden_url", f"{strip_credentials(url)}: scheme "
                             f"'{parts.scheme}' not allowed")
        if not parts.hostname:
            raise FetchError("forbidden_url", f"{strip_credentials(url)}: no host")
        headers = {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"}
        if parts.username is not None:  # credentials from the manifest go in a header
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        path = quote(parts.path or "/", safe=_URL_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_URL_SAFE + "?")
        conn = _connection(url, spec)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise FetchError("fetch_failed", f"{shown}: {resp.status} without Location")
                next_url = urljoin(url, location)
                if urlsplit(next_url).netloc != parts.netloc:
                    # never forward manifest credentials to another host
                    next_url = strip_credentials(next_url)
                url = next_url
                continue
            if resp.status >= 500 or resp.status == 429:
                raise _Retryable(f"HTTP {resp.status}")
            if resp.status in (404, 410):
                raise FetchError("missing", f"{shown}: HTTP {resp.status}")
            if resp.status != 200:
                raise FetchError("fetch_failed", f"{shown}: HTTP {resp.status}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise too_large(shown, int(length), max_bytes)
            return _read_capped(resp, shown, max_bytes, deadline)
        except _Refused as exc:
            raise FetchError("forbidden_url", f"{shown}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, DNS failures
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
    raise FetchError("fetch_failed", f"{shown}: more than {spec.max_redirects} redirects")


def _read_capped(resp: http.client.HTTPResponse, shown: str, max_bytes: int,
                 deadline: float) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise _Retryable("timed out while reading the body")
        chunk = resp.read(min(65536, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise too_large(shown, None, max_bytes)
