"""The demo face world: seeded synthetic face photographs whose answers are known.

Why it exists: no labeled facial-expression data can be had offline, and the pipeline must be
graded against planted answers (docs/architecture.md, habit 7). :func:`generate_world` writes

* ``labeled/``: a RAF-DB "basic" tree (``EmoLabel/list_patition_label.txt``,
  ``Image/aligned/train_00001_aligned.jpg``): faces rendered in a scene-like context and
  aligned with :func:`omnifer.faces.align.align_face` from their *true* landmarks, so they
  share the geometry of the crops the pipeline later aligns from *detected* landmarks;
* ``unlabeled/``: nested folders of scene photos with zero to three faces, a few broken files,
  mostly JPEG and some PNG: what a crawl would find;
* ``truth/``: ``faces.parquet`` (box, landmarks, label of every face) and ``images.parquet``
  (what each scene file is), kept apart from ``unlabeled/`` so the pipeline cannot see them;
* ``world.json``: seed, counts, classes and generator version (a rerun can compare).

Faces are drawn procedurally (cv2 + numpy; :mod:`omnifer.demo.face`, :mod:`omnifer.demo.scene`):
head, ears, neck and body, hair, eyes with lids and irises, brows, nose, lips and teeth,
wrinkles, under sphere-like shading, so that a real CNN detector (YuNet) finds them. An
expression is a vector of eight action parameters (brow raise, inner-brow raise, eye opening,
jaw drop, smile, mouth stretch, upper-lip raise, nose wrinkle) drawn from the class prototype
*plus noise, a random intensity and sometimes a blend with a neighbouring class*, so some faces
are genuinely ambiguous (fear/surprise, sad/disgust/angry, neutral/sad): a small model trained
on 40 faces per class is clearly imperfect and more data helps. Nuisances: identity, roll, yaw,
scale, lighting, blur, noise, occlusion, clutter.

Determinism: every item's RNG is derived from ``(seed, item kind, index)`` alone, images are
encoded with fixed parameters and the Parquet/JSON files are written in index order, so the
same seed gives byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import pyarrow as pa
import pyarrow.parquet as pq

from omnifer.demo.identity import BOX_CANONICAL, BOX_ROTATED_SHARE, DrawnFace
from omnifer.demo.scene import (
    JPEG_QUALITY,
    UNLABELED_CLASS_WEIGHTS,
    encode_image,
    item_rng,
    render_labeled,
    render_scene,
)
from omnifer.labels import CANONICAL_TO_RAFDB, CLASSES
from omnifer.runtime.progress import track

log = logging.getLogger(__name__)

GENERATOR_VERSION = "omnifer-synth-1"
"""Bump when the rendering changes: the same seed then no longer gives the same bytes."""

LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: RAF-DB's own spelling
ALIGNED_DIR = "Image/aligned"

SCENES_PER_BATCH = 200
NO_FACE_SHARE = 0.05
BROKEN_SHARE = 0.005
PNG_SHARE = 0.1
BROKEN_KINDS = ("zero_byte", "truncated_jpeg", "text")


@dataclass(frozen=True)
class SceneSpec:
    index: int
    kind: str  # ok / no_face / broken
    broken: str | None
    relpath: str


def scene_relpath(seed: int, index: int, kind: str) -> str:
    """``batch-NN/cam-C/scene_IIIIII.ext``: nested like a camera dump; broken files are .jpg."""
    rng = item_rng(seed, "layout", index + 1)
    cam = int(rng.integers(1, 4))
    ext = "png" if kind != "broken" and rng.random() < PNG_SHARE else "jpg"
    return f"batch-{index // SCENES_PER_BATCH:02d}/cam-{cam}/scene_{index:06d}.{ext}"


def plan_scenes(seed: int, n: int) -> list[SceneSpec]:
    rng = item_rng(seed, "layout", 0)
    order = rng.permutation(n)
    n_broken = max(1, round(BROKEN_SHARE * n)) if n >= 10 else 0
    n_empty = max(1, round(NO_FACE_SHARE * n)) if n >= 10 else 0
    broken = {int(i): BROKEN_KINDS[j % len(BROKEN_KINDS)] for j, i in enumerate(order[:n_broken])}
    empty = {int(i) for i in order[n_broken:n_broken + n_empty]}
    specs = []
    for i in range(n):
        kind = "broken" if i in broken else "no_face" if i in empty else "ok"
        specs.append(SceneSpec(i, kind, broken.get(i), scene_relpath(seed, i, kind)))
    return specs


def broken_bytes(seed: int, spec: SceneSpec) -> bytes:
    if spec.broken == "zero_byte":
        return b""
    if spec.broken == "text":
        return b"<html><body>404 Not Found</body></html>\n"
    img, _ = render_scene(seed, spec.index, with_faces=False)
    data = encode_image(img, "jpg")
    sos = data.find(b"\xff\xda")  # start of scan: keep the headers, drop every pixel
    return data[: sos + 12]


def _scene_chunk(args: tuple[int, Path, list[SceneSpec]]) -> list[dict[str, Any]]:
    seed, root, specs = args
    rows = []
    for spec in specs:
        path = root / spec.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        faces: list[DrawnFace] = []
        if spec.kind == "broken":
            data = broken_bytes(seed, spec)
        else:
            img, faces = render_scene(seed, spec.index, with_faces=spec.kind == "ok")
            data = encode_image(img, spec.relpath.rsplit(".", 1)[1])
        path.write_bytes(data)
        kind = spec.kind if spec.kind != "ok" or faces else "no_face"
        rows.append({"relpath": spec.relpath, "kind": kind, "faces": [
            {"box": f.box.tolist(), "landmarks5": f.landmarks5.ravel().tolist(), "label": f.label}
            for f in faces]})
    return rows


def _labeled_chunk(args: tuple[int, Path, str, list[tuple[int, str]]]) -> list[int]:
    seed, root, split, items = args
    for index, label in items:
        crop, _ = render_labeled(seed, split, index, label)
        stem = f"{split}_{index:05d}" if split == "train" else f"{split}_{index:04d}"
        (root / ALIGNED_DIR / f"{stem}_aligned.jpg").write_bytes(encode_image(crop, "jpg"))
    return [index for index, _ in items]


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; cv2's own threads only contend


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- the world ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldSummary:
    """What :func:`generate_world` wrote and where."""

    root: Path
    labeled_dir: Path
    unlabeled_dir: Path
    truth_dir: Path
    seed: int
    train_images: int
    test_images: int
    scenes: int
    scenes_with_faces: int
    scenes_no_face: int
    broken_files: int
    faces: int
    faces_per_class: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _split_labels(seed: int, split: str, per_class: int) -> list[str]:
    labels = [c for c in CLASSES for _ in range(per_class)]
    rng = item_rng(seed, "split", 1 if split == "train" else 2)
    return [labels[i] for i in rng.permutation(len(labels))]


def generate_world(
    out: Path,
    seed: int = 7,
    labeled_per_class: int = 40,
    test_per_class: int = 30,
    unlabeled_images: int = 2000,
    workers: int | None = None,
) -> WorldSummary:
    """Write the demo world under ``out`` (replacing ``labeled/``, ``unlabeled/``, ``truth/``).

    ``labeled_per_class``/``test_per_class`` faces per class go to the RAF-DB tree;
    ``unlabeled_images`` scene files (about 5 % without a face, 0.5 % broken, at least one of
    each from 10 scenes on) go to ``unlabeled/``. ``workers`` processes render in parallel
    (default: one per CPU; 1 renders in this process); the bytes do not depend on it.
    """
    start = time.monotonic()
    out = Path(out)
    workers = max(1, workers or os.cpu_count() or 1)
    labeled, unlabeled, truth = out / "labeled", out / "unlabeled", out / "truth"
    for d in (labeled, unlabeled, truth):
        if d.exists():
            shutil.rmtree(d)
    (labeled / ALIGNED_DIR).mkdir(parents=True)
    (labeled / "EmoLabel").mkdir(parents=True)
    unlabeled.mkdir(parents=True)
    truth.mkdir(parents=True)

    train = _split_labels(seed, "train", labeled_per_class)
    test = _split_labels(seed, "test", test_per_class)
    lines = [f"train_{i:05d}.jpg {CANONICAL_TO_RAFDB[c]}" for i, c in enumerate(train, 1)]
    lines += [f"test_{i:04d}.jpg {CANONICAL_TO_RAFDB[c]}" for i, c in enumerate(test, 1)]
    (labeled / LABEL_FILE).write_text("\n".join(lines) + "\n")

    specs = plan_scenes(seed, unlabeled_images)
    jobs: list[tuple[Callable, tuple, int]] = []
    for split, labels in (("train", train), ("test", test)):
        items = list(enumerate(labels, 1))
        jobs += [(_labeled_chunk, (seed, labeled, split, c), len(c)) for c in _chunks(items, 16)]
    jobs += [(_scene_chunk, (seed, unlabeled, c), len(c)) for c in _chunks(specs, 8)]

    scene_rows: list[dict[str, Any]] = []
    total = len(train) + len(test) + len(specs)

    def run_all() -> Iterator[tuple[int, Any]]:
        if workers == 1:
            for fn, args, n in jobs:
                yield n, fn(args)
            return
        # spawn, not fork: forking a process that runs threads (a Prefect server, torch)
        # can deadlock the children on a lock held at fork time.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [(pool.submit(fn, args), n) for fn, args, n in jobs]
            for fut, n in futures:
                yield n, fut.result()

    done = 0
    for n, result in track(run_all(), "synth world", total=len(jobs), unit="chunks"):
        done += n
        if result and isinstance(result[0], dict):
            scene_rows.extend(result)
    assert done == total

    _write_truth(truth, scene_rows)
    faces = [f for r in scene_rows for f in r["faces"]]
    per_class = {c: sum(f["label"] == c for f in faces) for c in CLASSES}
    kinds = [r["kind"] for r in scene_rows]
    summary = WorldSummary(
        root=out, labeled_dir=labeled, unlabeled_dir=unlabeled, truth_dir=truth, seed=seed,
        train_images=len(train), test_images=len(test), scenes=len(specs),
        scenes_with_faces=kinds.count("ok"), scenes_no_face=kinds.count("no_face"),
        broken_files=kinds.count("broken"), faces=len(faces), faces_per_class=per_class,
        seconds=round(time.monotonic() - start, 2),
    )
    meta = {
        "generator_version": GENERATOR_VERSION, "seed": seed,
        "labeled_per_class": labeled_per_class, "test_per_class": test_per_class,
        "unlabeled_images": unlabeled_images, "classes": list(CLASSES),
        "counts": {k: v for k, v in summary.to_dict().items()
                   if k not in ("root", "labeled_dir", "unlabeled_dir", "truth_dir", "seed",
                                "seconds")},
        "unlabeled_class_weights": UNLABELED_CLASS_WEIGHTS,
        "truth_box": {"canonical": BOX_CANONICAL, "rotated_share": BOX_ROTATED_SHARE},
        "jpeg_quality": JPEG_QUALITY,
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("synth world: %d train, %d test, %d scenes (%d faces) in %.1fs under %s",
             len(train), len(test), len(specs), len(faces), summary.seconds, out)
    return summary


FACES_SCHEMA = pa.schema([
    ("relpath", pa.string()), ("face_index", pa.int32()),
    ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
    ("landmarks5", pa.list_(pa.float32())), ("label", pa.string()),
])
IMAGES_SCHEMA = pa.schema([("relpath", pa.string()), ("n_faces", pa.int32()),
                           ("kind", pa.string())])


def _write_truth(truth: Path, rows: list[dict[str, Any]]) -> None:
    faces: dict[str, list] = {name: [] for name in FACES_SCHEMA.names}
    for r in rows:
        for i, f in enumerate(r["faces"]):
            faces["relpath"].append(r["relpath"])
            faces["face_index"].append(i)
            for k, v in zip(("x1", "y1", "x2", "y2"), f["box"], strict=True):
                faces[k].append(v)
            faces["landmarks5"].append(f["landmarks5"])
            faces["label"].append(f["label"])
    pq.write_table(pa.table(faces, schema=FACES_SCHEMA), truth / "faces.parquet")
    images = {"relpath": [r["relpath"] for r in rows],
              "n_faces": [len(r["faces"]) for r in rows], "kind": [r["kind"] for r in rows]}
    pq.write_table(pa.table(images, schema=IMAGES_SCHEMA), truth / "images.parquet")
