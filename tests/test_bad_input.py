"""Every hostile or awkward file gets its own status and a readable error, in one shard whose
good images are processed anyway (the corpus is written by ``omnifer.testing.badinput``)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnifer.catalog import DataCatalog
from omnifer.models.versions import primitive_model
from omnifer.pipeline import ingest
from omnifer.sources import LocalSource
from omnifer.testing.badinput import case_uri, corpus_files, sabotage, write_corpus
from omnifer.testing.faults import promote_tiny_model

DATE = "2026-11-29"
IMAGE_STATUSES_IN_README = (
    "ok", "no_face", "duplicate", "empty", "not_image", "corrupt", "too_large", "unsupported",
    "missing", "unreadable", "fetch_failed", "forbidden_url", "detect_failed",
)


@pytest.fixture()
def corpus_run(omnifer_home: Path, data_catalog: DataCatalog, tmp_path: Path):
    promote_tiny_model(data_catalog, tmp_path / "model")
    root = tmp_path / "corpus"
    cases = write_corpus(root)
    version, uri = primitive_model(data_catalog)
    params = ingest.IngestParams(model_version=version, model_uri=uri)
    plan = ingest.plan_ingest(data_catalog, [LocalSource(root=str(root))], DATE, params,
                              shard_size=1000)
    sabotage(root, cases)  # vanish / unreadable happen between listing and reading
    started = time.monotonic()
    result = ingest.process_shard(data_catalog, plan, plan.shards[0], "bad-input")
    return root, cases, plan, result, time.monotonic() - started


def test_every_bad_file_is_a_row_with_its_status_and_the_good_ones_are_processed(
    corpus_run, data_catalog: DataCatalog
) -> None:
    root, cases, plan, result, seconds = corpus_run
    rowed = [c for c in cases if c.status is not None]
    assert len(plan.shards) == 1 and result.images == len(rowed)  # one shard, nothing lost
    con = data_catalog.connect()
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT source_uri, status, error, n_faces, sha256 FROM images").fetchall()}
    assert len(rows) == len(rowed)
    # Listed vs rowed: every listed file has its row; junk and odd entries are counted.
    listing = plan.listing
    assert listing["listed"] == listing["planned"] == len(rowed) and listing["unchanged"] == 0
    assert listing["ignored"] == sum(c.no_row == "ignored" for c in cases) == 8
    assert listing["skipped_by_reason"] == {"dangling_symlink": 1}
    for case in cases:
        if case.status is None:  # system junk / a dangling link: no row, no face
            assert case_uri(root, case) not in rows, case.key
            continue
        status, error, n_faces, _sha = rows[case_uri(root, case)]
        assert status == case.status, (case.key, status, error)
        assert status in IMAGE_STATUSES_IN_README
        if status in ("ok", "no_face"):
            assert error is None
            assert n_faces == case.n_faces, case.key
        else:
            assert error and len(error) < 500 and "Traceback" not in error, case.key
    # Each face of the good images has its face row and its score row.
    want_faces = sum(c.n_faces or 0 for c in cases)
    assert con.execute("SELECT count(*) FROM faces").fetchone()[0] == want_faces
    assert con.execute("SELECT count(*) FROM scores WHERE status = 'ok'").fetchone()[0] \
        == want_faces
    # The 50 000 × 50 000 header is refused from the header, not by decoding 7.5 GB.
    assert seconds < 60


def test_errors_are_readable(corpus_run, data_catalog: DataCatalog) -> None:
    root, cases, *_ = corpus_run
    errors = dict(data_catalog.connect().execute(
        "SELECT source_uri, error FROM images").fetchall())
    by_key = {c.key: errors[case_uri(root, c)] for c in cases if c.status is not None}
    assert "zero bytes" in by_key["empty"]
    assert "2500000000 pixels" in by_key["png_bomb_50000x50000"]
    assert "no such file" in by_key["vanished"]
    assert "not a regular file" in by_key["fifo"]
    assert "not a recognised image format" in by_key["text_as_jpg"]
    assert "video" in by_key["video"]


def test_the_bytes_decide_the_format_not_the_name(corpus_run, data_catalog: DataCatalog) -> None:
    root, cases, *_ = corpus_run
    formats = dict(data_catalog.connect().execute(
        "SELECT source_uri, format FROM images").fetchall())
    by_key = {c.key: formats.get(case_uri(root, c)) for c in cases}
    assert by_key["heic_named_jpeg"] == by_key["jfif"] == by_key["no_extension"] == "jpeg"
    assert by_key["avif"] == "avif" and by_key["png_2mb_text_chunk"] == "png"
    assert by_key["heic"] == "heif"


def test_exif_case_needs_the_orientation(omnifer_home: Path) -> None:
    """The EXIF case is only passed by a decoder that applies the orientation: the raw
    pixels (face lying on its side) show no face to the detector."""
    from omnifer.faces import create_detector, detect_and_align

    data = dict((c.key, d) for c, d in corpus_files())["exif_rotated"]
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:, :, ::-1].copy()
    assert detect_and_align(raw, create_detector("yunet")) == []


def test_readme_lists_every_image_status() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("Image statuses:", 1)[1].split("\n\n", 1)[0]
    for status in IMAGE_STATUSES_IN_README:
        assert f"`{status}`" in section, status
    for _case, _ in corpus_files():
        assert _case.status is None or f"`{_case.status}`" in section
