"""ONNX facial-expression models as omnifer model versions, scored with onnxruntime.

``omnifer models import-onnx FILE --version V --classes a,b,c --mean … --std … --color …``
(:func:`import_onnx`) checks the file *at import* (so a bad one fails then, with one line, not
in the nightly run): it must load in onnxruntime, have one image input of rank 4 (NCHW or
NHWC, channels 3, or 1 for ``gray``), height/width fixed or fixable to ``--input-size``, and
an output of class scores with one column per class. Then it writes a checkpoint folder::

    model.onnx              the file, byte for byte
    prototypes.safetensors  only with an embedding output and a labeled split: ``center`` and
                            per-class ``prototypes`` of the flip-averaged embeddings, made as
                            for a trained model (:func:`omnifer.train.compute_prototypes`)
    card.json               kind "onnx", classes, input size, mean/std, colour, flip TTA,
                            temperature, the ``onnx`` section (:class:`OnnxSpec`), sha256s

and registers it (lineage: the file's name and sha256, the labeled split) like a trained one.

Scoring (:class:`OnnxModel`, used by :class:`omnifer.scoring.Scorer`): crops resized to the
input size, colour-converted, normalised, run in batches (a fixed batch size is honoured by
padding), the image and its mirror image in one run when the card says ``flip_tta``. Class
scores that are logits get ``softmax(z / T)``; probabilities are turned back into
log-probabilities first (the same thing up to a constant). Embeddings come from the named
output; without one, scores have no embedding and ``similarity`` is null, and selection
skips its similarity gate with a note in the recorded policy
(:func:`omnifer.selection.adapt_policy`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from omnifer.errors import ConfigError, ModelFileError
from omnifer.model import CARD_FILE, PROTOTYPES_FILE, DatasetRef, ModelCard, write_file_atomic
from omnifer.modelfiles import sha256_file

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
Color = Literal["rgb", "bgr", "gray"]
GRAY_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # ITU-R BT.601 luma, BGR order


class OnnxSpec(BaseModel):
    """The card's ``onnx`` section: how to feed the file and read its outputs."""

    model_config = ConfigDict(extra="ignore")

    file: str = ONNX_FILE
    input: str
    layout: Literal["nchw", "nhwc"] = "nchw"
    batch: int | None = None  # fixed batch size of the file; None = any
    logits_output: str
    embedding_output: str | None = None
    output_kind: Literal["logits", "probs"] = "logits"
    opset: int | None = None
    producer: str | None = None


# -- the runtime -----------------------------------------------------------------------------
def _session(path: Path, device: str = "cpu") -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in \
            ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{path} is not a model onnxruntime can load: {first[:200]}") \
            from None


class OnnxModel:
    """A loaded ONNX model version: card, onnxruntime session, prototypes (or None).

    Thread-safe: one session serves every thread of a worker (onnxruntime's ``run`` is).
    """

    kind = "onnx"

    def __init__(self, path: Path, card: ModelCard, prototypes: torch.Tensor | None = None,
                 center: torch.Tensor | None = None, session: Any = None) -> None:
        self.path = Path(path)
        self.card = card
        self.spec = OnnxSpec.model_validate(card.onnx)
        self.prototypes = prototypes
        self.center = center
        self._session = session
        self._device = "cpu"
        self._lock = threading.Lock()

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card.classes)

    @property
    def has_embedding(self) -> bool:
        return self.spec.embedding_output is not None

    def to(self, device: str | torch.device) -> OnnxModel:
        """Use CUDA through onnxruntime when asked and available (else the CPU)."""
        device = str(device)
        if device != self._device:
            self._device, self._session = device, None
        return self

    @property
    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = _session(self.path, self._device)
            return self._session

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 BGR crops at the input size → the input tensor (float32)."""
        x = crops.astype(np.float32) / np.float32(255.0)
        if self.card.color == "rgb":
            x = x[..., ::-1]
        elif self.card.color == "gray":
            x = (x @ GRAY_BGR)[..., None]
        mean = np.asarray(self.card.mean, np.float32)
        std = np.asarray(self.card.std, np.float32)
        x = (x - mean) / std
        if self.spec.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, np.float32)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One input tensor (B, …) → (class scores (B, C) float32, embedding (B, D) or None)."""
        names = [self.spec.logits_output]
        if self.spec.embedding_output:
            names.append(self.spec.embedding_output)
        fixed = self.spec.batch
        if fixed is None:
            outs = self.session.run(names, {self.spec.input: x})
        else:
            parts: list[list[np.ndarray]] = []
            for i in range(0, len(x), fixed):
                chunk = x[i : i + fixed]
                n = len(chunk)
                if n < fixed:
                    chunk = np.concatenate([chunk, np.zeros((fixed - n, *x.shape[1:]),
                                                            x.dtype)])
                parts.append([o[:n] for o in self.session.run(names, {self.spec.input: chunk})])
            outs = [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
        scores = np.asarray(outs[0], np.float32).reshape(len(x), -1)
        emb = np.asarray(outs[1], np.float32).reshape(len(x), -1) if len(outs) > 1 else None
        return scores, emb

    def view_outputs(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, H, W, 3) uint8 BGR → (logits (V, N, C), flip-averaged embedding (N, D) or None).

        V = 2 (image, mirror image) with flip TTA, else 1. Probability outputs come back as
        log-probabilities, so that ``softmax(· / T)`` applies to every kind alike.
        """
        from omnifer.datasets import resize_images

        size = self.card.input_size
        if crops.shape[1:3] != (size, size):
            crops = resize_images(crops, size)
        n = len(crops)
        views = [crops, crops[:, :, ::-1]] if self.card.flip_tta else [crops]
        x = np.concatenate([self.preprocess(v) for v in views])
        scores, emb = self.run(x)
        if self.spec.output_kind == "probs":
            scores = np.log(np.clip(scores, 1e-12, None))
        logits = scores.reshape(len(views), n, -1)
        feat = emb.reshape(len(views), n, -1).mean(axis=0) if emb is not None else None
        return logits, feat

    def view_logits(self, crops: np.ndarray) -> np.ndarray:
        """(V, N, C) per-view logits (for calibration)."""
        return self.view_outputs(crops)[0]

    def forward_tta(self, crops: np.ndarray, temperature: float = 1.0) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None
    ]:
        """(probs (N, C), pred (N,), pred of the mirror view (N,), embedding (N, D) or None).

        As :func:`omnifer.scoring.forward_tta`: ``probs`` = mean over views of
        softmax(logits / T); the embedding is the flip-averaged output minus ``center``,
        L2-normalised.
        """
        logits, feat = self.view_outputs(crops)
        v, n, c = logits.shape
        p = (torch.from_numpy(logits.reshape(v * n, c)).float() / temperature).softmax(dim=1)
        probs = (p[:n] + p[n:]) / 2 if v == 2 else p
        emb = None
        if feat is not None:
            f = torch.from_numpy(np.ascontiguousarray(feat)).float()
            emb = F.normalize(f - self.center if self.center is not None else f, dim=1)
        return probs, p[:n].argmax(1), p[(v - 1) * n :].argmax(1), emb


def load_onnx_checkpoint(directory: Path | str, card: ModelCard | None = None) -> OnnxModel:
    """An :class:`OnnxModel` from a checkpoint folder; checks every file's sha256 first."""
    from safetensors.torch import load_file

    from omnifer.model import read_card

    directory = Path(directory)
    card = card or read_card(directory)
    path = directory / ONNX_FILE
    for name in card.files:
        p = directory / name
        if not p.is_file():
            raise ModelFileError(f"model checkpoint {directory} is incomplete: {name} missing")
        if sha256_file(p) != card.files[name]:
            raise ModelFileError(f"{p} does not match the sha256 in {CARD_FILE}: corrupt or "
                                 "replaced; import the ONNX file again")
    if ONNX_FILE not in card.files:
        raise ModelFileError(f"{directory / CARD_FILE} lists no {ONNX_FILE}")
    protos = center = None
    if PROTOTYPES_FILE in card.files:
        try:
            extra = load_file(str(directory / PROTOTYPES_FILE), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"cannot read {directory / PROTOTYPES_FILE}: {exc}") from None
        protos = F.normalize(extra["prototypes"].float(), dim=1)
        center = extra["center"].float().reshape(-1)
    return OnnxModel(path, card, protos, center)


# -- checking a file at import ------------------------------------------------------------------
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
    sess = _session(path)
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
    :func:`omnifer.train.compute_prototypes` makes them (center = mean feature; a prototype
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
    (:class:`~omnifer.datasets.LabeledData`, optional): gives the prototypes (with an
    embedding output) and fits the temperature (unless ``temperature`` is given; at least
    :data:`~omnifer.models.calibration.MIN_IMAGES` images); its accuracy goes into the
    metrics. Raises :class:`ModelFileError` / :class:`ConfigError` with one line, before
    anything is written.
    """
    from omnifer import registry
    from omnifer.modelfiles import omnifer_home
    from omnifer.models import calibration

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
        uri = registry.register_model(catalog, ckpt, version, train_datasets=lineage,
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
    """Write a trained torch model (:class:`~omnifer.model.LoadedModel`) as ONNX: input
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
