"""Train the primitive model (or retrain it on labeled + curated data).

Settings: :class:`omnifer.training.config.TrainConfig`; augmentation:
:mod:`omnifer.training.augment`.

:func:`train_model` is the one entry point (CLI, Prefect task and notebooks call it):

* augmentation in torch, on the training device: random resized crop + small rotation +
  horizontal flip (when ``hflip``: a property of the data set, recorded in the card with
  ``flip_tta``) as one ``affine_grid``/``grid_sample``, then brightness/contrast/saturation
  jitter; every random number comes from a generator seeded by ``(seed, epoch)``
* optional class-balanced sampling (with replacement, weights 1/class count)
* cross-entropy on probability targets (hard labels become one-hot, so soft labels such as
  FERPlus votes work unchanged) with label smoothing; AdamW or SGD; warm-up + cosine LR
* early stopping on a validation split (``val`` or a seeded, stratified part of ``train``);
  the best epoch's weights are kept
* resumable: after each epoch ``OUT/train_state/`` holds the last and best weights
  (safetensors), the optimizer state (``torch.save``; read back with ``weights_only=True``)
  and ``state.json``. A rerun with the same config and data continues after the last
  finished epoch, and one whose checkpoint is complete returns its card without training.
  Because randomness is re-seeded per epoch, a resumed run ends with the same weights as an
  uninterrupted one.
* deterministic on CPU for a given ``threads``: ``torch.use_deterministic_algorithms``.
* any registered architecture (``arch``: ``fercnn_*``, ``resnet18/34/50``, ``iresnet18/34/50``;
  :mod:`omnifer.models`), from scratch or fine-tuned from a local ``pretrained`` weights file
  (:mod:`omnifer.models.weights`: head replaced, shapes checked), with the first
  ``freeze_stages`` stages frozen and the backbone at ``backbone_lr_scale`` × the head's LR
* calibrated: after training a temperature is fitted on the validation split
  (:mod:`omnifer.models.calibration`) and stored in the card; scoring applies it. The ECE
  before and after is logged and kept in ``card.calibration``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from omnifer.curation.scoring import forward_tta
from omnifer.devices import resolve_device, torch_threads
from omnifer.errors import DatasetError
from omnifer.imaging.tensors import normalize, to_tensor
from omnifer.labeled.base import LabeledData
from omnifer.models.architectures import count_parameters
from omnifer.models.checkpoints import (
    DatasetRef,
    ModelCard,
    read_card,
    save_checkpoint,
    write_file_atomic,
)
from omnifer.models.modelfiles import sha256_file
from omnifer.runtime.progress import track
from omnifer.training.augment import augment
from omnifer.training.build import build_model, input_normalization
from omnifer.training.config import TrainConfig
from omnifer.training.measure import calibrate_model, confusion_matrix

log = logging.getLogger(__name__)

STATE_DIR = "train_state"


# -- data helpers --------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(train_idx, val_idx): ``fraction`` of each class (≥1 when it has ≥2), seeded, sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _concat(parts: Sequence[LabeledData], classes: Sequence[str], size: int) -> tuple[
    np.ndarray, np.ndarray
]:
    images = [p.remapped(classes).resized(size).images for p in parts]
    targets = [p.remapped(classes).soft_targets() for p in parts]
    return np.concatenate(images), np.concatenate(targets)


# -- state on disk -------------------------------------------------------------------------------
def _state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig) -> Iterator[None]:
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with torch_threads(cfg.threads):
            if cfg.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=det_warn)


# -- training ------------------------------------------------------------------------------------
def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.inference_mode()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: list[float],
              std: list[float], batch: int = 256) -> tuple[float, float]:
    """(accuracy, cross-entropy) on uint8 tensors ``x`` with soft targets ``y`` (no TTA)."""
    model.eval()
    correct, loss = 0.0, 0.0
    for i in range(0, len(x), batch):
        xb = normalize(x[i : i + batch].float().div(255.0), mean, std)
        logits = model(xb)
        yb = y[i : i + batch]
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += float((logits.argmax(1) == yb.argmax(1)).sum())
    return correct / max(len(x), 1), loss / max(len(x), 1)


def compute_prototypes(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                       num_classes: int, mean: list[float], std: list[float],
                       device: torch.device, batch: int = 256,
                       flip: bool = True) -> tuple[torch.Tensor, ...]:
    """(prototypes (C, D), center (D,)) from the labeled images.

    ``center`` is the mean (flip-averaged when ``flip``, the card's ``flip_tta``) feature;
    embeddings are L2-normalised after subtracting it (post-ReLU features are all positive, so
    uncentred cosines crowd near 1). A prototype is the L2-normalised mean of its class's
    embeddings (zero if no images). Computed as the scorer computes embeddings, so both sides
    of the similarity see the same views.
    """
    model.eval()
    feats = []
    for i in range(0, len(images), batch):
        x = normalize(to_tensor(images[i : i + batch], device), mean, std)
        feats.append(forward_tta(model, x, flip=flip)[4].cpu())
    feat = torch.cat(feats)
    center = feat.mean(0)
    emb = F.normalize(feat - center, dim=1)
    protos = torch.zeros(num_classes, emb.shape[1])
    lab = torch.from_numpy(labels)
    for c in range(num_classes):
        if (lab == c).any():
            protos[c] = emb[lab == c].mean(0)
    return F.normalize(protos, dim=1), center


def _fingerprint(cfg: TrainConfig, train: LabeledData, val: LabeledData | None,
                 extra: Sequence[LabeledData]) -> str:
    payload = {
        "config": cfg.fingerprint_fields(),
        **({"pretrained_sha256": sha256_file(Path(cfg.pretrained))}
           if cfg.pretrained and Path(cfg.pretrained).is_file() else {}),
        "train": train.digest(),
        "val": val.digest() if val is not None else None,
        "extra": [e.digest() for e in extra],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def train_model(
    train: LabeledData,
    config: TrainConfig | None = None,
    out_dir: Path | str = "model",
    val: LabeledData | None = None,
    extra: Sequence[LabeledData] = (),
) -> ModelCard:
    """Train on ``train`` (+ ``extra``, e.g. curated pseudo-labeled sets); write a checkpoint.

    ``val``: validation data for early stopping; without it ``config.val_fraction`` of
    ``train`` is held out (stratified, seeded). Prototypes come from all of ``train`` (the
    labeled set, val part included), never from ``extra``. Returns the saved card.
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    classes = tuple(train.classes)
    if len(train) < 2:
        raise DatasetError(f"cannot train on {len(train)} images")
    extra = list(extra)
    fingerprint = _fingerprint(cfg, train, val, extra)
    state_dir = out / STATE_DIR
    state_file = state_dir / "state.json"
    state: dict[str, Any] = {}
    if cfg.resume and state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
        except ValueError:
            state = {}
        if state.get("fingerprint") != fingerprint:
            log.warning("%s holds a run with other config/data: starting afresh", state_dir)
            state = {}
        elif state.get("finished") and (out / "card.json").is_file():
            log.info("%s is already trained with this config and data: kept", out)
            return read_card(out)

    with _torch_settings(cfg):
        return _train(train, cfg, out, val, extra, classes, fingerprint, state)


def _train(train: LabeledData, cfg: TrainConfig, out: Path, val: LabeledData | None,
           extra: list[LabeledData], classes: tuple[str, ...], fingerprint: str,
           state: dict[str, Any]) -> ModelCard:
    started = time.monotonic()
    device = resolve_device(cfg.device)
    size = cfg.input_size
    labeled = train.resized(size)
    if val is None and cfg.val_fraction > 0:
        tr_idx, va_idx = stratified_split(labeled.hard_labels(), cfg.val_fraction, cfg.seed)
        fit, held = labeled.subset(tr_idx), (labeled.subset(va_idx) if len(va_idx) else None)
    else:
        fit, held = labeled, (val.remapped(classes).resized(size) if val is not None else None)
    x_np, y_np = _concat([fit, *extra], classes, size)
    mean = (x_np.reshape(-1, 3).mean(0) / 255.0).round(6).tolist()
    std = (x_np.reshape(-1, 3).std(0) / 255.0).clip(1e-3).round(6).tolist()
    mean, std = input_normalization(cfg, mean, std)
    x_all = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(device)
    y_all = torch.from_numpy(y_np).to(device)
    if held is not None:
        x_val = torch.from_numpy(held.images).permute(0, 3, 1, 2).contiguous().to(device)
        y_val = torch.from_numpy(held.soft_targets()).to(device)

    model, opt, pretrained = build_model(cfg, len(classes), device)

    n = len(x_all)
    steps_per_epoch = math.ceil(n / min(cfg.batch_size, n))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    hard = y_np.argmax(1)
    counts = np.bincount(hard, minlength=len(classes)).astype(np.float64)
    sample_w = torch.from_numpy(1.0 / np.maximum(counts[hard], 1.0))

    state_dir = out / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    start_epoch = 0
    best: dict[str, Any] = {"epoch": -1, "acc": -1.0, "loss": math.inf}
    bad_epochs, history = 0, []
    if state:
        try:
            model.load_state_dict(load_file(str(state_dir / "last.safetensors")))
            opt.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True,
                                           map_location=device))
            start_epoch = int(state["epoch"]) + 1
            best, bad_epochs, history = state["best"], state["bad_epochs"], state["history"]
            log.info("resuming %s after epoch %d", out, start_epoch)
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            log.warning("cannot resume from %s (%s): starting afresh", state_dir, exc)
            model, opt, pretrained = build_model(cfg, len(classes), device)
            start_epoch, bad_epochs, history = 0, 0, []
    log.info("training %s (%d params) on %d images (+%d val), %d classes, device %s",
             cfg.arch, count_parameters(model), n, 0 if held is None else len(held),
             len(classes), device)

    stopped_early = False
    epochs = range(start_epoch, cfg.epochs)
    for epoch in track(epochs, "train", total=len(epochs), unit="epoch"):
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped_early = True
            break
        train_loss = _run_epoch(model, opt, x_all, y_all, sample_w, cfg, epoch, mean, std,
                                steps_per_epoch, total_steps, warmup)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": round(train_loss, 6)}
        if held is not None:
            acc, vloss = _evaluate(model, x_val, y_val, mean, std)
            row.update(val_accuracy=round(acc, 6), val_loss=round(vloss, 6))
            improved = acc > best["acc"] or (acc == best["acc"] and vloss < best["loss"])
        else:
            acc, vloss, improved = math.nan, train_loss, True
        history.append(row)
        last = _state_dict_cpu(model)
        if improved:
            best, bad_epochs = {"epoch": epoch, "acc": acc, "loss": vloss}, 0
            write_file_atomic(state_dir / "best.safetensors",
                              lambda p, s=last: save_file(s, str(p)))
        else:
            bad_epochs += 1
        write_file_atomic(state_dir / "last.safetensors", lambda p, s=last: save_file(s, str(p)))
        write_file_atomic(state_dir / "optimizer.pt",
                          lambda p: torch.save(opt.state_dict(), p))
        _write_state(state_dir, fingerprint, epoch, best, bad_epochs, history, False)
        log.info("epoch %d: %s", epoch, row)

    model.load_state_dict(load_file(str(state_dir / "best.safetensors")))
    model.eval()
    protos, center = compute_prototypes(model, labeled.images, labeled.hard_labels(),
                                        len(classes), mean, std, device, flip=cfg.flip_tta)
    calibration = calibrate_model(model, cfg, held, val is not None, mean, std, device)
    metrics: dict[str, Any] = {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "n_train": int(n),
        "n_val": 0 if held is None else len(held),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "params": count_parameters(model),
        "train_seconds": round(time.monotonic() - started, 2),
    }
    if held is not None:
        metrics["val_accuracy"] = best["acc"]
        metrics["val_loss"] = best["loss"]
        # Rows: true class, columns: predicted (the card's class order); the registry and the
        # run report read it (``omnifer models register`` carries it into ``models``).
        metrics["val_confusion"] = confusion_matrix(model, x_val, y_val, mean, std,
                                                    len(classes))
    if pretrained is not None:
        metrics["pretrained"] = pretrained.as_dict()
    datasets = [DatasetRef(name=train.source or "train", n=len(train), digest=train.digest())]
    if val is not None:
        datasets.append(DatasetRef(name=val.source or "val", n=len(val), digest=val.digest(),
                                   role="val"))
    datasets += [DatasetRef(name=e.source or f"extra{i}", n=len(e), digest=e.digest(),
                            role="extra") for i, e in enumerate(extra)]
    card = ModelCard(
        arch=cfg.arch, arch_kwargs=cfg.arch_kwargs, classes=list(classes), input_size=size,
        mean=mean, std=std, embedding_dim=int(protos.shape[1]), hflip=cfg.hflip,
        flip_tta=cfg.flip_tta, train_datasets=datasets,
        metrics=metrics, seed=cfg.seed, config=cfg.model_dump(mode="json"),
        temperature=calibration["temperature"], calibration=calibration,
    )
    card = save_checkpoint(out, model, card, protos, center)
    _write_state(state_dir, fingerprint, len(history) - 1 if history else -1, best, bad_epochs,
                 history, True)
    log.info("saved %s: %s", out, {k: v for k, v in metrics.items() if k != "history"})
    return card


def _write_state(state_dir: Path, fingerprint: str, epoch: int, best: dict[str, Any],
                 bad_epochs: int, history: list[dict[str, Any]], finished: bool) -> None:
    best = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in best.items()}
    text = json.dumps({"fingerprint": fingerprint, "epoch": epoch, "best": best,
                       "bad_epochs": bad_epochs, "history": history, "finished": finished},
                      indent=1, sort_keys=True)
    write_file_atomic(state_dir / "state.json", lambda p: p.write_text(text))


def _run_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, x_all: torch.Tensor,
               y_all: torch.Tensor, sample_w: torch.Tensor, cfg: TrainConfig, epoch: int,
               mean: list[float], std: list[float], steps: int, total_steps: int,
               warmup: int) -> float:
    """One epoch; all randomness seeded by (seed, epoch). Returns the mean training loss."""
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    n = len(x_all)
    if cfg.balanced_sampling:
        order = torch.multinomial(sample_w, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen)
    bs = min(cfg.batch_size, n)
    model.train()
    losses = []
    for step in range(steps):
        idx = order[step * bs : (step + 1) * bs].to(x_all.device)
        if len(idx) < 2:  # BatchNorm needs two samples
            continue
        for group in opt.param_groups:
            group["lr"] = _lr_at(epoch * steps + step, total_steps, warmup,
                                 group.get("base_lr", cfg.lr))
        x = augment(x_all[idx].float().div(255.0), cfg, gen)
        logits = model(normalize(x, mean, std))
        loss = F.cross_entropy(logits, y_all[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else math.nan


