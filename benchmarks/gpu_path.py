"""The ``gpu`` pool's work on one night, per device: distil the curated set, retrain on it.

Usage::

    python benchmarks/gpu_path.py --labeled demo/world/labeled [--devices cpu cuda]
                                  [--epochs N] [--work DIR]

Needs a catalog holding a night with a curated set (what ``make demo`` leaves in the catalog
of ``data_catalog.yaml``, or ``$OMNIFER_CATALOG``) and the labeled set the primitive model was
trained on (RAF-DB layout; ``make demo`` writes it to ``demo/world/labeled``). Each device works
on its own copy of the catalog, so that one device's promotion does not become the other's
parent. Per device:

* **distil** the current curated versions with DM at the library's defaults for that device
  (``omnifer.distill.config``: ``CPU_DEFAULTS`` on a CPU, ``GPU_DEFAULTS`` on a GPU), and, on a
  GPU, once more at the CPU defaults: the same work as the CPU row, so that row pair is the
  device's speed-up at equal settings;
* **retrain** on labeled + the distilled set at the settings' ``retrain.train`` (``--epochs``
  overrides the epochs), recipe ``distilled``, as ``omnifer retrain`` does.

The table gives the wall time of each step (distillation: its loop alone, and the whole stage
with reading the curated crops and writing the set), distillation's iterations per second, and
what came out. Issue 22.5 asked for this once on a GPU worker; docs/performance.md has the run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import DEFAULT_WORK, machine, print_table

from omnifer.catalog import DataCatalog
from omnifer.config import RetrainSettings, load_settings
from omnifer.distill import make_config
from omnifer.distill.config import CPU_DEFAULTS
from omnifer.distill.stage import distill_curated
from omnifer.training.retrain import retrain


def catalog_copy(settings: Any, dest: Path) -> DataCatalog:
    """A copy of the settings' local catalog at ``dest`` (replaced if there)."""
    root = Path(settings.catalog.root)
    if not root.is_dir():
        raise SystemExit(f"no local catalog at {root}: run `make demo` first (or point "
                         "OMNIFER_CATALOG at a catalog with a curated night)")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(root, dest)
    return DataCatalog(settings.catalog.model_copy(update={"root": str(dest)}))


def distil(catalog: DataCatalog, device: str, overrides: dict[str, Any], label: str,
           rows: list[list[Any]]) -> str:
    """Distil on ``device``; appends a table row, returns the distilled version."""
    config = make_config(overrides, device=device)
    start = time.perf_counter()
    out = distill_curated(catalog, config)
    wall = time.perf_counter() - start
    if out.skipped:
        raise SystemExit(f"{out.distilled_version} is already in the catalog: pass another "
                         "--seed")
    settings = (f"{label}: {config.iterations} it, width {config.net_width}, "
                f"{config.batch_real} real/class, IPC {config.ipc}")
    rows.append([device, "distil", settings, out.wall_time_s, wall,
                 f"{config.iterations / out.wall_time_s:.1f} it/s",
                 f"{out.distilled_version} from {out.curated_rows} faces"])
    print(f"  {device} distil ({label}): loop {out.wall_time_s:.1f}s, stage {wall:.1f}s",
          flush=True)
    return out.distilled_version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labeled", type=Path, required=True, help="RAF-DB layout labeled set")
    ap.add_argument("--devices", nargs="+", default=None,
                    help="default: cpu, and cuda when torch sees a GPU")
    ap.add_argument("--epochs", type=int, default=None, help="default: retrain.train's")
    ap.add_argument("--seed", type=int, default=101,
                    help="distillation seed; one the catalog has not distilled with yet, so "
                    "that the stage runs instead of finding its version committed")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = load_settings()
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    print(f"machine: {machine()}{gpu}", flush=True)

    rows: list[list[Any]] = []
    base = {k: v for k, v in settings.retrain.distill.items()
            if k not in ("iterations", "net_width", "batch_real", "device")}
    base["seed"] = args.seed
    for device in devices:
        catalog = catalog_copy(settings, args.work / f"gpu-path-{device}")
        distilled = distil(catalog, device, base, "library defaults", rows)
        if device != "cpu":  # the CPU row's work, on this device
            distil(catalog, device, base | CPU_DEFAULTS, "CPU defaults", rows)
        rs = settings.retrain.model_dump()
        rs["labeled"] = {"path": str(args.labeled), "format": "rafdb"}
        rs["train"] = {**rs["train"], "device": device,
                       **({"epochs": args.epochs} if args.epochs else {})}
        # A fresh work folder: retraining resumes a version's checkpoint left in its folder.
        work = Path(tempfile.mkdtemp(prefix=f"gpu-path-train-{device}-", dir=args.work))
        start = time.perf_counter()
        outcome = retrain(catalog, RetrainSettings(**rs), recipe="distilled",
                          distilled_version=distilled, version=f"v-{device}", work_dir=work)
        wall = time.perf_counter() - start
        shutil.rmtree(work, ignore_errors=True)
        epochs = rs["train"].get("epochs", "default")
        rows.append([device, "retrain", f"labeled + {distilled}, epochs {epochs}, "
                     f"{outcome.train_images} images", outcome.train_seconds, wall, "-",
                     f"test acc {outcome.accuracy:.3f} (parent {outcome.parent_accuracy:.3f}), "
                     f"{'promoted' if outcome.promoted else 'rejected'}"])
        print(f"  {device} retrain: train {outcome.train_seconds:.1f}s, stage {wall:.1f}s",
              flush=True)
    print_table("The gpu pool's work on one night, per device (seconds)",
                ["device", "step", "settings", "loop s", "stage s", "rate", "result"], rows)


if __name__ == "__main__":
    main()
