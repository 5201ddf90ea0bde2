"""Evaluation sets kept out of the mined data: their faces, hashed and embedded once.

Decontamination (DataComp removes from its pool every image near an evaluation image) needs,
per evaluation item, what a mined face is compared with: its face hash, its embedding under
the model that curates, and its crop for the pixel check. :func:`load_eval_index` reads the
sets once per (sets, model version) and keeps the result beside the catalog
(``_eval_index/<digest>.parquet``), so every later night only reads that small file.

Which sets: the labeled set's test split (``retrain.labeled``: the split that decides
promotion, and whose inflation would promote the wrong model) when ``dedup.test_split``, plus
every set in ``dedup.eval_sets``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import digest
from omnifer.config import Settings, join_uri
from omnifer.config_sections import EvalSetSpec
from omnifer.curation.embeddings import decode_crops, model_scorer
from omnifer.curation.hashing import column_words, face_hash
from omnifer.errors import DatasetError
from omnifer.labeled.formats import read_dataset

log = logging.getLogger(__name__)

EVAL_INDEX = pa.schema([("item", pa.string()), ("face_hash", pa.binary(32)),
                        ("embedding", pa.list_(pa.float32())), ("crop", pa.binary())])
CROP_SIZE = 112


def eval_sets(settings: Settings) -> list[EvalSetSpec]:
    """The evaluation sets the settings name (see the module docstring)."""
    specs = list(settings.dedup.eval_sets)
    labeled = settings.retrain.labeled
    if settings.dedup.test_split and labeled.path:
        specs.insert(0, EvalSetSpec(name="test", path=labeled.path, format=labeled.format,
                                    split=labeled.test_split))
    return specs


@dataclass
class EvalIndex:
    """Evaluation items: ``items`` names (``<set>:<item>``), ``words`` (N, 4) uint64 hashes,
    ``embeddings`` (N, D) float32, ``crops`` (N, 112, 112, 3) uint8 BGR."""

    items: list[str]
    words: np.ndarray
    embeddings: np.ndarray
    crops: np.ndarray
    digest: str

    def __len__(self) -> int:
        return len(self.items)


def index_digest(specs: list[EvalSetSpec], model_version: str) -> str:
    return digest([[s.model_dump() for s in specs], model_version])[:16]


def load_eval_index(catalog: DataCatalog, specs: list[EvalSetSpec],
                    model_version: str) -> EvalIndex:
    """The evaluation items of ``specs``, hashed and embedded with ``model_version`` (cached).

    Raises :class:`~omnifer.errors.DatasetError` when a set cannot be read.
    """
    key = index_digest(specs, model_version)
    uri = join_uri(catalog.aux_uri("_eval_index"), f"{key}.parquet")
    if storage.exists(uri):
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)), schema=EVAL_INDEX)
    else:
        table = _build(catalog, specs, model_version)
        storage.write_table_atomic(uri, table)
        log.info("evaluation index %s: %d items of %s hashed and embedded with %s", key,
                 table.num_rows, ", ".join(s.name for s in specs), model_version)
    crops, _ = decode_crops(table["crop"].to_pylist(), CROP_SIZE)
    emb = table["embedding"].to_pylist()
    return EvalIndex(items=table["item"].to_pylist(),
                     words=column_words(table["face_hash"])[0],
                     embeddings=np.asarray(emb, np.float32).reshape(len(emb), -1),
                     crops=crops, digest=key)


def _build(catalog: DataCatalog, specs: list[EvalSetSpec], model_version: str) -> pa.Table:
    import cv2

    items, hashes, crops_jpeg, images = [], [], [], []
    for spec in specs:
        try:
            data = read_dataset(spec.path, spec.format, spec.split, size=CROP_SIZE)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"evaluation set {spec.name} ({spec.path}, {spec.format} "
                               f"{spec.split}) cannot be read: {exc}") from None
        for name, img in zip(data.names, data.images, strict=True):
            items.append(f"{spec.name}:{name}")
            hashes.append(face_hash(img))
            crops_jpeg.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                              .tobytes())
            images.append(img)
    if images:
        emb = model_scorer(catalog, model_version).score(np.stack(images)).embedding
    else:
        emb = np.zeros((0, 0), np.float32)
    return pa.table({"item": pa.array(items, pa.string()),
                     "face_hash": pa.array(hashes, pa.binary(32)),
                     "embedding": pa.array([e.astype(np.float32).tolist() for e in emb],
                                           pa.list_(pa.float32())),
                     "crop": pa.array(crops_jpeg, pa.binary())}, schema=EVAL_INDEX)
