"""One validated configuration: the data catalog, pipeline settings and the environment.

This module is the only reader of the process environment (``OMNIFER_*``, and the ``AWS_*``
endpoint/region fallbacks); a test fails when another module reads ``os.environ``.

* :class:`Settings` (pipeline settings). Precedence, lowest first: defaults in this file <
  ``omnifer.yaml`` (path in ``$OMNIFER_CONFIG``, else ``./omnifer.yaml`` when present) <
  environment variables ``OMNIFER_*`` (nested with ``__``, e.g.
  ``OMNIFER_INGEST__SHARD_SIZE=64``). The catalog itself lives in ``data_catalog.yaml``
  (``$OMNIFER_CATALOG``), because data engineers read it without Python.
* :class:`Environment` (where this process keeps files and finds S3, how it reports): only
  from the environment, read again on every call of :func:`environment` (cheap: cached per
  value), because tests and workers change it at run time.

Everything is validated here, once, so a typo fails at start-up with one line, not at 2 a.m.
in the middle of a shard.
"""

from __future__ import annotations

import os
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from omnifer.config_sections import (
    BackfillSettings,
    DedupSettings,
    ErasureSettings,
    RunsSettings,
)
from omnifer.errors import ConfigError, config_error

DATASET_NAMES = ("images", "faces", "scores", "curated", "distilled", "models")
OPTIONAL_DATASETS: dict[str, dict[str, Any]] = {
    "erasures": {"uri": "erasures", "key": ["request_id"],
                 "description": "Erasure requests (omnifer forget)."},
    "duplicates": {"uri": "duplicates", "partitioning": ["ingest_date"],
                   "key": ["face_id", "dedup_version"],
                   "description": "Near-duplicate clusters and evaluation-set matches."},
}
"""Datasets a catalog file written before they existed may lack: added with these specs."""


class DatasetSpec(BaseModel):
    """One dataset of the catalog: where it lives and how it is laid out."""

    model_config = ConfigDict(extra="forbid")

    name: str
    uri: str
    schema_version: int = 1
    partitioning: list[str] = Field(default_factory=list)
    key: list[str] = Field(default_factory=list)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # Names become DuckDB views and (with partition columns) folder names.
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", value):
            raise ValueError(f"dataset name {value!r} must be lower-case letters, digits, _")
        return value

    @field_validator("partitioning")
    @classmethod
    def _plain_columns(cls, value: list[str]) -> list[str]:
        for col in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", col):
                raise ValueError(f"partition column {col!r} must be lower-case letters, "
                                 "digits, _")
        return value


class Catalog(BaseModel):
    """``data_catalog.yaml``: the datasets and the root their relative URIs hang from."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    root: str
    datasets: dict[str, DatasetSpec]

    @field_validator("datasets", mode="before")
    @classmethod
    def _names_from_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({"name": k, **v} if isinstance(v, dict) else v) for k, v in value.items()}
        return value

    def uri(self, name: str) -> str:
        """Absolute URI of dataset ``name`` (relative URIs resolve under ``root``)."""
        if name not in self.datasets:
            known = ", ".join(self.datasets)
            raise ConfigError(f"dataset '{name}' is not in the catalog ({known})")
        return join_uri(self.root, self.datasets[name].uri)

    def aux_uri(self, *parts: str) -> str:
        """URI of bookkeeping files (plans, shard markers, model store, reports) under root."""
        return join_uri(self.root, *parts)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join_uri(base: str, *parts: str) -> str:
    """Join URI parts; an absolute part (``/x``, ``s3://``, ``file://``) replaces the base."""
    out = base
    for part in parts:
        if "://" in part or part.startswith("/"):
            out = part
        else:
            out = out.rstrip("/") + "/" + part.strip("/")
    return out


class IngestSettings(BaseModel):
    """How the nightly ingest cuts, decodes and detects."""

    model_config = ConfigDict(extra="forbid")

    detector: str = "yunet"
    min_det_score: float = Field(0.6, ge=0, le=1)
    min_face_size: int = Field(32, ge=8)
    max_side: int = Field(1280, ge=128)
    # Detection scale (omnifer.faces.finder.FaceFinder; docs/performance.md): "auto" searches each
    # image at the scale its smallest kept face (min_face_size) needs and detects every face
    # again at ~refine_px for full-quality landmarks; "full" searches the whole image at up to
    # max_side (SCRFD: 640), as before. whole_frame: also search a padded thumbnail, so a face
    # that fills the frame (a tight crop) is found with every detector. Recorded in each row's
    # detector_version.
    detect_scale: Literal["auto", "full"] = "auto"
    refine_px: int | None = Field(None, ge=32, le=512)  # None: the detector's own
    whole_frame: bool = True
    shard_size: int = Field(256, ge=1)
    workers: int = Field(2, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    max_bytes: int = Field(50_000_000, ge=1)
    crop_jpeg_quality: int = Field(95, ge=50, le=100)
    # Crops per forward pass of the primitive model; None: by device (16 on a CPU, where
    # larger batches fall out of cache, 128 on a GPU: omnifer.curation.scoring.batch_size_for).
    score_batch_size: int | None = Field(None, ge=1)
    compact: bool = True  # merge a night's shard files into one per dataset once all committed
    # Where shards run: ``threads`` (this process, ``workers`` at a time) or ``dask`` (a Dask
    # cluster through prefect-dask: ``dask_address`` is ``tcp://host:8786`` for an existing
    # scheduler, or ``local`` for a LocalCluster of ``workers`` processes on 127.0.0.1).
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = None

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is None or value == "local" or "://" in value or ":" in value:
            return value
        raise ValueError(f"'{value}' is neither 'local' nor a scheduler address "
                         "like tcp://host:8786")


class LabeledSpec(BaseModel):
    """The labeled dataset a retrain starts from; its test split decides promotion."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    format: str = "rafdb"  # rafdb | ferplus | affectnet | folder
    train_split: str = "train"
    test_split: str = "test"


class RetrainSettings(BaseModel):
    """Distillation and retraining: what they learn from, and when the nightly flow starts them.

    ``recipe``: what is added to the labeled set (``distilled`` is the paper's cheap path,
    ``curated`` the full mined set, ``all`` both). ``train`` / ``distill`` override fields of
    :class:`omnifer.training.config.TrainConfig` / :class:`omnifer.distill.config.DistillConfig`,
    so CPU test
    runs can use tiny settings and GPU workers the full ones. A new model is promoted only
    when its test accuracy beats the current primitive model's by more than ``min_gain``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False  # the nightly flow triggers distill → retrain
    min_new_curated: int = Field(200, ge=1)  # …when this many curated rows are not distilled yet
    deployment_distill: str | None = None  # e.g. "distill/distill"; None = run in-process
    deployment_retrain: str | None = None  # e.g. "retrain/retrain"; None = run in-process
    recipe: Literal["curated", "distilled", "all"] = "distilled"
    labeled: LabeledSpec = Field(default_factory=LabeledSpec)
    train: dict[str, Any] = Field(default_factory=lambda: {"device": "auto"})
    distill: dict[str, Any] = Field(default_factory=dict)
    distilled_copies: int = Field(1, ge=1)  # each distilled image counts this many times
    # Soft targets for distilled images: this share of the parent model's softmax, the rest on
    # the image's own class (0: one-hot labels). See omnifer.training.retrain.with_teacher_targets.
    teacher_weight: float = Field(0.5, ge=0, le=1)
    # The same for curated faces (recipes curated/all): 0 keeps their hard pseudo-labels; > 0
    # is knowledge distillation from the parent (e.g. an imported ONNX teacher) on them.
    curated_teacher_weight: float = Field(0.0, ge=0, le=1)
    min_gain: float = Field(0.0, ge=0)


class Settings(BaseSettings):
    """Pipeline settings; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="OMNIFER_", env_nested_delimiter="__", extra="ignore"
    )

    catalog_file: Path = Field(Path("data_catalog.yaml"), alias="OMNIFER_CATALOG")
    catalog_root: str | None = None
    # Each a folder, s3://bucket/prefix, urls:manifest.csv, or a mapping with ``kind``/``path``
    # and options (e.g. ``exclude: ["*.mov", "drafts/"]``, ``faces: aligned``), kept as its
    # JSON text (omnifer.sources.parse.parse_source reads both forms).
    sources: list[str] = Field(default_factory=list)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    selection: dict[str, Any] = Field(default_factory=dict)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    runs: RunsSettings = Field(default_factory=RunsSettings)
    erasure: ErasureSettings = Field(default_factory=ErasureSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)

    model_config["populate_by_name"] = True

    @field_validator("sources", mode="before")
    @classmethod
    def _source_mappings(cls, value: Any) -> Any:
        """A YAML mapping source becomes the JSON text that ``parse_source`` reads."""
        import json

        if isinstance(value, list):
            return [json.dumps(v) if isinstance(v, dict) else v for v in value]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        from pydantic_settings import YamlConfigSettingsSource

        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=environment().config_file)
        return (init_settings, env_settings, yaml_source)

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_file, root_override=self.catalog_root)

    def retrain_settings(self, overrides: dict[str, Any] | None = None) -> RetrainSettings:
        """``retrain`` with a run's overrides (top-level keys replace), validated."""
        try:
            return RetrainSettings.model_validate({**self.retrain.model_dump(),
                                                   **(overrides or {})})
        except ValidationError as exc:
            raise config_error("retrain settings", exc) from None


def load_catalog(path: Path | str, root_override: str | None = None) -> Catalog:
    """Read and validate ``data_catalog.yaml``; a relative local root hangs off its folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"catalog file {path} not found: run from the repository root or set OMNIFER_CATALOG"
        )
    if path.is_dir():
        raise ConfigError(f"catalog file {path} is a folder: OMNIFER_CATALOG names the YAML file "
                          "(data_catalog.yaml); to move the data, set OMNIFER_CATALOG_ROOT")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        catalog = Catalog(**raw)
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise config_error(f"catalog {path}", exc) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"catalog file {path} cannot be read: {exc}") from None
    root = root_override or catalog.root
    if root.startswith("file://"):
        root = root[len("file://") :]
    if not is_remote(root) and not Path(root).is_absolute():
        root = str((path.parent / root).resolve())
    missing = [n for n in DATASET_NAMES if n not in catalog.datasets]
    if missing:
        raise ConfigError(f"catalog {path} lacks datasets: {', '.join(missing)}")
    datasets = {**{n: DatasetSpec(name=n, **spec) for n, spec in OPTIONAL_DATASETS.items()
                   if n not in catalog.datasets}, **catalog.datasets}
    return catalog.model_copy(update={"root": root, "datasets": datasets})


def load_settings(**overrides: Any) -> Settings:
    """Settings from YAML + environment, turned into one clear ConfigError when invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise config_error("settings", exc) from None


# -- the environment ---------------------------------------------------------------------------
DEFAULT_S3_REGION = "us-east-1"
"""The S3 region when neither ``OMNIFER_S3_REGION`` nor ``AWS_REGION``/``AWS_DEFAULT_REGION``
names one (the one default for the catalog's and the sources' S3 clients)."""

# Field → the variables that set it, first non-empty wins.
_ENVIRONMENT_VARIABLES: dict[str, tuple[str, ...]] = {
    "home": ("OMNIFER_HOME",),
    "model_mirror": ("OMNIFER_MODEL_MIRROR",),
    "s3_endpoint_url": ("OMNIFER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
    "s3_region": ("OMNIFER_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    "progress": ("OMNIFER_PROGRESS",),
    "log_level": ("OMNIFER_LOG_LEVEL",),
    "config_file": ("OMNIFER_CONFIG",),
}


class Environment(BaseModel):
    """What only the environment sets, for this process (see the module docstring).

    ``home``: cache for model files and retraining work (``OMNIFER_HOME``, default
    ``~/.cache/omnifer``). ``model_mirrors``: folders searched for model files before
    downloading (``OMNIFER_MODEL_MIRROR``, ``os.pathsep``-separated). ``s3_endpoint_url``: an
    S3-compatible server (``OMNIFER_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``).
    ``s3_region``: ``OMNIFER_S3_REGION``, else ``AWS_REGION``/``AWS_DEFAULT_REGION``, else
    :data:`DEFAULT_S3_REGION`. ``progress_bars``: False when ``OMNIFER_PROGRESS`` is ``log``
    (or ``0``/``off``/``false``): log lines even on a terminal. ``log_level``:
    ``OMNIFER_LOG_LEVEL`` (default ``INFO``). ``config_file``: ``OMNIFER_CONFIG``, else
    ``omnifer.yaml``.
    """

    model_config = ConfigDict(frozen=True)

    home: Path
    model_mirrors: tuple[Path, ...] = ()
    s3_endpoint_url: str | None = None
    s3_region: str = DEFAULT_S3_REGION
    progress_bars: bool = True
    log_level: str = "INFO"
    config_file: str = "omnifer.yaml"


def variable(name: str) -> str | None:
    """The value of environment variable ``name`` (None when unset or empty), for the few
    variables that are not omnifer's own settings: ``OMNIFER_REPO`` in a deployment's pull
    step, ``PREFECT_API_URL`` / ``PREFECT_API_KEY`` when asking Prefect about a run. Read here
    so that this module stays the one reader of the environment."""
    value = os.environ.get(name, "").strip()
    return value or None


def default_variable(name: str, value: str) -> None:
    """Set environment variable ``name`` to ``value`` unless it is set, for a library that reads
    it itself when it loads (OpenMP's ``OMP_WAIT_POLICY``: ``omnifer distill`` sets it before
    torch loads). Here so that this module stays the one place that touches the environment."""
    os.environ.setdefault(name, value)


def environment() -> Environment:
    """The process's :class:`Environment` as the environment says now."""
    snapshot = tuple(
        next((os.environ[v] for v in names if os.environ.get(v)), None)
        for names in _ENVIRONMENT_VARIABLES.values()
    )
    return _environment(snapshot, os.environ.get("HOME"))


@lru_cache(maxsize=32)
def _environment(snapshot: tuple[str | None, ...], user_home: str | None) -> Environment:
    """``user_home`` (``$HOME``) is part of the cache key: the default cache hangs off it."""
    raw = dict(zip(_ENVIRONMENT_VARIABLES, snapshot, strict=True))
    home = Path(raw["home"] or Path.home() / ".cache" / "omnifer").expanduser()
    mirrors = tuple(Path(p).expanduser() for p in (raw["model_mirror"] or "").split(os.pathsep)
                    if p.strip())
    values: dict[str, Any] = {
        "home": home,
        "model_mirrors": mirrors,
        "s3_endpoint_url": raw["s3_endpoint_url"],
        "s3_region": raw["s3_region"] or DEFAULT_S3_REGION,
        "progress_bars": (raw["progress"] or "").lower() not in {"0", "off", "false", "log"},
        "log_level": raw["log_level"] or "INFO",
        "config_file": raw["config_file"] or "omnifer.yaml",
    }
    try:
        return Environment(**values)
    except ValidationError as exc:
        raise config_error("environment", exc) from None
