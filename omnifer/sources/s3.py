"""S3 prefixes as a source: keys in S3's own (deterministic) order, bounded reads.

One boto3 client per (process, endpoint, region) from :mod:`omnifer.storage.s3`, with
botocore's "standard" retry mode (retries 500/503/SlowDown with backoff, bounded attempts).
A store still failing after the budget raises a *transient* :class:`FetchError`: the shard
fails and a rerun reads the object again, instead of blaming the image in a row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field

from omnifer.errors import SourceError
from omnifer.sources.base import (
    FetchError,
    ListedSource,
    ObjectLike,
    SourceObject,
    filtered,
    too_large,
)
from omnifer.sources.listing import ListingReport
from omnifer.storage.s3 import s3_client, s3_error


class S3Source(ListedSource):
    """Objects under ``s3://bucket/prefix``. ``endpoint_url``/``region`` default to the
    environment's (:mod:`omnifer.storage.s3`)."""

    kind: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3)
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    retries: int = Field(4, ge=0, le=10)  # botocore standard mode: attempts = retries + 1
    timeout_s: float = Field(60.0, gt=0)  # per-request read timeout; a slower answer is retried

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def scan(self, report: ListingReport) -> Iterator[SourceObject]:
        return filtered(self, _list_s3(self), report)

    def relative_path(self, uri: str) -> str:
        return uri.removeprefix(f"s3://{self.bucket}/").removeprefix(self.prefix)

    def read_object(self, obj: ObjectLike, max_bytes: int) -> bytes:
        return _read_s3(self, obj, max_bytes)


_S3_PAGE_SIZE = 1000  # the S3 maximum; fewer round trips per listing
_S3_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                           "InternalError", "ServiceUnavailable"})


def _client_for(spec: S3Source) -> Any:
    return s3_client(spec.endpoint_url, spec.region, spec.retries, spec.timeout_s)


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
        raise SourceError(f"cannot list {spec}: {s3_error(exc)[1]}") from None


def _read_s3(spec: S3Source, obj: ObjectLike, max_bytes: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = f"s3://{spec.bucket}/"
    if not obj.uri.startswith(prefix + spec.prefix):
        raise FetchError("forbidden_url", f"{obj.uri} is not under {spec}")
    if obj.size is not None and obj.size > max_bytes:
        raise too_large(obj.uri, obj.size, max_bytes)
    try:
        resp = _client_for(spec).get_object(Bucket=spec.bucket, Key=obj.uri[len(prefix) :])
        length = resp.get("ContentLength")
        if length is not None and length > max_bytes:
            resp["Body"].close()
            raise too_large(obj.uri, length, max_bytes)
        with resp["Body"] as body:
            data = body.read(max_bytes + 1)
    except ClientError as exc:
        code, message = s3_error(exc)
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
        raise too_large(obj.uri, None, max_bytes)
    return data
