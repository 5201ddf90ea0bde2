"""CLI commands over the catalog, model files and the nightly flow.

``ingest`` and ``demo`` start Prefect flows; they import ``flows`` lazily, inside the command,
so that importing the library never imports Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from omnifer.cli._app import app, console
from omnifer.runtime.tables import print_table

catalog_app = typer.Typer(help="The data catalog: datasets, row counts, columns.",
                          no_args_is_help=False, invoke_without_command=True)
models_app = typer.Typer(help="Model files (detectors) and model versions.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(models_app, name="models")


@catalog_app.callback()
def catalog_list(ctx: typer.Context) -> None:
    """List the catalog's datasets with their URIs, file and row counts."""
    if ctx.invoked_subcommand is not None:
        return
    from omnifer.catalog import DataCatalog

    rows = [(info.name, info.uri, f"v{info.schema_version}", ",".join(info.partitioning) or "-",
             info.files, f"{info.rows:,}") for info in DataCatalog.from_settings().info()]
    print_table(console, ("dataset", "uri", "schema", "partitioning", "files", "rows"), rows)


@catalog_app.command("describe")
def catalog_describe(dataset: str = typer.Argument(None, help="One dataset, or all")) -> None:
    """Print each dataset's columns and types, from the code (the source of truth)."""
    from omnifer.catalog import DataCatalog
    from omnifer.catalog.schemas import SCHEMAS

    catalog = DataCatalog.from_settings()
    for name in [dataset] if dataset else list(catalog.catalog.datasets):
        spec = catalog.catalog.datasets[name]
        rows = [(field.name, str(field.type)) for field in SCHEMAS[name]]
        rows += [(col, "string (partition folder)") for col in spec.partitioning]
        print_table(console, ("column", "type"), rows, title=f"{name}  ({catalog.uri(name)})")


@catalog_app.command("compact")
def catalog_compact(
    date: list[str] = typer.Option(None, "--date", help="A night to compact (repeatable)"),
    all_nights: bool = typer.Option(False, "--all", help="Every night with files"),
) -> None:
    """Merge each night's shard files into one file per dataset (safe while others read).

    The nightly flow does this for its own night; use it for older nights, or after
    `omnifer retry-failed` has added files to a night. Uncommitted shards are left alone.
    """
    import datetime as dt

    from omnifer.catalog import DataCatalog, compaction
    from omnifer.errors import ConfigError

    catalog = DataCatalog.from_settings()
    if bool(date) == all_nights:
        raise ConfigError("say which nights: --date D (repeatable) or --all")
    nights = compaction.nights(catalog) if all_nights else date
    run_id = f"compact-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    rows = [(night, r.dataset, r.inputs or "-", f"{r.rows:,}" if r.file else "-",
             r.file or f"skipped: {r.skipped}")
            for night in nights for r in compaction.compact_night(catalog, night, run_id)]
    print_table(console, ("night", "dataset", "files in", "rows", "result"), rows)


@app.command("sql")
def sql(
    query: str = typer.Argument(..., help="SQL over the views images, faces, scores, …"),
    out: Path | None = typer.Option(None, "--out", help="Write the result to .csv or .parquet"),
    limit: int = typer.Option(50, help="Rows to print (ignored with --out)"),
) -> None:
    """Query the catalog with DuckDB: one view per dataset."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from omnifer.catalog import run_sql
    from omnifer.errors import ConfigError

    result = run_sql(query)
    if out is not None:
        if out.suffix == ".csv":
            pacsv.write_csv(result, out)
        elif out.suffix == ".parquet":
            pq.write_table(result, out)
        else:
            raise ConfigError(f"--out must end in .csv or .parquet, got {out.name}")
        console.print(f"wrote {result.num_rows:,} rows to {out}")
        return
    print_table(console, result.column_names,
                ([_short(v) for v in row.values()] for row in result.slice(0, limit).to_pylist()))
    if result.num_rows > limit:
        console.print(f"… {result.num_rows - limit:,} more rows (use --limit or --out)")


def _short(value: object) -> str:
    """A query cell as text; binary columns (face crops) and long JSON are cut at 60 characters."""
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text if len(text) <= 60 else text[:57] + "…"


@models_app.command("fetch")
def models_fetch(
    name: list[str] = typer.Argument(None, help="Model files to fetch (default: all needed)"),
    offline: bool = typer.Option(False, help="Use mirrors only; never download"),
) -> None:
    """Put the model files into OMNIFER_HOME/models, from a mirror or upstream; verify sha256."""
    from omnifer.models import modelfiles

    names = list(name or [])
    fetched = modelfiles.fetch(names or None, download=not offline)
    for key, path in fetched.items():
        console.print(f"[green]ok[/green] {key}: {path} ({modelfiles.MODEL_FILES[key].licence})")
    skipped = [n for n in (names or list(modelfiles.MODEL_FILES)) if n not in fetched]
    for key in skipped:
        console.print(f"[yellow]skipped[/yellow] {key}: optional and in no mirror")


@models_app.command("list")
def models_list() -> None:
    """Model versions with their events (registered / promoted / rejected) and metrics."""
    from omnifer.catalog import DataCatalog

    rows = DataCatalog.from_settings().read("models").sort_by("created_at").to_pylist()
    print_table(console, ("version", "event", "parent", "metrics", "created"),
                [(r["model_version"], r["event"], r["parent_version"] or "-", r["metrics"],
                  str(r["created_at"])[:19]) for r in rows])


@models_app.command("register")
def models_register(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False),
    version: str = typer.Option(..., help="Version name, e.g. v1"),
    promote: bool = typer.Option(False, help="Make it the primitive model now"),
) -> None:
    """Copy a trained checkpoint into the model store; optionally promote it."""
    from omnifer.catalog import DataCatalog
    from omnifer.models import versions

    catalog = DataCatalog.from_settings()
    card = json.loads((checkpoint / "card.json").read_text())
    uri = versions.register_version(catalog, checkpoint, version,
                                    metrics=card.get("metrics", {}),
                                    train_datasets={"labeled": card.get("datasets", [])})
    if promote:
        versions.record_event(catalog, version, "promoted", card.get("metrics", {}))
    console.print(f"registered {version} at {uri}{' and promoted it' if promote else ''}")


@app.command("ingest")
def ingest_cmd(
    source: list[str] = typer.Option(None, "--source", "-s",
                                     help="Folder, s3://bucket/prefix, urls:manifest.csv, "
                                          "or JSON with options, e.g. '{\"path\": \"s3://b/"
                                          "crops/\", \"faces\": \"aligned\"}' for "
                                          "pre-aligned crops (no detection)"),
    date: str = typer.Option(None, help="Ingest date (YYYY-MM-DD); default today (UTC)"),
    shard_size: int = typer.Option(None, help="Images per shard"),
    workers: int = typer.Option(None, help="Shards processed in parallel"),
) -> None:
    """Run the nightly ingest flow once (Prefect's temporary local server unless configured)."""
    from flows.ingest import nightly_ingest

    summary = nightly_ingest(date=date, sources=list(source or []) or None, shard_size=shard_size,
                             workers=workers)
    print_summary(summary)


def print_summary(summary: dict) -> None:
    print_table(console, ("status", "images"), summary["images_by_status"].items(),
                title=f"nightly ingest {summary['ingest_date']}")
    console.print(f"faces: {summary['faces']}   scored: {summary['scored']}   "
                  f"selected: {summary['selected']}  {summary['selected_per_class']}")
    if summary.get("report"):
        print(f"report: {summary['report']}")  # plain: a path rich must not wrap


# `omnifer runs`, `rerun`, `retry-failed`: omnifer/cli/ops.py


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo"), help="Where the world and checkpoints go"),
    seed: int = typer.Option(7),
    labeled_per_class: int = typer.Option(40),
    unlabeled_images: int = typer.Option(2000),
    date: str = typer.Option(None, help="Ingest date; default today (UTC)"),
) -> None:
    """The whole pipeline on the embedded demo world (what `make demo` runs)."""
    from flows.demo import run_demo

    run_demo(out, seed=seed, labeled_per_class=labeled_per_class,
             unlabeled_images=unlabeled_images, date=date)
