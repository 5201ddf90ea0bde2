"""Sources against real back ends: a temp folder, moto's S3 server and an HTTP server, all on
127.0.0.1. The S3 server is conftest's session fixture ``s3_server``."""

from __future__ import annotations

import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_http import busy_s3_server, http_server
from PIL import Image

from omnifer.errors import SourceError
from omnifer.sources import (
    FetchError,
    LocalSource,
    S3Source,
    SourceObject,
    UrlManifestSource,
    is_public_address,
    list_objects,
    parse_source,
    read_object,
    source_from_dict,
    strip_credentials,
)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


# -- parsing ---------------------------------------------------------------------------------
def test_parse_source_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_source("pics") == LocalSource(root=str(tmp_path / "pics"))
    assert parse_source(f"file://{tmp_path}/a%20b").root == str(tmp_path / "a b")
    assert parse_source("s3://bucket/some/prefix") == S3Source(bucket="bucket",
                                                               prefix="some/prefix/")
    assert parse_source("s3://bucket").prefix == ""
    for bad in ["", "s3://", "urls:", '{"kind": "local"}', "{nope"]:
        with pytest.raises(SourceError):
            parse_source(bad)
    urls = parse_source("urls:m.csv")
    assert isinstance(urls, UrlManifestSource) and urls.manifest == str(tmp_path / "m.csv")
    assert parse_source("urls:s3://b/m.parquet").manifest == "s3://b/m.parquet"
    spec = parse_source('{"kind": "urls", "manifest": "m.csv", "column": "link"}')
    assert spec.column == "link"
    with pytest.raises(SourceError, match="manifest"):
        parse_source("https://user:secret@example.com/a.jpg")
    with pytest.raises(SourceError) as info:
        parse_source("https://user:secret@example.com/a.jpg")
    assert "secret" not in str(info.value)


def test_specs_round_trip_through_json(tmp_path: Path) -> None:
    for spec in (LocalSource(root=str(tmp_path), extensions=["JPG"]),
                 S3Source(bucket="bkt", prefix="p/", endpoint_url="http://127.0.0.1:9"),
                 UrlManifestSource(manifest=str(tmp_path / "m.csv"), allow_private=True)):
        assert source_from_dict(spec.model_dump(mode="json")) == spec
    assert LocalSource(root=".", extensions=["JPG", ".Png"]).extensions == (".jpg", ".png")
    with pytest.raises(SourceError):
        source_from_dict({"kind": "ftp", "root": "/"})


# -- local -----------------------------------------------------------------------------------
@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for rel in ["b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "sub/z.jpeg", "sub/deeper/c.jpg",
                "sub2/d.gif", ".cache/e.jpg", "with space/f.jpg"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
    (tmp_path / "outside.jpg").write_bytes(b"secret")
    (root / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "inside-link.jpg").symlink_to(root / "b.jpg")
    return root


def test_local_listing_is_nested_filtered_and_deterministic(tree: Path) -> None:
    spec = LocalSource(root=str(tree))
    objects = list(list_objects(spec))
    rels = [o.uri[len(tree.as_uri()) + 1 :] for o in objects]
    # Every file whatever its name (its bytes decide what it is), hidden entries never.
    assert rels == ["a.PNG", "b.jpg", "inside-link.jpg", "notes.txt", "sub/z.jpeg",
                    "sub/deeper/c.jpg", "sub2/d.gif", "with%20space/f.jpg"]
    assert objects == list(list_objects(spec))  # same order every time
    first = objects[0]
    assert first.size == len(b"a.PNG")
    assert first.version == str((tree / "a.PNG").stat().st_mtime_ns)

    only_jpg = LocalSource(root=str(tree), extensions=["jpg"], pattern="sub/**/*")
    assert [o.uri.rsplit("/", 1)[1] for o in list_objects(only_jpg)] == ["c.jpg"]
    top = LocalSource(root=str(tree), pattern="*", extensions=None)
    assert {o.uri.rsplit("/", 1)[1] for o in list_objects(top)} == {
        "a.PNG", "b.jpg", "inside-link.jpg", "notes.txt"}
    with pytest.raises(SourceError, match="does not exist"):
        list(list_objects(LocalSource(root=str(tree / "nope"))))


def test_local_read_back_and_failures(tree: Path) -> None:
    spec = LocalSource(root=str(tree))
    objects = {o.uri.rsplit("/", 1)[1]: o for o in list_objects(spec)}
    assert read_object(spec, objects["f.jpg"], 1000) == b"with space/f.jpg"

    with pytest.raises(FetchError) as info:
        read_object(spec, objects["f.jpg"], 5)
    assert info.value.status == "too_large"

    (tree / "b.jpg").unlink()
    with pytest.raises(FetchError) as info:
        read_object(spec, objects["b.jpg"], 1000)
    assert info.value.status == "missing"

    for uri in [(tree.parent / "outside.jpg").as_uri(), (tree / "escape.jpg").as_uri(),
                tree.as_uri() + "/../outside.jpg"]:
        with pytest.raises(FetchError) as info:
            read_object(spec, SourceObject(uri), 1000)
        assert info.value.status == "forbidden_url", uri

    os.chmod(tree / "a.PNG", 0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(FetchError) as info:
            read_object(spec, objects["a.PNG"], 1000)
        assert info.value.status == "unreadable"


# -- S3 --------------------------------------------------------------------------------------
N_KEYS = 45  # with 10 keys a page, the listing must follow continuation tokens 4 times


@pytest.fixture(scope="module")
def s3_bucket(s3_server: str) -> str:
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="pics")

    def put(i: int) -> None:
        client.put_object(Bucket="pics", Key=f"night/{i:05d}.jpg", Body=f"img{i}".encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(N_KEYS)))
    client.put_object(Bucket="pics", Key="night/folder/", Body=b"")
    client.put_object(Bucket="pics", Key="night/readme.txt", Body=b"text")
    client.put_object(Bucket="pics", Key="other/x.jpg", Body=b"x")
    return s3_server


def test_s3_listing_paginates_and_reads_back(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of 10 instead of S3's 1000 exercise the paginator without uploading 1000+ keys
    # (moto takes ~6 s for that on 2 cores).
    monkeypatch.setattr("omnifer.sources.s3._S3_PAGE_SIZE", 10)
    spec = S3Source(bucket="pics", prefix="night/", endpoint_url=s3_bucket)
    started = time.perf_counter()
    objects = list(list_objects(spec))
    elapsed = time.perf_counter() - started
    assert len(objects) == N_KEYS + 1  # every object, whatever its name; not the folder marker
    assert [o.uri for o in objects] == [f"s3://pics/night/{i:05d}.jpg" for i in range(N_KEYS)
                                        ] + ["s3://pics/night/readme.txt"]
    assert all(o.version and '"' not in o.version for o in objects)
    assert elapsed < 10
    last = objects[-2]
    assert read_object(spec, last, 100) == f"img{N_KEYS - 1}".encode()
    assert last.size == len(f"img{N_KEYS - 1}")

    with pytest.raises(FetchError) as info:
        read_object(spec, last, 3)
    assert info.value.status == "too_large"
    with pytest.raises(FetchError) as info:  # size unknown: the body is cut at the cap
        read_object(spec, SourceObject(last.uri), 3)
    assert info.value.status == "too_large"
    with pytest.raises(FetchError) as info:
        read_object(spec, SourceObject("s3://pics/night/gone.jpg"), 100)
    assert info.value.status == "missing"
    with pytest.raises(FetchError) as info:
        read_object(spec, SourceObject("s3://pics/other/x.jpg"), 100)
    assert info.value.status == "forbidden_url"


def test_s3_endpoint_from_environment_and_missing_bucket(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_bucket)
    spec = parse_source("s3://pics/other")
    assert [o.uri for o in list_objects(spec)] == ["s3://pics/other/x.jpg"]
    with pytest.raises(SourceError, match="NoSuchBucket"):
        list(list_objects(parse_source("s3://no-such-bucket/x")))


def test_s3_server_errors_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with busy_s3_server() as server:
        spec = S3Source(bucket="pics", endpoint_url=server.endpoint, region="us-east-1",
                        retries=1)
        with pytest.raises(FetchError) as info:
            read_object(spec, SourceObject("s3://pics/a.jpg"), 100)
    assert info.value.status == "fetch_failed"
    assert "SlowDown" in str(info.value) and "max retries" in str(info.value)
    assert server.hits["/pics/a.jpg"] == 2  # one try + one retry, then a clear failure


# -- URLs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def web():
    with http_server(PNG) as server:
        yield server


def _urls(**kw) -> UrlManifestSource:
    return UrlManifestSource(manifest="unused.csv", allow_private=True, backoff_s=0.01, **kw)


def _fetch(spec: UrlManifestSource, url: str, cap: int = 100_000) -> bytes:
    return read_object(spec, SourceObject(url), cap)


def _status(spec: UrlManifestSource, url: str, cap: int = 100_000) -> str:
    with pytest.raises(FetchError) as info:
        _fetch(spec, url, cap)
    return info.value.status


def test_loopback_refused_by_default_allowed_when_asked(web) -> None:
    url = f"{web.base_url}/img.png"
    before = web.hits["/img.png"]
    strict = UrlManifestSource(manifest="unused.csv")
    assert _status(strict, url) == "forbidden_url"
    assert _status(strict, "http://localhost:1/x.jpg") == "forbidden_url"
    assert web.hits["/img.png"] == before  # refused before connecting
    assert _fetch(_urls(), url) == PNG
    assert _status(_urls(), f"{web.base_url}/nope.jpg") == "missing"
    assert _status(_urls(), "ftp://127.0.0.1/x.jpg") == "forbidden_url"
    assert _status(_urls(), "file:///etc/passwd") == "forbidden_url"
    assert _status(_urls(), "http://127.0.0.1:notaport/x.jpg") == "forbidden_url"
    assert _status(_urls(), "http://[::1/x.jpg") == "forbidden_url"


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("172.16.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("::ffff:127.0.0.1", False), ("fe80::1%eth0", False), ("fc00::1", False),
    ("224.0.0.1", False), ("8.8.8.8", True), ("2001:4860:4860::8888", True),
])
def test_address_policy(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_redirects_are_bounded_and_checked(web) -> None:
    assert _fetch(_urls(max_redirects=3), f"{web.base_url}/redirect/2") == PNG  # 3 hops
    spec = _urls(max_redirects=3)
    with pytest.raises(FetchError, match="more than 3 redirects") as info:
        _fetch(spec, f"{web.base_url}/redirect/3")
    assert info.value.status == "fetch_failed"
    assert _status(_urls(), f"{web.base_url}/to-file") == "forbidden_url"


def test_byte_cap_with_and_without_content_length(web) -> None:
    assert _status(_urls(), f"{web.base_url}/big", cap=1000) == "too_large"
    assert _status(_urls(), f"{web.base_url}/big-stream", cap=1000) == "too_large"
    assert _status(_urls(max_bytes=1000), f"{web.base_url}/big") == "too_large"
    assert len(_fetch(_urls(), f"{web.base_url}/big-stream", cap=2 << 20)) == 1 << 20


def test_server_errors_are_retried_with_backoff(web) -> None:
    assert _fetch(_urls(retries=2), f"{web.base_url}/flaky/a") == PNG
    assert web.hits["/flaky/a"] == 2
    before = web.hits["/always503"]
    with pytest.raises(FetchError, match="HTTP 503 .after 3 attempts") as info:
        _fetch(_urls(retries=2), f"{web.base_url}/always503")
    assert info.value.status == "fetch_failed"
    assert web.hits["/always503"] - before == 3


def test_timeout_is_a_failure_not_a_hang(web) -> None:
    started = time.monotonic()
    assert _status(_urls(timeout_s=0.3, retries=0), f"{web.base_url}/slow") == "fetch_failed"
    assert time.monotonic() - started < 1.5


def test_strip_credentials() -> None:
    cases = {
        "https://user:pw@host.com/a.jpg": "https://host.com/a.jpg",
        "https://host.com/a.jpg?token=t&w=1": "https://host.com/a.jpg?w=1",
        "https://h.com/a?X-Amz-Signature=s&X-Amz-Credential=c&X-Amz-Security-Token=t&v=2":
            "https://h.com/a?v=2",
        "https://h.com/a?api_key=k&monkey=1&sig=x#frag": "https://h.com/a?monkey=1",
        "https://h.com/a?Key-Pair-Id=k&Policy=p&Signature=s": "https://h.com/a",
        "s3://bucket/key.jpg": "s3://bucket/key.jpg",
        "https://h.com/a%20b.jpg?q=a%20b": "https://h.com/a%20b.jpg?q=a%20b",
        "http://u:p@[::1/x?token=t": "http://[::1/x",  # malformed: still no secrets
    }
    for raw, clean in cases.items():
        assert strip_credentials(raw) == clean


def test_manifest_listing_strips_credentials_but_fetch_uses_them(
    web, tmp_path: Path
) -> None:
    port = web.base_url.rsplit(":", 1)[1]
    secret_url = f"http://user:pass@127.0.0.1:{port}/auth?token=abc&size=2"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,url\n1,{web.base_url}/img.png\n2,{secret_url}\n3,\n"
                        f"4,ftp://127.0.0.1/x.jpg\n")
    spec = UrlManifestSource(manifest=str(manifest), allow_private=True)
    objects = list(list_objects(spec))
    # The credentialed URL keeps its identity: redacted for display, keyed by the full URL.
    key = hashlib.sha256(secret_url.encode()).hexdigest()[:16]
    assert [o.uri for o in objects] == [
        f"{web.base_url}/img.png", f"http://127.0.0.1:{port}/auth?size=2#omnifer-key={key}",
        "ftp://127.0.0.1/x.jpg"]
    assert not any("pass" in o.uri.split("#")[0] or "abc" in o.uri.split("#")[0]
                   for o in objects)
    assert read_object(spec, objects[1], 10_000) == PNG  # credentials looked up again
    assert _status(spec, objects[2].uri) == "forbidden_url"

    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"link": [f"{web.base_url}/img.png"]}), parquet)
    spec = UrlManifestSource(manifest=str(parquet), column="link", allow_private=True)
    assert [read_object(spec, o, 10_000) for o in list_objects(spec)] == [PNG]
    with pytest.raises(SourceError, match="column 'url'"):
        list(list_objects(UrlManifestSource(manifest=str(parquet))))


def test_manifest_on_s3(s3_bucket: str, web, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_bucket)
    client = boto3.client("s3", endpoint_url=s3_bucket, region_name="us-east-1")
    client.put_object(Bucket="pics", Key="manifests/m.csv",
                      Body=f"url\n{web.base_url}/img.png\n".encode())
    spec = parse_source("urls:s3://pics/manifests/m.csv")
    assert [o.uri for o in list_objects(spec)] == [f"{web.base_url}/img.png"]
