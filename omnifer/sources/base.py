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
:mod:`~omnifer.sources.urls` (URL manifests); each implements :meth:`Source.list_objects` and
:meth:`Source.read_object`.

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
from omnifer.imaging.transforms import IMAGE_EXTENSIONS


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
    """Base of every source spec: frozen, no unknown fields, and the two operations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    faces: Literal["detect", "aligned"] = "detect"
    """``detect``: find faces with the ingest's detector; ``aligned``: each image is already
    one aligned face crop (no detection; see :mod:`omnifer.faces.aligned`)."""

    def list_objects(self) -> Iterator[SourceObject]:
        """Stream this source's objects in a deterministic order; SourceError if unlistable."""
        raise NotImplementedError

    def read_object(self, obj: ObjectLike, max_bytes: int) -> bytes:
        """Bytes of ``obj``, at most ``max_bytes``; FetchError(status, message) otherwise."""
        raise NotImplementedError


class ListedSource(Source):
    """A source whose object names are filtered by suffix (case-insensitive)."""

    extensions: tuple[str, ...] | None = IMAGE_EXTENSIONS

    @field_validator("extensions", mode="before")
    @classmethod
    def _dotted_lower(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        return tuple("." + str(e).lower().lstrip(".") for e in items)


def list_objects(spec: Source) -> Iterator[SourceObject]:
    """Stream the objects of ``spec`` in a deterministic order; SourceError if unlistable."""
    if not isinstance(spec, Source):
        raise SourceError(f"not a source spec: {type(spec).__name__}")
    return spec.list_objects()


def read_object(spec: Source, obj: ObjectLike, max_bytes: int) -> bytes:
    """Bytes of ``obj`` (anything with ``uri`` and ``size``), at most ``max_bytes``.

    Raises FetchError(status, message); never reads more than ``max_bytes + 1`` bytes.
    """
    if not isinstance(spec, Source):
        raise SourceError(f"not a source spec: {type(spec).__name__}")
    return spec.read_object(obj, max_bytes)


def too_large(uri: str, size: int | None, max_bytes: int) -> FetchError:
    shown = f"{size} bytes" if size is not None else "more bytes"
    return FetchError("too_large", f"{uri}: {shown} > max_bytes {max_bytes}")
