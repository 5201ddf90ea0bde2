"""CLI command ``omnifer synth``: write the seeded demo face world (a thin shell over
:func:`omnifer.demo.world.generate_world`, so the CLI and the demo flow cannot drift)."""

from __future__ import annotations

from pathlib import Path

import typer

from omnifer.cli._app import app, console
from omnifer.runtime.tables import print_table


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the world into"),
    seed: int = typer.Option(7, help="Same seed → byte-identical files"),
    labeled_per_class: int = typer.Option(40, min=1, help="RAF-DB train faces per class"),
    test_per_class: int = typer.Option(30, min=0, help="RAF-DB test faces per class"),
    unlabeled_images: int = typer.Option(2000, min=0, help="Scene files under unlabeled/"),
    workers: int | None = typer.Option(None, min=1, help="Processes (default: one per CPU)"),
) -> None:
    """Write a seeded synthetic face world: labeled RAF-DB tree, unlabeled scenes, truth."""
    from omnifer.demo.world import generate_world

    s = generate_world(out, seed=seed, labeled_per_class=labeled_per_class,
                       test_per_class=test_per_class, unlabeled_images=unlabeled_images,
                       workers=workers)
    print_table(console, ("part", "where", "what"), [
        ("labeled", s.labeled_dir, f"{s.train_images} train + {s.test_images} test aligned "
         "112×112 crops (RAF-DB basic layout)"),
        ("unlabeled", s.unlabeled_dir, f"{s.scenes} files: {s.scenes_with_faces} with faces "
         f"({s.faces} faces), {s.scenes_no_face} without, {s.broken_files} broken"),
        ("truth", s.truth_dir, "faces.parquet, images.parquet (evaluation only)"),
        ("meta", s.root / "world.json", "seed, counts, classes, version"),
    ], title=f"demo world (seed {s.seed}) in {s.seconds:.1f}s")
    per_class = ", ".join(f"{k} {v}" for k, v in s.faces_per_class.items())
    console.print(f"faces in scenes per class: {per_class}", highlight=False)
