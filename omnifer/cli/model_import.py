"""CLI command ``omnifer models import-onnx``: an ONNX FER model → a registered model version.

A thin shell over :func:`omnifer.models.onnx_import.import_onnx`; every check runs before
anything is written, and a bad file gets one line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from omnifer.cli._app import console
from omnifer.cli.data import models_app
from omnifer.errors import ConfigError


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"--{what} takes numbers separated by commas, not {text!r}") from None


@models_app.command("import-onnx")
def import_onnx_cmd(
    file: Path = typer.Argument(..., help="the .onnx file"),
    version: str = typer.Option(..., "--version", help="model version to register, e.g. v5"),
    classes: str = typer.Option(..., "--classes",
                                help="class names in the order of the model's outputs, "
                                     "comma-separated (e.g. neutral,happy,sad,...)"),
    mean: str = typer.Option(..., "--mean", help="per-channel mean on [0, 1] pixels, in the "
                                                 "model's channel order (e.g. 0.5,0.5,0.5)"),
    std: str = typer.Option(..., "--std", help="per-channel std on [0, 1] pixels (a model fed "
                                               "0-255 pixels: --mean 0 --std 0.0039216)"),
    color: str = typer.Option(..., "--color", help="rgb | bgr | gray: what the model is fed"),
    input_size: int | None = typer.Option(None, "--input-size",
                                          help="square input side; needed when the file's "
                                               "height/width are dynamic"),
    logits_output: str | None = typer.Option(None, "--logits-output",
                                             help="output with the class scores (default: the "
                                                  "only output)"),
    embedding_output: str | None = typer.Option(None, "--embedding-output",
                                                help="output with a feature vector per face "
                                                     "(for the similarity gate)"),
    outputs: str = typer.Option("auto", "--outputs",
                                help="auto | logits | probs: what the class scores are"),
    flip_tta: bool = typer.Option(True, "--flip-tta/--no-flip-tta",
                                  help="average each face with its mirror image"),
    labeled: Path | None = typer.Option(None, "--labeled",
                                        help="labeled set: class prototypes (with an "
                                             "embedding output) and the temperature fit"),
    fmt: str = typer.Option("rafdb", "--format", help="rafdb | ferplus | affectnet | folder"),
    split: str = typer.Option("train", "--split",
                              help="split of --labeled to use (one the model was not "
                                   "trained on, for an honest temperature)"),
    temperature: float | None = typer.Option(None, "--temperature",
                                             help="use this temperature instead of fitting"),
    promote: bool = typer.Option(False, "--promote", help="make it the primitive model now"),
) -> None:
    """Register an ONNX facial-expression model as a model version (scored by onnxruntime)."""
    from omnifer.catalog import DataCatalog
    from omnifer.models.loading import card_lines
    from omnifer.models.onnx_import import import_onnx

    names = [c.strip() for c in classes.split(",") if c.strip()]
    if outputs not in ("auto", "logits", "probs"):
        raise ConfigError(f"--outputs must be auto, logits or probs, not {outputs!r}")
    data = None
    if labeled is not None:
        from omnifer.labeled import read_dataset

        data = read_dataset(labeled, fmt, split, size=input_size, classes=names)
    outcome = import_onnx(
        DataCatalog.from_settings(), file, version, names, mean=_floats(mean, "mean"),
        std=_floats(std, "std"), color=color, input_size=input_size,  # type: ignore[arg-type]
        logits_output=logits_output, embedding_output=embedding_output,
        output_kind=outputs, flip_tta=flip_tta, labeled=data,  # type: ignore[arg-type]
        temperature=temperature, promote=promote)
    card = outcome.card
    spec = card.onnx
    console.print(f"registered {version} at {outcome.uri}{' and promoted it' if promote else ''}",
                  highlight=False, soft_wrap=True)
    console.print(f"  {file.name}: input {spec['input']!r} ({spec['layout']}, "
                  f"{card.input_size}×{card.input_size}, {card.color}), class scores "
                  f"{spec['logits_output']!r} ({spec['output_kind']}), embedding "
                  f"{spec['embedding_output']!r} ({card.embedding_dim}-d)", highlight=False,
                  soft_wrap=True)
    if "accuracy" in card.metrics:
        console.print(f"  accuracy {card.metrics['accuracy']:.4f} on {card.metrics['n']} "
                      f"labeled images ({card.metrics['split']})", highlight=False)
    for line in card_lines(card):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    for note in outcome.notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
