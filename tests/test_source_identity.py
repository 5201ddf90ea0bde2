"""Redacting credentials never changes what identifies or fetches an object (issue 15, kind 3).

Four manifest URLs that differ only in ``sig=1..4`` used to collapse into one ``source_uri``:
one image fetched, three never, not even on later nights. Here they are four objects, four
fetches and four rows (each with the bytes of its own URL), a URL listed twice is one, a
later night fetches nothing again, and a retry fetches the right signed URL. Everything runs
against a real HTTP server on 127.0.0.1 (``helpers_http``), moto's S3 server and a folder.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import boto3
import pytest
from helpers_http import http_server, signed_png

from omnifer.catalog import DataCatalog
from omnifer.pipeline import ingest, retry
from omnifer.sources import (
    FetchError,
    LocalSource,
    S3Source,
    UrlManifestSource,
    list_objects,
    read_object,
    url_identity,
)

DATE, LATER = "2026-12-01", "2026-12-02"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ingest(catalog: DataCatalog, spec: UrlManifestSource, date: str) -> ingest.IngestPlan:
    params = ingest.IngestParams(model_version="v1", model_uri="unused-no-faces-here")
    plan = ingest.plan_ingest(catalog, [spec], date, params, shard_size=4)
    for shard in plan.shards:
        ingest.process_shard(catalog, plan, shard, f"run-{date}")
    return plan


def test_signed_urls_stay_distinct_objects_fetched_once_each(
    data_catalog: DataCatalog, omnifer_home: Path, tmp_path: Path
) -> None:
    with http_server(signed_png("/img", "0")) as web:
        port = web.server_address[1]
        base = web.base_url
        urls = [f"{base}/signed/a.png?sig={s}" for s in "1234"]
        manifest = tmp_path / "m.csv"
        manifest.write_text("url\n" + "\n".join([
            *urls,
            f"{base}/signed/a.png?sig=2",  # the same URL again: one object, one row
            f"{base}/signed/a.png?sig=1#top",  # a fragment is never sent: the same object
            f"{base}/img.png", f"{base}/img.png",
            f"http://user:pw@127.0.0.1:{port}/signed/b.png?sig=1",  # userinfo: redacted
        ]) + "\n")
        spec = UrlManifestSource(manifest=str(manifest), allow_private=True, retries=0)

        objects = list(list_objects(spec))
        assert len(objects) == 6
        assert len({o.uri for o in objects}) == 6
        assert [o.uri for o in objects[:4]] == [url_identity(u) for u in urls]
        assert not any("sig=" in o.uri or "pw" in o.uri.split("#")[0] for o in objects)
        assert web.requests == []  # listing fetches nothing

        web.down.add("3")  # sig=3 is gone tonight
        _ingest(data_catalog, spec, DATE)
        con = data_catalog.connect()
        rows = dict(con.execute("SELECT source_uri, sha256 FROM images").fetchall())
        status = dict(con.execute("SELECT source_uri, status FROM images").fetchall())
        assert len(rows) == 6 == con.execute("SELECT count(*) FROM images").fetchone()[0]
        for s, url in zip("1234", urls, strict=True):
            uri = url_identity(url)
            if s == "3":
                assert status[uri] == "missing" and rows[uri] is None
            else:  # each row holds the bytes of its own signed URL
                assert rows[uri] == _sha(signed_png("/signed/a.png", s)), s
                assert status[uri] == "no_face"
        b_uri = url_identity(f"http://user:pw@127.0.0.1:{port}/signed/b.png?sig=1")
        assert rows[b_uri] == _sha(signed_png("/signed/b.png", "1"))
        fetched = Counter(path for path, _ in web.requests)
        assert fetched == {f"/signed/a.png?sig={s}": 1 for s in "1234"} | {
            "/img.png": 1, "/signed/b.png?sig=1": 1}
        auth = [h.get("Authorization") for p, h in web.requests if p.startswith("/signed/b")]
        assert auth and auth[0].startswith("Basic ")  # userinfo went in a header, not the URI

        # A later night lists the same manifest: nothing is new, nothing is fetched again.
        later = _ingest(data_catalog, spec, LATER)
        assert later.n_objects == 0 and len(web.requests) == 6

        # The retry fetches sig=3 (not another signature) once it is back.
        web.down.clear()
        (result,) = retry.retry_failed(data_catalog, "fetch", "retry-1", DATE)
        assert (result.retried, result.recovered) == (1, 1)
        uri3 = url_identity(urls[2])
        sha3 = data_catalog.connect().execute(
            "SELECT sha256 FROM images WHERE source_uri = ?", [uri3]).fetchone()[0]
        assert sha3 == _sha(signed_png("/signed/a.png", "3"))
        assert Counter(p for p, _ in web.requests)["/signed/a.png?sig=3"] == 2


def test_a_keyed_url_gone_from_the_manifest_is_missing_not_fetched_unsigned(
    tmp_path: Path
) -> None:
    with http_server(b"") as web:
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"url\n{web.base_url}/signed/a.png?sig=1\n")
        spec = UrlManifestSource(manifest=str(manifest), allow_private=True, retries=0)
        (obj,) = list(list_objects(spec))
        assert read_object(spec, obj, 1 << 20) == signed_png("/signed/a.png", "1")
        other = UrlManifestSource(manifest=str(tmp_path / "other.csv"), allow_private=True)
        (tmp_path / "other.csv").write_text("url\n")
        with pytest.raises(FetchError) as info:
            read_object(other, obj, 1 << 20)
        assert info.value.status == "missing"
        assert "sig=" not in str(info.value)
        assert len(web.requests) == 1  # the unsigned URL was never asked for


def test_folder_and_bucket_names_that_look_like_queries_stay_distinct(
    s3_server: str, tmp_path: Path
) -> None:
    names = ["a.jpg?sig=1", "a.jpg?sig=2", "a.jpg#1", "a.jpg"]
    folder = tmp_path / "pics"
    folder.mkdir()
    for n in names:
        (folder / n).write_bytes(n.encode())
    spec = LocalSource(root=str(folder))
    objects = list(list_objects(spec))
    assert len({o.uri for o in objects}) == 4
    assert sorted(read_object(spec, o, 100) for o in objects) == sorted(n.encode()
                                                                         for n in names)

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="identity")
    for n in names:
        client.put_object(Bucket="identity", Key=f"k/{n}", Body=n.encode())
    s3 = S3Source(bucket="identity", prefix="k/", endpoint_url=s3_server)
    objects = list(list_objects(s3))
    assert [o.uri for o in objects] == sorted(f"s3://identity/k/{n}" for n in names)
    assert [read_object(s3, o, 100) for o in objects] == [
        o.uri.removeprefix("s3://identity/k/").encode() for o in objects]
