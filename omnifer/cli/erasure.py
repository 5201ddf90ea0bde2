"""``forget`` (erasure requests) and ``erasures`` (list them; check nothing erased is left)."""

from __future__ import annotations

from pathlib import Path

import typer

from omnifer.cli._app import app, console
from omnifer.runtime.tables import print_table

erasures_app = typer.Typer(help="Erasure requests: list them, check that nothing erased is "
                                "left in the catalog.", invoke_without_command=True)
app.add_typer(erasures_app, name="erasures")


@app.command("forget")
def forget_cmd(
    source_prefix: list[str] = typer.Option(None, "--source-prefix",
                                            help="Every object under this URI or folder"),
    sha256: list[str] = typer.Option(None, "--sha256", help="One image's content (hex)"),
    face_id: list[str] = typer.Option(None, "--face-id", help="One face"),
    from_file: Path | None = typer.Option(None, "--from-file",
                                          help="A list: one sha256, face id or prefix a line"),
    reason: str = typer.Option("", "--reason", help="Why (kept with the request)"),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Only print what would be touched"),
) -> None:
    """Erase a source, a photo or a face from the catalog and everything made from it.

    Removes the matching images, faces, scores and curated rows (every night), marks the
    distilled versions made from them stale (removed; the next distillation rebuilds), flags
    the models trained on them, rebuilds the reports that showed them, and keeps the content
    out of later crawls. Safe to kill and run again. See docs/operations.md, "Erasure requests".
    """
    from omnifer.catalog import DataCatalog
    from omnifer.config import load_settings
    from omnifer.erasure import forget, make_rules

    settings = load_settings()
    rules = make_rules(source_prefix or [], sha256 or [], face_id or [], from_file)
    result = forget(DataCatalog(settings.catalog), rules, reason, dry_run=dry_run,
                    settings=settings)
    plan = result.plan
    rows = [(name, night, f"{n:,}") for name, nights in plan.rows.items()
            for night, n in nights.items()]
    title = ("would erase" if dry_run else "erased") + f": {len(plan.sha256s)} images, " \
        f"{len(plan.face_ids)} faces"
    print_table(console, ("dataset", "night", "rows"), rows, title=title)
    for label, items in (("stale distilled versions", plan.stale_distilled),
                         ("flagged models (trained_on_erased)",
                          [f"{v} ({why})" for v, why in plan.flagged_models.items()]),
                         ("reports " + ("to rebuild" if dry_run else "rebuilt"),
                          plan.reports if dry_run else result.reports)):
        console.print(f"{label}: {', '.join(items) if items else 'none'}", soft_wrap=True)
    if result.retrained_model:
        console.print(f"replacement model: {result.retrained_model}")
    if not dry_run:
        console.print(f"request {result.request_id}: {result.state}"
                      f"{' (resumed)' if result.resumed else ''}")


@erasures_app.callback()
def erasures_list(ctx: typer.Context) -> None:
    """List the erasure requests: rules, reason, what they matched, state."""
    if ctx.invoked_subcommand is not None:
        return
    from omnifer.catalog import DataCatalog
    from omnifer.catalog.erasures import load_requests

    rows = [(r.request_id, r.state, "; ".join(f"{x.rule}={x.value}" for x in r.rules),
             r.reason or "-", len(r.sha256s), len(r.face_ids), ",".join(r.flagged_models) or "-",
             str(r.requested_at)[:19], str(r.done_at or "-")[:19])
            for r in load_requests(DataCatalog.from_settings())]
    print_table(console, ("request", "state", "rules", "reason", "images", "faces",
                          "flagged models", "requested", "done"), rows)


@erasures_app.command("check")
def erasures_check() -> None:
    """Look everywhere in the catalog for erased content; exit 1 when some is left."""
    from omnifer.catalog import DataCatalog
    from omnifer.erasure import find_erased_present

    found = find_erased_present(DataCatalog.from_settings())
    if not found:
        console.print("no erased content in the catalog")
        return
    print_table(console, ("kind", "dataset", "where", "rows", "visible", "forget running"),
                [(f.kind, f.dataset or "-", f.uri, f.rows or "-", f.visible, f.pending)
                 for f in found])
    raise typer.Exit(1)
