"""Sections of the settings for run records, erasure, near-duplicates and backfill.

Plain pydantic models, validated by :class:`omnifer.config.Settings` (which owns them and is
the only reader of the environment); kept here so that ``config.py`` stays small.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BackfillSettings", "DedupSettings", "ErasureSettings", "EvalSetSpec",
           "RunsSettings"]


class RunsSettings(BaseModel):
    """Run records (``omnifer.catalog.runs``): how often a run says it is alive, and when a run that
    stopped saying so counts as crashed (``omnifer runs`` shows it ``crashed``)."""

    model_config = ConfigDict(extra="forbid")

    heartbeat_s: float = Field(30.0, gt=0)  # a running flow rewrites its record this often
    stale_after_s: float = Field(180.0, gt=0)  # no heartbeat for this long: crashed
class ErasureSettings(BaseModel):
    """What ``omnifer forget`` does beyond removing rows (see docs/operations.md, "Erasure
    requests"). ``retrain``: when the primitive model was trained on erased faces, distil
    again (if the recipe uses distilled images) and train a replacement at once, without the
    flagged model as teacher; the replacement is promoted whatever its gain, because a model
    trained on erased data must not stay the primitive model."""

    model_config = ConfigDict(extra="forbid")

    retrain: bool = False


class EvalSetSpec(BaseModel):
    """A labeled evaluation set whose faces must never be mined (decontamination)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    format: str = "rafdb"  # rafdb | ferplus | affectnet | folder
    split: str = "test"


class DedupSettings(BaseModel):
    """Near-duplicate faces and decontamination (:mod:`omnifer.curation.dedup`).

    A pair of faces is a duplicate when its face hashes (256 bits) differ in at most
    ``max_hamming`` bits, its model embeddings have cosine >= ``min_cosine`` and, registered
    onto each other, its crops differ by at most ``max_pixel_difference``
    (:func:`omnifer.curation.hashing.pixel_difference`). A mined face matches an evaluation
    item under the ``eval_*`` thresholds. Defaults measured on the demo world
    (``benchmarks/closed_loop.py``, docs/closed_loop.md); the embedding gate is off (-1) by
    default because the demo's small FER models embed brightness more than identity: a
    brightened copy fell to cosine -0.1 while other expressions of one person reached 0.98.
    Turn it on for a model whose embeddings separate them. ``bands`` × 256/``bands``-bit keys
    index the hashes (multi-index hashing), each hash compared with the next ``window`` of its
    bucket; of a face's candidates only its ``neighbours`` nearest (by Hamming distance) go on
    to the embedding and pixel checks, so the work per night stays linear in its faces.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_hamming: int = Field(48, ge=0, le=256)
    min_cosine: float = Field(-1.0, ge=-1, le=1)
    max_pixel_difference: float = Field(0.3, ge=0)
    bands: Literal[8, 16, 32] = 16
    window: int = Field(64, ge=1)
    neighbours: int = Field(4, ge=1)
    decontaminate: bool = True
    test_split: bool = True  # the labeled test split of ``retrain.labeled`` is an eval set
    eval_sets: list[EvalSetSpec] = Field(default_factory=list)
    eval_max_hamming: int = Field(80, ge=0, le=256)
    eval_min_cosine: float = Field(-1.0, ge=-1, le=1)
    eval_max_pixel_difference: float = Field(0.35, ge=0)
    eval_neighbours: int = Field(8, ge=1)  # evaluation items checked per face, nearest first


class BackfillSettings(BaseModel):
    """Re-scoring stored faces with a newly promoted model (:mod:`omnifer.pipeline.backfill`).

    ``on_promotion``: the retrain flow starts a backfill after promoting a model (through
    ``deployment`` when set, e.g. ``backfill/backfill``; else in the same process)."""

    model_config = ConfigDict(extra="forbid")

    on_promotion: bool = False
    deployment: str | None = None
    shard_size: int = Field(2048, ge=1)
    workers: int = Field(2, ge=1)
