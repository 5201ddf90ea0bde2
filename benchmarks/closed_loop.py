"""The closed loop: backfill speed, dedup at scale, and how right the near-duplicate rule is.

Usage::

    python benchmarks/closed_loop.py [--scenes 300] [--hashes 1000000] [--copy-scenes 60]

Three measurements, each printed beside its baseline:

1. **Backfill vs ingest** (library, one process, no Prefect): a night of ``--scenes`` demo
   scenes is ingested (read, sha256, decode, detect, align, crop, hash, score, Parquet), then
   a promoted model re-scores every stored face (read crop, decode 112×112 JPEG, score,
   Parquet). Faces/s of the backfill against images/s (and faces/s) of the ingest; then the
   night's dedup + re-selection, and a second backfill, which must do nothing.
2. **Dedup on ``--hashes`` face hashes**: hashes drawn bit by bit with the bit frequencies of
   the real face hashes of (1), plus 1 % planted near-copies (0–48 bits flipped). Times the
   multi-index self-join (every near pair among all of them) and a night's query (2 500 new
   hashes against all); reports candidates and the share of planted pairs found.
3. **Precision / recall of the rule on generated copies**: ``--copy-scenes`` scenes, each
   with five near-copies (:data:`omnifer.demo.copies.COPY_KINDS`), one person drawn with five
   expressions 20 times, and the photos of 40 labeled test faces. Over every pair of faces:
   recall of copy pairs, precision, and the share of same-person/other-expression pairs
   merged; for decontamination, the share of leaked test faces caught (with the right item)
   and of other faces wrongly marked.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_WORK,
    ensure_model,
    ensure_world,
    fresh_catalog,
    machine,
    print_table,
    scene_files,
)

DATE = "2026-12-02"


def backfill_vs_ingest(work: Path, scenes: int) -> np.ndarray:
    """Part 1; returns the real face hashes (as words) for part 2."""
    from omnifer.config import load_settings
    from omnifer.curation.hashing import to_words
    from omnifer.models import versions
    from omnifer.pipeline import backfill
    from omnifer.testing.faults import run_night

    world = ensure_world(work, scenes)
    model = ensure_model(work)
    catalog = fresh_catalog(work / "closed-loop", model)
    n_images = len(scene_files(world))
    t = time.perf_counter()
    run_night(catalog, [str(world / "unlabeled")], DATE, shard_size=128)
    ingest_s = time.perf_counter() - t
    faces = catalog.read("faces", columns=["face_id", "face_hash"])
    n_faces = faces.num_rows
    # The promoted model: same architecture (speed depends on it, not on the weights).
    versions.register_version(catalog, model, "v2", metrics={"accuracy": 0.0})
    versions.record_event(catalog, "v2", "promoted", {"accuracy": 0.0})
    settings = load_settings()
    t = time.perf_counter()
    plan = backfill.plan_backfill(catalog, "v2", None, settings.backfill.shard_size)
    for shard in plan.shards:
        backfill.process_backfill_shard(catalog, plan, shard, "bench")
    score_s = time.perf_counter() - t
    t = time.perf_counter()
    nights = [backfill.reselect_night(catalog, settings, n, "v2", "bench") for n in plan.nights]
    select_s = time.perf_counter() - t
    t = time.perf_counter()
    again = backfill.backfill(catalog, settings, "v2", run_id="bench-again")
    again_s = time.perf_counter() - t
    print_table(f"1. backfill vs ingest ({n_images} scene files, {n_faces} faces, 1 process)",
                ["stage", "seconds", "images/s", "faces/s"],
                [["ingest (decode, detect, align, score, write)", ingest_s,
                  n_images / ingest_s, n_faces / ingest_s],
                 ["backfill scoring (crops only)", score_s, "-", plan.n_faces / score_s],
                 ["backfill dedup + re-select (1 night)", select_s, "-", "-"],
                 ["second backfill (nothing to do)", again_s, "-", "-"]])
    print(f"   backfill / ingest, faces/s: {(plan.n_faces / score_s) / (n_faces / ingest_s):.1f}x"
          f"; night re-selected: {nights[0].curated_version} ({nights[0].selected} selected, "
          f"dedup {nights[0].dedup}); second backfill scored {again.faces_scored} faces, "
          f"{sum(not n.unchanged for n in again.nights)} nights re-selected")
    return to_words(faces["face_hash"].to_pylist())[0]


def dedup_scale(real: np.ndarray, n: int, seed: int = 0) -> None:
    """Part 2."""
    from omnifer.curation.hashing import HASH_BITS, BandIndex

    rng = np.random.default_rng(seed)
    bits = np.unpackbits(real.astype(">u8").view(np.uint8), axis=1)[:, :HASH_BITS]
    # Face hashes are not independent bits (aligned faces look alike): draw them from a
    # 32-dimensional Gaussian fitted to the real hashes' ±1 bits (PCA), then threshold.
    x = bits.astype(np.float64) * 2 - 1
    mean = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    r = min(32, len(sv))
    scale = sv[:r] / np.sqrt(len(x))
    resid = np.sqrt(max(1e-6, ((x - mean) ** 2).sum() / len(x) - (scale ** 2).sum())
                    / HASH_BITS)
    planted = n // 100
    base = np.empty((n - planted, HASH_BITS), np.uint8)
    for s0 in range(0, n - planted, 100_000):
        m = min(100_000, n - planted - s0)
        z = rng.standard_normal((m, r)) * scale
        base[s0:s0 + m] = (mean + z @ vt[:r] + rng.standard_normal((m, HASH_BITS)) * resid) > 0
    sample = rng.choice(len(base), size=min(2000, len(base)), replace=False)

    def median_distance(b: np.ndarray) -> tuple[float, float]:
        k = min(len(b), 2000)
        dd = (b[:k, None, :] != b[None, :k, :]).sum(-1)[np.triu_indices(k, 1)]
        return float(np.median(dd)), float(np.percentile(dd, 1))

    print(f"\n   pairwise Hamming distance (median, 1st percentile): real face hashes "
          f"{median_distance(bits)}, drawn {median_distance(base[sample])}")
    src = rng.integers(0, n - planted, planted)
    copies = base[src].copy()
    flips = rng.integers(0, 49, planted)
    for k in range(planted):
        copies[k, rng.choice(HASH_BITS, flips[k], replace=False)] ^= 1
    allbits = np.concatenate([base, copies])
    words = np.packbits(allbits, axis=1).view(">u8").astype(np.uint64)
    truth = set(zip(src.tolist(), range(n - planted, n), strict=True))
    rows = []
    t = time.perf_counter()
    index = BandIndex(words, bands=16, window=64)
    i, j, d = index.pairs(48, neighbours=4)
    self_s = time.perf_counter() - t
    found = len(truth & set(zip(i.tolist(), j.tolist(), strict=True)))
    rows.append([f"self-join of {n:,} hashes", self_s, len(i), found / planted,
                 index.compared])
    tonight = np.zeros(n, bool)
    tonight[-2500:] = True
    t = time.perf_counter()
    index = BandIndex(words, bands=16, window=64)
    qi, qj, _ = index.pairs(48, involving=tonight, neighbours=4)
    night_s = time.perf_counter() - t
    mine = {(a, b) for a, b in truth if tonight[a] or tonight[b]}
    found_n = len(mine & set(zip(qi.tolist(), qj.tolist(), strict=True)))
    rows.append([f"2,500 new against {n:,}", night_s, len(qi),
                 found_n / max(1, len(mine)), index.compared])
    print_table(f"2. dedup on {n:,} face hashes (256 bits, 16 bands, window 64, Hamming <= 48, "
                "4 nearest per hash; "
                f"{planted:,} planted copies, 0-48 bits flipped)",
                ["search", "seconds", "pairs kept", "planted found", "hash comparisons"],
                rows)
    # Baseline: brute force (numpy popcount of every pair), timed on 2,500 × up to 100,000.
    from omnifer.curation.hashing import hamming_matrix

    m = min(n, 100_000)
    t = time.perf_counter()
    hamming_matrix(words[-2500:], words[:m], chunk=64)
    per_pair = (time.perf_counter() - t) / (2500 * m)
    print(f"   baseline, brute force (timed on 2,500 x {m:,}): 2,500 new against {n:,} "
          f"~{per_pair * 2500 * n:,.0f} s; all {n * (n - 1) // 2:,} pairs "
          f"~{per_pair * n * (n - 1) / 2:,.0f} s")


def rule_quality(copy_scenes: int, seed: int = 31) -> None:
    """Part 3."""
    import cv2

    from omnifer.config_sections import DedupSettings
    from omnifer.curation.hashing import (
        BandIndex,
        face_hash,
        hamming_matrix,
        pixel_difference,
    )
    from omnifer.curation.hashing import to_words as words_of
    from omnifer.demo.copies import (
        COPY_KINDS,
        near_copy,
        render_labeled_photo,
        same_identity_photos,
    )
    from omnifer.demo.scene import item_rng, render_labeled, render_scene
    from omnifer.faces.detectors import create_detector, detect_and_align
    from omnifer.imaging.decode import decode_image
    from omnifer.labels import CLASSES

    cfg = DedupSettings()
    det = create_detector("yunet", score_threshold=0.6)

    def stored(crop: np.ndarray) -> np.ndarray:  # what faces.crop holds: JPEG q95
        data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        return decode_image(data).image

    def faces_in(data: bytes) -> list:
        return detect_and_align(decode_image(data).image, det)

    crops, group, kind = [], [], []
    t = time.perf_counter()
    for s in range(copy_scenes):  # a face and its copies share a group
        img, _ = render_scene(seed, s)
        originals = detect_and_align(img, det)
        for k, f in enumerate(originals):
            crops.append(stored(f.crop))
            group.append(f"scene{s}-{k}")
            kind.append("original")
        for c, name in enumerate(COPY_KINDS):
            cimg_bytes = near_copy(img, name, item_rng(seed, "scene", 100_000 + 10 * s + c))
            cimg = decode_image(cimg_bytes).image
            for g in detect_and_align(cimg, det):  # the copy's face: the nearest original
                cx = (g.detection.bbox[0] + g.detection.bbox[2]) / 2 / cimg.shape[1]
                cy = (g.detection.bbox[1] + g.detection.bbox[3]) / 2 / cimg.shape[0]
                dist = [abs((f.detection.bbox[0] + f.detection.bbox[2]) / 2 / img.shape[1] - cx)
                        + abs((f.detection.bbox[1] + f.detection.bbox[3]) / 2 / img.shape[0]
                              - cy) for f in originals]
                if dist and min(dist) < 0.12:
                    crops.append(stored(g.crop))
                    group.append(f"scene{s}-{int(np.argmin(dist))}")
                    kind.append(name)
    for p in range(20):  # one person, five expressions: five groups
        for e, (data, _) in enumerate(same_identity_photos(seed, p, list(CLASSES[:5]))):
            for f in faces_in(data)[:1]:
                crops.append(stored(f.crop))
                group.append(f"person{p}-expr{e}")
                kind.append(f"person{p}")
    n = len(crops)
    words, _ = words_of([face_hash(c) for c in crops])
    grp = np.asarray(group, object)
    # Every pair: hash distance by brute force (the reference), pixel check on candidates.
    dist = hamming_matrix(words, words)
    iu = np.triu_indices(n, 1)
    same = grp[iu[0]] == grp[iu[1]]
    cand = dist[iu] <= cfg.max_hamming
    pix = np.full(len(cand), np.inf)
    for k in np.flatnonzero(cand):
        pix[k] = pixel_difference(crops[iu[0][k]], crops[iu[1][k]])
    merged = cand & (pix <= cfg.max_pixel_difference)
    mi, mj, _ = BandIndex(words, cfg.bands, cfg.window).pairs(  # as the dedup stage does
        cfg.max_hamming, neighbours=cfg.neighbours)
    found = set(zip(mi.tolist(), mj.tolist(), strict=True))
    in_index = np.array([(a, b) in found for a, b in zip(*iu, strict=True)])
    via_index = in_index & merged
    tp, fp = int((via_index & same).sum()), int((via_index & ~same).sum())
    kinds = np.asarray(kind, object)
    person = np.array([k.startswith("person") for k in kinds])
    same_person = (person[iu[0]] & person[iu[1]] & (kinds[iu[0]] == kinds[iu[1]]) & ~same)
    rows = [["copy pairs (all kinds)", int(same.sum()), tp / max(1, same.sum())]]
    for name in COPY_KINDS:
        sel = same & ((kinds[iu[0]] == name) | (kinds[iu[1]] == name)) & \
            ((kinds[iu[0]] == "original") | (kinds[iu[1]] == "original"))
        rows.append([f"  original vs {name}", int(sel.sum()),
                     float((via_index & sel).sum() / max(1, sel.sum()))])
    rows.append(["same person, other expression (merged)", int(same_person.sum()),
                 float((via_index & same_person).sum() / max(1, same_person.sum()))])
    rows.append(["other faces (merged)", int((~same & ~same_person).sum()),
                 float((via_index & ~same & ~same_person).sum()
                       / max(1, (~same & ~same_person).sum()))])
    print_table(f"3a. near-duplicate rule on generated copies ({n} faces, {len(iu[0]):,} pairs;"
                f" Hamming <= {cfg.max_hamming}, pixel difference <= "
                f"{cfg.max_pixel_difference}; {time.perf_counter() - t:.0f}s)",
                ["pairs", "count", "share merged"], rows)
    from omnifer.curation.hashing import union_find

    roots = union_find(n, [(int(a), int(b)) for a, b in
                           zip(iu[0][via_index], iu[1][via_index], strict=True)])
    originals = {g: k for k, g in enumerate(group) if kind[k] == "original"}
    copies = [k for k in range(n) if kind[k] in COPY_KINDS and group[k] in originals]
    joined = sum(roots[k] == roots[originals[group[k]]] for k in copies)
    print(f"   clusters: {joined}/{len(copies)} copies end in their original's cluster "
          f"({joined / max(1, len(copies)):.3f}); faces of one person with other "
          f"expressions sharing a cluster: "
          f"{int((same_person & (roots[iu[0]] == roots[iu[1]])).sum())} of "
          f"{int(same_person.sum())} pairs")
    print(f"   precision {tp / max(1, tp + fp):.3f}, recall {tp / max(1, same.sum()):.3f} "
          "(pairwise, through the multi-index search). Hash stage alone, brute force: "
          f"{(cand & same).sum() / max(1, same.sum()):.3f} of copy pairs within "
          f"{cfg.max_hamming} bits; the multi-index search (and {cfg.neighbours} nearest) keeps "
          f"{(in_index & cand).sum() / max(1, cand.sum()):.3f} of all pairs within them")

    # Decontamination: 40 test faces (their photos leaked) against the faces above.
    test_crops, leak_crops, items = [], [], []
    for i in range(1, 41):
        label = CLASSES[i % len(CLASSES)]
        crop, _ = render_labeled(seed, "test", i, label)
        photo, _ = render_labeled_photo(seed, "test", i, label)
        data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        test_crops.append(decode_image(data).image)
        found_faces = faces_in(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 92])[1]
                               .tobytes())
        if found_faces:
            leak_crops.append(stored(found_faces[0].crop))
            items.append(i - 1)
    ew, _ = words_of([face_hash(c) for c in test_crops])

    def matches(pool: list[np.ndarray]) -> list[int | None]:
        pw, _ = words_of([face_hash(c) for c in pool])
        dd = hamming_matrix(pw, ew)
        out: list[int | None] = []
        for a in range(len(pool)):
            best = None
            near = np.flatnonzero(dd[a] <= cfg.eval_max_hamming)
            for e in near[np.argsort(dd[a][near], kind="stable")][:cfg.eval_neighbours]:
                diff = pixel_difference(pool[a], test_crops[e])
                if diff <= cfg.eval_max_pixel_difference and (best is None or diff < best[1]):
                    best = (int(e), diff)
            out.append(best[0] if best else None)
        return out

    t = time.perf_counter()
    leak_hits = matches(leak_crops)
    other_hits = matches(crops)
    right = sum(h == it for h, it in zip(leak_hits, items, strict=True))
    print_table(f"3b. decontamination ({len(test_crops)} test faces; Hamming <= "
                f"{cfg.eval_max_hamming}, pixel difference <= "
                f"{cfg.eval_max_pixel_difference}; {time.perf_counter() - t:.0f}s)",
                ["faces", "count", "marked contaminated"],
                [["leaked test photos (right item)", len(leak_crops),
                  right / max(1, len(leak_crops))],
                 ["other faces (wrongly)", len(crops),
                  sum(h is not None for h in other_hits) / max(1, len(crops))]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--hashes", type=int, default=1_000_000)
    ap.add_argument("--copy-scenes", type=int, default=60)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3],
                    help="Which measurements (2 needs 1's face hashes)")
    args = ap.parse_args()
    print(machine())
    if 1 in args.parts or 2 in args.parts:
        real = backfill_vs_ingest(args.work, args.scenes)
    if 2 in args.parts:
        dedup_scale(real, args.hashes)
    if 3 in args.parts:
        rule_quality(args.copy_scenes)


if __name__ == "__main__":
    main()
