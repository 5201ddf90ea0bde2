"""S3 in one place: the endpoint, the region and the clients every S3 user shares.

The catalog's storage (pyarrow's ``S3FileSystem``) and the S3 sources (boto3) both resolve the
endpoint and region here, from :func:`omnifer.config.environment` (``OMNIFER_S3_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL``; ``OMNIFER_S3_REGION``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else
``us-east-1``), so they cannot disagree. Clients are created lazily, once per (process,
endpoint, region, retry budget), with "standard" retries (500/503/SlowDown with backoff,
bounded attempts). Credentials come from boto3's and pyarrow's usual chains and are never
logged.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import pyarrow.fs as pafs

from omnifer.config import environment

_lock = threading.Lock()


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint URL (MinIO, moto, ...), or None for AWS itself."""
    return environment().s3_endpoint_url


def s3_region() -> str:
    """The S3 region every client of this process uses (one default: ``us-east-1``)."""
    return environment().s3_region


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 file system for the current endpoint and region (one per pair)."""
    with _lock:
        return _s3_filesystem(s3_endpoint(), s3_region())


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region, "retry_strategy": pafs.AwsStandardS3RetryStrategy(5)}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "http")
    return pafs.S3FileSystem(**kwargs)


def s3_client(endpoint_url: str | None = None, region: str | None = None, retries: int = 4,
              timeout_s: float = 60.0) -> Any:
    """The process's boto3 S3 client for this endpoint/region (defaults: the environment's).

    Clients are thread-safe; sessions are not, so creation is locked. Keyed by pid so a
    forked worker makes its own.
    """
    endpoint_url = endpoint_url or s3_endpoint()
    region = region or s3_region()
    with _lock:
        return _make_s3_client(os.getpid(), endpoint_url, region, retries, timeout_s)


@functools.lru_cache(maxsize=16)
def _make_s3_client(pid: int, endpoint_url: str | None, region: str, retries: int,
                    timeout_s: float) -> Any:
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


def s3_error(exc: Exception) -> tuple[str, str]:
    """(code, one-line message) of a botocore error, without credentials or request ids."""
    response = getattr(exc, "response", None) or {}
    err = response.get("Error", {})
    code = str(err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
               or type(exc).__name__)
    return code, f"{code}: {err.get('Message') or exc}"
