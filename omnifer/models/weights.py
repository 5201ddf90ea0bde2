"""Load a local pretrained weights file into a registered architecture (fine-tuning start).

Accepted files: a state dict saved with ``torch.save`` (``.pth``/``.pt``/``.bin``), a
safetensors file, or a training checkpoint holding a ``state_dict`` entry (PyTorch
Lightning, mmcv, …). ``torch.load`` runs with ``weights_only=True``: a file that needs pickle
to load is refused, never executed. A ``module.`` prefix (``DataParallel``) is stripped, and
so is a prefix shared by every key (``model.``, ``backbone.``) when that is what makes the
names fit.

The classification head is always replaced (the file's head, if any, is dropped: its classes
are not ours). Every other tensor must fit: a tensor whose shape differs refuses the whole
file, with one line naming the first few; tensors the model lacks (unexpected) or the file
lacks (missing) are reported in one line, and a file that fills less than half of the
backbone is refused as the wrong architecture.

Pretrained weights usually expect RGB input; omnifer's pipeline hands BGR crops to torch
models. With ``color="rgb"`` the first conv's input channels are reversed once at load time,
so BGR input gives exactly what the file's RGB input gave.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from omnifer.errors import ModelFileError
from omnifer.models.modelfiles import sha256_file

log = logging.getLogger(__name__)

# Normalisation a pretrained backbone expects, per family, in RGB order on [0, 1] pixels.
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # torchvision
ARCFACE = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # insightface: (x / 255 − 0.5) / 0.5


def pretrained_normalization(arch: str) -> tuple[list[float], list[float]]:
    """(mean, std) in RGB order that a pretrained ``arch`` was trained with."""
    return ARCFACE if arch.startswith("iresnet") else IMAGENET


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did; ``line()`` is the one-line summary."""

    path: str
    sha256: str
    arch: str
    loaded: int
    total: int
    head: list[str]
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    stripped_prefix: str = ""
    color: str = "rgb"

    def line(self) -> str:
        def names(keys: list[str]) -> str:
            if not keys:
                return "none"
            more = f" … (+{len(keys) - 4})" if len(keys) > 4 else ""
            return ", ".join(keys[:4]) + more

        prefix = f"; stripped '{self.stripped_prefix}'" if self.stripped_prefix else ""
        return (f"loaded {self.loaded} of {self.total} tensors of {self.arch} from {self.path}"
                f"{prefix}; head replaced ({', '.join(self.head)}); missing: "
                f"{names(self.missing)}; unexpected: {names(self.unexpected)}")

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "head": self.head,
                "loaded": self.loaded,
                "total": self.total, "missing": self.missing, "unexpected": self.unexpected,
                "stripped_prefix": self.stripped_prefix, "color": self.color}


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (see the module docstring), on the CPU.

    Raises :class:`ModelFileError` (one line) when the file is missing, unreadable, needs
    pickle, or holds no dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"pretrained weights {path} not found: put the file there or pass "
                             "its path with --pretrained")
    with path.open("rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"cannot read {path} as safetensors: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, …
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise ModelFileError(f"{path} needs pickle to load, which is refused "
                                 f"(weights_only=True): save model.state_dict() instead "
                                 f"({first[:160]})") from None
        raise ModelFileError(f"cannot read {path} as a torch weights file: {first[:200]}") \
            from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ModelFileError(f"{path} holds no state dict (a dict of tensors, or a checkpoint "
                             "with a 'state_dict' entry)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(f"{path} holds no tensors")
    return tensors


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _fit_prefix(state: dict[str, torch.Tensor], own: set[str]) -> tuple[dict[str, torch.Tensor],
                                                                         str]:
    """Strip ``module.``; then a first name component shared by every key if that fits better."""
    stripped = ""
    if all(k.startswith("module.") for k in state):
        state, stripped = _strip(state, "module."), "module."
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) == 1 and "." in next(iter(state)):
        prefix = next(iter(firsts)) + "."
        candidate = _strip(state, prefix)
        if len(own & set(candidate)) > len(own & set(state)):
            return candidate, stripped + prefix
    return state, stripped


def load_pretrained(model: nn.Module, path: Path | str, arch: str = "",
                    color: Literal["rgb", "bgr"] = "rgb") -> LoadReport:
    """Copy the tensors of ``path`` into ``model`` in place (its head keeps its own init).

    ``model`` must name its head (``head_name``, default ``"head"``) and first conv
    (``stem_conv``; default ``"features.0"``, the FerCNN's). Raises :class:`ModelFileError`
    when shapes differ or too little of the backbone is filled; see the module docstring.
    """
    state = read_state_dict(path)
    own_state = model.state_dict()
    head_name = getattr(model, "head_name", "head")
    head_keys = sorted(k for k in own_state if k.startswith(head_name + "."))
    state, stripped = _fit_prefix(state, set(own_state))
    state = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
    body = [k for k in own_state if k not in head_keys]
    arch = arch or type(model).__name__
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own_state[k].shape)}"
             for k in body if k in state and state[k].shape != own_state[k].shape]
    if wrong:
        more = f" … (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ModelFileError(f"{path} does not fit {arch}: {len(wrong)} tensor(s) have other "
                             f"shapes ({'; '.join(wrong[:3])}{more}); is it another "
                             "architecture or input size?")
    fits = [k for k in body if k in state]
    if len(fits) * 2 < len(body):
        sample = ", ".join(sorted(state)[:3])
        raise ModelFileError(f"{path} fills only {len(fits)} of {len(body)} tensors of {arch} "
                             f"(its keys look like {sample}): is it the right architecture?")
    new = {k: state[k].to(own_state[k].dtype) for k in fits}
    stem = getattr(model, "stem_conv", "features.0") + ".weight"
    if color == "rgb" and stem in new and new[stem].shape[1] == 3:
        new[stem] = new[stem].flip(1)  # RGB-trained filters, fed BGR crops
    model.load_state_dict(new, strict=False)
    report = LoadReport(
        path=str(path), sha256=sha256_file(Path(path)), arch=arch, loaded=len(fits),
        total=len(body), head=head_keys, stripped_prefix=stripped, color=color,
        missing=[k for k in body if k not in state and not k.endswith("num_batches_tracked")],
        unexpected=sorted(k for k in state if k not in own_state),
    )
    log.info("%s", report.line())
    return report
