"""What the benchmark scripts share: demo worlds, a model, a throw-away catalog, tables.

Everything a benchmark makes goes under ``--work`` (default ``demo/bench/``, git-ignored) and
is reused by the next run when its parameters match: a 20 000-scene world takes minutes to
render, so it is rendered once. Nothing here touches the repository's own catalog.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "demo" / "bench"
DEMO_WORLD = REPO / "demo" / "world"
DEMO_MODEL = REPO / "demo" / "models" / "primitive-v1"
SEED = 7

if str(REPO) not in sys.path:  # flows/ and tasks/ are imported from the repository root
    sys.path.insert(0, str(REPO))


def quiet_prefect(work: Path) -> None:
    """Prefect on a temporary local server of its own, without telemetry or chatter."""
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect_home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def warm_prefect() -> float:
    """Start Prefect's temporary server with an empty flow; returns the seconds it took.

    A deployment has its server running already, so benchmarks time flows after this.
    """
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm() -> int:
        return 1

    t = time.perf_counter()
    warm()
    return time.perf_counter() - t


def ensure_world(work: Path, scenes: int, seed: int = SEED) -> Path:
    """A demo world with ``scenes`` unlabeled scenes: ``demo/world`` when it matches, else one
    rendered (once) under ``work``."""
    from omnifer.demo.world import generate_world

    for world in (DEMO_WORLD, work / f"world-{scenes}-s{seed}"):
        meta = world / "world.json"
        if meta.exists():
            m = json.loads(meta.read_text())
            if m.get("unlabeled_images") == scenes and m.get("seed") == seed:
                return world
    world = work / f"world-{scenes}-s{seed}"
    t = time.monotonic()
    print(f"rendering a {scenes}-scene demo world into {world} (once) ...", flush=True)
    # Few labeled faces: only the unlabeled scenes are measured, the model comes from ensure_model.
    generate_world(world, seed=seed, labeled_per_class=10, test_per_class=2,
                   unlabeled_images=scenes)
    print(f"  done in {time.monotonic() - t:.0f}s", flush=True)
    return world


def ensure_model(work: Path) -> Path:
    """The demo's primitive model when ``make demo`` made one, else a quickly trained one.

    Throughput does not depend on how good the model is, only on its architecture, so a
    3-epoch model on a small labeled set measures the same thing.
    """
    if (DEMO_MODEL / "card.json").exists():
        return DEMO_MODEL
    ckpt = work / "model-v1"
    if not (ckpt / "card.json").exists():
        from omnifer.labeled import read_rafdb
        from omnifer.training.config import TrainConfig
        from omnifer.training.train import train_model

        world = ensure_world(work, 40)
        train_model(read_rafdb(world / "labeled", split="train"),
                    TrainConfig(epochs=3, seed=0), ckpt)
    return ckpt


def fresh_catalog(root: Path, model: Path | None = None) -> Any:
    """An empty catalog under ``root`` (made the current one via ``OMNIFER_CATALOG``), with
    ``model`` registered and promoted as ``v1`` when given."""
    import yaml

    from omnifer.catalog import DataCatalog
    from omnifer.config import load_catalog
    from omnifer.models import versions

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["root"] = str(root / "catalog")
    path = root / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    os.environ["OMNIFER_CATALOG"] = str(path)
    os.environ.pop("OMNIFER_CATALOG_ROOT", None)
    catalog = DataCatalog(load_catalog(path))
    if model is not None:
        versions.register_version(catalog, model, "v1", metrics={"accuracy": 0.0})
        versions.record_event(catalog, "v1", "promoted", {"accuracy": 0.0})
    return catalog


def scene_files(world: Path) -> list[Path]:
    return sorted(p for p in (world / "unlabeled").rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, load average {load}")


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table (numbers right-aligned), in the style of the other scripts."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in text:
        print(line(r))
