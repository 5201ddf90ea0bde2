"""Source specs from text and from plans: ``parse_source`` and ``source_from_dict``."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pydantic import Field, TypeAdapter, ValidationError

from omnifer.errors import SourceError
from omnifer.sources.local import LocalSource
from omnifer.sources.s3 import S3Source
from omnifer.sources.urls import UrlManifestSource, strip_credentials

SourceSpec = Annotated[LocalSource | S3Source | UrlManifestSource, Field(discriminator="kind")]
_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceSpec)


def source_from_dict(raw: dict[str, Any]) -> LocalSource | S3Source | UrlManifestSource:
    """Rebuild a spec from ``model_dump(mode="json")`` output (plans store sources that way)."""
    try:
        return _SPEC_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise SourceError(f"invalid source {raw!r}: {exc.errors()[0]['msg']}") from None


def parse_source(text: str | dict[str, Any]) -> LocalSource | S3Source | UrlManifestSource:
    """``/path``, ``relative/path``, ``file:///path``, ``s3://bucket/prefix`` (read as a
    folder: ``prefix/``), ``urls:manifest.csv`` (or ``urls:s3://b/m.parquet``), or a JSON
    object (text or dict) for the options these short forms leave at their defaults: either
    with ``kind`` (the spec's own fields), or with ``path`` (any short form above) plus
    options, e.g. ``{"path": "s3://crops/ms1m/", "faces": "aligned"}``."""
    if isinstance(text, dict):
        return _from_object(dict(text))
    text = text.strip()
    raw: dict[str, Any]
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"source is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise SourceError("a JSON source must be an object")
        return _from_object(raw)
    if text.startswith("urls:"):
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


def _from_object(raw: dict[str, Any]) -> LocalSource | S3Source | UrlManifestSource:
    """A JSON object: ``kind`` + fields, or ``path`` (a short form) + options over it."""
    if "path" not in raw:
        return source_from_dict(raw)
    path = raw.pop("path")
    if "kind" in raw or not isinstance(path, str) or path.strip().startswith("{"):
        raise SourceError("a source object has either 'kind' or 'path' (a folder, "
                          "s3://bucket/prefix or urls:manifest), not both")
    spec = parse_source(path)
    base = spec.model_dump(mode="json", exclude_defaults=True)
    return source_from_dict({**base, "kind": spec.kind, **raw})
