"""Sources: where unlabeled images come from, and the two operations every source has.

A source is a small pydantic spec (JSON-serialisable, so a plan can write it down and a worker
on another machine can rebuild it with :func:`omnifer.sources.parse.source_from_dict`). Two
operations:

* :func:`list_objects` streams :class:`SourceObject` rows (stable ``uri``, ``size``,
  ``version``) in a deterministic order, so the same source lists the same plan twice;
* :func:`read_object` returns an object's bytes, or raises :class:`FetchError` whose
  ``status`` the caller records on the image row (failures are data, not crashes).

Status vocabulary: ``missing`` (gone since listing, 404), ``unreadable`` (permissions),
``too_large`` (over ``max_bytes``; stopped reading there), ``fetch_failed`` (network/server
errors after bounded retries, too many redirects), ``forbidden_url`` (a scheme or address the
source does not allow, or a path outside the source's root).

Kinds: :mod:`~omnifer.sources.local` (folders), :mod:`~omnifer.sources.s3` (S3 prefixes),
:mod:`~omnifer.sources.urls` (URL manifests); each implements :meth:`Source.scan`,
:meth:`Source.relative_path` and :meth:`Source.read_object`.

What is listed: every object, whatever its name (the decoder decides what it is by its bytes),
except system junk (:func:`omnifer.storage.ignore.is_ignored`: hidden entries, ``._*``
AppleDouble files, ``__MACOSX/``, ``@eaDir/``, ``Thumbs.db``, ...) and what the source's
``exclude`` globs name (:func:`omnifer.storage.ignore.is_excluded`); the same rule for folders,
buckets and URL manifests. Odd entries met while listing a folder (a folder that cannot be
read, a dangling symlink, an entry that vanished) are logged and counted in a
:class:`~omnifer.sources.listing.ListingReport`, never raised: one bad corner of a tree does
not end the night.

What the images are (every kind): ``faces="detect"`` (default) runs the face detector on each
image; ``faces="aligned"`` says the pool is already aligned face crops (MS-Celeb-1M, RAF-DB's
aligned set, CASIA-WebFace, AffectNet crops): no detection, each whole image is one face
(:mod:`omnifer.faces.aligned`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, field_validator

from omnifer.errors import SourceError
from omnifer.sources.listing import ListingReport
from omnifer.storage.ignore import check_globs, is_excluded, is_ignored


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


@dataclass(frozen=True)
class SourceObject:
    """One listed object. ``version`` is the S3 ETag or the file's mtime_ns (None for URLs)."""

    uri: str
    size: int | None = None
    version: str | None = None


class ObjectLike(Protocol):
    """Anything with ``uri`` and ``size`` (a :class:`SourceObject`, a plan's object)."""

    uri: str
    size: int | None


class Source(BaseModel):
    """Base of every source spec: frozen, no unknown fields, and the two operations.

    ``exclude``: globs of paths not to list (see :func:`omnifer.storage.ignore.is_excluded`),
    on top of the system junk every source skips.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude: tuple[str, ...] = ()

    faces: Literal["detect", "aligned"] = "detect"
    """``detect``: find faces with the ingest's detector; ``aligned``: each image is already
    one aligned face crop (no detection; see :mod:`omnifer.faces.aligned`)."""

    @field_validator("exclude", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        return check_globs([value] if isinstance(value, str) else value)

    def list_objects(self, report: ListingReport | None = None) -> Iterator[SourceObject]:
        """Stream this source's objects in a deterministic order; SourceError if unlistable.

        Junk and ``exclude``d paths are left out; what was left out or could not be listed is
        counted in ``report`` (``report.listed`` counts the objects yielded).
        """
        report = report if report is not None else ListingReport()
        return _counted(self.scan(report), report)

    def scan(self, report: ListingReport) -> Iterator[SourceObject]:
        """This source's objects without junk and excluded paths, in a deterministic order
        (what each kind implements; callers use :meth:`list_objects`)."""
        raise NotImplementedError

    def relative_path(self, uri: str) -> str:
        """The POSIX path that ignore and exclude rules see for ``uri`` (relative to the
        source: the path under a folder, the key after a prefix, ``host/path`` of a URL)."""
        raise NotImplementedError

    def read_object(self, obj: ObjectLike, max_bytes: int) -> bytes:
        """Bytes of ``obj``, at most ``max_bytes``; FetchError(status, message) otherwise."""
        raise NotImplementedError


class ListedSource(Source):
    """A source whose object names may be filtered by suffix (case-insensitive); None (the
    default) lists every file, so that none is left without a row (a source may opt into
    :data:`omnifer.imaging.transforms.IMAGE_EXTENSIONS`)."""

    extensions: tuple[str, ...] | None = None

    @field_validator("extensions", mode="before")
    @classmethod
    def _dotted_lower(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        return tuple("." + str(e).lower().lstrip(".") for e in items)


def list_objects(spec: Source, report: ListingReport | None = None) -> Iterator[SourceObject]:
    """Stream the objects of ``spec`` in a deterministic order; SourceError if unlistable.

    Junk (:func:`omnifer.storage.ignore.is_ignored`) and ``exclude``d paths are left out;
    what was left out or could not be listed is counted in ``report`` (see
    :class:`~omnifer.sources.listing.ListingReport`).
    """
    if not isinstance(spec, Source):
        raise SourceError(f"not a source spec: {type(spec).__name__}")
    return spec.list_objects(report)


def relative_path(spec: Source, uri: str) -> str:
    """The POSIX path that ignore and exclude rules see for ``uri``: the path under a local
    root, the key after an S3 prefix, ``host/path`` (percent-decoded) of a URL."""
    return spec.relative_path(uri)


def _counted(objects: Iterator[SourceObject], report: ListingReport) -> Iterator[SourceObject]:
    for obj in objects:
        report.listed += 1
        yield obj


def filtered(spec: Source, objects: Iterator[SourceObject],
             report: ListingReport) -> Iterator[SourceObject]:
    """``objects`` without junk, ``exclude``d paths and suffixes outside ``extensions`` (if the
    spec has them), each left-out object counted in ``report``: the filter of sources that
    list flat keys (S3 prefixes, URL manifests)."""
    exts = getattr(spec, "extensions", None)
    for obj in objects:
        rel = spec.relative_path(obj.uri)
        reason = is_ignored(rel)
        if reason is not None:
            report.ignore(obj.uri, reason)
            continue
        rule = is_excluded(rel, spec.exclude)
        if rule is None and exts is not None and not rel.lower().endswith(exts):
            rule = "extensions"
        if rule is not None:
            report.exclude(obj.uri, rule)
            continue
        yield obj


def read_object(spec: Source, obj: ObjectLike, max_bytes: int) -> bytes:
    """Bytes of ``obj`` (anything with ``uri`` and ``size``), at most ``max_bytes``.

    Raises FetchError(status, message); never reads more than ``max_bytes + 1`` bytes.
    """
    if not isinstance(spec, Source):
        raise SourceError(f"not a source spec: {type(spec).__name__}")
    return spec.read_object(obj, max_bytes)


def too_large(uri: str, size: int | None, max_bytes: int) -> FetchError:
    """The ``too_large`` FetchError for ``uri`` (``size``: bytes it has, None: unknown)."""
    shown = f"{size} bytes" if size is not None else "more bytes"
    return FetchError("too_large", f"{uri}: {shown} > max_bytes {max_bytes}")
