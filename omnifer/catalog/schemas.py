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
        # 256-bit wavelet hash of the aligned crop (omnifer.curation.hashing); null on faces
        # ingested before it existed (deduplication then hashes their crop)
        ("face_hash", pa.binary(32)),
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
        ("dedup", pa.string()),  # JSON: dedup version and thresholds applied (null: none)
        *PROVENANCE,
    ]
)

MODELS = pa.schema(
    [
        ("model_version", pa.string()),
        ("event", pa.string()),  # registered | promoted | rejected | trained_on_erased
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

ERASURES = pa.schema(
    [
        ("request_id", pa.string()),
        ("rules", pa.string()),  # JSON: [{"rule": source_prefix | sha256 | face_id, "value"}]
        ("reason", pa.string()),
        ("state", pa.string()),  # requested -> applied (rows gone) -> done
        ("sha256s", pa.list_(pa.string())),  # content erased whole (images and their faces)
        ("face_ids", pa.list_(pa.string())),  # faces erased (those of the content, and asked)
        ("matched", pa.string()),  # JSON: dataset -> night -> rows when the request was made
        ("curated_versions", pa.list_(pa.string())),  # curated versions that lost rows
        ("stale_distilled", pa.list_(pa.string())),  # distilled versions made from them
        ("flagged_models", pa.list_(pa.string())),  # model versions trained on them
        ("reports", pa.list_(pa.string())),  # run reports rebuilt (or deleted) without them
        ("retrained_model", pa.string()),  # the replacement trained when erasure.retrain
        ("requested_at", TS),
        ("done_at", TS),
        ("run_id", pa.string()),
        ("code_version", pa.string()),
        ("created_at", TS),
    ]
)

DUPLICATES = pa.schema(
    [
        ("face_id", pa.string()),
        ("cluster_id", pa.string()),  # face_id of the cluster's first kept face; or the item
        ("kind", pa.string()),  # duplicate | contaminated
        ("rule", pa.string()),  # exact | near (duplicate); eval set name (contaminated)
        ("matched_id", pa.string()),  # nearest accepted match: a face_id or <set>:<item>
        ("distance", pa.int16()),  # Hamming distance of the face hashes (of 256 bits)
        ("cosine", pa.float32()),  # cosine of the model embeddings
        ("pixel_difference", pa.float32()),  # registered block difference (hashing.py)
        ("keep", pa.bool_()),  # the one face of its cluster that selection may keep
        ("face_date", pa.string()),  # the face's own night (rows live in the finding night)
        ("model_version", pa.string()),  # whose embeddings were compared
        ("dedup_version", pa.string()),
        *PROVENANCE,
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "images": IMAGES,
    "faces": FACES,
    "scores": SCORES,
    "curated": CURATED,
    "distilled": DISTILLED,
    "models": MODELS,
    "erasures": ERASURES,
    "duplicates": DUPLICATES,
}
