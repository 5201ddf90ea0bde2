"""A distilled set: images, labels, provenance; to and from the ``distilled`` dataset; grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from omnifer import storage
from omnifer.catalog.provenance import provenance
from omnifer.catalog.schemas import DISTILLED
from omnifer.distill.config import DistillConfig
from omnifer.errors import DatasetError
from omnifer.imaging.tensors import denormalize
from omnifer.labels import ordered_classes


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
        """One row per image, schema :data:`omnifer.catalog.schemas.DISTILLED`."""
        torch_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
        params = self.config.model_dump_json()
        stamp = provenance(run_id)
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
                **stamp,
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
        classes = ordered_classes({r["class"] for r in rows})
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
