"""Arrow schemas of the catalog's datasets: the code is the truth about columns.

Partition keys (``ingest_date``) live in folder names, not in the files. Every row carries
``status``/``error`` where a stage can fail and the provenance columns (run, code version,
time) so that "what produced this row" is a query, not an archaeology project.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

PROVENANCE = [
    ("run_id", pa.string()),
    ("shard_id", pa.string()),
    ("code_version", pa.string()),
    ("created_at", TS),
]

IMAGES = pa.schema(
    [
        ("source_uri", pa.string()),
        ("source_version", pa.string()),  # ETag or mtime: re-crawl detection without reading
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("status", pa.string()),  # ok | no_face | duplicate | corrupt | empty | too_large | ...
        ("error", pa.string()),
        ("n_faces", pa.int16()),
        ("detector", pa.string()),
        ("detector_version", pa.string()),
        *PROVENANCE,
    ]
)

FACES = pa.schema(
    [
        ("face_id", pa.string()),
        ("image_sha256", pa.string()),
        ("source_uri", pa.string()),
        ("face_index", pa.int16()),
        ("bbox", pa.list_(pa.float32(), 4)),
        ("landmarks5", pa.list_(pa.float32(), 10)),
        ("det_score", pa.float32()),
        ("face_size", pa.float32()),
        ("crop", pa.binary()),  # aligned 112x112 JPEG
        ("detector", pa.string()),
        ("detector_version", pa.string()),
        *PROVENANCE,
    ]
)

SCORES = pa.schema(
    [
        ("face_id", pa.string()),
        ("model_version", pa.string()),
        ("label", pa.string()),
        ("label_index", pa.int16()),
        ("probs", pa.list_(pa.float32())),
        ("confidence", pa.float32()),
        ("margin", pa.float32()),
        ("entropy", pa.float32()),
        ("flip_agreement", pa.bool_()),
        ("similarity", pa.float32()),
        ("embedding", pa.list_(pa.float32())),
        ("det_score", pa.float32()),
        ("face_size", pa.float32()),
        ("status", pa.string()),
        ("error", pa.string()),
        *PROVENANCE,
    ]
)

CURATED = pa.schema(
    [
        ("face_id", pa.string()),
        ("curated_version", pa.string()),
        ("label", pa.string()),
        ("confidence", pa.float32()),
        ("similarity", pa.float32()),
        ("copies", pa.int16()),
        ("policy", pa.string()),  # the selection policy as JSON
        ("model_version", pa.string()),
        *PROVENANCE,
    ]
)

MODELS = pa.schema(
    [
        ("model_version", pa.string()),
        ("event", pa.string()),  # registered | promoted | rejected
        ("uri", pa.string()),
        ("parent_version", pa.string()),
        ("train_datasets", pa.string()),  # JSON: dataset -> version
        ("metrics", pa.string()),  # JSON
        ("classes", pa.list_(pa.string())),
        ("run_id", pa.string()),
        ("code_version", pa.string()),
        ("created_at", TS),
    ]
)

DISTILLED = pa.schema(
    [
        ("distilled_version", pa.string()),
        ("class", pa.string()),
        ("index", pa.int32()),
        ("image", pa.binary()),
        ("shape", pa.list_(pa.int32())),
        ("dtype", pa.string()),
        ("method", pa.string()),
        ("params", pa.string()),
        ("curated_version", pa.string()),
        ("run_id", pa.string()),
        ("code_version", pa.string()),
        ("created_at", TS),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "images": IMAGES,
    "faces": FACES,
    "scores": SCORES,
    "curated": CURATED,
    "distilled": DISTILLED,
    "models": MODELS,
}
