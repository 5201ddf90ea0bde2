"""Lines about a model card's pretrained start and calibration, for the CLI.

Model *kinds*: a checkpoint folder's ``card.json`` says ``kind`` (``torch`` by default, or
``onnx``); :func:`omnifer.models.checkpoints.load_checkpoint` hands back a loaded model of that
kind and :class:`omnifer.curation.scoring.Scorer` scores every kind the same way (batched, flip
TTA, temperature, embeddings), so the CLI, the nightly flow and retraining need not know which.
"""

from __future__ import annotations

from typing import Any


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
