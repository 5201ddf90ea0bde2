"""Prefect tasks around distillation and retraining (GPU pool work): retries and logging only."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from omnifer.catalog import DataCatalog
from omnifer.config import RetrainSettings
from omnifer.distill import stage as distill_stage
from omnifer.distill.config import DistillConfig
from omnifer.training import retrain
from tasks.logging import attach_prefect_logger


@task(name="distill-curated", retries=1, retry_delay_seconds=30, cache_policy=NO_CACHE)
def distill_task(
    catalog: DataCatalog, config: DistillConfig, curated_versions: list[str] | None,
    model_version: str | None, run_id: str,
) -> distill_stage.DistillResult:
    attach_prefect_logger()
    return distill_stage.distill_curated(catalog, config, curated_versions,
                                         model_version=model_version, run_id=run_id)


@task(name="retrain", retries=1, retry_delay_seconds=30, cache_policy=NO_CACHE)
def retrain_task(
    catalog: DataCatalog, settings: RetrainSettings, recipe: str | None,
    curated_versions: list[str] | None, distilled_version: str | None, run_id: str,
) -> retrain.RetrainResult:
    attach_prefect_logger()
    return retrain.retrain(catalog, settings, recipe=recipe, curated_versions=curated_versions,
                           distilled_version=distilled_version, run_id=run_id)
