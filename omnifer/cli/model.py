"""CLI commands: ``train``, ``score``, ``select``, ``evaluate`` (the primitive model).

Thin shells over :func:`omnifer.training.train.train_model`,
:class:`omnifer.curation.scoring.Scorer`, :func:`omnifer.curation.selection.select_samples` and
:func:`omnifer.training.evaluate.evaluate_model`. All
work on generic image-folder datasets (``ROOT/<class>/*.png``), not only faces.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from omnifer.cli._app import app, console
from omnifer.errors import DatasetError
from omnifer.runtime.tables import print_table

if TYPE_CHECKING:
    from omnifer.labeled.base import LabeledData
    from omnifer.training.config import TrainConfig

FORMAT_HELP = "rafdb | ferplus | affectnet | folder"
LABEL_MODE_HELP = ("ferplus: majority (the dataset's protocol, default) | plurality | "
                   "probability (soft vote distribution)")


def _print_dropped(data: LabeledData) -> None:
    """One line: how many rows each label rule left out (FERPlus / AffectNet readers)."""
    rules = data.meta.get("dropped_by_rule")
    if not isinstance(rules, dict):
        return
    shown = ", ".join(f"{k} {v}" for k, v in rules.items() if v) or "none"
    mode = f" ({data.meta['label_mode']})" if data.meta.get("label_mode") else ""
    console.print(f"{data.source}{mode}: kept {len(data)} rows, dropped "
                  f"{data.meta.get('dropped', 0)}: {shown}", highlight=False, soft_wrap=True)


@app.command("train")
def train_cmd(
    data: Path = typer.Option(..., "--data", help="dataset root (see --format)"),
    fmt: str = typer.Option("folder", "--format", help=FORMAT_HELP),
    out: Path = typer.Option(..., "--out", help="checkpoint folder to write"),
    split: str = typer.Option("train", "--split", help="split to train on"),
    val_data: Path | None = typer.Option(None, "--val-data",
                                         help="validation set (same format); default: a "
                                              "stratified part of the training split"),
    extra: list[Path] = typer.Option([], "--extra",
                                     help="extra image folder(s) ROOT/<class>/* (e.g. curated "
                                          "pseudo-labeled faces); repeatable"),
    config: Path | None = typer.Option(None, "--config", help="TrainConfig YAML"),
    epochs: int | None = typer.Option(None, "--epochs"),
    seed: int | None = typer.Option(None, "--seed"),
    arch: str | None = typer.Option(None, "--arch", help="registered architecture"),
    input_size: int | None = typer.Option(None, "--input-size"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    balanced: bool | None = typer.Option(None, "--balanced/--no-balanced",
                                         help="class-balanced sampling"),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda | auto"),
    label_mode: str = typer.Option("majority", "--label-mode", help=LABEL_MODE_HELP),
    contempt: bool = typer.Option(False, "--contempt/--no-contempt",
                                  help="ferplus/affectnet: keep contempt (8 classes)"),
    pretrained: Path | None = typer.Option(None, "--pretrained",
                                           help="local weights file for --arch (state dict, "
                                                "safetensors or checkpoint): fine-tune it"),
    freeze_stages: int | None = typer.Option(None, "--freeze-stages",
                                             help="keep the first N stages (stem, layer1, …) "
                                                  "frozen"),
    backbone_lr_scale: float | None = typer.Option(None, "--backbone-lr-scale",
                                                   help="backbone LR = --lr × this (head: "
                                                        "--lr)"),
    hflip: bool | None = typer.Option(
        None, "--hflip/--no-hflip",
        help="random horizontal flips while training. A property of the data, recorded in "
             "the model card: right for faces and other mirror-symmetric images, wrong for "
             "text, digits, arrows or anything chiral. Default: on for the face formats "
             "(rafdb, ferplus, affectnet), OFF for --format folder (pass --hflip for faces)"),
    flip_tta: bool | None = typer.Option(
        None, "--flip-tta/--no-flip-tta",
        help="score, evaluate and select with the mirrored image too (flip test-time "
             "augmentation and the flip-agreement gate); recorded in the model card. "
             "Default: as --hflip"),
) -> None:
    """Train a model on a labeled dataset; writes weights, prototypes and card.json.

    Any registered architecture (--arch fercnn_small, resnet18, iresnet18, …), from scratch
    or fine-tuned from --pretrained. A temperature is fitted on the validation split
    afterwards (calibrated confidence); the ECE before and after is printed.
    """
    # Horizontal flips (augmentation and test-time) are a property of the data set: faces look
    # the same mirrored, handwriting or arrows do not. The face formats default to flips on; an
    # image folder to flips off unless --hflip (or ``hflip: true`` in --config) says so. The
    # card records the choice; scoring, selection, retraining and distillation follow it.
    from omnifer.labeled import read_dataset, read_image_folder
    from omnifer.training.config import load_train_config
    from omnifer.training.train import train_model

    cfg = load_train_config(config, epochs=epochs, seed=seed, arch=arch, input_size=input_size,
                            batch_size=batch_size, lr=lr, balanced_sampling=balanced,
                            device=device, pretrained=str(pretrained) if pretrained else None,
                            freeze_stages=freeze_stages, backbone_lr_scale=backbone_lr_scale,
                            hflip=hflip, flip_tta=flip_tta)
    cfg = cfg.model_copy(update=flip_defaults(cfg, fmt, hflip, flip_tta))
    train = read_dataset(data, fmt, split, size=cfg.input_size, label_mode=label_mode,
                         include_contempt=contempt)
    _print_dropped(train)
    val = (read_dataset(val_data, fmt, "test" if fmt != "ferplus" else "val",
                        size=cfg.input_size, classes=train.classes, label_mode=label_mode,
                        include_contempt=contempt) if val_data else None)
    if val is not None:
        _print_dropped(val)
    extras = [read_image_folder(p, size=cfg.input_size) for p in extra]
    console.print(f"training {cfg.arch} on {len(train)} images {train.counts()}"
                  + (f" + {sum(len(e) for e in extras)} extra" if extras else "")
                  + f"; horizontal flips: augmentation {'on' if cfg.hflip else 'off'}, "
                    f"test-time {'on' if cfg.flip_tta else 'off'}")
    card = train_model(train, cfg, out, val=val, extra=extras)
    m = card.metrics
    console.print(f"saved {out}: best epoch {m.get('best_epoch')}, val accuracy "
                  f"{m.get('val_accuracy', float('nan')):.3f}, {m.get('train_seconds')}s")
    from omnifer.models.loading import card_lines

    for line in card_lines(card):
        console.print(line, highlight=False, soft_wrap=True)


FACE_FORMATS = ("rafdb", "ferplus", "affectnet")


def flip_defaults(cfg: TrainConfig, fmt: str, hflip: bool | None,
                  flip_tta: bool | None) -> dict[str, bool]:
    """The flips a ``train`` run gets where neither the command line nor the config file set
    them: faces (the face formats) flip, an image folder does not (it may be chiral), and
    test-time flipping follows augmentation."""
    given = cfg.model_fields_set
    out: dict[str, bool] = {}
    if hflip is None and "hflip" not in given:
        out["hflip"] = fmt in FACE_FORMATS
    aug = out.get("hflip", cfg.hflip)
    if flip_tta is None and "flip_tta" not in given:
        out["flip_tta"] = aug
    return out


def _image_files(root: Path) -> list[Path]:
    """``root`` itself when it is a file (whatever its name), else every non-junk file under
    it (see :func:`omnifer.labeled.folder.list_images`)."""
    from omnifer.labeled import list_images

    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DatasetError(f"{root} is neither an image nor a folder")
    return list_images(root)


@app.command("score")
def score_cmd(
    model: Path = typer.Option(..., "--model", help="checkpoint folder"),
    images: Path = typer.Option(..., "--images", help="folder of images (any layout) or one"),
    out: Path = typer.Option(..., "--out", help="scores .parquet to write"),
    batch_size: int = typer.Option(256, "--batch-size"),
    device: str | None = typer.Option(None, "--device"),
) -> None:
    """Score every image under a folder: one row per image (face_id = relative path)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from omnifer.curation.scoring import Scorer
    from omnifer.errors import DecodeError
    from omnifer.imaging.decode import read_image_file
    from omnifer.imaging.transforms import resize_image
    from omnifer.models.checkpoints import load_checkpoint
    from omnifer.runtime.progress import track

    scorer = Scorer(load_checkpoint(model), batch_size=batch_size, device=device)
    files = _image_files(images)
    if not files:
        raise DatasetError(f"no images under {images}")
    base = images if images.is_dir() else images.parent
    version = scorer.loaded.card.version_hint
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer: pq.ParquetWriter | None = None
    counts = {"ok": 0, "failed": 0}

    def read(path: Path) -> tuple[np.ndarray | None, str, str]:
        try:  # the project's one decoder: EXIF orientation, HEIC/AVIF, as ingest sees them
            return read_image_file(path).image, "ok", ""
        except DecodeError as exc:
            return None, exc.status, str(exc)
    try:
        chunks = range(0, len(files), batch_size)
        for start in track(chunks, "score", total=len(chunks), unit="batch"):
            chunk = files[start : start + batch_size]
            ids = [p.relative_to(base).as_posix() for p in chunk]
            read_back = [read(p) for p in chunk]
            imgs = [r[0] for r in read_back]
            ok = [i for i, im in enumerate(imgs) if im is not None]
            bad = [i for i, im in enumerate(imgs) if im is None]
            counts["ok"] += len(ok)
            counts["failed"] += len(bad)
            parts = []
            if ok:
                size = scorer.loaded.card.input_size
                batch = np.stack([resize_image(imgs[i], size) for i in ok])
                t = scorer.score(batch).to_arrow([ids[i] for i in ok])
                t = t.append_column("status", pa.array(["ok"] * len(ok)))
                t = t.append_column("error", pa.array([None] * len(ok), pa.string()))
                parts.append(t)
            if bad:
                schema = parts[0].schema if parts else None
                rows = [{"face_id": ids[i], "status": read_back[i][1],
                         "error": read_back[i][2]} for i in bad]
                parts.append(pa.Table.from_pylist(rows, schema=schema) if schema
                             else pa.Table.from_pylist(rows))
            table = pa.concat_tables(parts, promote_options="default")
            table = table.append_column("model_version", pa.array([version] * table.num_rows))
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is not None:
            writer.close()
            writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    console.print(f"scored {counts['ok']} images ({counts['failed']} unreadable) -> {out}")


@app.command("select")
def select_cmd(
    scores: Path = typer.Option(..., "--scores", help="scores .parquet"),
    out: Path = typer.Option(..., "--out", help="curated .parquet to write"),
    policy: Path | None = typer.Option(None, "--policy", help="SelectionPolicy YAML/JSON"),
    min_confidence: float | None = typer.Option(None, "--min-confidence"),
    min_similarity: float | None = typer.Option(None, "--min-similarity"),
    top_k: int | None = typer.Option(None, "--top-k", help="top K per class"),
    duplicate: bool | None = typer.Option(None, "--duplicate/--no-duplicate",
                                          help="fill scarce classes up to K with copies"),
    flip: bool | None = typer.Option(None, "--require-flip/--no-require-flip"),
) -> None:
    """Keep reliable pseudo-labeled rows; writes them with ``copies`` and ``policy`` (JSON)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from omnifer.curation.selection import load_policy, select_samples, selection_report

    pol = load_policy(policy, min_confidence=min_confidence, min_similarity=min_similarity,
                      top_k_per_class=top_k, duplicate_to_k=duplicate,
                      require_flip_agreement=flip)
    if not scores.is_file():
        raise DatasetError(f"scores file {scores} not found")
    try:
        table = pq.read_table(scores)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"cannot read {scores}: {exc}") from None
    from omnifer.curation.selection import adapt_policy

    pol = adapt_policy(pol, table)  # a model without embeddings: no similarity gate (noted)
    selected = select_samples(table, pol)
    selected = selected.append_column("policy", pa.array([pol.to_json()] * selected.num_rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pq.write_table(selected, tmp)
    os.replace(tmp, out)
    report = selection_report(table, pol)
    print_table(console, report.column_names, (row.values() for row in report.to_pylist()),
                title=f"selection  {pol.to_json()}")
    console.print(f"kept {selected.num_rows} of {table.num_rows} rows -> {out}")


@app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="checkpoint folder"),
    data: Path = typer.Option(..., "--data", help="dataset root (see --format)"),
    fmt: str = typer.Option("folder", "--format", help=FORMAT_HELP),
    split: str = typer.Option("test", "--split"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the metrics here"),
    device: str | None = typer.Option(None, "--device"),
    label_mode: str = typer.Option("majority", "--label-mode", help=LABEL_MODE_HELP),
) -> None:
    """Accuracy, mean per-class accuracy and the confusion matrix on a labeled set."""
    from omnifer.labeled import read_dataset
    from omnifer.models.checkpoints import load_checkpoint
    from omnifer.training.evaluate import evaluate_model

    loaded = load_checkpoint(model)
    test = read_dataset(data, fmt, split, size=loaded.card.input_size, classes=loaded.classes,
                        label_mode=label_mode)
    _print_dropped(test)
    m = evaluate_model(loaded, test, device=device)
    classes = m["classes"]
    rows = []
    for i, c in enumerate(classes):
        acc = m["per_class_accuracy"][c]
        rows.append((c, *m["confusion"][i], m["support"][c], "-" if acc is None else f"{acc:.3f}"))
    print_table(console, ("true \\ predicted", *classes, "n", "accuracy"), rows,
                title=f"{model} on {data} ({split})")
    console.print(f"accuracy {m['accuracy']:.4f}   mean per-class accuracy "
                  f"{m['mean_class_accuracy']:.4f}   n={m['n']}")
    from omnifer.training.evaluate import evaluate_calibration

    cal = evaluate_calibration(loaded, test, split)  # raw vs the card's temperature
    m["calibration"] = cal.model_dump()
    console.print(f"calibration: {cal.line()}", highlight=False, soft_wrap=True)
    if json_out:
        json_out.write_text(json.dumps(m, indent=2, sort_keys=True))

