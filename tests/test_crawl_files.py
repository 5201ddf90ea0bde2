"""Real crawls (issue 15, kinds 1, 2, 4, 5, 6), through the crawler, the readers and the CLI.

Every listed regular file ends as exactly one ``images`` row whatever its name; system junk is
never a photo, a class or a face (one ignore rule, plus ``exclude`` globs on every source
kind); odd entries met while listing are logged, counted skips, never a crash; one decoder
gives the same upright pixels everywhere. Inputs are drawn by the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from omnifer.errors import SourceError
from omnifer.sources import (
    ListingReport,
    LocalSource,
    S3Source,
    UrlManifestSource,
    list_objects,
    parse_source,
)
from omnifer.storage import ignore
from omnifer.testing.badinput import GOOD_STATUSES, drawn_faces, encode_pil, png_with_text, to_pil

DATE = "2026-11-29"


def _face(seed: int, size: int = 256) -> Image.Image:
    """One upright drawn face (RGB)."""
    return to_pil(drawn_faces(1, 1, size, seed))


def _jpeg(img: Image.Image) -> bytes:
    return encode_pil(img, "JPEG", quality=92)


def _exif6(img: Image.Image) -> bytes:
    """The same face stored the way phones do: pixels sideways, EXIF orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode_pil(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92,
                 exif=exif.tobytes())


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _rels(root: Path, uris: list[str]) -> list[str]:
    return [u[len(root.as_uri()) + 1 :] for u in uris]


THUMB = encode_pil(Image.new("RGB", (8, 8), (90, 90, 90)), "JPEG")  # what NAS / macOS junk holds
JUNK = {  # relative path -> bytes: none of these may become a row, a class or a face
    "._photo.jfif": THUMB,
    "__MACOSX/._IMG_0001.HEIC": THUMB,
    "@eaDir/photo.jfif/SYNOFILE_THUMB_M.jpg": THUMB,
    ".ipynb_checkpoints/a-checkpoint.jpg": THUMB,
    "Thumbs.db": b"\xd0\xcf\x11\xe0" * 64,
    ".DS_Store": b"\x00\x00\x00\x01Bud1" * 32,
    "desktop.ini": b"[.ShellClassInfo]\r\n",
}


# -- the rule --------------------------------------------------------------------------------
def test_one_ignore_rule_and_exclude_globs() -> None:
    junk = ["._IMG_1.png", "a/._b.jpg", "__MACOSX/a.jpg", "x/@eaDir/a.jpg/SYNOFILE_THUMB_XL.jpg",
            "Thumbs.db", "sub/THUMBS.DB", "desktop.ini", ".DS_Store",
            "nb/.ipynb_checkpoints/a-checkpoint.jpg", ".hidden/a.jpg", "#recycle/a.jpg",
            "$RECYCLE.BIN/a.jpg", "@eaDir/"]
    kept = ["a.jpg", "IMG_0001.HEIC", "eaDir/a.jpg", "macosx/a.jpg", "my.photos/a.jpg",
            "thumbs.db.jpg", "a/b_c.png", "@eaDir"]  # a *file* called @eaDir is a file
    assert [p for p in junk if ignore.is_ignored(p) is None] == []
    assert [p for p in kept if ignore.is_ignored(p) is not None] == []
    assert "AppleDouble" in ignore.is_ignored("a/._b.jpg")
    assert "Synology" in ignore.is_ignored("x/@eaDir/a.jpg/t.jpg")

    pats = ("*.mov", "drafts/", "2019/raw/**", "/top.jpg")
    expect = {"clip.MOV": "*.mov", "a/b/clip.mov": "*.mov", "x/drafts/a.jpg": "drafts/",
              "drafts": None,  # folders only
              "2019/raw/a/b.jpg": "2019/raw/**", "x/2019/raw/b.jpg": None,  # anchored
              "top.jpg": "/top.jpg", "a/top.jpg": None, "a.jpg": None}
    assert {p: ignore.is_excluded(p, pats) for p in expect} == expect
    with pytest.raises(SourceError, match=r"\.\."):
        parse_source('{"kind": "local", "root": "/tmp", "exclude": ["../x"]}')


# -- kind 6: listing never crashes -----------------------------------------------------------
class _Listing:
    """A real ``os.scandir`` whose entries are read, then ``hook`` runs (a file or folder
    vanishes for real), then they are handed out: a deterministic listing race."""

    def __init__(self, entries: list[os.DirEntry]) -> None:
        self.entries = entries

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self):  # noqa: ANN204
        return iter(self.entries)


def test_odd_entries_are_logged_skips_and_the_rest_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    _write(root, {"good.jpg": b"1", "sub/keep.jpg": b"2", "sub/vanish.jpg": b"3",
                  "gone/x.jpg": b"4", "real/y.jpg": b"5"})
    (root / os.fsdecode(b"caf\xe9-\xff.jpg")).write_bytes(b"6")  # not UTF-8
    os.symlink("nowhere.jpg", root / "dangling.jpg")
    os.symlink("loop.jpg", root / "loop.jpg")  # ELOOP on stat
    os.symlink("real", root / "linked-folder")
    os.mkfifo(root / "pipe.jpg")  # listed: its row says "not a regular file"

    real_scandir = os.scandir

    def racing(path):  # noqa: ANN001, ANN202
        if isinstance(path, int):  # shutil.rmtree's own walk, by file descriptor
            return real_scandir(path)
        entries = list(real_scandir(path))
        folder = Path(os.fsdecode(path))
        if folder == root:
            shutil.rmtree(root / "gone")  # a folder removed after its parent was listed
        elif folder == root / "sub":
            (root / "sub" / "vanish.jpg").unlink()  # listed, gone before its stat
        return _Listing(entries)

    monkeypatch.setattr(os, "scandir", racing)
    report = ListingReport()
    with caplog.at_level("WARNING", logger="omnifer.sources"):
        objects = list(list_objects(LocalSource(root=str(root)), report))
    monkeypatch.undo()
    assert _rels(root, [o.uri for o in objects]) == [
        "caf%E9-%FF.jpg", "good.jpg", "pipe.jpg", "real/y.jpg", "sub/keep.jpg"]
    assert report.listed == 5
    assert dict(report.skipped) == {"dangling_symlink": 1, "unreadable_entry": 1,
                                    "symlinked_folder": 1, "vanished": 2}
    logged = caplog.text
    for reason in ("dangling_symlink", "unreadable_entry", "symlinked_folder", "vanished"):
        assert reason in logged
    json.dumps(report.as_dict())  # run records can hold it (the odd name included)


def test_a_folder_that_cannot_be_read_is_a_logged_skip_not_a_crash(tmp_path: Path) -> None:
    """A real EACCES. Root reads every folder, so under root the listing runs in a child
    without the capabilities that bypass permissions (util-linux ``setpriv``)."""
    base = tmp_path / "tree"
    _write(base, {"ok.jpg": b"1", "locked/in.jpg": b"2", "open/z.jpg": b"3"})
    os.chmod(base / "locked", 0)
    code = (
        "import json, logging, sys\n"
        "from omnifer.errors import SourceError\n"
        "from omnifer.sources import ListingReport, LocalSource, list_objects\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "r = ListingReport()\n"
        "uris = [o.uri for o in list_objects(LocalSource(root=sys.argv[1]), r)]\n"
        "try:\n"
        "    list(list_objects(LocalSource(root=sys.argv[1] + '/locked')))\n"
        "    root_error = None\n"
        "except SourceError as exc:\n"
        "    root_error = str(exc)\n"
        "print(json.dumps({'uris': uris, 'root_error': root_error, **r.as_dict()}))\n"
    )
    cmd = [sys.executable, "-c", code, str(base)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux setpriv: no real EACCES possible")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    finally:
        os.chmod(base / "locked", 0o755)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uris"] == [(base / "ok.jpg").as_uri(), (base / "open" / "z.jpg").as_uri()]
    assert out["skipped_by_reason"] == {"unlistable_folder": 1}
    assert "locked" in proc.stderr and "Permission denied" in proc.stderr  # logged
    # The source itself unreadable: one clear line, not a traceback.
    assert "cannot list source folder" in out["root_error"]
    assert "Permission denied" in out["root_error"]


# -- kind 2: excludes on every source kind, junk never listed ---------------------------------
def test_exclude_globs_and_the_junk_rule_on_every_source_kind(
    tmp_path: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"a.jpg": b"a", "clip.MOV": b"m", "drafts/b.jpg": b"b", "keep/c.jpg": b"c", **JUNK}
    exclude = ["*.mov", "drafts/"]

    root = tmp_path / "local"
    _write(root, files)
    report = ListingReport()
    local = list(list_objects(LocalSource(root=str(root), exclude=exclude), report))
    assert _rels(root, [o.uri for o in local]) == ["a.jpg", "keep/c.jpg"]
    # junk folders count once each; the files in them are never even listed
    assert (sum(report.ignored.values()), report.excluded) == (len(JUNK), 2)

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="crawl")
    for rel, data in files.items():
        client.put_object(Bucket="crawl", Key=f"night/{rel}", Body=data)
    report = ListingReport()
    s3 = list(list_objects(S3Source(bucket="crawl", prefix="night/", endpoint_url=s3_server,
                                    exclude=exclude), report))
    assert [o.uri for o in s3] == ["s3://crawl/night/a.jpg", "s3://crawl/night/keep/c.jpg"]
    assert (sum(report.ignored.values()), report.excluded) == (len(JUNK), 2)

    manifest = tmp_path / "m.csv"
    manifest.write_text("url\n" + "".join(f"https://img.example.com/{rel}\n" for rel in files))
    report = ListingReport()
    urls = list(list_objects(UrlManifestSource(manifest=str(manifest), exclude=exclude), report))
    assert [urlsplit(o.uri).path for o in urls] == ["/a.jpg", "/keep/c.jpg"]
    assert (sum(report.ignored.values()), report.excluded) == (len(JUNK), 2)

    # The option comes from config too: a source mapping in omnifer.yaml.
    from omnifer.config import load_settings

    config = tmp_path / "omnifer.yaml"
    config.write_text(json.dumps({"sources": [{"kind": "local", "root": str(root),
                                               "exclude": exclude}]}))
    monkeypatch.setenv("OMNIFER_CONFIG", str(config))
    spec = parse_source(load_settings().sources[0])
    assert spec.exclude == tuple(exclude)
    assert [o.uri for o in list_objects(spec)] == [o.uri for o in local]


# -- kinds 1, 2, 4, 6 through the nightly flow: listed vs rowed --------------------------------
def test_nightly_run_rows_every_listed_file_and_says_listed_vs_rowed(
    prefect_harness, omnifer_home: Path, data_catalog, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import omnifer.cli.ops  # noqa: F401  (registers `omnifer runs`)
    from flows.ingest import nightly_ingest
    from omnifer.catalog import runs
    from omnifer.cli._app import app
    from omnifer.imaging.decode import HEIF_AVAILABLE
    from omnifer.testing.faults import promote_tiny_model

    promote_tiny_model(data_catalog, tmp_path / "model")
    root = tmp_path / "phone-dump"
    images = {
        "IMG_0001.HEIC": _jpeg(_face(1)),  # a JPEG, as phones export
        "photo.jfif": _jpeg(_face(2)),
        "face.avif": encode_pil(_face(3), "AVIF", quality=90),
        "IMG_0002.heic": encode_pil(_face(4), "HEIF", quality=90) if HEIF_AVAILABLE else b"",
        "scan.png": png_with_text(_face(5), 2_000_000, seed=0),  # 2 MB compressed zTXt
        "phone/IMG_0003.JPG": _exif6(_face(6)),
    }
    _write(root, {**images, "notes.txt": b"not a photo\n", "clip.mov": b"\0" * 64,
                  "drafts/x.jpg": _jpeg(_face(7)), **JUNK})
    os.symlink("no-such.jpg", root / "dangling.jpg")
    source = json.dumps({"kind": "local", "root": str(root), "exclude": ["*.mov", "drafts/"]})

    summary = nightly_ingest(date=DATE, sources=[source], shard_size=4, workers=1)

    con = data_catalog.connect()
    rows = dict(con.execute("SELECT source_uri, status FROM images").fetchall())
    want = {(root / rel).as_uri() for rel in [*images, "notes.txt"]}
    assert set(rows) == want and summary["images"] == len(want) == 7
    assert rows[(root / "notes.txt").as_uri()] == "not_image"
    bad = {rel: rows[(root / rel).as_uri()] for rel in images
           if rows[(root / rel).as_uri()] not in GOOD_STATUSES}
    assert bad == ({} if HEIF_AVAILABLE else {"IMG_0002.heic": "empty"})
    # No face from junk: every face comes from one of the listed images.
    assert {u for (u,) in con.execute("SELECT DISTINCT source_uri FROM faces").fetchall()} <= want

    record = runs.get_run(data_catalog, summary["run_id"])
    plan = record["stages"]["plan"]
    assert (plan["listed"], plan["planned"], plan["unchanged"]) == (7, 7, 0)
    assert (plan["ignored"], plan["excluded"], plan["skipped_entries"]) == (len(JUNK), 2, 1)
    assert plan["skipped_by_reason"] == {"dangling_symlink": 1}
    assert record["stages"]["shards"]["rowed"] == 7

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables at 80 columns otherwise
    listed = CliRunner().invoke(app, ["runs"])
    assert listed.exit_code == 0, listed.output
    assert "listed=7 planned=7 unchanged=0 ignored=7 excluded=2 skipped_entries=1" \
        in listed.output
    assert "planned=7 rowed=7" in listed.output
    html = Path(summary["report"]).read_text()
    assert "data-k='listed'>7<" in html and "data-k='rowed'>7<" in html
    assert "dangling_symlink 1" in html


# -- kinds 1, 2 in the labeled-data readers and `train --format folder` -------------------------
def _class_folder(root: Path) -> None:
    """Two classes of 6 drawn images each, in four formats and names, plus junk everywhere."""
    for c, cls in enumerate(("happy", "sad")):
        for i in range(6):
            face = _face(100 + 10 * c + i, size=64)
            data = {0: encode_pil(face, "PNG"), 1: _jpeg(face),
                    2: encode_pil(face, "AVIF", quality=90),
                    3: encode_pil(face, "PNG")}.get(i % 4)
            name = {0: f"{i}.png", 1: f"IMG_{i}.HEIC", 2: f"{i}.avif", 3: f"{i}.jfif"}[i % 4]
            _write(root / cls, {name: data})
        _write(root / cls, {f"._{cls}.png": b"\x00\x05\x16\x07 AppleDouble resource fork",
                            "Thumbs.db": b"\xd0\xcf\x11\xe0", "@eaDir/0.png/THUMB.jpg": THUMB})
    _write(root, {"__MACOSX/happy/._0.png": b"\x00\x05\x16\x07",
                  "@eaDir/happy/SYNOFILE_THUMB_M.jpg": THUMB, ".ipynb_checkpoints/x.png": THUMB,
                  ".DS_Store": b"\x00Bud1"})


def test_folder_datasets_ignore_junk_and_read_every_format(tmp_path: Path) -> None:
    import omnifer.cli.model  # noqa: F401  (registers `omnifer train`)
    from omnifer.cli._app import app
    from omnifer.distill import image_folder_tensors
    from omnifer.labeled import read_image_folder

    root = tmp_path / "data" / "train"
    _class_folder(root)
    data = read_image_folder(root, size=16)  # on_error="raise": one junk file would abort
    assert data.classes == ("happy", "sad") and len(data) == 12 and data.skipped == 0
    assert all(Path(n).name[0] not in "._@" for n in data.names)
    x, y, classes = image_folder_tensors(root, 16)
    assert classes == ["happy", "sad"] and tuple(x.shape) == (12, 3, 16, 16)
    assert y.tolist() == [0] * 6 + [1] * 6

    cfg = tmp_path / "train.yaml"
    cfg.write_text("arch: fercnn_tiny\ninput_size: 16\nbatch_size: 8\npatience: 0\nthreads: 1\n")
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "data"), "--format",
                                   "folder", "--out", str(tmp_path / "model"), "--epochs", "1",
                                   "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["classes"] == ["happy", "sad"]


# -- kind 5: one decoder, EXIF orientation everywhere --------------------------------------------
def test_an_exif_rotated_phone_photo_gives_the_upright_pixels_on_every_path(
    tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    import omnifer.cli.model  # noqa: F401  (registers `omnifer score`)
    from omnifer.cli._app import app
    from omnifer.distill import image_folder_tensors
    from omnifer.imaging.decode import decode_image
    from omnifer.labeled import read_dataset
    from omnifer.testing.faults import tiny_checkpoint

    face = _face(11)
    upright, phone = _jpeg(face), _exif6(face)
    root = tmp_path / "faces"
    _write(root / "neutral", {"upright.jpg": upright, "phone.jpg": phone})

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())

    sideways = np.asarray(Image.open(root / "neutral" / "phone.jpg").convert("RGB"))[..., ::-1]
    ingest_up, ingest_phone = decode_image(upright).image, decode_image(phone).image
    assert gap(ingest_up, sideways) > 20  # the raw pixels lie on their side: the test can fail
    assert gap(ingest_up, ingest_phone) < 3  # JPEG tolerance

    data = read_dataset(tmp_path / "faces", "folder", size=64)  # train / evaluate
    by_name = dict(zip(data.names, data.images, strict=True))
    assert gap(by_name["neutral/phone.jpg"], by_name["neutral/upright.jpg"]) < 3

    x, _, _ = image_folder_tensors(root, 32)  # distill run / distill evaluate
    assert float((x[0] - x[1]).abs().mean()) < 0.05

    model = tiny_checkpoint(tmp_path / "model")
    res = CliRunner().invoke(app, ["score", "--model", str(model), "--images", str(root),
                                   "--out", str(tmp_path / "s.parquet")])
    assert res.exit_code == 0, res.output
    rows = {r["face_id"]: r for r in pq.read_table(tmp_path / "s.parquet").to_pylist()}
    a, b = (np.asarray(rows[f"neutral/{n}.jpg"]["embedding"]) for n in ("phone", "upright"))
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99
    assert rows["neutral/phone.jpg"]["label"] == rows["neutral/upright.jpg"]["label"]


# -- kinds 1, 4 after the fact: rows an older decoder refused can be decoded again -------------
def test_retry_decode_recovers_rows_an_older_decoder_refused(
    omnifer_home: Path, data_catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omnifer.imaging import decode
    from omnifer.models.versions import primitive_model
    from omnifer.pipeline import ingest, retry
    from omnifer.testing.faults import promote_tiny_model

    promote_tiny_model(data_catalog, tmp_path / "model")
    root = tmp_path / "in"
    _write(root, {"scan.png": png_with_text(_face(21), 2_000_000, seed=4),
                  "ok.jpg": _jpeg(_face(22))})
    version, uri = primitive_model(data_catalog)
    params = ingest.IngestParams(model_version=version, model_uri=uri)
    plan = ingest.plan_ingest(data_catalog, [LocalSource(root=str(root))], DATE, params)
    # The decoder as it was before metadata limits stopped costing pixels.
    monkeypatch.setattr(ingest, "decode_image",
                        lambda data, max_pixels=40_000_000: decode._decode(data, max_pixels))
    ingest.process_shard(data_catalog, plan, plan.shards[0], "night")
    monkeypatch.undo()
    con = data_catalog.connect()
    scan = (root / "scan.png").as_uri()
    status = "SELECT status FROM images WHERE source_uri = ?"
    assert con.execute(status, [scan]).fetchone()[0] == "corrupt"

    [result] = retry.retry_failed(data_catalog, "decode", "retry-run")
    assert (result.retried, result.recovered) == (1, 1)
    con = data_catalog.connect()
    assert con.execute(status, [scan]).fetchone()[0] in GOOD_STATUSES
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 2  # replaced, not added
