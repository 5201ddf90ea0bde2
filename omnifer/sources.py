"""Where unlabeled images come from: local folders, S3 prefixes, URL manifests.

A source is a small pydantic spec (JSON-serialisable, so a plan can write it down and a worker
on another machine can rebuild it with :func:`source_from_dict`). Two operations:

* :func:`list_objects` streams :class:`SourceObject` rows (stable ``uri``, ``size``,
  ``version``) in a deterministic order, so the same source lists the same plan twice;
* :func:`read_object` returns an object's bytes, or raises :class:`FetchError` whose
  ``status`` the caller records on the image row (failures are data, not crashes).

Status vocabulary: ``missing`` (gone since listing, 404), ``unreadable`` (permissions),
``too_large`` (over ``max_bytes``; stopped reading there), ``fetch_failed`` (network/server
errors after bounded retries, too many redirects), ``forbidden_url`` (a scheme or address the
source does not allow, or a path outside the source's root).

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
* S3 goes through one boto3 client per (process, endpoint, region), created lazily, with
  botocore's "standard" retry mode (retries 500/503/SlowDown with backoff, bounded attempts).
  Credentials come from boto3's usual chain and are never logged.
* Local sources refuse symlinks that point outside their root.

What is listed: every object, whatever its name (the decoder decides what it is by its bytes),
except system junk (:func:`omnifer.ignore.is_ignored`: hidden entries, ``._*`` AppleDouble
files, ``__MACOSX/``, ``@eaDir/``, ``Thumbs.db``, ...) and what the source's ``exclude``
globs name (:func:`omnifer.ignore.is_excluded`); the same rule for folders, buckets and URL
manifests. Odd entries met while listing a folder (a folder that cannot be read, a dangling
symlink, an entry that vanished) are logged and counted in a :class:`ListingReport`, never
raised: one bad corner of a tree does not end the night.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote, unquote, unquote_to_bytes, urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from omnifer import ignore
from omnifer.errors import SourceError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
    ".heic", ".heif", ".avif",
)
"""Common image suffixes, for a source that opts into an ``extensions`` filter. Not the
default: a file is listed whatever its name says, and its bytes decide what it is."""

USER_AGENT = "omnifer/0.1 (+data curation crawler)"


class FetchError(SourceError):
    """One object could not be read; ``status`` is the image row's status.

    ``transient``: the store itself failed (S3 5xx/throttling/timeouts after the retry budget),
    not the object. The ingest fails the whole shard on such an error instead of writing a
    ``fetch_failed`` row, so a rerun reads the object again (rows of one clean run).
    """

    def __init__(self, status: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


# -- specs -----------------------------------------------------------------------------------
class _Spec(BaseModel):
    """``exclude``: globs of paths not to list (see :func:`omnifer.ignore.is_excluded`), on
    top of the system junk every source skips."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude: tuple[str, ...] = ()

    @field_validator("exclude", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        return ignore.check_globs([value] if isinstance(value, str) else value)


class _Listed(_Spec):
    """A source whose object names may be filtered by suffix (case-insensitive); None (the
    default) lists every file, so that none is left without a row."""

    extensions: tuple[str, ...] | None = None

    @field_validator("extensions", mode="before")
    @classmethod
    def _dotted_lower(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        return tuple("." + str(e).lower().lstrip(".") for e in items)


class LocalSource(_Listed):
    """Files under ``root`` whose relative POSIX path matches ``pattern`` (glob: ``*`` stays
    within one folder, ``**/`` spans any number of folders) and whose suffix is in
    ``extensions`` (None: any)."""

    kind: Literal["local"] = "local"
    root: str
    pattern: str = "**/*"

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(Path(value).expanduser().resolve())

    def __str__(self) -> str:
        return Path(self.root).as_uri()


class S3Source(_Listed):
    """Objects under ``s3://bucket/prefix``. ``endpoint_url``/``region`` default to
    ``$OMNIFER_S3_ENDPOINT_URL`` (or ``$AWS_ENDPOINT_URL``) and boto3's own resolution."""

    kind: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3)
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    retries: int = Field(4, ge=0, le=10)  # botocore standard mode: attempts = retries + 1
    timeout_s: float = Field(60.0, gt=0)  # per-request read timeout; a slower answer is retried

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class UrlManifestSource(_Spec):
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


SourceSpec = Annotated[LocalSource | S3Source | UrlManifestSource, Field(discriminator="kind")]
_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceSpec)


def source_from_dict(raw: dict[str, Any]) -> LocalSource | S3Source | UrlManifestSource:
    """Rebuild a spec from ``model_dump(mode="json")`` output (plans store sources that way)."""
    try:
        return _SPEC_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise SourceError(f"invalid source {raw!r}: {exc.errors()[0]['msg']}") from None


def parse_source(text: str) -> LocalSource | S3Source | UrlManifestSource:
    """``/path``, ``relative/path``, ``file:///path``, ``s3://bucket/prefix`` (read as a
    folder: ``prefix/``), ``urls:manifest.csv`` (or ``urls:s3://b/m.parquet``), or a JSON
    object with ``kind`` for the options these short forms leave at their defaults."""
    text = text.strip()
    raw: dict[str, Any]
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"source is not valid JSON: {exc}") from None
    elif text.startswith("urls:"):
        raw = {"kind": "urls", "manifest": text[len("urls:") :]}
    elif text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        raw = {"kind": "s3", "bucket": bucket, "prefix": prefix}
    elif text.startswith("file://"):
        raw = {"kind": "local", "root": url2pathname(urlsplit(text).path)}
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise SourceError(
            f"unsupported source {strip_credentials(text)!r}: use a folder, s3://bucket/prefix "
            "or urls:<manifest.csv|parquet> (single URLs go in a manifest)"
        )
    elif text:
        raw = {"kind": "local", "root": text}
    else:
        raise SourceError("empty source")
    return source_from_dict(raw)


# -- objects ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceObject:
    """One listed object. ``version`` is the S3 ETag or the file's mtime_ns (None for URLs)."""

    uri: str
    size: int | None = None
    version: str | None = None


class _ObjectLike(Protocol):
    uri: str
    size: int | None


@dataclass
class ListingReport:
    """What listing one or more sources met besides the objects it yielded.

    ``listed``: objects yielded. ``ignored``: system junk by reason (never read, never rows).
    ``excluded``: paths the source's ``exclude`` / ``pattern`` / ``extensions`` left out.
    ``skipped``: entries that could not be listed, by reason (``unlistable_folder``,
    ``dangling_symlink``, ``vanished``, ``symlink_outside_root``, ``symlinked_folder``,
    ``unreadable_entry``), each logged as a warning; ``examples`` keeps the first few paths
    per reason (``ignored:``/``skipped:`` prefixed) for run records.
    """

    listed: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    excluded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    _EXAMPLES = 3

    def _example(self, key: str, where: str) -> bool:
        shown = self.examples.setdefault(key, [])
        if len(shown) < self._EXAMPLES:
            # names may hold undecodable bytes (surrogates): keep records printable
            shown.append(where.encode("utf-8", "backslashreplace").decode())
            return True
        return False

    def ignore(self, where: str, reason: str) -> None:
        self.ignored[reason] += 1
        self._example(f"ignored: {reason}", where)
        log.debug("ignoring %s: %s", _printable(where), reason)

    def exclude(self, where: str, rule: str) -> None:
        self.excluded += 1
        self._example(f"excluded: {rule}", where)

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if self._example(f"skipped: {reason}", where):
            log.warning("listing: skipped %s (%s%s)", _printable(where), reason,
                        f": {detail}" if detail else "")
        else:
            log.debug("listing: skipped %s (%s)", _printable(where), reason)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able counts (what plans and run records store)."""
        return {"listed": self.listed, "ignored": sum(self.ignored.values()),
                "ignored_by_reason": dict(sorted(self.ignored.items())),
                "excluded": self.excluded, "skipped_entries": sum(self.skipped.values()),
                "skipped_by_reason": dict(sorted(self.skipped.items())),
                "examples": self.examples}


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode()


def list_objects(
    spec: LocalSource | S3Source | UrlManifestSource, report: ListingReport | None = None
) -> Iterator[SourceObject]:
    """Stream the objects of ``spec`` in a deterministic order; SourceError if unlistable.

    Junk (:func:`omnifer.ignore.is_ignored`) and ``exclude``d paths are left out; what was
    left out or could not be listed is counted in ``report`` (see :class:`ListingReport`).
    """
    report = report if report is not None else ListingReport()
    if isinstance(spec, LocalSource):
        return _counted(_list_local(spec, report), report)
    if isinstance(spec, S3Source):
        return _counted(_filtered(spec, _list_s3(spec), report), report)
    if isinstance(spec, UrlManifestSource):
        return _counted(_filtered(spec, _list_urls(spec), report), report)
    raise SourceError(f"not a source spec: {type(spec).__name__}")


def _counted(objects: Iterator[SourceObject], report: ListingReport) -> Iterator[SourceObject]:
    for obj in objects:
        report.listed += 1
        yield obj


def relative_path(spec: LocalSource | S3Source | UrlManifestSource, uri: str) -> str:
    """The POSIX path that ignore and exclude rules see for ``uri``: the path under a local
    root, the key after an S3 prefix, ``host/path`` (percent-decoded) of a URL."""
    if isinstance(spec, LocalSource):
        root = Path(spec.root)
        try:
            return _local_path(uri).relative_to(root).as_posix()
        except ValueError:
            return _local_path(uri).as_posix()
    if isinstance(spec, S3Source):
        key = uri.removeprefix(f"s3://{spec.bucket}/")
        return key.removeprefix(spec.prefix)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    return f"{parts.hostname or ''}{unquote(parts.path)}"


def _filtered(spec: S3Source | UrlManifestSource, objects: Iterator[SourceObject],
              report: ListingReport) -> Iterator[SourceObject]:
    """``objects`` without junk, ``exclude``d paths and (S3) suffixes outside ``extensions``."""
    exts = getattr(spec, "extensions", None)
    for obj in objects:
        rel = relative_path(spec, obj.uri)
        reason = ignore.is_ignored(rel)
        if reason is not None:
            report.ignore(obj.uri, reason)
            continue
        rule = ignore.is_excluded(rel, spec.exclude)
        if rule is None and exts is not None and not rel.lower().endswith(exts):
            rule = "extensions"
        if rule is not None:
            report.exclude(obj.uri, rule)
            continue
        yield obj


def read_object(
    spec: LocalSource | S3Source | UrlManifestSource, obj: _ObjectLike, max_bytes: int
) -> bytes:
    """Bytes of ``obj`` (anything with ``uri`` and ``size``), at most ``max_bytes``.

    Raises FetchError(status, message); never reads more than ``max_bytes + 1`` bytes.
    """
    if isinstance(spec, LocalSource):
        return _read_local(spec, obj, max_bytes)
    if isinstance(spec, S3Source):
        return _read_s3(spec, obj, max_bytes)
    if isinstance(spec, UrlManifestSource):
        cap = min(max_bytes, spec.max_bytes or max_bytes)
        return _fetch_url(spec, _original_url(spec, obj.uri), cap)
    raise SourceError(f"not a source spec: {type(spec).__name__}")


def _too_large(uri: str, size: int | None, max_bytes: int) -> FetchError:
    shown = f"{size} bytes" if size is not None else "more bytes"
    return FetchError("too_large", f"{uri}: {shown} > max_bytes {max_bytes}")


# -- local -----------------------------------------------------------------------------------
_glob_regex = ignore.glob_regex


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _list_local(spec: LocalSource, report: ListingReport) -> Iterator[SourceObject]:
    """Walk ``spec.root`` depth-first, names sorted: a folder's files, then its sub-folders.

    Nothing met on the way raises (see :class:`ListingReport` for what is counted): a
    folder that cannot be read, a dangling symlink, an entry that vanished between the
    folder's listing and its ``stat``, a symlink out of the root. Symlinked folders are not
    followed (no cycles, no escapes). FIFOs, sockets and devices are listed (their row
    says ``unreadable: not a regular file``); names need not be UTF-8.
    """
    root = Path(spec.root)
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist or is not a folder")
    regex = _glob_regex(spec.pattern)
    exts = spec.extensions
    stack = [""]  # folders still to list, relative to root
    while stack:
        rel_dir = stack.pop()
        folder = root / rel_dir if rel_dir else root
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not rel_dir:  # the source itself: nothing to list at all is the run's error
                raise SourceError(f"cannot list source folder {root}: "
                                  f"{exc.strerror or exc}") from None
            if isinstance(exc, FileNotFoundError):
                report.skip(rel_dir, "vanished", "folder gone while listing")
            else:
                report.skip(rel_dir, "unlistable_folder", exc.strerror or str(exc))
            continue
        subfolders: list[str] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                report.skip(rel, "unreadable_entry", exc.strerror or str(exc))
                continue
            reason = ignore.ignored_name(entry.name, folder=is_dir)
            if reason is not None:
                report.ignore(rel + ("/" if is_dir else ""), reason)
                continue
            if is_dir:
                rule = ignore.is_excluded(rel + "/", spec.exclude)
                if rule is not None:
                    report.exclude(rel + "/", rule)
                else:
                    subfolders.append(rel)
                continue
            obj = _local_object(spec, root, Path(entry.path), rel, is_link, regex, exts,
                                report)
            if obj is not None:
                yield obj
        stack.extend(reversed(subfolders))


def _local_object(spec: LocalSource, root: Path, path: Path, rel: str, is_link: bool,
                  regex: re.Pattern[str], exts: tuple[str, ...] | None,
                  report: ListingReport) -> SourceObject | None:
    """The object for one non-folder entry, or None (counted in ``report``)."""
    rule = ignore.is_excluded(rel, spec.exclude)
    if rule is None and not regex.match(rel):
        rule = "pattern"
    if rule is None and exts is not None and not rel.lower().endswith(exts):
        rule = "extensions"
    if rule is not None:
        report.exclude(rel, rule)
        return None
    try:
        st = path.stat()  # follows a symlink
    except FileNotFoundError:
        if is_link:
            report.skip(rel, "dangling_symlink", f"points to {os.readlink(path)!r}"
                        if os.path.islink(path) else "")
        else:
            report.skip(rel, "vanished", "gone between listing and stat")
        return None
    except OSError as exc:  # a symlink loop, permissions on the target's folder
        report.skip(rel, "unreadable_entry", exc.strerror or str(exc))
        return None
    if is_link:
        if not _inside(path.resolve(), root):
            report.skip(rel, "symlink_outside_root", f"points outside {root}")
            return None
        if stat.S_ISDIR(st.st_mode):
            report.skip(rel, "symlinked_folder", "symlinked folders are not followed")
            return None
    return SourceObject(path.as_uri(), st.st_size, str(st.st_mtime_ns))


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        # Path.as_uri() percent-encodes the file system's bytes, so decode back to bytes:
        # a non-UTF-8 name (latin-1 "caf\xe9.jpg") must name the same file again.
        return Path(os.fsdecode(unquote_to_bytes(urlsplit(uri).path)))
    return Path(uri)


def _read_local(spec: LocalSource, obj: _ObjectLike, max_bytes: int) -> bytes:
    root = Path(spec.root)
    path = _local_path(obj.uri)
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise FetchError("missing", f"{obj.uri}: no such file") from None
    except OSError as exc:
        raise FetchError("unreadable", f"{obj.uri}: {exc.strerror or exc}") from None
    if not _inside(Path(os.path.abspath(path)), root) or not _inside(real, root):
        raise FetchError("forbidden_url", f"{obj.uri} is outside the source folder {root}")
    try:
        # O_NONBLOCK: a FIFO or device named x.jpg must not hang the worker on open().
        with open(os.open(real, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise FetchError("unreadable", f"{obj.uri}: not a regular file")
            if st.st_size > max_bytes:
                raise _too_large(obj.uri, st.st_size, max_bytes)
            data = fh.read(max_bytes + 1)
    except FetchError:
        raise
    except FileNotFoundError:
        raise FetchError("missing", f"{obj.uri}: no such file") from None
    except OSError as exc:  # permissions, a folder, I/O errors
        raise FetchError("unreadable", f"{obj.uri}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # grew since stat
        raise _too_large(obj.uri, None, max_bytes)
    return data


# -- S3 --------------------------------------------------------------------------------------
_client_lock = threading.Lock()
_S3_PAGE_SIZE = 1000  # the S3 maximum; fewer round trips per listing
_S3_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                           "InternalError", "ServiceUnavailable"})


def _s3_settings(spec: S3Source) -> tuple[str | None, str | None]:
    endpoint = (
        spec.endpoint_url
        or os.environ.get("OMNIFER_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    return endpoint, spec.region or os.environ.get("OMNIFER_S3_REGION")


def s3_client(endpoint_url: str | None, region: str | None, retries: int = 4,
              timeout_s: float = 60.0) -> Any:
    """The process's boto3 S3 client for this endpoint/region (clients are thread-safe;
    sessions are not, so creation is locked). Keyed by pid so a forked worker makes its own."""
    with _client_lock:
        return _make_s3_client(os.getpid(), endpoint_url, region, retries, timeout_s)


@functools.lru_cache(maxsize=16)
def _make_s3_client(pid: int, endpoint_url: str | None, region: str | None, retries: int,
                    timeout_s: float = 60.0) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": retries + 1},
        connect_timeout=min(10.0, timeout_s),
        read_timeout=timeout_s,
        max_pool_connections=32,
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _client_for(spec: S3Source) -> Any:
    endpoint, region = _s3_settings(spec)
    return s3_client(endpoint, region, spec.retries, spec.timeout_s)


def _s3_error(exc: Exception) -> tuple[str, str]:
    """(code, one-line message) of a botocore error, without credentials or request ids."""
    response = getattr(exc, "response", None) or {}
    err = response.get("Error", {})
    code = str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
               or type(exc).__name__)
    return code, f"{code}: {err.get('Message') or exc}"


def _list_s3(spec: S3Source) -> Iterator[SourceObject]:
    from botocore.exceptions import BotoCoreError, ClientError

    client = _client_for(spec)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=spec.bucket, Prefix=spec.prefix, PaginationConfig={"PageSize": _S3_PAGE_SIZE}
    )
    try:
        for page in pages:  # S3 returns keys in UTF-8 binary order: deterministic
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):  # a "folder" marker object, not an object of its own
                    continue
                etag = str(item.get("ETag", "")).strip('"') or None
                yield SourceObject(f"s3://{spec.bucket}/{key}", int(item["Size"]), etag)
    except (ClientError, BotoCoreError) as exc:
        raise SourceError(f"cannot list {spec}: {_s3_error(exc)[1]}") from None


def _read_s3(spec: S3Source, obj: _ObjectLike, max_bytes: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = f"s3://{spec.bucket}/"
    if not obj.uri.startswith(prefix + spec.prefix):
        raise FetchError("forbidden_url", f"{obj.uri} is not under {spec}")
    if obj.size is not None and obj.size > max_bytes:
        raise _too_large(obj.uri, obj.size, max_bytes)
    try:
        resp = _client_for(spec).get_object(Bucket=spec.bucket, Key=obj.uri[len(prefix) :])
        length = resp.get("ContentLength")
        if length is not None and length > max_bytes:
            resp["Body"].close()
            raise _too_large(obj.uri, length, max_bytes)
        with resp["Body"] as body:
            data = body.read(max_bytes + 1)
    except ClientError as exc:
        code, message = _s3_error(exc)
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
            raise FetchError("missing", f"{obj.uri}: {message}") from None
        if code in ("AccessDenied", "403", "Forbidden"):
            raise FetchError("unreadable", f"{obj.uri}: {message}") from None
        # botocore's text says "(reached max retries: N)" when the retry budget ran out
        http = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get(
            "HTTPStatusCode") or 0
        transient = http >= 500 or http == 429 or code in _S3_THROTTLED
        raise FetchError("fetch_failed", f"{obj.uri}: {exc}", transient=transient) from None
    except BotoCoreError as exc:  # timeouts, refused or reset connections, after retries
        raise FetchError("fetch_failed", f"{obj.uri}: {type(exc).__name__}: {exc}",
                         transient=True) from None
    if len(data) > max_bytes:
        raise _too_large(obj.uri, None, max_bytes)
    return data


# -- URL manifests ---------------------------------------------------------------------------
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

    from omnifer import storage

    fs, path = storage.resolve(spec.manifest)
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


def _is_public(address: str) -> bool:
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
            bad = sorted({info[4][0] for info in infos if not _is_public(info[4][0])})
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
                raise _too_large(shown, int(length), max_bytes)
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
            raise _too_large(shown, None, max_bytes)


__all__ = [
    "IMAGE_EXTENSIONS", "FetchError", "ListingReport", "LocalSource", "S3Source", "SourceObject",
    "SourceSpec", "UrlManifestSource", "list_objects", "parse_source", "read_object",
    "relative_path", "s3_client", "source_from_dict", "strip_credentials", "url_identity",
]
