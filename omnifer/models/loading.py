"""Model kinds: load any registered kind of model from a checkpoint folder.

Models beyond the built-in CNN: pretrained backbones, ONNX models, calibrated confidence.

* :mod:`omnifer.models.resnet`: ResNet-18/34/50 (torchvision key names) and
  :mod:`omnifer.models.iresnet`: IResNet-18/34/50 (insightface ArcFace key names), registered
  in :func:`omnifer.model.create_model` on import of this package.
* :mod:`omnifer.models.weights`: a local pretrained file → a backbone (``--pretrained``).
* :mod:`omnifer.models.onnx_model`: an ONNX FER model as a model version (``omnifer models
  import-onnx``), scored by onnxruntime.
* :mod:`omnifer.models.calibration`: temperature scaling and the expected calibration error.

Model *kinds*: a checkpoint folder's ``card.json`` says ``kind`` (``torch`` by default, or
``onnx``); :func:`omnifer.model.load_checkpoint` hands back a loaded model of that kind and
:class:`omnifer.scoring.Scorer` scores every kind the same way (batched, flip TTA,
temperature, embeddings), so the CLI, the nightly flow and retraining need not know which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnifer.errors import ModelFileError

KINDS = ("torch", "onnx")


def load_model(directory: Path | str, card: Any = None, device: str = "cpu") -> Any:
    """A loaded model of any kind from a checkpoint folder (see the package docstring).

    Raises :class:`ModelFileError` (one line) for a missing, corrupt or unknown-kind folder.
    """
    from omnifer.models.checkpoints import load_checkpoint, read_card

    card = card or read_card(directory)
    if card.kind == "torch":
        return load_checkpoint(directory, device)
    if card.kind == "onnx":
        from omnifer.models.onnx_model import load_onnx_checkpoint

        return load_onnx_checkpoint(directory, card)
    raise ModelFileError(f"{directory}: unknown model kind {card.kind!r} in card.json "
                         f"(known: {', '.join(KINDS)}); is this omnifer too old for it?")


def card_lines(card: Any) -> list[str]:
    """Human lines about a card's pretrained start and calibration (for the CLI)."""
    lines = []
    pre = (card.metrics or {}).get("pretrained")
    if pre:
        from omnifer.models.weights import LoadReport

        fields = {k: pre[k] for k in ("path", "sha256", "head", "loaded", "total", "missing",
                                      "unexpected", "stripped_prefix", "color") if k in pre}
        lines.append("pretrained: " + LoadReport(arch=card.arch, **fields).line())
    cal = card.calibration or {}
    if cal.get("skipped"):
        lines.append(f"calibration: none ({cal['skipped']}); confidences are raw")
    elif "ece_before" in cal:
        from omnifer.models.calibration import Calibration

        given = " (given)" if cal.get("given") else ""
        lines.append(f"calibration{given}: " + Calibration.model_validate(cal).line())
    elif cal.get("given"):
        lines.append(f"calibration: temperature {cal['temperature']:.3f} (given)")
    return lines
