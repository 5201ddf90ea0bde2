"""Retraining: the labeled set plus what was mined → a new model version, promoted only if better.

Recipes (``RetrainSettings.recipe``): ``curated`` adds the full curated set, ``distilled`` the
few distilled images per class (the paper's point: nearly the gain at a fraction of the cost),
``all`` both. Distilled images train on soft targets: part the parent model's softmax, part their
own class (``teacher_weight``); curated faces can too (``curated_teacher_weight``, default 0).
The parent may be any model kind: an imported ONNX model mines, teaches, and is what the torch
student has to beat. The new version is registered with its lineage (parent, labeled
set, curated and distilled versions, teacher) and both test figures; it becomes the primitive
model only when it beats the current one on the labeled set's held-out test split. A rejected
version stays in the registry, so "why was v7 not promoted" is a query.

Erasure: the lineage records the erasure requests whose rows were gone when training started
(``erasures``), so a later request flags exactly the versions that learned from what it
removed (:func:`omnifer.catalog.erasures.lineage_touches`); a request that comes while a
version trains flags it when it is registered. ``replace=True`` (what ``erasure.retrain``
uses) promotes the new version whatever its gain: it replaces a model trained on erased data.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from pydantic import BaseModel, ValidationError

from omnifer.catalog import erasures
from omnifer.catalog.catalog import DataCatalog
from omnifer.config import LabeledSpec, RetrainSettings
from omnifer.curation import curated
from omnifer.curation.scoring import Scorer
from omnifer.devices import resolve_device
from omnifer.distill.result import DistilledSet
from omnifer.distill.stage import latest_distilled_version
from omnifer.errors import ConfigError, DatasetError, config_error
from omnifer.imaging.tensors import denormalize
from omnifer.labeled.base import LabeledData
from omnifer.labeled.formats import read_dataset
from omnifer.models import versions as model_versions
from omnifer.models.checkpoints import LoadedModel, load_checkpoint
from omnifer.models.modelfiles import omnifer_home
from omnifer.training.config import TrainConfig
from omnifer.training.evaluate import evaluate_model
from omnifer.training.train import train_model

log = logging.getLogger(__name__)


class RetrainResult(BaseModel):
    """What retraining did: the new version, its verdict and both test figures."""

    model_version: str
    parent_version: str
    recipe: str
    promoted: bool
    accuracy: float
    parent_accuracy: float
    train_images: int
    train_seconds: float
    curated_versions: list[str]
    distilled_version: str | None
    checkpoint_uri: str


def next_version(catalog: DataCatalog) -> str:
    """``v<N+1>`` after the highest registered ``v<N>``."""
    versions = catalog.read("models", columns=["model_version"])["model_version"].to_pylist()
    numbers = [int(m.group(1)) for v in versions if (m := re.fullmatch(r"v(\d+)", v or ""))]
    return f"v{max(numbers, default=0) + 1}"


def train_config(overrides: dict[str, Any] | None = None, **more: Any) -> TrainConfig:
    values = {**(overrides or {}), **{k: v for k, v in more.items() if v is not None}}
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise config_error("retrain.train settings", exc) from None


def read_labeled(spec: LabeledSpec, size: int) -> tuple[LabeledData, LabeledData]:
    """(train, test) splits of the labeled set named in the settings."""
    if not spec.path:
        raise ConfigError("retrain needs the labeled set: set retrain.labeled.path (and "
                          ".format) in omnifer.yaml or OMNIFER_RETRAIN__LABELED__PATH (and "
                          "__FORMAT) where the flow runs, pass 'omnifer retrain --labeled PATH "
                          "--format FMT', or the retrain flow's labeled_path / labeled_format")
    train = read_dataset(spec.path, spec.format, spec.train_split, size=size)
    test = read_dataset(spec.path, spec.format, spec.test_split, size=size, classes=train.classes)
    return train, test


def distilled_as_labeled(catalog: DataCatalog, version: str, copies: int = 1) -> LabeledData:
    """A distilled version of the catalog as training data (see :func:`labeled_from_distilled`)."""
    table = catalog.read("distilled")
    table = table.filter(pc.equal(table["distilled_version"], version))
    if table.num_rows == 0:
        raise DatasetError(f"distilled version {version} is not in the catalog "
                           "(run 'omnifer distill curated' first)")
    return labeled_from_distilled(DistilledSet.from_arrow(table), version, copies)


def labeled_from_distilled(dset: DistilledSet, name: str, copies: int = 1) -> LabeledData:
    """Distilled tensors as uint8 BGR images (what :func:`train_model` eats).

    ``copies`` repeats each image so that a handful of synthetic images weigh more against
    the labeled set in every epoch.
    """
    rgb = denormalize(dset.images).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    bgr = np.ascontiguousarray((rgb[..., ::-1] * 255).round().astype(np.uint8))
    labels = dset.labels.numpy().astype(np.int64)
    names = [f"{name}/{dset.classes[c]}/{i}" for i, c in enumerate(labels)]
    if copies > 1:
        bgr, labels = np.repeat(bgr, copies, axis=0), np.repeat(labels, copies)
        names = [n for n in names for _ in range(copies)]
    return LabeledData(bgr, labels, tuple(dset.classes), names, source=f"distilled:{name}")


def with_teacher_targets(data: LabeledData, teacher: LoadedModel, weight: float,
                         device: str = "cpu") -> LabeledData:
    """``data`` with soft targets: ``weight`` × the teacher's softmax (flip TTA) plus the rest
    on each image's own class, in the teacher's class order.

    A distilled image is optimised to match a class's mean embedding, not to look like one
    face, and a one-hot label says nothing of which other expressions it resembles. The
    parent model's softmax does; soft labels from a teacher are how recent dataset
    distillation trains on few synthetic images. On the demo world they turned labeled +
    distilled from +1.7 into +4.2 points over labeled only (10 seeds, better on 8 of them;
    ``benchmarks/retrain_distill.py``).
    """
    if not 0 <= weight <= 1:
        raise ConfigError(f"teacher weight must be within [0, 1], not {weight}")
    data = data.remapped(teacher.classes)
    probs = Scorer(teacher, device=device).score(data.images).probs
    targets = weight * probs + (1 - weight) * data.soft_targets()
    return LabeledData(data.images, targets.astype(np.float32), data.classes, list(data.names),
                       f"{data.source}+teacher{weight:g}", data.skipped, dict(data.meta))


def curated_versions_of(catalog: DataCatalog, distilled_version: str) -> list[str]:
    table = catalog.read("distilled", columns=["distilled_version", "curated_version"])
    rows = table.filter(pc.equal(table["distilled_version"], distilled_version))
    value = rows["curated_version"][0].as_py() if rows.num_rows else None
    return [v for v in (value or "").split(",") if v]


def retrain(
    catalog: DataCatalog,
    settings: RetrainSettings,
    *,
    recipe: str | None = None,
    curated_versions: list[str] | None = None,
    distilled_version: str | None = None,
    run_id: str | None = None,
    work_dir: Path | str | None = None,
    version: str | None = None,
    use_teacher: bool = True,
    replace: bool = False,
) -> RetrainResult:
    """Train a new version on labeled + mined data, register it, promote it if it is better.

    ``use_teacher=False``: mined images keep one-hot targets (no soft targets from the parent,
    for distilled nor curated images, e.g. when the parent learned from erased faces);
    ``replace``: promote it whatever the gain (the parent must be replaced). Raises
    ConfigError for a malformed ``version`` (before training).
    """
    if version is not None:  # it names the model store folder: fail now, not after training
        from omnifer.params import check_name

        check_name(version, "model version")
    recipe = recipe or settings.recipe
    requests = erasures.load_requests(catalog)
    done_erasures = sorted(r.request_id for r in requests if r.state != "requested")
    if recipe not in ("curated", "distilled", "all"):
        raise ConfigError(f"recipe must be curated, distilled or all, not {recipe!r}")
    parent, parent_uri = model_versions.primitive_model(catalog)
    parent_model = load_checkpoint(model_versions.local_checkpoint(parent_uri, parent))
    # Flips are properties of the data set: the new version keeps its parent's unless the
    # retrain settings name them.
    cfg = train_config({"hflip": parent_model.card.hflip,
                        "flip_tta": parent_model.card.flip_tta, **settings.train})
    labeled, test = read_labeled(settings.labeled, cfg.input_size)

    device = str(resolve_device(cfg.device))

    extra: list[LabeledData] = []
    used_curated: list[str] = []
    teacher = None
    if recipe in ("distilled", "all"):
        distilled_version = distilled_version or latest_distilled_version(catalog)
        if not distilled_version:
            raise DatasetError("no distilled version yet: run 'omnifer distill curated' first")
        dset = distilled_as_labeled(catalog, distilled_version, settings.distilled_copies)
        if settings.teacher_weight > 0 and use_teacher:
            dset = with_teacher_targets(dset, parent_model, settings.teacher_weight, device)
            teacher = {"model_version": parent, "weight": settings.teacher_weight}
            if parent_model.card.kind != "torch":  # e.g. an imported ONNX teacher
                teacher["kind"] = parent_model.card.kind
        extra.append(dset)
        used_curated = curated_versions_of(catalog, distilled_version)
    else:
        distilled_version = None
    version = version or next_version(catalog)
    # Checkpoints are built locally, then copied into the catalog's model store; one folder per
    # catalog, so two catalogs' "v2" never share (or resume) each other's training state.
    catalog_key = hashlib.sha256(catalog.catalog.root.encode()).hexdigest()[:10]
    work = Path(work_dir) if work_dir else omnifer_home() / "retrain" / catalog_key
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix="curated-") as tmp:
        if recipe in ("curated", "all"):
            versions = curated_versions or curated.current_versions(catalog)
            if not versions:
                raise DatasetError("no curated rows yet: run the nightly ingest first")
            mined = curated.to_labeled(catalog, versions, cfg.input_size, tmp,
                                       classes=labeled.classes)
            if settings.curated_teacher_weight > 0 and use_teacher:  # the parent teaches
                mined = with_teacher_targets(mined, parent_model,
                                             settings.curated_teacher_weight, device)
                teacher = {**(teacher or {"model_version": parent}),
                           "curated_weight": settings.curated_teacher_weight}
                if parent_model.card.kind != "torch":
                    teacher["kind"] = parent_model.card.kind
            extra.append(mined)
            used_curated = sorted(set(used_curated) | set(versions))

        log.info("retraining %s (parent %s, recipe %s) on %d labeled + %d mined images",
                 version, parent, recipe, len(labeled), sum(len(e) for e in extra))
        ckpt = work / version
        started = time.monotonic()
        card = train_model(labeled, cfg, ckpt, extra=extra)
        seconds = card.metrics.get("train_seconds", round(time.monotonic() - started, 1))

    new_metrics = evaluate_model(load_checkpoint(ckpt), test, device=device)
    parent_metrics = evaluate_model(parent_model, test, device=device)
    lineage = {
        "recipe": recipe,
        "labeled": {"source": labeled.source, "digest": labeled.digest(), "n": len(labeled)},
        "curated": used_curated,
        "distilled": distilled_version,
        "teacher": teacher,
        "test": {"source": test.source, "n": len(test)},
        "erasures": done_erasures,
    }
    metrics = {**new_metrics, "train_seconds": seconds,
               "train_images": len(labeled) + sum(len(e) for e in extra)}
    uri = model_versions.register_version(catalog, ckpt, version, parent=parent,
                                          train_datasets=lineage, metrics=metrics,
                                          run_id=run_id)
    for request in erasures.load_requests(catalog):  # requests that came while we trained
        if request.request_id not in done_erasures and erasures.lineage_touches(lineage,
                                                                                request):
            model_versions.flag_trained_on_erased(catalog, version, request.request_id,
                                                  "erasure requested while it trained", run_id)
    gain = new_metrics["accuracy"] - parent_metrics["accuracy"]
    promoted = replace or gain > settings.min_gain
    verdict = {"accuracy": new_metrics["accuracy"], "parent_version": parent,
               "parent_accuracy": parent_metrics["accuracy"], "gain": gain,
               "min_gain": settings.min_gain, "test": lineage["test"]}
    if replace:
        verdict["replaces"] = f"{parent} (trained on erased data)"
    model_versions.record_event(catalog, version, "promoted" if promoted else "rejected",
                                verdict, run_id=run_id)
    log.info("%s: test accuracy %.4f vs %s %.4f → %s", version, new_metrics["accuracy"], parent,
             parent_metrics["accuracy"], "promoted" if promoted else "rejected")
    return RetrainResult(
        model_version=version, parent_version=parent, recipe=recipe, promoted=promoted,
        accuracy=new_metrics["accuracy"], parent_accuracy=parent_metrics["accuracy"],
        train_images=metrics["train_images"], train_seconds=float(seconds),
        curated_versions=used_curated, distilled_version=distilled_version, checkpoint_uri=uri,
    )
