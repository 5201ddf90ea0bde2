"""CLI commands over the catalog, model files and the nightly flow.

``ingest`` and ``demo`` start Prefect flows; they import ``flows`` lazily, inside the command,
so that importing the library never imports Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from omnifer.cli._app import app, console
from omnifer.params import check_date, check_name
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


@catalog_app.command("verify")
def catalog_verify(
    date: list[str] = typer.Option(None, "--date", help="Only this night (repeatable)"),
    repair: bool = typer.Option(False, "--repair",
                                help="Make a rerun rebuild what is missing (see below)"),
) -> None:
    """Check bookkeeping against data: markers without data, data without markers,
    compaction state naming missing files, rows of one key twice.

    --repair drops compaction entries whose file is gone and forgets shards whose data is
    missing (their remaining rows and their markers), so that `omnifer rerun --date D
    --force` rebuilds them. Run it while nothing else writes the catalog. Exit code 1 while
    something is left unresolved.
    """
    from omnifer.catalog import DataCatalog
    from omnifer.catalog.verify import verify_catalog

    report = verify_catalog(DataCatalog.from_settings(), dates=date or None, repair=repair)
    if report.findings:
        print_table(console, ("finding", "night", "dataset", "shard", "detail", "action"),
                    [(f.kind + (" (repaired)" if f.repaired else ""), f.ingest_date or "-",
                      f.dataset or "-", f.shard_id or "-", f.detail, f.action)
                     for f in report.findings],
                    title=f"catalog verify{' --repair' if repair else ''}")
    left = report.unresolved
    console.print(f"checked {len(report.nights)} night(s), {report.markers} shard marker(s): "
                  f"{len(report.findings)} finding(s), {len(report.findings) - len(left)} "
                  f"repaired, {len(left)} unresolved", highlight=False)
    if left:
        raise typer.Exit(1)


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
    for night in date or []:
        check_date(night, "--date")
    nights = compaction.nights(catalog) if all_nights else date
    run_id = f"compact-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    rows = [(night, r.dataset, r.inputs or "-", f"{r.rows:,}" if r.file else "-",
             r.file or f"skipped: {r.skipped}")
            for night in nights for r in compaction.compact_night(catalog, night, run_id)]
    print_table(console, ("night", "dataset", "files in", "rows", "result"), rows)


@app.command("sql")
def sql(
    query: str = typer.Argument(..., help="SQL over the views images, faces, scores, …"),
    out: Path | None = typer.Option(None, "--out", help="Write the result to .csv, .parquet, "
                                    ".jsonl/.ndjson or .json (lists/structs as JSON in CSV)"),
    limit: int = typer.Option(50, help="Rows to print (ignored with --out)"),
) -> None:
    """Query the catalog with DuckDB: one view per dataset."""
    from omnifer.catalog import run_sql
    from omnifer.catalog.sql_export import format_for, write_result

    if out is not None:
        format_for(out)  # an unknown suffix fails before the query runs
    result = run_sql(query)
    if out is not None:
        written = write_result(result, out)
        how = ", ".join(f"{k} as {v}" for k, v in written.converted.items())
        console.print(f"wrote {written.rows:,} rows to {out}" + (f" ({how})" if how else ""),
                      highlight=False, soft_wrap=True)
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
def models_list(
    events: bool = typer.Option(False, "--events", help="Every event row with its metrics"),
) -> None:
    """Model versions: which is the primitive model now, each one's status and figures."""
    from omnifer.catalog import DataCatalog
    from omnifer.models import versions

    catalog = DataCatalog.from_settings()
    if events:
        rows = catalog.read("models").sort_by("created_at").to_pylist()
        print_table(console, ("version", "event", "parent", "metrics", "created"),
                    [(r["model_version"], r["event"], r["parent_version"] or "-",
                      r["metrics"], str(r["created_at"])[:19]) for r in rows])
        return
    entries = versions.versions(catalog)
    rows = []
    for e in entries:
        acc = "-" if e["accuracy"] is None else f"{e['accuracy']:.3f} ({e['split']})"
        rows.append(("*" if e["status"] == "primitive" else "", e["version"], e["status"], acc,
                     "yes" if e["confusion"] else "-", e["parent"] or "-",
                     " ".join(e["events"]), str(e["registered_at"])[:19]))
    print_table(console, ("", "version", "status", "accuracy", "confusion", "parent", "events",
                          "registered"), rows)
    for version, requests in sorted(versions.flagged_versions(catalog).items()):
        console.print(f"{version}: trained_on_erased (erasure requests {', '.join(requests)}; "
                      "see 'omnifer erasures')", highlight=False, soft_wrap=True)
    current = next((e["version"] for e in entries if e["status"] == "primitive"), None)
    console.print(f"primitive model: {current}" if current else
                  "no primitive model yet: 'omnifer models promote VERSION' (or 'omnifer models "
                  "register CHECKPOINT --version v1 --promote')", highlight=False)


@models_app.command("register")
def models_register(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False),
    version: str = typer.Option(..., help="Version name, e.g. v1"),
    promote: bool = typer.Option(False, help="Make it the primitive model now"),
    test_data: Path | None = typer.Option(
        None, "--test-data", help="Also score it on this labeled set's test split (the "
        "figures retrain compares against); default: the card's validation figures"),
    fmt: str = typer.Option("folder", "--format",
                            help="Layout of --test-data: rafdb | ferplus | affectnet | folder"),
    split: str = typer.Option("test", "--split", help="Split of --test-data to score"),
) -> None:
    """Copy a trained checkpoint into the model store with its figures; optionally promote it.

    The card's accuracy and confusion matrix (validation split, from 'omnifer train') go into
    the `models` dataset, or the test split's with --test-data; the run report shows them.
    """
    from omnifer.catalog import DataCatalog
    from omnifer.models import versions

    check_name(version, "--version")
    catalog = DataCatalog.from_settings()
    metrics = versions.card_metrics(checkpoint)
    if test_data is not None:
        from omnifer.labeled.formats import read_dataset
        from omnifer.models.checkpoints import load_checkpoint
        from omnifer.training.evaluate import evaluate_model

        loaded = load_checkpoint(checkpoint)
        test = read_dataset(test_data, fmt, split, size=loaded.card.input_size,
                            classes=loaded.classes)
        metrics = {**metrics, **evaluate_model(loaded, test), "split": split}
    card_path = checkpoint / "card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    uri = versions.register_version(catalog, checkpoint, version, metrics=metrics,
                                    train_datasets={"labeled": card.get("train_datasets", [])})
    if promote:
        versions.promote(catalog, version)
    acc = metrics.get("accuracy")
    figure = f" ({metrics.get('split')} accuracy {acc:.3f})" if isinstance(acc, float) else ""
    console.print(f"registered {version} at {uri}{figure}"
                  f"{' and promoted it' if promote else ''}", highlight=False, soft_wrap=True)


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="A registered version (see 'omnifer models list')"),
) -> None:
    """Make a registered version the primitive model (what the nightly flow scores with)."""
    from omnifer.catalog import DataCatalog
    from omnifer.models import versions

    done = versions.promote(DataCatalog.from_settings(), version)
    if not done["changed"]:
        console.print(f"{version} is the primitive model already", highlight=False)
    else:
        console.print(f"promoted {version}: the primitive model now (was "
                      f"{done['previous'] or 'none'})", highlight=False)


@models_app.command("rollback")
def models_rollback(
    version: str = typer.Argument(None, help="An earlier promoted version; default: the one "
                                             "promoted before the current one"),
) -> None:
    """Return to an earlier promoted version; the current one is marked rolled back."""
    from omnifer.catalog import DataCatalog
    from omnifer.models import versions

    done = versions.rollback(DataCatalog.from_settings(), version)
    console.print(f"rolled back from {done['previous']} to {done['version']}: "
                  f"{done['version']} is the primitive model now", highlight=False)


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
    dask: str = typer.Option(None, "--dask", metavar="ADDRESS|local",
                             help="Run the shards on Dask: a scheduler (tcp://host:8786) or "
                             "'local' (a LocalCluster of --workers processes); needs the dask "
                             "extra and a Prefect server (PREFECT_API_URL)"),
) -> None:
    """Run the nightly ingest flow once (Prefect's temporary local server unless configured)."""
    if date is not None:  # one line now, not after Prefect has started
        check_date(date, "--date")
    from flows.ingest import nightly_ingest
    from flows.runners import preflight

    preflight("dask" if dask else None, dask)  # one line now, not after Prefect has started
    summary = nightly_ingest(date=date, sources=list(source or []) or None, shard_size=shard_size,
                             workers=workers, task_runner="dask" if dask else None,
                             dask_address=dask)
    print_summary(summary)


def print_summary(summary: dict) -> None:
    print_table(console, ("status", "images"), summary["images_by_status"].items(),
                title=f"nightly ingest {summary['ingest_date']}")
    console.print(f"faces: {summary['faces']}   scored: {summary['scored']}   "
                  f"selected: {summary['selected']}  {summary['selected_per_class']}")
    if summary.get("blocked_shards"):
        console.print(f"{len(summary['blocked_shards'])} shard(s) were skipped because their "
                      "markers say done, but their data is gone: run `omnifer catalog verify "
                      f"--repair`, then `omnifer rerun --date {summary['ingest_date']} --force`",
                      soft_wrap=True)
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
    if date is not None:
        check_date(date, "--date")
    from flows.demo import run_demo

    run_demo(out, seed=seed, labeled_per_class=labeled_per_class,
             unlabeled_images=unlabeled_images, date=date)
