"""Dataset distillation: a curated set → a few synthetic images per class.

The stage function is :func:`distill` ``(sampler, classes, config) -> DistilledSet``. Real data
streams in through a :class:`ClassSampler` (``sample(class_idx, n, generator)``), so a curated
set larger than memory works: :class:`ParquetClassSampler` indexes the label column once and
reads only the sampled rows' row groups. Methods live in :mod:`omnifer.distill_methods`
(registry ``METHODS``: ``dm`` distribution matching, ``gm`` gradient matching); evaluation in
:mod:`omnifer.distill_eval`.

Images are float tensors ``(N, 3, H, W)`` in RGB order, normalised with :data:`MEAN`/:data:`STD`
("the normalised space"); inputs arrive as encoded images (face crops, 112×112 JPEG) decoded
by the project's one decoder (:func:`omnifer.decode.decode_image`: any format, EXIF
orientation applied) and resized to ``image_size``; image folders are read by
:func:`omnifer.datasets.read_image_folder` (the same junk rule and decoder as everywhere).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from omnifer import storage
from omnifer.distill_methods import METHODS, register_method
from omnifer.errors import ConfigError, DatasetError
from omnifer.labels import CLASSES_WITH_CONTEMPT
from omnifer.progress import track
from omnifer.schemas import DISTILLED
from omnifer.version import code_version

log = logging.getLogger(__name__)

__all__ = [
    "MEAN",
    "STD",
    "ClassSampler",
    "DistillConfig",
    "DistilledSet",
    "ParquetClassSampler",
    "TensorClassSampler",
    "decode_chw",
    "denormalize",
    "distill",
    "read_folder_tensors",
    "register_method",
    "resolve_device",
    "save_grids",
]

# RGB mean/std of the normalised space (ImageNet statistics: faces are close enough, and a
# fixed constant keeps distilled tensors comparable across curated versions).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- config


class DistillConfig(BaseModel):
    """Parameters of one distillation run (stored as JSON in every output row)."""

    model_config = ConfigDict(extra="forbid")

    method: str = "dm"
    ipc: int = Field(10, ge=1, description="synthetic images per class")
    iterations: int = Field(1000, ge=0)
    lr_img: float | None = Field(None, gt=0, description="pixel lr; None: 1.0 DM, 0.1 GM")
    batch_real: int = Field(64, ge=1, description="real images per class per iteration")
    image_size: int = Field(32, ge=8)
    seed: int = 0
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    dsa_mode: Literal["single", "all"] = "single"
    init: Literal["real", "noise"] = "real"
    net_width: int = Field(128, ge=1)
    net_depth: int = Field(3, ge=1)
    gm_outer_loop: int = Field(5, ge=1, description="GM: image updates per random net")
    gm_inner_loop: int = Field(5, ge=0, description="GM: net steps on syn between updates")
    gm_lr_net: float = Field(0.01, gt=0)
    device: str = "auto"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; registered: {sorted(METHODS)}")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> DistillConfig:
        if self.lr_img is None:
            self.lr_img = 1.0 if self.method == "dm" else 0.1
        if self.image_size >> self.net_depth < 1:
            raise ValueError(f"image_size {self.image_size} too small for depth {self.net_depth}")
        return self


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------- images


def _mean_std(device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return mean, std


def decode_chw(data: bytes, image_size: int) -> np.ndarray:
    """Encoded image bytes → float32 RGB ``(3, S, S)`` in [0, 1], ``S = image_size``.

    Decoded by :func:`omnifer.decode.decode_image` (upright, any supported format); raises
    DatasetError naming the decoder's status when the bytes do not decode."""
    from omnifer.decode import decode_image
    from omnifer.errors import DecodeError

    try:
        img = decode_image(data).image
    except DecodeError as exc:
        raise DatasetError(f"cannot decode image bytes ({exc.status}: {exc})") from None
    if img.shape[:2] != (image_size, image_size):
        interp = cv2.INTER_AREA if img.shape[0] > image_size else cv2.INTER_LINEAR
        img = cv2.resize(img, (image_size, image_size), interpolation=interp)
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / 255.0


def normalize(x: Tensor) -> Tensor:
    mean, std = _mean_std(x.device)
    return (x - mean) / std


def denormalize(x: Tensor) -> Tensor:
    """Normalised RGB → [0, 1] RGB (clamped)."""
    mean, std = _mean_std(x.device)
    return (x.float() * std + mean).clamp(0, 1)


def _order_classes(names: Sequence[str]) -> list[str]:
    """Canonical label order where the names are canonical labels, else sorted."""
    canon = [c for c in CLASSES_WITH_CONTEMPT if c in set(names)]
    rest = sorted(set(names) - set(canon))
    return canon + rest


def read_folder_tensors(
    root: str | Path, image_size: int, classes: Sequence[str] | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """Read ``ROOT/<class>/*`` into ``(images (N, 3, S, S) normalised, labels (N,), classes)``.

    The folder is read by :func:`omnifer.datasets.read_image_folder` (system junk ignored,
    every other file decoded by content, undecodable ones skipped and logged); class order is
    canonical where the names are labels, else sorted, unless ``classes`` is given.
    """
    from omnifer.datasets import class_folders, read_image_folder

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    order = list(classes) if classes is not None else _order_classes(class_folders(root))
    data = read_image_folder(root, size=image_size, classes=order, on_error="skip")
    rgb = data.images[..., ::-1].transpose(0, 3, 1, 2)
    x = normalize(torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0))
    return x, torch.from_numpy(data.hard_labels()), order


# --------------------------------------------------------------------------- samplers


@runtime_checkable
class ClassSampler(Protocol):
    """Source of real images per class, in the normalised space."""

    num_classes: int

    def count(self, class_idx: int) -> int: ...

    def sample(self, class_idx: int, n: int, generator: torch.Generator) -> Tensor:
        """``n`` images ``(n, 3, H, W)`` of class ``class_idx`` (without replacement when
        the class has at least ``n``)."""
        ...


def _pick(count: int, n: int, generator: torch.Generator) -> Tensor:
    if count <= 0:
        raise DatasetError("cannot sample from an empty class")
    if n <= count:
        return torch.randperm(count, generator=generator)[:n]
    return torch.randint(count, (n,), generator=generator)


class TensorClassSampler:
    """In-memory sampler over ``images (N,3,H,W)`` and integer ``labels (N,)``."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int | None = None) -> None:
        if images.shape[0] != labels.shape[0]:
            raise DatasetError("images and labels differ in length")
        self.images = images
        self.labels = labels.long()
        self.num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
        self.index = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]

    def count(self, class_idx: int) -> int:
        return int(self.index[class_idx].numel())

    def sample(self, class_idx: int, n: int, generator: torch.Generator) -> Tensor:
        rows = self.index[class_idx]
        return self.images[rows[_pick(rows.numel(), n, generator)]]


class ParquetClassSampler:
    """Samples per class from a Parquet file or folder (local or ``s3://``) of encoded images.

    ``classes=None`` discovers the class names from the label column (canonical order).
    The label column is read once to index row positions per class; :meth:`sample` then
    reads only ``image_column`` of the row groups that hold the sampled rows (a small LRU
    cache of decoded row groups keeps repeated draws cheap), so memory stays bounded.
    """

    def __init__(
        self,
        source: str | Path,
        classes: Sequence[str] | None,
        image_size: int,
        label_column: str = "label",
        image_column: str = "crop",
        cache_row_groups: int = 8,
    ) -> None:
        self.image_size = image_size
        self.image_column = image_column
        self.cache_row_groups = cache_row_groups
        source = str(source)
        fs, path = storage.resolve(source)
        from pyarrow import fs as pafs

        if fs.get_file_info(path).type == pafs.FileType.File:
            files = [path]
        else:
            files = [f.removeprefix("s3://") for f in storage.list_files(source, ".parquet")]
        if not files:
            raise DatasetError(f"no Parquet files under {source}")
        self._fs = fs
        self._files: list[pq.ParquetFile] = []
        # Per class: int64 array of global row ids; a global id → (file, row group, offset).
        self._starts: list[tuple[int, int, int]] = []  # (global start, file idx, row group)
        group_labels: list[np.ndarray] = []
        for fi, fpath in enumerate(files):
            try:
                pf = pq.ParquetFile(fs.open_input_file(fpath))
            except (OSError, pa.ArrowInvalid) as exc:
                raise DatasetError(f"cannot read Parquet {fpath}: {exc}") from None
            names = pf.schema_arrow.names
            for col in (label_column, image_column):
                if col not in names:
                    raise DatasetError(f"{fpath} has no column {col!r} (columns: {names})")
            self._files.append(pf)
            for rg in range(pf.num_row_groups):
                labels = pf.read_row_group(rg, columns=[label_column]).column(0).to_pylist()
                group_labels.append(np.array([str(v) for v in labels], dtype=object))
                self._starts.append((0, fi, rg))
        if classes is None:
            seen = set().union(*(set(g) for g in group_labels)) if group_labels else set()
            classes = _order_classes(seen)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        lookup = {name: i for i, name in enumerate(self.classes)}
        per_class: list[list[np.ndarray]] = [[] for _ in self.classes]
        offset = 0
        for g, labels_arr in enumerate(group_labels):
            self._starts[g] = (offset, *self._starts[g][1:])
            codes = np.array([lookup.get(v, -1) for v in labels_arr], dtype=np.int64)
            for c in range(self.num_classes):
                per_class[c].append(np.nonzero(codes == c)[0] + offset)
            offset += len(labels_arr)
        self._group_starts = np.array([s for s, _, _ in self._starts], dtype=np.int64)
        self.index = [np.concatenate(parts) if parts else np.zeros(0, np.int64)
                      for parts in per_class]
        self._cache: OrderedDict[int, list[bytes]] = OrderedDict()
        empty = [c for c, rows in zip(self.classes, self.index, strict=True) if rows.size == 0]
        if empty:
            log.warning("classes with no rows in %s: %s", source, empty)

    def count(self, class_idx: int) -> int:
        return int(self.index[class_idx].size)

    def _row_group(self, g: int) -> list[bytes]:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        _, fi, rg = self._starts[g]
        data = self._files[fi].read_row_group(rg, columns=[self.image_column])
        values = data.column(0).to_pylist()
        self._cache[g] = values
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return values

    def rows(self, global_rows: np.ndarray) -> Tensor:
        """Decode the given global row ids (reading their row groups only)."""
        groups = np.searchsorted(self._group_starts, global_rows, side="right") - 1
        out: list[np.ndarray | None] = [None] * len(global_rows)
        for g in np.unique(groups):
            values = self._row_group(int(g))
            for i in np.nonzero(groups == g)[0]:
                data = values[int(global_rows[i] - self._group_starts[g])]
                out[i] = decode_chw(data, self.image_size)
        return normalize(torch.from_numpy(np.stack(out)))  # type: ignore[arg-type]

    def sample(self, class_idx: int, n: int, generator: torch.Generator) -> Tensor:
        rows = self.index[class_idx]
        picked = rows[_pick(rows.size, n, generator).numpy()]
        return self.rows(picked)


# --------------------------------------------------------------------------- result


@dataclass
class DistilledSet:
    """Distilled images ``(C*ipc, 3, H, W)`` (class-major), their labels and provenance."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    config: DistillConfig
    wall_time_s: float
    losses: list[float] | None = None

    def to_arrow(
        self,
        curated_version: str | None = None,
        distilled_version: str | None = None,
        dtype: Literal["float16", "float32"] = "float32",
        run_id: str | None = None,
    ) -> pa.Table:
        """One row per image, schema :data:`omnifer.schemas.DISTILLED`."""
        torch_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
        params = self.config.model_dump_json()
        now = dt.datetime.now(dt.UTC)
        rows = []
        counters: dict[int, int] = {}
        for img, lab in zip(self.images.detach().cpu(), self.labels.tolist(), strict=True):
            idx = counters.get(lab, 0)
            counters[lab] = idx + 1
            arr = img.to(torch_dtype).contiguous().numpy()
            rows.append({
                "distilled_version": distilled_version,
                "class": self.classes[lab],
                "index": idx,
                "image": arr.tobytes(),
                "shape": list(arr.shape),
                "dtype": dtype,
                "method": self.config.method,
                "params": params,
                "curated_version": curated_version,
                "run_id": run_id,
                "code_version": code_version(),
                "created_at": now,
            })
        return pa.Table.from_pylist(rows, schema=DISTILLED)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> DistilledSet:
        """Inverse of :meth:`to_arrow`: rows ordered by class, then index; classes in
        canonical label order where they are labels, else sorted by name."""
        if table.num_rows == 0:
            raise DatasetError("distilled table is empty")
        rows = table.select(["class", "index", "image", "shape", "dtype", "params"]).to_pylist()
        config = DistillConfig.model_validate_json(rows[0]["params"])
        classes = _order_classes({r["class"] for r in rows})
        rows.sort(key=lambda r: (classes.index(r["class"]), r["index"]))
        images = [
            torch.from_numpy(
                np.frombuffer(r["image"], dtype=np.dtype(r["dtype"])).reshape(r["shape"]).copy()
            ).float()
            for r in rows
        ]
        labels = torch.tensor([classes.index(r["class"]) for r in rows], dtype=torch.long)
        return cls(torch.stack(images), labels, classes, config, wall_time_s=float("nan"))

    def write_parquet(self, uri: str, curated_version: str | None = None,
                      distilled_version: str | None = None) -> None:
        storage.write_table_atomic(uri, self.to_arrow(curated_version, distilled_version))


def save_grids(distilled: DistilledSet, out_dir: str | Path, scale: int = 2) -> list[Path]:
    """One PNG grid per class (``<out_dir>/<class>.png``), denormalised, BGR via cv2."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    images = denormalize(distilled.images.detach().cpu())
    for c, name in enumerate(distilled.classes):
        imgs = images[distilled.labels == c]
        if imgs.shape[0] == 0:
            continue
        n = imgs.shape[0]
        cols = min(n, 10)
        rows = -(-n // cols)
        _, h, w = imgs.shape[1:]
        grid = np.ones((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), np.uint8) * 255
        for i, img in enumerate(imgs):
            r, k = divmod(i, cols)
            tile = (img.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8)
            y0, x0 = 2 + r * (h + 2), 2 + k * (w + 2)
            grid[y0 : y0 + h, x0 : x0 + w] = tile
        if scale > 1:
            grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        path = out_dir / f"{name}.png"
        if not cv2.imwrite(str(path), grid):
            raise DatasetError(f"cannot write {path}")
        written.append(path)
    return written


# --------------------------------------------------------------------------- stage


def init_synthetic(
    sampler: ClassSampler, num_classes: int, config: DistillConfig, generator: torch.Generator
) -> Tensor:
    """Initial synthetic set: real samples per class (``init="real"``) or Gaussian noise."""
    size = config.image_size
    if config.init == "noise":
        return torch.randn(num_classes * config.ipc, 3, size, size, generator=generator)
    parts = [sampler.sample(c, config.ipc, generator) for c in range(num_classes)]
    x = torch.cat(parts).float()
    if x.shape[-2:] != (size, size):
        raise ConfigError(f"sampler yields {tuple(x.shape[-2:])} images, config wants {size}")
    return x


def distill(
    sampler: ClassSampler,
    classes: Sequence[str],
    config: DistillConfig | None = None,
    progress: bool = True,
) -> DistilledSet:
    """Distil ``sampler``'s classes into ``config.ipc`` synthetic images per class.

    Deterministic for a seed on CPU (all randomness comes from one seeded generator).
    """
    config = config or DistillConfig()
    classes = list(classes)
    num_classes = len(classes)
    if num_classes != sampler.num_classes:
        raise ConfigError(f"{num_classes} class names for a sampler of {sampler.num_classes}")
    empty = [name for c, name in enumerate(classes) if sampler.count(c) == 0]
    if empty:
        raise DatasetError(f"no real images for classes {empty}")
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    syn = init_synthetic(sampler, num_classes, config, generator).to(device).requires_grad_(True)
    labels = torch.arange(num_classes).repeat_interleave(config.ipc)
    steps: Any = range(config.iterations)
    if progress:
        steps = track(steps, f"distill {config.method} ipc={config.ipc}",
                      total=config.iterations, unit="it")
    log.info("distilling %d classes, method %s, ipc %d, %d iterations on %s",
             num_classes, config.method, config.ipc, config.iterations, device)
    start = time.perf_counter()
    result = METHODS[config.method](syn, sampler, num_classes, config, generator, device, steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    return DistilledSet(syn.detach().cpu(), labels, classes, config, wall, result.losses)

