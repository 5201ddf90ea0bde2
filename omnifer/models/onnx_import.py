"""Importing an ONNX FER model as a model version (``omnifer models import-onnx``), and
exporting a torch model to ONNX.

:func:`import_onnx` checks the file *at import* (not ONNX, wrong input rank, dynamic shapes it
cannot fix, a class count that does not match the output: one line each), writes a checkpoint
folder with its card (kind ``onnx``), optionally calibrates it on a labeled split, and
registers it like any other version. Scoring is :mod:`omnifer.models.onnx_model`'s.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from omnifer.errors import ConfigError, ModelFileError
from omnifer.models.cards import (
    CARD_FILE,
    PROTOTYPES_FILE,
    DatasetRef,
    ModelCard,
    write_file_atomic,
)
from omnifer.models.modelfiles import sha256_file
from omnifer.models.onnx_model import ONNX_FILE, Color, OnnxModel, OnnxSpec, onnx_session

log = logging.getLogger(__name__)


def _dims(shape: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def inspect_onnx(
    path: Path, classes: list[str], color: Color, input_size: int | None = None,
    logits_output: str | None = None, embedding_output: str | None = None,
    output_kind: Literal["auto", "logits", "probs"] = "auto",
) -> tuple[OnnxSpec, int, int]:
    """Check ``path`` and work out how to run it: (spec, input size, embedding dim or 0).

    Runs the file once on seeded noise at the chosen shape. Raises :class:`ModelFileError`
    (one line) for: not loadable by onnxruntime (not ONNX), not one input, input rank ≠ 4,
    channels that do not fit ``color``, non-square or unfixable height/width, an output that
    does not exist or does not give one score per class, an embedding output that is not one
    vector per image.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file {path} not found")
    sess = onnx_session(path)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ModelFileError(f"{path} has {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); omnifer feeds one image "
                             "tensor")
    inp = inputs[0]
    if "float" not in inp.type:
        raise ModelFileError(f"{path}: input {inp.name!r} is {inp.type}; omnifer feeds float32")
    shape = _dims(list(inp.shape or []))
    if len(shape) != 4:
        raise ModelFileError(f"{path}: input {inp.name!r} has rank {len(shape)} "
                             f"({inp.shape}); expected 4 (N, C, H, W or N, H, W, C)")
    want_c = 1 if color == "gray" else 3
    if shape[1] in (1, 3) or (shape[1] is None and shape[3] not in (1, 3)):
        layout, c, h, w = "nchw", shape[1], shape[2], shape[3]
    elif shape[3] in (1, 3):
        layout, c, h, w = "nhwc", shape[3], shape[1], shape[2]
    else:
        raise ModelFileError(f"{path}: input {inp.name!r} of shape {inp.shape} has no channel "
                             "axis of size 1 or 3 (NCHW or NHWC)")
    if c is not None and c != want_c:
        raise ModelFileError(f"{path}: input has {c} channel(s) but --color {color} gives "
                             f"{want_c}")
    if h is not None and w is not None and h != w:
        raise ModelFileError(f"{path}: input is {h}×{w}; omnifer's face crops are square")
    fixed = h if h is not None else w
    if fixed is not None and input_size is not None and input_size != fixed:
        raise ModelFileError(f"{path}: input is fixed at {fixed}×{fixed}, not --input-size "
                             f"{input_size}")
    size = fixed or input_size
    if size is None:
        raise ModelFileError(f"{path}: input height/width are dynamic ({inp.shape}); pass "
                             "--input-size to fix them")
    batch = shape[0]

    outputs = [o.name for o in sess.get_outputs()]
    if logits_output is None:
        if len(outputs) != 1:
            raise ModelFileError(f"{path} has outputs {outputs}: say which holds the class "
                                 "scores with --logits-output NAME")
        logits_output = outputs[0]
    for name, what in ((logits_output, "--logits-output"), (embedding_output,
                                                            "--embedding-output")):
        if name is not None and name not in outputs:
            raise ModelFileError(f"{path} has no output {name!r} ({what}); its outputs: "
                                 f"{outputs}")

    n = batch or 2
    rng = np.random.default_rng(0)
    dims = (n, want_c, size, size) if layout == "nchw" else (n, size, size, want_c)
    x = rng.standard_normal(dims).astype(np.float32)
    names = [logits_output] + ([embedding_output] if embedding_output else [])
    try:
        outs = sess.run(names, {inp.name: x})
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{path} does not run on a {'×'.join(map(str, dims))} input "
                             f"(dynamic shapes it cannot fix?): {first[:200]}") from None
    scores = np.asarray(outs[0])
    squeezed = scores.reshape(scores.shape[0], -1) if scores.ndim >= 2 else scores
    if scores.ndim < 2 or scores.shape[0] != n or any(d != 1 for d in scores.shape[2:]):
        raise ModelFileError(f"{path}: output {logits_output!r} has shape {scores.shape} for "
                             f"{n} images; expected ({n}, classes)")
    if squeezed.shape[1] != len(classes):
        raise ModelFileError(f"{path}: output {logits_output!r} gives {squeezed.shape[1]} "
                             f"scores per image, but --classes names {len(classes)} "
                             f"({','.join(classes)})")
    emb_dim = 0
    if embedding_output:
        emb = np.asarray(outs[1])
        if emb.ndim < 2 or emb.shape[0] != n or any(d != 1 for d in emb.shape[2:]):
            raise ModelFileError(f"{path}: embedding output {embedding_output!r} has shape "
                                 f"{emb.shape} for {n} images; expected ({n}, D)")
        emb_dim = int(emb.shape[1])
    if output_kind == "auto":
        rows = squeezed.astype(np.float64)
        output_kind = ("probs" if rows.min() >= 0 and rows.max() <= 1
                       and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3) else "logits")
    meta = sess.get_modelmeta()
    opset = None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                    default=None)
    except Exception:  # the opset is informative only
        pass
    spec = OnnxSpec(input=inp.name, layout=layout, batch=batch, logits_output=logits_output,
                    embedding_output=embedding_output, output_kind=output_kind, opset=opset,
                    producer=meta.producer_name or None)
    return spec, int(size), emb_dim


# -- import --------------------------------------------------------------------------------------
@dataclass
class ImportOutcome:
    """What :func:`import_onnx` registered."""

    version: str
    uri: str
    card: ModelCard
    promoted: bool
    notes: list[str]


def prototypes_from_features(feat: torch.Tensor, labels: np.ndarray, num_classes: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(prototypes (C, D), center (D,)) from (N, D) flip-averaged features, as
    :func:`omnifer.training.train.compute_prototypes` makes them (center = mean feature; a prototype
    is the L2-normalised mean of its class's centred, L2-normalised embeddings)."""
    center = feat.mean(0)
    emb = F.normalize(feat - center, dim=1)
    protos = torch.zeros(num_classes, emb.shape[1])
    lab = torch.from_numpy(np.asarray(labels))
    for c in range(num_classes):
        if (lab == c).any():
            protos[c] = emb[lab == c].mean(0)
    return F.normalize(protos, dim=1), center


def _floats(values: list[float], channels: int, what: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(f"--{what} takes one value per channel ({channels} here) or one for "
                          f"all, got {len(values)}")
    if what == "std" and min(values) <= 0:
        raise ConfigError("--std values must be > 0")
    return values


def import_onnx(
    catalog: Any,
    file: Path | str,
    version: str,
    classes: list[str],
    *,
    mean: list[float],
    std: list[float],
    color: Color,
    input_size: int | None = None,
    logits_output: str | None = None,
    embedding_output: str | None = None,
    output_kind: Literal["auto", "logits", "probs"] = "auto",
    flip_tta: bool = True,
    labeled: Any = None,
    temperature: float | None = None,
    promote: bool = False,
    batch_size: int = 128,
) -> ImportOutcome:
    """Check an ONNX FER model and register it as model ``version`` (see the module docstring).

    ``mean``/``std``: per channel, in the channel order the model is fed (``color``), on
    [0, 1] pixels (a model fed 0–255 pixels: mean 0, std 1/255). ``labeled``
    (:class:`~omnifer.labeled.base.LabeledData`, optional): gives the prototypes (with an
    embedding output) and fits the temperature (unless ``temperature`` is given; at least
    :data:`~omnifer.models.calibration.MIN_IMAGES` images); its accuracy goes into the
    metrics. Raises :class:`ModelFileError` / :class:`ConfigError` with one line, before
    anything is written.
    """
    from omnifer.models import calibration
    from omnifer.models import versions as registry
    from omnifer.models.modelfiles import omnifer_home

    file = Path(file)
    classes = [c.strip() for c in classes if c.strip()]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"--classes needs two or more distinct names, got {classes}")
    if color not in ("rgb", "bgr", "gray"):
        raise ConfigError(f"--color must be rgb, bgr or gray, not {color!r}")
    channels = 1 if color == "gray" else 3
    mean, std = _floats(mean, channels, "mean"), _floats(std, channels, "std")
    if temperature is not None and temperature <= 0:
        raise ConfigError("--temperature must be > 0")
    if registry.history(catalog, version) is not None:
        raise ModelFileError(f"model version {version} is already registered; pick another "
                             "--version")
    spec, size, emb_dim = inspect_onnx(file, classes, color, input_size, logits_output,
                                       embedding_output, output_kind)
    notes: list[str] = []
    if spec.batch is not None:
        notes.append(f"the file's batch size is fixed at {spec.batch}: scored in batches of "
                     f"{spec.batch}")
    work = omnifer_home() / "import"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f"{version}-") as tmp:
        ckpt = Path(tmp)
        shutil.copyfile(file, ckpt / ONNX_FILE)
        card = ModelCard(
            arch="onnx", kind="onnx", classes=classes, input_size=size, mean=mean, std=std,
            embedding_dim=emb_dim, color=color, flip_tta=flip_tta, onnx=spec.model_dump(),
            config={"source_file": file.name, "source_sha256": sha256_file(file)},
        )
        model = OnnxModel(ckpt / ONNX_FILE, card)
        metrics: dict[str, Any] = {}
        files = {ONNX_FILE: sha256_file(ckpt / ONNX_FILE)}
        cal: dict[str, Any] = calibration.skipped("no labeled split given")
        if labeled is not None:
            data = labeled.remapped(classes).resized(size)
            labels = data.hard_labels()
            logits, feats = [], []
            for i in range(0, len(data), batch_size):
                z, f = model.view_outputs(data.images[i : i + batch_size])
                logits.append(z)
                if f is not None:
                    feats.append(f)
            view_logits = np.concatenate(logits, axis=1)
            card.train_datasets = [DatasetRef(name=data.source or "labeled", n=len(data),
                                              digest=data.digest(), role="calibration")]
            if feats:
                protos, center = prototypes_from_features(
                    torch.from_numpy(np.concatenate(feats)).float(), labels, len(classes))
                extra = {"prototypes": protos.contiguous(), "center": center.contiguous()}
                from safetensors.torch import save_file

                write_file_atomic(ckpt / PROTOTYPES_FILE,
                                  lambda p: save_file(extra, str(p), metadata={"arch": "onnx"}))
                files[PROTOTYPES_FILE] = sha256_file(ckpt / PROTOTYPES_FILE)
            split = data.source or "labeled"
            if temperature is not None:
                cal = calibration.calibrate(view_logits, labels, split,
                                            temperature=temperature).model_dump()
                cal["given"] = True
            elif len(data) >= calibration.MIN_IMAGES:
                cal = calibration.calibrate(view_logits, labels, split).model_dump()
            else:
                cal = calibration.skipped(f"{len(data)} labeled images < "
                                          f"{calibration.MIN_IMAGES}")
            probs = calibration.tta_probs(view_logits, cal["temperature"])
            metrics = {"accuracy": float((probs.argmax(1) == labels).mean()),
                       "n": len(labels), "split": split}
        elif temperature is not None:
            cal = {"temperature": float(temperature), "given": True}
        if emb_dim and PROTOTYPES_FILE not in files:
            notes.append("no labeled split: no class prototypes, so no similarity; "
                         "selection skips its similarity gate")
        if not emb_dim:
            notes.append("no --embedding-output: no embeddings or similarity; selection "
                         "skips its similarity gate (noted in the recorded policy)")
        card.temperature = float(cal["temperature"])
        card.calibration = cal
        card.metrics = {**metrics, "calibration": cal}
        card.files = files
        text = card.model_dump_json(indent=2) + "\n"
        write_file_atomic(ckpt / CARD_FILE, lambda p: p.write_text(text))
        lineage = {"onnx": {"file": file.name, "sha256": card.config["source_sha256"]},
                   "labeled": ([d.model_dump() for d in card.train_datasets]
                               if card.train_datasets else None)}
        uri = registry.register_version(catalog, ckpt, version, train_datasets=lineage,
                                      metrics=card.metrics, classes=classes)
    if promote:
        registry.record_event(catalog, version, "promoted",
                              {k: v for k, v in metrics.items() if k != "split"})
    return ImportOutcome(version, uri, card, promote, notes)


# -- export (a trained torch checkpoint → ONNX) -------------------------------------------------
class _Exportable(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.embed(x)
        return self.model.classify(feats), feats


def export_onnx(loaded: Any, path: Path | str, opset: int = 17) -> Path:
    """Write a trained torch model (:class:`~omnifer.models.checkpoints.LoadedModel`) as ONNX: input
    ``input`` (N, 3, S, S) BGR normalised with the card's mean/std, outputs ``logits`` (N, C)
    and ``features`` (N, D) (pooled, before centring), dynamic batch. Import it with
    ``--color bgr --mean/--std`` from the card and ``--embedding-output features``.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only the
    installed ``onnx`` package (the newer exporter needs onnxscript).
    """
    import warnings

    path = Path(path)
    model = _Exportable(loaded.model.cpu().eval())
    x = torch.zeros(2, 3, loaded.card.input_size, loaded.card.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits", "features"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"},
                                        "features": {0: "batch"}})
    return path
