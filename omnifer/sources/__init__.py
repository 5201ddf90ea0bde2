"""Where unlabeled images come from: local folders, S3 prefixes, URL manifests.

``from omnifer import sources`` gives every public name; see :mod:`omnifer.sources.base` for
the two operations and the status vocabulary.
"""

from omnifer.sources.base import (
    FetchError,
    ListedSource,
    ObjectLike,
    Source,
    SourceObject,
    list_objects,
    read_object,
    relative_path,
)
from omnifer.sources.listing import ListingReport
from omnifer.sources.local import LocalSource
from omnifer.sources.parse import SourceSpec, parse_source, source_from_dict
from omnifer.sources.s3 import S3Source
from omnifer.sources.urls import (
    UrlManifestSource,
    is_public_address,
    strip_credentials,
    url_identity,
)

__all__ = [
    "FetchError", "ListedSource", "ListingReport", "LocalSource", "ObjectLike", "S3Source",
    "Source", "SourceObject", "SourceSpec", "UrlManifestSource", "is_public_address",
    "list_objects", "parse_source", "read_object", "relative_path", "source_from_dict",
    "strip_credentials", "url_identity",
]
