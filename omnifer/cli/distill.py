"""CLI commands: ``omnifer distill run`` and ``omnifer distill evaluate``.

Thin shells over :func:`omnifer.distill.methods.distill`,
:func:`omnifer.distill.stage.distill_curated` and
:func:`omnifer.distill.evaluation.compare_methods`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import typer

from omnifer.cli._app import app, console
from omnifer.errors import ConfigError, DatasetError
from omnifer.runtime.tables import print_table

distill_app = typer.Typer(help="Distil curated data into a few synthetic images per class.",
                          no_args_is_help=True)
app.add_typer(distill_app, name="distill")

Format = Literal["folder", "parquet"]


def _load_sampler(data: str, fmt: str, image_size: int, classes: list[str] | None,
                  label_column: str, image_column: str):
    from omnifer.distill.samplers import (
        ParquetClassSampler,
        TensorClassSampler,
        image_folder_tensors,
    )

    if fmt == "folder":
        images, labels, names = image_folder_tensors(data, image_size, classes)
        return TensorClassSampler(images, labels, len(names)), names
    if fmt == "parquet":
        sampler = ParquetClassSampler(data, classes, image_size, label_column=label_column,
                                      image_column=image_column)
        return sampler, sampler.classes
    raise ConfigError(f"--format must be 'folder' or 'parquet', not {fmt!r}")


def _sleeping_omp_threads() -> None:
    """Let torch's OpenMP threads sleep, not spin, between parallel regions
    (``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it). On 2 cores shared with other
    work, spinning threads ran distillation up to ~10x slower (docs/performance.md). It is
    read when torch loads, so it is set before the commands import torch (only they do)."""
    from omnifer.config import default_variable

    if "torch" not in sys.modules:
        default_variable("OMP_WAIT_POLICY", "PASSIVE")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@distill_app.command("run")
def run(
    data: str = typer.Option(..., "--data", help="image folder ROOT/<class>/*.jpg or Parquet"),
    fmt: str = typer.Option("folder", "--format", help="folder | parquet"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    method: str = typer.Option("dm", "--method", help="dm | gm"),
    ipc: int = typer.Option(10, "--ipc", help="images per class"),
    iterations: int | None = typer.Option(None, "--iterations",
                                          help="default: 1000 on a GPU, 300 on CPU"),
    image_size: int = typer.Option(32, "--image-size"),
    batch_real: int | None = typer.Option(None, "--batch-real",
                                          help="real images per class per iteration; default: "
                                               "64 on a GPU, 32 on CPU"),
    width: int | None = typer.Option(None, "--width",
                                     help="ConvNet width; default: 128 on a GPU, 64 on CPU"),
    threads: int | None = typer.Option(None, "--threads",
                                       help="torch CPU threads (default: one per core)"),
    lr_img: float | None = typer.Option(None, "--lr-img", help="default: 1.0 DM, 0.1 GM"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    classes: str | None = typer.Option(None, "--classes", help="comma-separated class names"),
    label_column: str = typer.Option("label", "--label-column"),
    image_column: str = typer.Option("crop", "--image-column"),
    curated_version: str | None = typer.Option(None, "--curated-version"),
    distilled_version: str | None = typer.Option(None, "--distilled-version"),
    hflip: bool | None = typer.Option(
        None, "--hflip/--no-hflip",
        help="mirror images in the augmentation (DSA) and in evaluation: a property of the "
             "data; default on (faces); --no-hflip for text, digits, arrows, anything chiral"),
) -> None:
    """Distil DATA and write OUT/distilled.parquet, OUT/grids/<class>.png, OUT/config.json.

    Unset, --iterations, --batch-real and --width are 1000, 64 and 128 on a GPU (the
    literature's setting, for GPU workers) and 300, 32 and 64 on CPU (sized for 2 cores).
    """
    _sleeping_omp_threads()
    from omnifer.distill import distill, make_config, save_grids

    config = make_config(method=method, ipc=ipc, iterations=iterations, lr_img=lr_img,
                         batch_real=batch_real, image_size=image_size, seed=seed, device=device,
                         hflip=hflip, net_width=width, threads=threads)
    sampler, names = _load_sampler(data, fmt, image_size, _split(classes), label_column,
                                   image_column)
    result = distill(sampler, names, config)
    out.mkdir(parents=True, exist_ok=True)
    parquet = out / "distilled.parquet"
    result.write_parquet(str(parquet), curated_version, distilled_version)
    grids = save_grids(result, out / "grids")
    (out / "config.json").write_text(json.dumps(
        {"config": config.model_dump(), "data": data, "format": fmt, "classes": names,
         "wall_time_s": result.wall_time_s}, indent=2))
    console.print(f"distilled {len(names)} classes × {ipc} ({method}, {config.iterations} "
                  f"iterations, width {config.net_width}) in {result.wall_time_s:.1f}s "
                  f"({config.iterations / max(result.wall_time_s, 1e-9):.2f} it/s) → {parquet} "
                  f"and {len(grids)} grids")


@distill_app.command("curated")
def curated_cmd(
    curated_version: list[str] = typer.Option([], "--curated-version",
                                              help="repeatable; default: the current ones"),
    method: str | None = typer.Option(None, "--method", help="dm | gm"),
    ipc: int | None = typer.Option(None, "--ipc", help="images per class"),
    iterations: int | None = typer.Option(None, "--iterations"),
    device: str | None = typer.Option(None, "--device"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads"),
) -> None:
    """Distil the catalog's curated set into the ``distilled`` dataset (+ PNG grids)."""
    _sleeping_omp_threads()
    from omnifer.catalog import DataCatalog
    from omnifer.config import load_settings
    from omnifer.distill import make_config
    from omnifer.distill.stage import distill_curated

    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    config = make_config(settings.retrain.distill, method=method, ipc=ipc,
                         iterations=iterations, device=device, threads=threads)
    out = distill_curated(catalog, config, curated_version or None)
    state = "already committed" if out.skipped else f"done in {out.wall_time_s:.1f}s"
    console.print(f"distilled {out.distilled_version}: {out.method}, {out.ipc} per class from "
                  f"{out.curated_rows} curated faces ({', '.join(out.curated_versions)}), "
                  f"{state}; grids in {out.grids_uri}")


@distill_app.command("evaluate")
def evaluate(
    distilled: Path = typer.Option(..., "--distilled", help="distilled Parquet file"),
    test: str = typer.Option(..., "--test", help="test image folder ROOT/<class>/*"),
    data: str | None = typer.Option(None, "--data", help="real data for random/herding"),
    fmt: str = typer.Option("folder", "--format", help="folder | parquet (of --data)"),
    num_models: int = typer.Option(3, "--num-models"),
    epochs: int = typer.Option(300, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    label_column: str = typer.Option("label", "--label-column"),
    image_column: str = typer.Option("crop", "--image-column"),
    threads: int | None = typer.Option(None, "--threads",
                                       help="torch CPU threads (default: one per core)"),
) -> None:
    """Print test accuracy (mean ± std over fresh ConvNets): distilled vs random vs herding.

    Each set trains --num-models ConvNets of the distilled set's width for --epochs; progress
    counts those epochs (a bar on a terminal, a log line every 10 s elsewhere).
    """
    _sleeping_omp_threads()
    import pyarrow.parquet as pq

    from omnifer.distill import DistilledSet, image_folder_tensors
    from omnifer.distill.evaluation import compare_methods

    if not distilled.exists():
        raise DatasetError(f"{distilled} does not exist")
    dset = DistilledSet.from_arrow(pq.read_table(distilled))
    cfg = dset.config.model_copy(update={"seed": seed, "device": device, "threads": threads})
    size = dset.images.shape[-1]
    test_x, test_y, _ = image_folder_tensors(test, size, dset.classes)
    baselines: tuple[str, ...] = ()
    if data is not None:
        sampler, _ = _load_sampler(data, fmt, size, dset.classes, label_column, image_column)
        baselines = ("random", "herding")
    else:
        from omnifer.distill import TensorClassSampler

        sampler = TensorClassSampler(dset.images, dset.labels, len(dset.classes))
        console.print("[yellow]no --data: random/herding baselines skipped[/yellow]")
    name = f"distilled ({dset.config.method})"
    results = compare_methods(sampler, dset.classes, test_x, test_y, cfg, methods=(),
                              baselines=baselines,
                              distilled={name: (dset.images, dset.labels)},
                              num_models=num_models, epochs=epochs)
    print_table(console, ("set", f"ipc {dset.config.ipc} test acc %", "models"),
                [(key, f"{100 * res['mean']:.2f} ± {100 * res['std']:.2f}", len(res["accs"]))
                 for key, res in results.items()])
