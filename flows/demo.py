"""``make demo``: the whole story on the embedded demo world, end to end.

Generate the world (skipped when present), train the primitive model on its small labeled set,
register and promote it, run the nightly ingest flow over the unlabeled scenes, then grade
the run against the world's hidden truth and show where everything is. Each step is skipped
when its output already exists, so a second ``make demo`` is quick and adds no rows.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from omnifer.catalog import DataCatalog
from omnifer.config import load_settings
from omnifer.models import versions
from omnifer.params import check_date

EXAMPLE_QUERIES = {
    "Curated faces per class per night": (
        "SELECT ingest_date, label, count(*) AS faces, round(avg(confidence), 3) AS mean_conf\n"
        "FROM curated GROUP BY ALL ORDER BY ingest_date, label"
    ),
    "Acceptance rate per source folder": (
        "SELECT regexp_extract(f.source_uri, '.*/unlabeled/([^/]+)/', 1) AS folder,\n"
        "       count(*) AS faces, count(c.face_id) AS curated,\n"
        "       round(count(c.face_id) / count(*), 3) AS acceptance\n"
        "FROM faces f LEFT JOIN curated c USING (face_id) GROUP BY folder ORDER BY folder"
    ),
    "Images by status, with an example error": (
        "SELECT status, count(*) AS images, any_value(error) AS example_error\n"
        "FROM images GROUP BY status ORDER BY images DESC"
    ),
}


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)  # printed, not logged: one line per step
    return time.monotonic()


def run_demo(
    out: Path,
    seed: int = 7,
    labeled_per_class: int = 40,
    test_per_class: int = 30,
    unlabeled_images: int = 2000,
    date: str | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the figures it printed (used by the end-to-end test)."""
    from flows.ingest import nightly_ingest
    from omnifer.demo.truth import label_precision, load_truth, match_faces
    from omnifer.demo.world import generate_world
    from omnifer.labeled import read_rafdb
    from omnifer.models.checkpoints import load_checkpoint
    from omnifer.training.config import TrainConfig
    from omnifer.training.evaluate import evaluate_model
    from omnifer.training.train import train_model

    if date is not None:  # before minutes of work, not after
        check_date(date, "date")
    out = Path(out).resolve()
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    world = out / "world"
    figures: dict[str, Any] = {}

    t = _step("1/5 demo world")
    wanted = {"seed": seed, "labeled_per_class": labeled_per_class,
              "test_per_class": test_per_class, "unlabeled_images": unlabeled_images}
    meta = world / "world.json"
    if meta.exists() and all(json.loads(meta.read_text()).get(k) == v for k, v in wanted.items()):
        print(f"   {world} exists (same seed and sizes): kept")
    else:
        generate_world(world, seed=seed, labeled_per_class=labeled_per_class,
                       test_per_class=test_per_class, unlabeled_images=unlabeled_images)
        print(f"   wrote {world} in {time.monotonic() - t:.0f}s")

    t = _step("2/5 primitive model (trained on the labeled set only)")
    ckpt = out / "models" / "primitive-v1"
    test = read_rafdb(world / "labeled", split="test")
    if not (ckpt / "card.json").exists():
        train = read_rafdb(world / "labeled", split="train")
        train_model(train, TrainConfig(seed=seed), ckpt)
        print(f"   trained in {time.monotonic() - t:.0f}s -> {ckpt}")
    else:
        print(f"   {ckpt} exists: kept")
    metrics = evaluate_model(load_checkpoint(ckpt), test)
    figures["primitive_test_accuracy"] = metrics["accuracy"]
    print(f"   test accuracy {metrics['accuracy']:.3f} "
          f"(mean per-class {metrics['mean_class_accuracy']:.3f}) on {len(test.names)} faces")

    _step("3/5 register and promote the primitive model")
    if versions.history(catalog, "v1") is None:
        scalar = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        # The full evaluation (confusion matrix included: the run report draws it).
        versions.register_version(catalog, ckpt, "v1", metrics=metrics,
                                  train_datasets={"demo-labeled": f"seed{seed}"})
        versions.record_event(catalog, "v1", "promoted", scalar)
    version, uri = versions.primitive_model(catalog)
    print(f"   primitive model {version} at {uri}")

    t = _step("4/5 nightly flow (Prefect, temporary local server): ingest, select, "
              "distill, retrain")
    ingest_date = check_date(date or dt.datetime.now(dt.UTC).date().isoformat(), "date")
    # Retraining needs the labeled set; the CPU-sized distillation settings are in omnifer.yaml.
    retrain = {"enabled": True, "recipe": "distilled",
               "labeled": {"path": str(world / "labeled"), "format": "rafdb"}}
    summary = nightly_ingest(date=ingest_date, sources=[str(world / "unlabeled")],
                             retrain=retrain)
    figures["summary"] = summary
    print(f"   {summary['images']} images this night: {summary['images_by_status']}")
    print(f"   {summary['faces']} faces, {summary['selected']} selected "
          f"{summary['selected_per_class']}")
    _print_retraining(summary.get("retraining") or {}, figures)
    print(f"   ({time.monotonic() - t:.0f}s)")

    _step("5/5 grade against the world's hidden truth")
    faces = catalog.read("faces", columns=["face_id", "source_uri", "bbox"])
    match = match_faces(faces, load_truth(world), world / "unlabeled")
    curated = catalog.read("curated", columns=["face_id", "label", "curated_version"])
    latest = curated.filter(pc.equal(curated["curated_version"], summary["curated_version"]))
    prec = label_precision(latest, match["labels"])
    figures.update(detection_recall=match["recall"], detection_precision=match["precision"],
                   curated_precision=prec["precision"], curated_evaluated=prec["evaluated"])
    print(f"   faces found: {match['matched']}/{match['true_faces']} "
          f"(recall {match['recall']:.3f}, precision {match['precision']:.3f}, IoU >= 0.5)")
    print(f"   curated pseudo-labels right: {prec['precision']:.3f} of {prec['evaluated']} "
          f"(the primitive model alone: {metrics['accuracy']:.3f} on the labeled test split)")
    _where_to_look(catalog, out)
    if summary.get("report"):
        figures["report"] = summary["report"]
        print("\n== Run report (open it in a browser; `omnifer report` writes it again)")
        print(f"   {summary['report']}")
    return figures


def _print_retraining(info: dict[str, Any], figures: dict[str, Any]) -> None:
    if not info.get("triggered"):
        print(f"   distill + retrain not triggered: {info.get('new_curated', 0)} curated faces "
              f"not distilled yet (threshold {info.get('min_new_curated')})")
        return
    d, r = info.get("distill") or {}, info.get("retrain") or {}
    if d:
        print(f"   distilled {d['distilled_version']}: {d['method']}, {d['ipc']} images per "
              f"class from {d['curated_rows']} curated faces ({d['wall_time_s']:.0f}s)")
    if r:
        figures["retrain"] = r
        verdict = "promoted: the next primitive model" if r["promoted"] else "rejected"
        print(f"   retrained {r['model_version']} on labeled + {r['recipe']} "
              f"({r['train_images']} images, {r['train_seconds']:.0f}s): test accuracy "
              f"{r['accuracy']:.3f} vs {r['parent_version']} {r['parent_accuracy']:.3f} "
              f"-> {verdict}")


def _where_to_look(catalog: DataCatalog, out: Path) -> None:
    con = catalog.connect()
    print("\n== Where to look")
    print(f"   catalog (Parquet, hive-partitioned by ingest_date): {catalog.catalog.root}")
    print(f"   demo world and model checkpoints:                 {out}")
    print("   list datasets:  .venv/bin/omnifer catalog")
    print("   past runs:      .venv/bin/omnifer runs")
    for title, query in EXAMPLE_QUERIES.items():
        print(f"\n-- {title}\n.venv/bin/omnifer sql \"{' '.join(query.split())}\"")
        rows = con.execute(query).fetchall()
        for row in rows[:8]:
            print("   ", row)
        if len(rows) > 8:
            print(f"    … {len(rows) - 8} more rows")
