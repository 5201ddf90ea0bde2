"""Queries: DuckDB over a generated catalog of one million faces + scores, each query timed.

Usage::

    python benchmarks/queries.py [--rows 1000000] [--nights 30] [--layout compacted|shards|nights]

Generates (seeded, once per parameters, under ``--work``) a catalog laid out exactly as the
nightly flow writes it: ``images``, ``faces`` and ``scores`` hive-partitioned by
``ingest_date``, one Parquet file per shard of ``--shard-size`` images with its commit marker;
with ``--layout compacted`` (the default, what the flow leaves behind) each night is then
merged by ``omnifer.catalog.compaction.compact_night``, the flow's compaction step, and its time is
printed. ``--layout shards`` leaves the shard files (a catalog with ``ingest.compact: false``);
``--layout nights`` writes one file per night directly (the ideal). Also ``curated`` (a
third of the faces, one version per night) and ``models`` (v1, and v2 trained on one night's
curated version). Faces per image 0–3 as in the demo world. Two columns carry placeholders,
because no query reads them and they would only make the files large: ``crop`` (16 bytes
instead of a ~4 KB JPEG) and ``embedding`` (null).

Then opens the catalog with ``DataCatalog.connect()`` (what ``omnifer sql`` does: one view
per dataset) and times each query (first run, and best of ``--repeat``). Target: each under
one second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import DEFAULT_WORK, fresh_catalog, machine, print_table

from omnifer.catalog import compaction
from omnifer.catalog.plans import ShardResult, write_marker
from omnifer.catalog.schemas import CURATED, FACES, IMAGES, MODELS, SCORES
from omnifer.labels import CLASSES

QUERIES = {
    "per-class counts per night": (
        "SELECT ingest_date, label, count(*) AS faces, avg(confidence) AS mean_conf "
        "FROM scores WHERE model_version = 'v1' GROUP BY ALL ORDER BY ALL"
    ),
    "faces joined to images by sha256": (
        "SELECT i.ingest_date, i.format, count(*) AS faces, avg(f.det_score) AS det, "
        "avg(i.width * i.height) AS pixels "
        "FROM faces f JOIN images i ON i.sha256 = f.image_sha256 GROUP BY ALL ORDER BY ALL"
    ),
    "faces + scores + images of one image": (
        "SELECT f.face_id, s.label, s.confidence, i.source_uri FROM images i "
        "JOIN faces f ON f.image_sha256 = i.sha256 JOIN scores s ON s.face_id = f.face_id "
        "WHERE i.sha256 = '{sha}'"
    ),
    "lineage of model v2 to source images": (
        "SELECT m.model_version, m.parent_version, c.curated_version, i.source_uri, i.sha256 "
        "FROM models m, curated c, faces f, images i "
        "WHERE m.event = 'registered' AND m.model_version = 'v2' "
        "AND json_extract_string(m.train_datasets, '$.curated') = c.curated_version "
        "AND f.face_id = c.face_id AND i.sha256 = f.image_sha256"
    ),
}


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    raw = rng.bytes(n * nbytes)
    return [raw[i : i + nbytes].hex() for i in range(0, n * nbytes, nbytes)]


def _night(rng: np.random.Generator, date: str, n_faces: int, run: str) -> dict[str, pa.Table]:
    """One night's images/faces/scores tables, vectorised (a python loop would take minutes)."""
    per_image = rng.choice([0, 1, 2, 3], size=int(n_faces / 1.5) + 16, p=[0.05, 0.5, 0.3, 0.15])
    cum = np.cumsum(per_image)
    n_img = int(np.searchsorted(cum, n_faces)) + 1
    per_image = per_image[:n_img]
    per_image[-1] -= int(cum[n_img - 1] - n_faces)  # exactly n_faces
    sha = _hex(rng, n_img, 32)
    created = pa.array([dt.datetime.fromisoformat(date + "T02:00:00+00:00")] * 1,
                       pa.timestamp("us", tz="UTC"))[0]
    status = np.where(per_image > 0, "ok", "no_face")
    uris = [f"file:///crawl/{date}/cam-{i % 17}/img_{i:07d}.jpg" for i in range(n_img)]
    images = pa.table({
        "source_uri": uris, "source_version": [None] * n_img, "sha256": sha,
        "bytes": rng.integers(20_000, 400_000, n_img), "width": np.full(n_img, 640, np.int32),
        "height": np.full(n_img, 480, np.int32),
        "format": np.where(rng.random(n_img) < 0.9, "jpeg", "png"),
        "status": status, "error": [None] * n_img, "n_faces": per_image.astype(np.int16),
        "detector": ["yunet"] * n_img, "detector_version": ["yunet-2023mar"] * n_img,
        "run_id": [run] * n_img, "shard_id": [None] * n_img, "code_version": ["bench"] * n_img,
        "created_at": pa.array([created.as_py()] * n_img, pa.timestamp("us", tz="UTC")),
    })
    img_of_face = np.repeat(np.arange(n_img), per_image)
    face_ids = _hex(rng, n_faces, 16)
    x1 = rng.uniform(0, 500, n_faces).astype(np.float32)
    bbox = np.stack([x1, x1 * 0.7, x1 + 80, x1 * 0.7 + 96], 1).astype(np.float32)
    sha_arr = pa.array(sha)
    ts = pa.array([created.as_py()] * n_faces, pa.timestamp("us", tz="UTC"))
    common = {"run_id": pa.array([run] * n_faces), "shard_id": pa.nulls(n_faces, pa.string()),
              "code_version": pa.array(["bench"] * n_faces), "created_at": ts}
    faces = pa.table({
        "face_id": face_ids, "image_sha256": sha_arr.take(pa.array(img_of_face)),
        "source_uri": pa.array(uris).take(pa.array(img_of_face)),
        "face_index": np.concatenate([np.arange(k) for k in per_image]).astype(np.int16),
        "bbox": pa.FixedSizeListArray.from_arrays(pa.array(bbox.ravel()), 4),
        "landmarks5": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.uniform(0, 600, n_faces * 10).astype(np.float32)), 10),
        "det_score": rng.uniform(0.6, 1.0, n_faces).astype(np.float32),
        "face_size": rng.uniform(32, 200, n_faces).astype(np.float32),
        "crop": pa.array([b"\xff\xd8placeholder\xff\xd9"] * n_faces, pa.binary()),
        "detector": pa.array(["yunet"] * n_faces),
        "detector_version": pa.array(["yunet-2023mar"] * n_faces), **common,
    })
    logits = rng.normal(0, 1.5, (n_faces, len(CLASSES))).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    order = np.sort(probs, 1)
    label = probs.argmax(1)
    scores = pa.table({
        "face_id": face_ids, "model_version": pa.array(["v1"] * n_faces),
        "label": pa.array(np.asarray(CLASSES)[label]), "label_index": label.astype(np.int16),
        "probs": pa.ListArray.from_arrays(
            pa.array(np.arange(0, (n_faces + 1) * len(CLASSES), len(CLASSES), dtype=np.int32)),
            pa.array(probs.ravel())),
        "confidence": order[:, -1], "margin": order[:, -1] - order[:, -2],
        "entropy": -(probs * np.log(probs)).sum(1).astype(np.float32),
        "flip_agreement": rng.random(n_faces) < 0.8,
        "similarity": rng.uniform(0, 1, n_faces).astype(np.float32),
        "embedding": pa.nulls(n_faces, pa.list_(pa.float32())),
        "det_score": faces["det_score"], "face_size": faces["face_size"],
        "status": pa.array(["ok"] * n_faces), "error": pa.nulls(n_faces, pa.string()), **common,
    })
    return {"images": images, "faces": faces, "scores": scores, "img_of_face": img_of_face}


def generate(root: Path, rows: int, nights: int, shard_size: int, layout: str,
             seed: int = 0) -> tuple[object, str]:
    """Write the catalog under ``root``; returns (catalog, one image's sha256 with faces)."""
    catalog = fresh_catalog(root)
    rng = np.random.default_rng(seed)
    start = dt.date(2026, 10, 1)
    per_night = [rows // nights + (1 if i < rows % nights else 0) for i in range(nights)]
    probe, v2_curated = "", ""
    for k, n_faces in enumerate(per_night):
        date = (start + dt.timedelta(days=k)).isoformat()
        t = _night(rng, date, n_faces, f"run-{k:03d}")
        images, img_of_face = t["images"], t["img_of_face"]
        probe = probe or images["sha256"][int(img_of_face[0])].as_py()
        if layout == "nights":
            cuts = [(0, images.num_rows)]
        else:
            cuts = [(a, min(a + shard_size, images.num_rows))
                    for a in range(0, images.num_rows, shard_size)]
        face_start = np.searchsorted(img_of_face, [a for a, _ in cuts] + [images.num_rows])
        for j, (a, b) in enumerate(cuts):
            shard = f"{date}-{j:05d}"
            name = f"part-{shard}.parquet"
            fa, fb = int(face_start[j]), int(face_start[j + 1])
            if layout != "nights":  # the shard's commit marker, as the flow writes it
                write_marker(catalog, date, ShardResult(shard_id=shard, images=b - a))
            for ds_name, table in (("images", images.slice(a, b - a)),
                                   ("faces", t["faces"].slice(fa, fb - fa)),
                                   ("scores", t["scores"].slice(fa, fb - fa))):
                table = table.set_column(table.schema.get_field_index("shard_id"), "shard_id",
                                         pa.array([shard] * table.num_rows, pa.string()))
                catalog.write(ds_name, name, table, ingest_date=date)
        # curated: a third of the night's faces, one version per night
        pick = np.sort(rng.choice(n_faces, n_faces // 3, replace=False))
        s = t["scores"].take(pa.array(pick))
        version = f"{date}.bench"
        v2_curated = v2_curated or version
        n = s.num_rows
        curated = pa.table({
            "face_id": s["face_id"], "curated_version": pa.array([version] * n),
            "label": s["label"], "confidence": s["confidence"], "similarity": s["similarity"],
            "copies": pa.array(np.ones(n, np.int16)), "policy": pa.array(['{"bench": 1}'] * n),
            "model_version": s["model_version"], "run_id": s["run_id"],
            "shard_id": pa.nulls(n, pa.string()), "code_version": s["code_version"],
            "created_at": s["created_at"],
        })
        catalog.write("curated", f"part-{version}.parquet", curated, ingest_date=date)
        print(f"  night {date}: {images.num_rows} images, {n_faces} faces, "
              f"{len(cuts)} files per dataset", flush=True)
        if layout == "compacted":  # what the nightly flow's compaction step does
            started = time.monotonic()
            done = compaction.compact_night(catalog, date, f"run-{k:03d}")
            print(f"    compacted in {time.monotonic() - started:.1f}s: "
                  + ", ".join(f"{r.dataset} {r.inputs} files -> 1" for r in done), flush=True)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    models = pa.table({
        "model_version": ["v1", "v1", "v2"], "event": ["registered", "promoted", "registered"],
        "uri": ["file:///models/v1", "file:///models/v1", "file:///models/v2"],
        "parent_version": [None, None, "v1"],
        "train_datasets": ['{"labeled": "seed7"}', '{"labeled": "seed7"}',
                           json.dumps({"labeled": "seed7", "curated": v2_curated})],
        "metrics": ["{}"] * 3, "classes": [list(CLASSES)] * 3, "run_id": ["bench"] * 3,
        "code_version": ["bench"] * 3, "created_at": [now] * 3,
    }, schema=MODELS)
    catalog.write("models", "part-bench.parquet", models)
    assert set(IMAGES.names) | set(FACES.names) | set(SCORES.names) | set(CURATED.names)
    return catalog, probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="faces (= scores) rows")
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--shard-size", type=int, default=128, help="images per file (shards)")
    ap.add_argument("--layout", choices=["compacted", "shards", "nights"], default="compacted")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    work = args.work.resolve()
    print(f"machine: {machine()}", flush=True)

    root = work / f"queries-{args.rows}-{args.nights}-{args.layout}-{args.shard_size}"
    marker = root / "done.json"
    if marker.exists():
        from omnifer.catalog import DataCatalog
        from omnifer.config import load_catalog

        os.environ["OMNIFER_CATALOG"] = str(root / "data_catalog.yaml")
        catalog = DataCatalog(load_catalog(root / "data_catalog.yaml"))
        probe = json.loads(marker.read_text())["probe"]
        print(f"catalog: {root} (generated earlier)")
    else:
        t = time.monotonic()
        print(f"generating {args.rows} faces over {args.nights} nights into {root} ...",
              flush=True)
        catalog, probe = generate(root, args.rows, args.nights, args.shard_size, args.layout)
        marker.write_text(json.dumps({"probe": probe}))
        print(f"  generated in {time.monotonic() - t:.0f}s", flush=True)

    t = time.perf_counter()
    con = catalog.connect()
    connect_s = time.perf_counter() - t
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    counts = {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]
              for n in ("images", "faces", "scores", "curated")}
    files = {n: len(list((root / "catalog" / n).rglob("*.parquet"))) for n in counts}
    print(f"rows: {counts}; files: {files}; connect {connect_s:.2f}s", flush=True)
    rows = [["connect (list files, create views)", "-", connect_s, connect_s, "-"]]
    for title, sql in QUERIES.items():
        sql = sql.format(sha=probe)
        times, n = [], 0
        for _ in range(1 + args.repeat):
            start = time.perf_counter()
            n = len(con.execute(sql).fetchall())
            times.append(time.perf_counter() - start)
        rows.append([title, n, times[0], min(times[1:]), "yes" if max(times) < 1 else "NO"])
    per = {"shards": f"shard of {args.shard_size} images", "nights": "night",
           "compacted": f"night, made by compaction from shards of {args.shard_size} images"
           }[args.layout]
    print_table(f"DuckDB over {counts['faces']:,} faces + scores, {counts['images']:,} images, "
                f"{args.nights} nights, layout '{args.layout}' (one file per {per}); "
                f"target < 1 s each",
                ["query", "rows out", "first s", f"best of {args.repeat} s", "< 1 s"], rows)
    if not counts["faces"]:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
