"""The closed loop with planted answers: backfill with a promoted model, near-duplicate faces,
and faces of the labeled test split dropped into the unlabeled source.

Every planted item is drawn by ``omnifer.demo`` (seeded), so the test knows which faces are
copies of one another, which are the same person with another expression (must stay apart),
and which test item each leaked photo shows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from omnifer import storage
from omnifer.catalog import DataCatalog
from omnifer.config import load_settings
from omnifer.curation.curated import current_versions, select_curated
from omnifer.curation.dedup import night_counts, run_dedup
from omnifer.curation.selection import SelectionPolicy
from omnifer.demo.copies import COPY_KINDS, near_copy, render_labeled_photo, same_identity_photos
from omnifer.demo.scene import encode_image, item_rng, render_scene
from omnifer.labels import RAFDB_TO_CANONICAL
from omnifer.models import versions
from omnifer.testing.faults import run_night

DATE = "2026-11-20"
SEED = 21
# Everything passes the gates, so "curated once" is decided by deduplication alone.
PERMISSIVE = SelectionPolicy(min_confidence=0.0, default_confidence=0.0,
                             require_flip_agreement=False)


def _promote(catalog: DataCatalog, model: Path, version: str) -> None:
    versions.register_version(catalog, model, version, metrics={"accuracy": 0.5})
    versions.record_event(catalog, version, "promoted", {"accuracy": 0.5})


def _test_items(world: Path, n: int) -> list[tuple[int, str, str]]:
    """(index, canonical label, item name) of the first ``n`` test-split items of the world."""
    lines = (world / "labeled" / "EmoLabel" / "list_patition_label.txt").read_text().split("\n")
    items = []
    for line in lines:
        if line.startswith("test_"):
            name, code = line.split()
            items.append((int(name[5:9]), RAFDB_TO_CANONICAL[int(code)], name))
    return items[:n]


def _plant(src: Path, world: Path, world_seed: int) -> dict[str, list[str]]:
    """Write the planted files; return group → relative paths."""
    groups: dict[str, list[str]] = {"copies": [], "same": [], "leaks": [], "other": []}
    # One scene with one face, and five near-copies of it.
    index = next(i for i in range(50) if len(render_scene(SEED, i)[1]) == 1)
    img, _ = render_scene(SEED, index)
    (src / "copies").mkdir(parents=True)
    (src / "copies" / "original.jpg").write_bytes(encode_image(img, "jpg"))
    groups["copies"].append("copies/original.jpg")
    for k, kind in enumerate(COPY_KINDS):
        rel = f"copies/{kind}.jpg"
        (src / rel).write_bytes(near_copy(img, kind, item_rng(SEED, "scene", 900 + k)))
        groups["copies"].append(rel)
    # One person, four expressions: four different faces.
    (src / "same").mkdir()
    for k, (data, _) in enumerate(same_identity_photos(SEED, 0, ["neutral", "happy",
                                                                 "surprise", "angry"])):
        rel = f"same/photo_{k}.jpg"
        (src / rel).write_bytes(data)
        groups["same"].append(rel)
    # The photos four test-split faces were cut from, crawled as if found on the web.
    (src / "found").mkdir()
    for index, label, name in _test_items(world, 4):
        photo, _ = render_labeled_photo(world_seed, "test", index, label)
        rel = f"found/{name.removesuffix('.jpg')}.jpg"
        (src / rel).write_bytes(encode_image(photo, "jpg"))
        groups["leaks"].append(rel)
    # Other scenes: unrelated faces.
    (src / "other").mkdir()
    for i in range(index + 1, index + 7):
        scene, _ = render_scene(SEED, i)
        rel = f"other/scene_{i}.jpg"
        (src / rel).write_bytes(encode_image(scene, "jpg"))
        groups["other"].append(rel)
    return groups


def test_copies_clustered_once_test_faces_caught_same_person_kept_apart(
    tmp_path: Path, ops_world: Path, ops_model: Path, data_catalog: DataCatalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMNIFER_RETRAIN__LABELED__PATH", str(ops_world / "labeled"))
    settings = load_settings()
    catalog = data_catalog
    _promote(catalog, ops_model, "v1")
    src = tmp_path / "source"
    groups = _plant(src, ops_world, world_seed=5)
    night = run_night(catalog, [str(src)], DATE, shard_size=8)
    assert not night.failed

    found, applied = run_dedup(catalog, DATE, "v1", settings, "test-run")
    curated = select_curated(catalog, DATE, PERMISSIVE, "v1", "test-run", applied)

    con = catalog.connect()
    faces = con.execute("SELECT face_id, source_uri FROM faces").fetchall()
    by_group: dict[str, list[str]] = {g: [] for g in groups}
    for fid, uri in faces:
        rel = uri.split("/source/", 1)[1]
        by_group[next(g for g, rels in groups.items() if rel in rels)].append(fid)
    dup = {r[0]: r[1:] for r in con.execute(
        "SELECT face_id, cluster_id, keep FROM duplicates WHERE kind = 'duplicate'").fetchall()}
    contaminated = {r[0]: r[1] for r in con.execute(
        "SELECT face_id, matched_id FROM duplicates WHERE kind = 'contaminated'").fetchall()}
    chosen = {r[0] for r in con.execute(
        "SELECT face_id FROM curated WHERE curated_version = ?",
        [curated.curated_version]).fetchall()}

    # The original and its five copies: one face each, found, clustered together, kept once.
    copies = by_group["copies"]
    assert len(copies) == 1 + len(COPY_KINDS), copies
    assert all(f in dup for f in copies), [f in dup for f in copies]
    assert len({dup[f][0] for f in copies}) == 1
    assert sum(dup[f][1] for f in copies) == 1
    assert len(chosen & set(copies)) == 1
    # The same person with four expressions: four faces, none merged with another.
    same = by_group["same"]
    assert len(same) == 4
    clusters = [dup[f][0] for f in same if f in dup]
    assert len(clusters) == len(set(clusters)), clusters
    assert set(same) <= chosen
    # Test-split faces: every one caught, named with its test item, never curated.
    leaks = by_group["leaks"]
    assert len(leaks) == 4
    assert set(leaks) <= set(contaminated)
    for fid, uri in faces:
        if fid in leaks:
            name = uri.rsplit("/", 1)[1].removesuffix(".jpg")
            assert contaminated[fid].startswith("test:") and name in contaminated[fid]
    assert not chosen & set(leaks)
    # Nothing else is contaminated, and unrelated faces stay out of clusters.
    assert set(contaminated) == set(leaks)
    assert not set(by_group["other"]) & {f for f, (_, keep) in dup.items()
                                        if not keep}
    # What the run report and `omnifer runs` count.
    assert found.duplicates == len(COPY_KINDS) and found.contaminated == 4
    assert night_counts(catalog)[DATE] == {"duplicates_removed": len(COPY_KINDS),
                                           "contaminated": 4}
    # Thresholds are recorded with the curated version.
    recorded = con.execute("SELECT DISTINCT dedup FROM curated").fetchall()
    assert len(recorded) == 1 and found.dedup_version in recorded[0][0]
    assert '"max_hamming":48' in recorded[0][0]
    assert np.isfinite(found.seconds)
    assert current_versions(catalog) == [curated.curated_version]
    assert pc.sum(pc.equal(catalog.read("curated")["model_version"], "v1")).as_py() == len(chosen)


def _files(root: Path) -> dict[str, int]:
    """Every file of the catalog except run records and reports, with its mtime."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not str(p.relative_to(root)).startswith(("_runs", "_reports"))}


@pytest.mark.slow
def test_backfill_rescores_and_reselects_old_nights_then_does_nothing(
    prefect_harness, tmp_path: Path, ops_world: Path, ops_model: Path,
    data_catalog: DataCatalog, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.backfill import backfill_flow
    from flows.ingest import nightly_ingest
    from omnifer.catalog import runs
    from omnifer.cli.ops import _stage_text
    from omnifer.testing.faults import tiny_checkpoint

    monkeypatch.setenv("OMNIFER_SELECTION", PERMISSIVE.to_json())
    monkeypatch.setenv("OMNIFER_RETRAIN__LABELED__PATH", str(ops_world / "labeled"))
    catalog = data_catalog
    _promote(catalog, ops_model, "v1")
    nights = {"2026-11-01": "cam-1", "2026-11-02": "cam-2"}
    for date, cam in nights.items():
        shutil.copytree(ops_world / "unlabeled" / "batch-00" / cam, tmp_path / "src" / cam)
        summary = nightly_ingest(date=date, sources=[str(tmp_path / "src" / cam)],
                                 shard_size=8, workers=2)
    record = runs.list_runs(catalog, 1)[0]
    assert "contaminated=" in _stage_text("dedup", record["stages"]["dedup"])
    page = storage.read_bytes(summary["report"]).decode()
    for date in nights:  # the report counts both nights' removed and caught faces
        assert f"data-k='dedup:{date}:removed'" in page
        assert f"data-k='dedup:{date}:contaminated'" in page
    con = catalog.connect()
    v1_curated = {r[0]: r[1:] for r in con.execute(
        "SELECT ingest_date, count(*), list(label ORDER BY face_id) FROM curated "
        "GROUP BY 1").fetchall()}
    assert set(v1_curated) == set(nights)

    # A better model is promoted: every stored face is re-scored from its crop (the source
    # photos are gone: nothing is read or decoded but crops), and every night is re-selected
    # into a new curated version that distillation now takes.
    shutil.rmtree(tmp_path / "src")
    _promote(catalog, tiny_checkpoint(tmp_path / "v2", seed=3), "v2")
    n_faces = con.execute("SELECT count(DISTINCT face_id) FROM faces").fetchone()[0]
    summary = backfill_flow(workers=2)
    assert summary["model_version"] == "v2" and summary["faces_scored"] == n_faces
    con = catalog.connect()
    per_model = dict(con.execute("SELECT model_version, count(DISTINCT face_id) FROM scores "
                                 "GROUP BY 1").fetchall())
    assert per_model == {"v1": n_faces, "v2": n_faces}
    changed = con.execute(
        "SELECT count(*) FROM scores a JOIN scores b USING (face_id) WHERE a.model_version = "
        "'v1' AND b.model_version = 'v2' AND a.probs <> b.probs").fetchone()[0]
    assert changed == n_faces  # other weights, other scores, for every face
    latest = current_versions(catalog)
    assert len(latest) == 2 and all(n["curated_version"] in latest for n in summary["nights"])
    assert all(not n["unchanged"] for n in summary["nights"])
    v2_curated = {r[0]: r[1:] for r in con.execute(
        "SELECT ingest_date, count(*), list(label ORDER BY face_id), any_value(model_version) "
        "FROM curated WHERE list_contains(?, curated_version) GROUP BY 1", [latest]).fetchall()}
    for date in nights:
        assert v2_curated[date][2] == "v2"
        assert v2_curated[date][1] != v1_curated[date][1]  # the old night's labels changed
    assert current_versions(catalog, "v1") != latest  # v1's versions are kept, not latest

    # Nothing new: a second backfill scores nothing, re-selects nothing, writes nothing.
    before = _files(Path(catalog.catalog.root))
    again = backfill_flow(workers=2)
    assert again["faces_scored"] == 0
    assert all(n["unchanged"] for n in again["nights"])
    assert _files(Path(catalog.catalog.root)) == before


def test_band_index_finds_planted_near_pairs_with_bounded_work() -> None:
    from omnifer.curation.hashing import BandIndex, hamming, nearest

    rng = np.random.default_rng(0)
    n, planted = 20_000, 200
    bits = (rng.random((n, 256)) < 0.5).astype(np.uint8)
    src = rng.choice(n - planted, planted, replace=False)
    for k, s in enumerate(src):  # copies within 15 bits: pigeonhole over 16 bands
        bits[n - planted + k] = bits[s]
        bits[n - planted + k, rng.choice(256, int(rng.integers(0, 16)), replace=False)] ^= 1
    words = np.packbits(bits, axis=1).view(">u8").astype(np.uint64)
    index = BandIndex(words, bands=16, window=64)
    i, j, d = index.pairs(15)
    truth = {(int(s), n - planted + k) for k, s in enumerate(src)}
    assert truth <= set(zip(i.tolist(), j.tolist(), strict=True))
    assert (d == hamming(words[i], words[j])).all() and (d <= 15).all()
    assert index.compared <= n * 16 * 64  # never all pairs (2e8 here)
    # Tonight's hashes only, and each hash's nearest partners only.
    tonight = np.zeros(n, bool)
    tonight[-planted:] = True
    qi, qj, qd = BandIndex(words).pairs(15, involving=tonight, neighbours=1)
    assert set(zip(qi.tolist(), qj.tolist(), strict=True)) >= truth
    assert len(nearest(qi, qj, qd, 1)) == len(qi)


def test_band_index_for_a_few_new_hashes_finds_the_pairs_of_the_whole_sort() -> None:
    """Sorting only the buckets of the night's hashes (what makes one new face against a big
    history cheap) gives the pairs, distances and comparison count of sorting every bucket,
    also in buckets larger than the window (look-alikes) and with the nearest-k filter."""
    from omnifer.curation.hashing import BandIndex

    rng = np.random.default_rng(5)
    checked = 0
    for trial in range(24):
        n = int(rng.integers(200, 2500))
        bits = (rng.random((n, 256)) < 0.5).astype(np.uint8)
        templates = (rng.random((3, 256)) < 0.5).astype(np.uint8)
        alike = rng.random(n) < 0.4  # share 96 bits with a template: buckets of hundreds
        bits[alike, :96] = templates[rng.integers(0, 3, int(alike.sum())), :96]
        for i in rng.choice(n, n // 5, replace=False):  # near copies
            j = int(rng.integers(0, n))
            bits[j] = bits[i]
            bits[j, rng.choice(256, int(rng.integers(0, 40)), replace=False)] ^= 1
        words = np.packbits(bits, axis=1).view(">u8").astype(np.uint64)
        tonight = rng.random(n) < [0.002, 0.02, 0.3, 1.0][trial % 4]
        valid = rng.random(n) < 0.95
        args = dict(involving=tonight, valid=valid, neighbours=[None, 1, 4][trial % 3])
        bands, window = [8, 16, 32][trial % 3], [1, 3, 64][(trial // 3) % 3]
        distance = [8, 48, 100][(trial // 2) % 3]
        fast = BandIndex(words, bands, window)
        got = fast.pairs(distance, **args)
        whole = BandIndex(words, bands, window)
        whole._only_involved_buckets = False
        want = whole.pairs(distance, **args)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"trial {trial}")
        assert fast.compared == whole.compared
        checked += len(got[0])
    assert checked > 100  # the trials found pairs to compare
