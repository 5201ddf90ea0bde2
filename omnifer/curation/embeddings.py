"""Model embeddings and crops of stored faces: what deduplication and backfill compare and score.

The ``scores`` dataset keeps each face's embedding per model version (``embedding``: the
pooled features minus the labeled mean, L2-normalised; :mod:`omnifer.curation.scoring`). A
face that a model has not scored yet (an older night before its backfill) is scored from its
stored crop on demand: the crop is decoded (112×112 JPEG), never the source image.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from omnifer.catalog.catalog import DataCatalog
from omnifer.curation.scoring import Scorer
from omnifer.errors import DecodeError, ModelFileError
from omnifer.imaging.decode import decode_image
from omnifer.imaging.transforms import resize_image
from omnifer.models.checkpoints import load_checkpoint
from omnifer.models.versions import history, local_checkpoint

_scorers: dict[tuple[str, str, int], Scorer] = {}
_lock = threading.Lock()


def model_scorer(catalog: DataCatalog, model_version: str,
                 batch_size: int | None = None) -> Scorer:
    """A warm :class:`Scorer` of a registered model version (one per process and version;
    ``batch_size`` None: the device's default, :func:`~omnifer.curation.scoring.batch_size_for`).

    Raises :class:`~omnifer.errors.ModelFileError` when the version is not registered.
    """
    reg = history(catalog, model_version)
    if reg is None:
        raise ModelFileError(f"model version {model_version} is not registered "
                             "(see 'omnifer models list')")
    key = (reg["uri"], model_version, batch_size)
    with _lock:
        if key not in _scorers:
            path = local_checkpoint(reg["uri"], model_version)
            _scorers[key] = Scorer(load_checkpoint(path), batch_size=batch_size)
        return _scorers[key]


def decode_crops(crops: Sequence[bytes | None], size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Stored JPEG crops → ((N, size, size, 3) uint8 BGR, (N,) bool decoded)."""
    out = np.zeros((len(crops), size, size, 3), np.uint8)
    ok = np.zeros(len(crops), bool)
    for i, data in enumerate(crops):
        if not data:
            continue
        try:
            img = decode_image(bytes(data)).image
        except DecodeError:
            continue
        out[i] = img if img.shape[:2] == (size, size) else resize_image(img, size)
        ok[i] = True
    return out, ok


def read_crops(catalog: DataCatalog, face_ids: Sequence[str],
               nights: Sequence[str] | None = None) -> dict[str, bytes]:
    """face_id → stored crop (JPEG bytes) for ``face_ids`` (first row wins)."""
    if not len(face_ids):
        return {}
    flt = ds.field("face_id").isin(pa.array(list(face_ids), pa.string()))
    if nights:
        flt = flt & ds.field("ingest_date").isin(pa.array(list(nights), pa.string()))
    table = catalog.read("faces", columns=["face_id", "crop"], filter=flt)
    out: dict[str, bytes] = {}
    for fid, crop in zip(table["face_id"].to_pylist(), table["crop"].to_pylist(), strict=True):
        out.setdefault(fid, crop)
    return out


def stored_embeddings(catalog: DataCatalog, face_ids: Sequence[str],
                      model_version: str) -> dict[str, np.ndarray]:
    """face_id → embedding (float32) of ``model_version`` from ``scores`` (ok rows)."""
    if not len(face_ids):
        return {}
    flt = (ds.field("face_id").isin(pa.array(list(face_ids), pa.string()))
           & (ds.field("model_version") == model_version) & (ds.field("status") == "ok"))
    table = catalog.read("scores", columns=["face_id", "embedding"], filter=flt)
    table = table.filter(pc.invert(pc.is_null(table["embedding"])))
    out: dict[str, np.ndarray] = {}
    for fid, emb in zip(table["face_id"].to_pylist(), table["embedding"].to_pylist(),
                        strict=True):
        out.setdefault(fid, np.asarray(emb, np.float32))
    return out


def embeddings_for(catalog: DataCatalog, face_ids: Sequence[str], model_version: str,
                   crops: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
    """face_id → embedding of ``model_version``: stored ones, the rest scored from crops.

    ``crops`` may hold crops already read; missing ones are read from ``faces``. A face whose
    crop cannot be decoded has no embedding.
    """
    out = stored_embeddings(catalog, face_ids, model_version)
    missing = [f for f in face_ids if f not in out]
    if not missing:
        return out
    crops = dict(crops or {})
    need = [f for f in missing if f not in crops]
    crops.update(read_crops(catalog, need))
    images, ok = decode_crops([crops.get(f) for f in missing])
    if ok.any():
        batch = model_scorer(catalog, model_version).score(images[ok])
        for fid, emb in zip(np.asarray(missing, object)[ok], batch.embedding, strict=True):
            out[str(fid)] = emb.astype(np.float32)
    return out
