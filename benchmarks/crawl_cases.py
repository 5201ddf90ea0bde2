"""Real crawls, one table: every kind of fault of issue 15, expected vs observed.

    .venv/bin/python benchmarks/crawl_cases.py [--work DIR] [--keep]

Builds a small corpus covering all ten kinds (drawn faces, no committed binaries), runs it
through the nightly flow (``omnifer ingest``, a real Prefect run, a local folder plus a URL
manifest served on 127.0.0.1), the labeled-data readers and the CLI (``sql --out``,
``catalog verify``, ``rerun``, ``score``), and prints one row per case: what must happen and
what happened. The rules it checks: every listed regular file has exactly one row, system
junk none; no run crashes; nothing is fetched twice; nothing is silently skipped (every skip
is counted in the run record). Exits 1 when any case is not as expected. A few minutes on
2 cores.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, fresh_catalog, quiet_prefect  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
DATE = "2026-12-01"


# -- the table -------------------------------------------------------------------------------
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, bool]] = []

    def add(self, kind: int, case: str, expected: Any, observed: Any,
            ok: bool | None = None) -> None:
        good = (expected == observed) if ok is None else ok
        self.rows.append((str(kind), case, str(expected), str(observed), good))
        print(f"  {'ok ' if good else 'BAD'} [{kind}] {case}: {observed}", flush=True)

    def fail(self, kind: int, case: str, expected: Any, exc: BaseException) -> None:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self.add(kind, case, expected, f"CRASHED {type(exc).__name__}: {line[:120]}", ok=False)

    def print(self) -> None:
        head = ("kind", "case", "expected", "observed", "")
        cells = [head] + [(*r[:4], "" if r[4] else "<-- NOT AS EXPECTED") for r in self.rows]
        widths = [min(60, max(len(c[i]) for c in cells)) for i in range(5)]
        print()
        for n, row in enumerate(cells):
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths[:4]))


# -- set-up ----------------------------------------------------------------------------------
def _setup_env(work: Path) -> None:
    from omnifer.models import modelfiles

    quiet_prefect(work)
    for key, value in {"OMNIFER_PROGRESS": "log", "PYTHONDONTWRITEBYTECODE": "1",
                       "OMNIFER_INGEST__SHARD_SIZE": "4", "COLUMNS": "200"}.items():
        os.environ.setdefault(key, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    mirrors = [m for m in os.environ.get("OMNIFER_MODEL_MIRROR", "").split(os.pathsep) if m]
    mirrors += [str(REPO.parent / "shared" / "models"), str(modelfiles.models_dir())]
    os.environ["OMNIFER_MODEL_MIRROR"] = os.pathsep.join(mirrors)
    home = work / "home"
    modelfiles.fetch(["yunet"], home=home, download=False)
    os.environ["OMNIFER_HOME"] = str(home)


def _face(seed: int) -> Any:
    from omnifer.testing.badinput import drawn_faces, to_pil

    return to_pil(drawn_faces(1, 1, 256, seed))


def _bytes(img: Any, fmt: str, **kw: Any) -> bytes:
    from omnifer.testing.badinput import encode_pil

    return encode_pil(img, fmt, **kw)


def build_corpus(root: Path) -> dict[str, dict[str, Any]]:
    """The local folder: name → {kind, expected status (None: no row), faces, why}."""
    from PIL import Image

    from omnifer.imaging.decode import HEIF_AVAILABLE
    from omnifer.testing.badinput import png_with_text

    upright = _face(5)
    exif = Image.Exif()
    exif[0x0112] = 6
    files: dict[str, tuple[bytes | None, dict[str, Any]]] = {
        # 1: decided by content, not by name
        "good.jpg": (_bytes(_face(1), "JPEG", quality=92), {"kind": 1, "status": "ok"}),
        "IMG_0001.HEIC": (_bytes(_face(2), "JPEG", quality=92), {"kind": 1, "status": "ok"}),
        "photo.jfif": (_bytes(_face(3), "JPEG", quality=92), {"kind": 1, "status": "ok"}),
        "face.avif": (_bytes(_face(4), "AVIF", quality=90), {"kind": 1, "status": "ok"}),
        "IMG_0002.heic": ((_bytes(_face(6), "HEIF", quality=90) if HEIF_AVAILABLE
                           else b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"),
                          {"kind": 1, "status": "ok" if HEIF_AVAILABLE else "unsupported"}),
        # 2: system junk and an exclude glob: never a row
        "._good.jpg": (_bytes(_face(1).resize((96, 96)), "JPEG"), {"kind": 2, "status": None}),
        "__MACOSX/._good.jpg": (b"\x00\x05\x16\x07" * 64, {"kind": 2, "status": None}),
        "@eaDir/good.jpg/SYNOFILE_THUMB_M.jpg": (_bytes(_face(1).resize((96, 96)), "JPEG"),
                                                 {"kind": 2, "status": None}),
        ".DS_Store": (b"\x00\x00\x00\x01Bud1" * 64, {"kind": 2, "status": None}),
        "Thumbs.db": (b"\xd0\xcf\x11\xe0" * 128, {"kind": 2, "status": None}),
        ".ipynb_checkpoints/good-checkpoint.jpg": (_bytes(_face(1), "JPEG"),
                                                   {"kind": 2, "status": None}),
        "drafts/wip.jpg": (_bytes(_face(7), "JPEG"), {"kind": 2, "status": None,
                                                       "why": "exclude: drafts/"}),
        # 4: metadata over Pillow's limits must not cost the pixels
        "metadata.png": (png_with_text(_face(8), 2_000_000, 0), {"kind": 4, "status": "ok"}),
        # 5: one decode path (EXIF orientation everywhere)
        "upright.jpg": (_bytes(upright, "JPEG", quality=95), {"kind": 5, "status": "ok"}),
        "rotated.jpg": (_bytes(upright.transpose(Image.Transpose.ROTATE_90), "JPEG",
                               quality=95, exif=exif.tobytes()), {"kind": 5, "status": "ok"}),
        # 6: odd entries while listing
        "pipe.jpg": (None, {"kind": 6, "status": "unreadable", "fifo": True}),
        "gone-link.jpg": (None, {"kind": 6, "status": None, "link": "no-such-target.jpg",
                                 "why": "skipped: dangling_symlink"}),
    }
    root.mkdir(parents=True)
    for name, (data, _) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = files[name][1]
        if meta.get("fifo"):
            os.mkfifo(path)
        elif meta.get("link"):
            os.symlink(meta["link"], path)
        else:
            path.write_bytes(data or b"")
    latin = os.path.join(os.fsencode(root), b"caf\xe9.jpg")  # a name that is not UTF-8
    with open(latin, "wb") as fh:
        fh.write(_bytes(_face(9), "JPEG", quality=92))
    out = {name: meta for name, (_, meta) in files.items()}
    out[os.fsdecode(b"caf\xe9.jpg")] = {"kind": 6, "status": "ok"}
    return out


# -- the cases -------------------------------------------------------------------------------
def nightly_cases(work: Path, table: Table) -> dict[str, Any]:
    """Kinds 1-6 through ``omnifer ingest`` (Prefect) on a folder and a URL manifest."""
    from helpers_http import http_server, signed_png
    from typer.testing import CliRunner

    from omnifer.cli import app
    from omnifer.sources import url_identity
    from omnifer.testing.faults import promote_tiny_model

    catalog = fresh_catalog(work / "night")
    promote_tiny_model(catalog, work / "night" / "model-v1")
    corpus = work / "corpus"
    expected = build_corpus(corpus)
    local = json.dumps({"kind": "local", "root": str(corpus), "exclude": ["drafts/"]})
    state: dict[str, Any] = {"catalog": catalog, "corpus": corpus, "expected": expected}

    web_ctx = http_server(b"")
    web = web_ctx.__enter__()
    state["web_ctx"], state["web"] = web_ctx, web
    base = web.base_url
    signed = [f"{base}/signed/a.png?sig={s}" for s in "1234"]
    manifest = work / "urls.csv"
    manifest.write_text("url\n" + "\n".join([*signed, signed[1]]) + "\n")
    urls = json.dumps({"kind": "urls", "manifest": str(manifest), "allow_private": True,
                       "retries": 0})
    state["sources"] = [local, urls]

    runner = CliRunner()
    t = time.monotonic()
    res = runner.invoke(app, ["ingest", "--date", DATE, "--source", local, "--source", urls])
    state["night_seconds"] = time.monotonic() - t
    table.add(0, "nightly run completes (folder + URL manifest)", "exit 0",
              f"exit {res.exit_code}" + (f": {res.exception}" if res.exit_code else ""))
    con = catalog.connect()
    rows = con.execute("SELECT source_uri, status, n_faces FROM images").fetchall()
    by_uri = Counter(r[0] for r in rows)
    status = {r[0]: r[1] for r in rows}
    faces = {r[0]: r[2] for r in rows}

    for name, meta in expected.items():
        uri = (corpus / name).as_uri()
        if meta["status"] is None:
            table.add(meta["kind"], f"{name}: no row ({meta.get('why', 'junk')})", 0,
                      by_uri.get(uri, 0))
        else:
            got = f"{by_uri.get(uri, 0)} row, {status.get(uri)}"
            want = f"1 row, {meta['status']}"
            if meta["status"] == "ok":
                got += f", {faces.get(uri)} face"
                want += ", 1 face"
            table.add(meta["kind"], name, want, got)
    listed_files = sum(1 for m in expected.values() if m["status"] is not None)
    local_rows = sum(n for u, n in by_uri.items() if u.startswith(corpus.as_uri()))
    table.add(1, "folder: every listed file one row", listed_files, local_rows)
    record = _latest_run(catalog)
    plan = (record or {}).get("stages", {}).get("plan", {})
    skipped = plan.get("skipped_by_reason") or plan.get("skipped")
    table.add(6, "listing skips are counted in the run record", "dangling_symlink: 1",
              _fmt_skips(skipped), ok=_skip_count(skipped, "dangling_symlink") == 1)

    # 3: four signed URLs stay four objects, fetched once each; the repeat is one
    uris = [url_identity(u) for u in signed]
    sha = dict(con.execute("SELECT source_uri, sha256 FROM images").fetchall())
    import hashlib

    right = sum(sha.get(u) == hashlib.sha256(signed_png("/signed/a.png", s)).hexdigest()
                for u, s in zip(uris, "1234", strict=True))
    table.add(3, "sig=1..4: rows with their own bytes", 4, right)
    table.add(3, "URL listed twice: rows", 1, by_uri.get(uris[1], 0))
    hits = Counter(p for p, _ in web.requests)
    table.add(3, "fetches per signed URL", "1 each",
              "1 each" if all(hits[f"/signed/a.png?sig={s}"] == 1 for s in "1234")
              else dict(hits))
    table.add(3, "no secret in any source_uri", 0,
              sum("sig=" in u for u in by_uri))
    return state


def _latest_run(catalog: Any) -> dict[str, Any] | None:
    from omnifer.catalog import runs

    records = [r for r in runs.list_runs(catalog, 50) if r["flow"] == "nightly-ingest"]
    return records[0] if records else None


def _skip_count(skipped: Any, reason: str) -> int:
    if isinstance(skipped, dict):
        return int(skipped.get(reason, 0))
    return 0


def _fmt_skips(skipped: Any) -> str:
    if isinstance(skipped, dict):
        return ", ".join(f"{k}: {v}" for k, v in skipped.items()) or "none"
    return str(skipped)


def later_night_case(state: dict[str, Any], table: Table) -> None:
    from typer.testing import CliRunner

    from omnifer.cli import app

    web = state["web"]
    before = len(web.requests)
    res = CliRunner().invoke(app, ["ingest", "--date", "2026-12-02", "--source",
                                   state["sources"][1]])
    table.add(3, "a later night: signed URLs fetched again", 0,
              len(web.requests) - before if res.exit_code == 0
              else f"exit {res.exit_code}: {res.exception}")


def decode_path_case(work: Path, state: dict[str, Any], table: Table) -> None:
    """Kind 5: the reader path, ingest's decoder and ``omnifer score`` see the same pixels."""
    import numpy as np
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from omnifer.cli import app
    from omnifer.imaging.decode import decode_image
    from omnifer.labeled import read_image

    corpus = state["corpus"]
    rotated = corpus / "rotated.jpg"
    reader = read_image(rotated)
    ingest_px = decode_image(rotated.read_bytes()).image
    same = reader is not None and reader.shape == ingest_px.shape and bool(
        np.array_equal(reader, ingest_px))
    table.add(5, "rotated.jpg: reader pixels == ingest pixels", True, same)
    pair = work / "pair"
    pair.mkdir()
    shutil.copy(corpus / "upright.jpg", pair / "upright.jpg")
    shutil.copy(rotated, pair / "rotated.jpg")
    out = work / "pair-scores.parquet"
    res = CliRunner().invoke(app, ["score", "--model", str(work / "night" / "model-v1"),
                                   "--images", str(pair), "--out", str(out)])
    if res.exit_code != 0:
        table.add(5, "score: upright vs EXIF-6 embedding cosine", ">= 0.99",
                  f"exit {res.exit_code}: {res.exception}", ok=False)
        return
    emb = {r["face_id"]: np.asarray(r["embedding"], np.float64)
           for r in pq.read_table(out).to_pylist()}
    a, b = emb["upright.jpg"], emb["rotated.jpg"]
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    table.add(5, "score: upright vs EXIF-6 embedding cosine", ">= 0.99", f"{cos:.4f}",
              ok=cos >= 0.99)


def junk_reader_case(work: Path, table: Table) -> None:
    """Kind 2 in the readers: junk is never a class or an image."""
    from omnifer.labeled import read_image_folder

    root = work / "labeled"
    for rel, seed in {"happy/a.jpg": 11, "happy/b.jpg": 12, "sad/c.jpg": 13,
                      "happy/._a.jpg": 11, "__MACOSX/happy/._b.jpg": 12,
                      "sad/@eaDir/c.jpg/SYNOFILE_THUMB_M.jpg": 13,
                      ".ipynb_checkpoints/x.jpg": 14}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_bytes(_face(seed).resize((64, 64)), "JPEG"))
    (root / "sad" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" * 64)
    try:
        data = read_image_folder(root, size=32)
        got = f"classes {list(data.classes)}, {len(data)} images"
    except Exception as exc:
        table.fail(2, "train --format folder with ._/__MACOSX/@eaDir", "classes", exc)
        return
    table.add(2, "folder reader with ._ / __MACOSX / @eaDir / Thumbs.db",
              "classes ['happy', 'sad'], 3 images", got)


def date_case(work: Path, table: Table) -> None:
    """Kind 7: a date that is not ISO is one line, and nothing is written."""
    from typer.testing import CliRunner

    from omnifer.cli import app

    catalog = fresh_catalog(work / "dates")
    root = Path(catalog.catalog.root)
    res = CliRunner().invoke(app, ["ingest", "--date", "2026/12/01", "--source",
                                   str(work / "corpus")])
    line = str(res.exception) if res.exception else res.output
    table.add(7, "ingest --date 2026/12/01", "ConfigError (exit 2), one line",
              f"{type(res.exception).__name__} (exit {getattr(res.exception, 'exit_code', '?')})"
              f", {'one line' if len(line.strip().splitlines()) == 1 else 'lines'}")
    table.add(7, "folders written for 2026/12/01", 0,
              sum(1 for _ in root.rglob("ingest_date=2026*")) if root.exists() else 0)


def bookkeeping_case(state: dict[str, Any], table: Table) -> None:
    """Kind 8: delete the night's data; the rerun says markers blocked it; verify --repair;
    the rerun rebuilds the same rows."""
    from typer.testing import CliRunner

    from omnifer.cli import app
    from omnifer.testing.faults import catalog_rows, compare_rows

    catalog = state["catalog"]
    os.environ["OMNIFER_CATALOG"] = state["catalog_file"]
    want = catalog_rows(catalog)
    root = Path(catalog.catalog.root)
    for name in ("images", "faces", "scores", "curated"):
        shutil.rmtree(root / name / f"ingest_date={DATE}", ignore_errors=True)
    runner = CliRunner()
    res = runner.invoke(app, ["rerun", "--date", DATE, "--force"])
    text = " ".join(res.output.split())
    table.add(8, "rerun after the data was deleted: says markers blocked it", True,
              "blocked by their markers" in text)
    res = runner.invoke(app, ["catalog", "verify"])
    found = " ".join(res.output.split())
    table.add(8, "catalog verify finds it", "exit 1",
              f"exit {res.exit_code}; " + found[found.find("checked"):][:80],
              ok=res.exit_code == 1 and "0 unresolved" not in found)
    res = runner.invoke(app, ["catalog", "verify", "--repair"])
    table.add(8, "catalog verify --repair", "exit 0", f"exit {res.exit_code}")
    res = runner.invoke(app, ["rerun", "--date", DATE, "--force"])
    diff = compare_rows(want, catalog_rows(catalog))
    table.add(8, "rerun rebuilds: rows lost / duplicated / changed", "0 / 0 / 0",
              f"{diff['lost']} / {diff['duplicated']} / {diff['changed']}"
              + ("" if res.exit_code == 0 else f" (rerun exit {res.exit_code})"))
    res = runner.invoke(app, ["catalog", "verify"])
    table.add(8, "catalog verify after the rebuild", "exit 0", f"exit {res.exit_code}")


def export_case(work: Path, state: dict[str, Any], table: Table) -> None:
    """Kind 9: every dataset, every column, every format."""
    from typer.testing import CliRunner

    from omnifer.catalog.schemas import SCHEMAS
    from omnifer.catalog.sql_export import FORMATS
    from omnifer.cli import app

    os.environ["OMNIFER_CATALOG"] = state["catalog_file"]
    runner = CliRunner()
    out = work / "exports"
    out.mkdir()
    res = runner.invoke(app, ["sql", "SELECT bbox FROM faces", "--out", str(out / "x.csv")])
    first = ""
    if res.exit_code == 0:
        with open(out / "x.csv", newline="") as fh:
            first = (list(csv.reader(fh))[1:2] or [[""]])[0][0]
    table.add(9, "sql 'SELECT bbox FROM faces' --out x.csv", "exit 0, JSON lists",
              f"exit {res.exit_code}, " + ("JSON lists" if first.startswith("[") else
                                           repr(first[:30]) or str(res.exception)))
    bad = []
    for name in SCHEMAS:
        for suffix in FORMATS:
            target = out / f"{name}{suffix}"
            res = runner.invoke(app, ["sql", f"SELECT * FROM {name}", "--out", str(target)])
            if res.exit_code != 0 or not target.exists():
                bad.append(f"{name}{suffix}: {res.exception}")
    table.add(9, f"SELECT * of {len(SCHEMAS)} datasets x {len(FORMATS)} formats", "all written",
              "all written" if not bad else "; ".join(bad)[:120])
    crops = 0
    if (out / "faces.csv").exists():
        with open(out / "faces.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                crops += bool(row["crop"]) and base64.b64decode(row["crop"])[:2] == b"\xff\xd8"
    table.add(9, "faces.csv: crops as base64 JPEG", "every face",
              "every face" if crops and crops == _count(state["catalog"], "faces") else crops)


def _count(catalog: Any, name: str) -> int:
    return catalog.connect().execute(f"SELECT count(*) FROM {name}").fetchone()[0]


def label_protocol_case(work: Path, table: Table) -> None:
    """Kind 10: FERPlus's own protocol and AffectNet's non-expression codes."""
    import cv2
    import numpy as np

    from omnifer.labeled import read_affectnet, read_ferplus

    folder = work / "ferplus"
    folder.mkdir()
    votes = [("tie", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]), ("happy", [0, 8, 2, 0, 0, 0, 0, 0, 0, 0]),
             ("nf", [1, 0, 0, 0, 0, 0, 0, 0, 0, 9]), ("weak", [4, 3, 0, 0, 0, 0, 0, 0, 0, 3]),
             ("unknown", [4, 0, 0, 0, 0, 0, 0, 0, 6, 0])]
    pix = " ".join(["100"] * 48 * 48)
    with open(folder / "fer2013.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows([("0", pix, "Training")] * len(votes))
    with open(folder / "fer2013new.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness",
                    "anger", "disgust", "fear", "contempt", "unknown", "NF"])
        for name, v in votes:
            w.writerow(["Training", f"{name}.png", *v])
    data = read_ferplus(folder / "fer2013.csv", folder / "fer2013new.csv", "train")
    table.add(10, "FERPlus majority: the 5/5 tie (was neutral)", "excluded",
              "excluded" if "tie.png" not in data.names else "kept")
    kept = {n: data.classes[int(i)] for n, i in zip(data.names, data.targets, strict=True)}
    table.add(10, "FERPlus majority: rows kept", {"happy.png": "happy"}, kept)
    rules = {k: v for k, v in data.meta.get("dropped_by_rule", {}).items() if v}
    table.add(10, "FERPlus majority: dropped per rule",
              {"not_face": 1, "unknown": 1, "no_majority": 2}, rules)
    plural = read_ferplus(folder / "fer2013.csv", folder / "fer2013new.csv", "train",
                          label_mode="plurality")
    table.add(10, "FERPlus plurality: rows kept", 2, len(plural))
    prob = read_ferplus(folder / "fer2013.csv", folder / "fer2013new.csv", "train",
                        label_mode="probability")
    table.add(10, "FERPlus probability: soft targets (rows, classes)", (3, 7),
              tuple(prob.targets.shape))

    aff = work / "affectnet"
    (aff / "1").mkdir(parents=True)
    cv2.imwrite(str(aff / "1" / "a.png"), np.full((60, 60, 3), 200, np.uint8))
    with open(aff / "training.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"])
        for code in range(11):
            w.writerow(["1/a.png", 5, 5, 40, 40, "", code, 0, 0])
    seven = read_affectnet(aff / "training.csv", aff, size=16)
    eight = read_affectnet(aff / "training.csv", aff, include_contempt=True, size=16)
    table.add(10, "AffectNet codes 0-10: kept (7 / 8 classes)", "7 / 8",
              f"{len(seven)} / {len(eight)}")
    table.add(10, "AffectNet dropped per rule (7 classes)",
              {"none": 1, "uncertain": 1, "no_face": 1, "contempt": 1},
              {k: v for k, v in seven.meta.get("dropped_by_rule", {}).items() if v})


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="omnifer-crawl-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    _setup_env(work)
    table = Table()
    started = time.monotonic()
    print(f"crawl cases in {work}", flush=True)
    state: dict[str, Any] = {}
    try:
        try:
            state = nightly_cases(work, table)
            state["catalog_file"] = os.environ["OMNIFER_CATALOG"]
        except Exception as exc:
            table.fail(0, "nightly run", "completes", exc)
        steps = [
            (3, "later night", lambda: later_night_case(state, table), bool(state)),
            (5, "decode path", lambda: decode_path_case(work, state, table), bool(state)),
            (2, "readers", lambda: junk_reader_case(work, table), True),
            (9, "exports", lambda: export_case(work, state, table), bool(state)),
            (10, "label protocols", lambda: label_protocol_case(work, table), True),
            (8, "bookkeeping", lambda: bookkeeping_case(state, table), bool(state)),
            (7, "dates", lambda: date_case(work, table), True),
        ]
        for kind, name, step, possible in steps:
            if not possible:
                table.add(kind, name, "runs", "not run: the nightly run crashed", ok=False)
                continue
            try:
                step()
            except Exception as exc:
                table.fail(kind, name, "runs", exc)
    finally:
        if state.get("web_ctx"):
            state["web_ctx"].__exit__(None, None, None)
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table.print()
    bad = [r for r in table.rows if not r[4]]
    print(f"\n{len(table.rows)} cases, {len(bad)} not as expected, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=io.StringIO())
    sys.exit(main())
