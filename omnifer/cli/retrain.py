"""CLI command ``omnifer retrain``: labeled + curated / distilled → new version → promote if better.

Runs the library function in-process (no Prefect needed); ``flows/retrain.py`` is the same
work as a deployable flow for the ``gpu`` pool.
"""

from __future__ import annotations

import typer

from omnifer.cli._app import app, console
from omnifer.runtime.tables import print_table


@app.command("retrain")
def retrain_cmd(
    recipe: str | None = typer.Option(None, "--recipe",
                                      help="distilled | curated | all (default: retrain.recipe)"),
    labeled: str | None = typer.Option(None, "--labeled",
                                       help="labeled dataset root (default: retrain.labeled.path)"),
    fmt: str | None = typer.Option(None, "--format", help="rafdb | ferplus | affectnet | folder"),
    distilled_version: str | None = typer.Option(None, "--distilled-version",
                                                 help="default: the latest distilled version"),
    curated_version: list[str] = typer.Option([], "--curated-version",
                                              help="repeatable; default: the current ones"),
    epochs: int | None = typer.Option(None, "--epochs"),
    min_gain: float | None = typer.Option(None, "--min-gain",
                                          help="promote only above this accuracy gain"),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda | auto"),
) -> None:
    """Train a new model version; it becomes the primitive model only if it tests better."""
    from omnifer.catalog import DataCatalog
    from omnifer.config import RetrainSettings, load_settings
    from omnifer.training.retrain import retrain

    settings = load_settings()
    rs = settings.retrain.model_dump()
    if labeled:
        rs["labeled"]["path"] = labeled
    if fmt:
        rs["labeled"]["format"] = fmt
    rs["train"].update({k: v for k, v in {"epochs": epochs, "device": device}.items() if v})
    if min_gain is not None:
        rs["min_gain"] = min_gain
    outcome = retrain(DataCatalog(settings.catalog), RetrainSettings(**rs), recipe=recipe,
                      curated_versions=curated_version or None,
                      distilled_version=distilled_version)
    print_table(console, ("model", "trained on", "test accuracy"), [
        (f"{outcome.model_version} (new)", f"labeled + {outcome.recipe} ({outcome.train_images} "
         f"images, {outcome.train_seconds:.0f}s)", f"{outcome.accuracy:.4f}"),
        (f"{outcome.parent_version} (primitive)", "", f"{outcome.parent_accuracy:.4f}"),
    ])
    verdict = "[green]promoted[/green]" if outcome.promoted else "[yellow]rejected[/yellow]"
    console.print(f"{outcome.model_version} {verdict}; checkpoint {outcome.checkpoint_uri}")
