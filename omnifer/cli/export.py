"""CLI command ``omnifer export``: curated sets, faces or distilled sets as image files.

A thin shell over :func:`omnifer.curation.export.export_images`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from omnifer.cli._app import app, console
from omnifer.runtime.tables import print_table


@app.command("export")
def export_cmd(
    kind: str = typer.Argument(..., help="curated | faces | distilled"),
    out: Path = typer.Option(..., "--out", help="folder to write (created; reruns sync it)"),
    layout: str = typer.Option(
        "folder", "--layout",
        help="folder: OUT/<label>/<face_id>.jpg (ImageFolder); rafdb: RAF-DB basic's "
             "Image/aligned/ + EmoLabel/list_patition_label.txt (omnifer train --format rafdb)"),
    date: list[str] = typer.Option([], "--date", help="only these nights (repeatable)"),
    curated_version: list[str] = typer.Option(
        [], "--curated-version",
        help="curated: these versions (default: per night the latest); distilled: the latest "
             "set made from them (repeatable)"),
    where: str | None = typer.Option(
        None, "--where",
        help="SQL condition over the manifest's columns, e.g. \"confidence > 0.9\""),
    split: str = typer.Option("train", "--split",
                              help="rafdb layout: the file-name prefix (train | test)"),
) -> None:
    """Write images + manifest.csv (label, confidence, face_id, source_uri) for any trainer."""
    # Idempotent: a rerun writes only what changed and removes what an earlier export of OUT
    # wrote but this one does not list. Works on local and S3 catalogs (docs/pools.md).
    from omnifer.catalog import DataCatalog
    from omnifer.curation.export import export_images

    result = export_images(DataCatalog.from_settings(), kind, out, layout,  # type: ignore[arg-type]
                           dates=date or None, curated_versions=curated_version or None,
                           where=where, split=split)  # type: ignore[arg-type]
    print_table(console, ("rows", "written", "unchanged", "removed", "left out"),
                [(result.rows, result.written, result.unchanged, result.removed,
                  ", ".join(f"{k} {v}" for k, v in result.skipped.items()) or "-")],
                title=f"export {kind} ({layout})  {', '.join(result.versions)}")
    print(f"manifest: {result.manifest}")  # plain: a path rich must not wrap
