"""Where distillation's real images come from: samplers per class, in the normalised space.

Real data streams in through a :class:`ClassSampler` (``sample(class_idx, n, generator)``),
so a curated set larger than memory works: :class:`ParquetClassSampler` indexes the label
column once and reads only the sampled rows' row groups. Images are float tensors
``(N, 3, H, W)`` in RGB order, normalised with the ImageNet mean/std
(:func:`omnifer.imaging.tensors.normalize`); inputs arrive as encoded images (face crops,
112×112 JPEG) decoded by the project's one decoder (:func:`omnifer.imaging.decode.decode_image`:
any format, EXIF orientation applied) and resized to ``image_size``; image folders are read by
:func:`omnifer.labeled.folder.read_image_folder` (the same junk rule and decoder as everywhere).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch import Tensor

from omnifer import storage
from omnifer.errors import DatasetError, DecodeError
from omnifer.imaging.decode import decode_image
from omnifer.imaging.tensors import normalize
from omnifer.imaging.transforms import bgr_to_rgb_chw, resize_image
from omnifer.labeled.folder import class_folders, read_image_folder
from omnifer.labels import ordered_classes

log = logging.getLogger(__name__)


def crop_to_bgr(data: bytes, image_size: int) -> np.ndarray:
    """Encoded image bytes → uint8 BGR ``(S, S, 3)``, ``S = image_size``.

    Decoded by :func:`omnifer.imaging.decode.decode_image` (upright, any supported format);
    raises DatasetError naming the decoder's status when the bytes do not decode."""
    try:
        img = decode_image(data).image
    except DecodeError as exc:
        raise DatasetError(f"cannot decode image bytes ({exc.status}: {exc})") from None
    return resize_image(img, image_size)


def crop_to_chw(data: bytes, image_size: int) -> np.ndarray:
    """Encoded image bytes → float32 RGB ``(3, S, S)`` in [0, 1], ``S = image_size``
    (:func:`crop_to_bgr`, then :func:`~omnifer.imaging.transforms.bgr_to_rgb_chw`)."""
    return bgr_to_rgb_chw(crop_to_bgr(data, image_size)[None])[0]


def image_folder_tensors(
    root: str | Path, image_size: int, classes: Sequence[str] | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """``ROOT/<class>/*`` as ``(images, labels, classes)``: normalised ``(N, 3, S, S)``,
    ``(N,)`` int64, and the class names (canonical order where names are labels, else sorted;
    or ``classes``).

    The folder is read by :func:`omnifer.labeled.folder.read_image_folder` (system junk
    ignored, every other file decoded by content, undecodable ones skipped and logged).
    Raises DatasetError when ``root`` is not a folder or holds no usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    order = list(classes) if classes is not None else ordered_classes(class_folders(root))
    data = read_image_folder(root, size=image_size, classes=order, on_error="skip")
    x = normalize(torch.from_numpy(bgr_to_rgb_chw(data.images)))
    return x, torch.from_numpy(data.hard_labels()), order


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
        return self.images.index_select(0, rows[_pick(rows.numel(), n, generator)])


class ParquetClassSampler:
    """Samples per class from a Parquet file or folder (local or ``s3://``) of encoded images.

    ``classes=None`` discovers the class names from the label column (canonical order).
    The label column is read once to index row positions per class. When the classes' images,
    decoded at ``image_size`` (3·S² bytes each), fit in ``max_decoded_bytes``, the first
    :meth:`sample` decodes them all once, row group by row group, and every draw after that
    is an index into memory: distillation draws each image hundreds of times, and decoding a
    JPEG per draw bounded the loop (6 it/s on an H200 at the GPU defaults, against 66 it/s
    from memory; docs/performance.md, "The GPU path"). A larger set streams: :meth:`sample`
    reads only ``image_column`` of the row groups that hold the sampled rows (a small LRU
    cache of row groups keeps repeated draws cheap), so memory stays bounded. Both give the
    same tensors for the same draws.
    """

    def __init__(
        self,
        source: str | Path,
        classes: Sequence[str] | None,
        image_size: int,
        label_column: str = "label",
        image_column: str = "crop",
        cache_row_groups: int = 8,
        max_decoded_bytes: int = 1 << 30,
    ) -> None:
        self.image_size = image_size
        self.image_column = image_column
        self.cache_row_groups = cache_row_groups
        self.max_decoded_bytes = max_decoded_bytes
        source = str(source)
        fs, path = storage.resolve(source)
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
            classes = ordered_classes(seen)
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
        self._rows_total = offset
        self._decoded: np.ndarray | None = None  # (rows, 3, S, S) uint8 RGB, when in memory
        # Sized by all rows (rows of no class are allocated too, left zero): never more.
        self._in_memory = offset * 3 * image_size**2 <= max_decoded_bytes
        empty = [c for c, rows in zip(self.classes, self.index, strict=True) if rows.size == 0]
        if empty:
            log.warning("classes with no rows in %s: %s", source, empty)

    def count(self, class_idx: int) -> int:
        return int(self.index[class_idx].size)

    def _read_row_group(self, g: int) -> list[bytes]:
        """The encoded images of global row group ``g`` (read from its file, not cached)."""
        _, fi, rg = self._starts[g]
        return self._files[fi].read_row_group(rg, columns=[self.image_column]).column(0).to_pylist()

    def _row_group(self, g: int) -> list[bytes]:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        values = self._read_row_group(g)
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
                out[i] = crop_to_chw(data, self.image_size)
        return normalize(torch.from_numpy(np.stack(out)))  # type: ignore[arg-type]

    @property
    def in_memory(self) -> bool:
        """Whether draws come from the decoded images in memory (see the class docstring)."""
        return self._in_memory

    def _decode_all(self) -> np.ndarray:
        """Every indexed row decoded at ``image_size``: ``(rows, 3, S, S)`` uint8 RGB (rows
        of no class stay zero); each row group is read once."""
        start = time.perf_counter()
        size = self.image_size
        out = np.zeros((self._rows_total, 3, size, size), np.uint8)
        wanted = np.sort(np.concatenate(self.index)) if self.index else np.zeros(0, np.int64)
        groups = np.searchsorted(self._group_starts, wanted, side="right") - 1
        for g in np.unique(groups):
            values = self._read_row_group(int(g))
            base = int(self._group_starts[g])
            for row in wanted[groups == g]:
                bgr = crop_to_bgr(values[int(row) - base], size)
                out[row] = bgr[..., ::-1].transpose(2, 0, 1)
        log.info("decoded %d images at %d px into memory (%.0f MiB) in %.1fs", wanted.size,
                 size, out.nbytes / 2**20, time.perf_counter() - start)
        return out

    def sample(self, class_idx: int, n: int, generator: torch.Generator) -> Tensor:
        rows = self.index[class_idx]
        picked = rows[_pick(rows.size, n, generator).numpy()]
        if not self._in_memory:
            return self.rows(picked)
        if self._decoded is None:
            self._decoded = self._decode_all()
        # As bgr_to_rgb_chw does: float32 of the uint8 values, divided by 255.
        return normalize(torch.from_numpy(self._decoded[picked]).float() / 255.0)
