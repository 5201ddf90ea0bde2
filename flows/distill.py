"""Distill flow (``gpu`` pool): the current curated set → a few synthetic images per class.

With ``then_retrain`` it hands the distilled version to the retrain flow: through
``run_deployment`` when ``retrain.deployment_retrain`` names a deployment (the GPU pool picks
it up), else in-process as a subflow (the embedded default, no pool).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_run_id
from flows.hooks import end_run_record
from flows.retrain import retrain_flow
from omnifer.catalog import DataCatalog
from omnifer.catalog.runs import recorded_run
from omnifer.config import load_settings
from omnifer.distill.config import make_config
from omnifer.distill.stage import DistillResult
from tasks.retrain import distill_task


@flow(name="distill", log_prints=True, on_failure=[end_run_record],
      on_crashed=[end_run_record])
def distill_flow(
    curated_versions: list[str] | None = None,
    method: str | None = None,
    ipc: int | None = None,
    iterations: int | None = None,
    then_retrain: bool = False,
    retrain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Distil the curated versions (default: the latest of each night).

    ``retrain``: overrides of the ``retrain`` settings (``distill``, ``train``, …) for this run
    and the retrain run it starts.
    """
    logger = get_run_logger()
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    rs = settings.retrain_settings(retrain)
    config = make_config(rs.distill, method=method, ipc=ipc, iterations=iterations)
    run_id = flow_run_id("distill")
    with recorded_run(catalog, run_id, "distill", dt.datetime.now(dt.UTC).date().isoformat(),
                      {"curated_versions": curated_versions,
                       "config": config.model_dump()}) as run:
        outcome = distill_task(catalog, config, curated_versions, None, run_id)
        result: dict[str, Any] = {"distill": outcome.model_dump()}
        run.stage("distill", "completed", outcome.model_dump())
        _artifact(outcome)
        if then_retrain:
            result["retrain"] = trigger_retrain(rs.deployment_retrain,
                                                outcome.distilled_version, retrain)
            logger.info("retrain: %s", result["retrain"])
        run.finish("completed", result)
    return result


def _artifact(outcome: DistillResult) -> None:
    create_markdown_artifact(
        key="distilled",
        markdown=(f"# Distilled {outcome.distilled_version}\n\n"
                  f"{outcome.method}, {outcome.ipc} images per class from "
                  f"{outcome.curated_rows} curated faces ({', '.join(outcome.curated_versions)})"
                  f"{' — already committed' if outcome.skipped else ''}; grids: "
                  f"{outcome.grids_uri}"),
        description="omnifer distillation",
    )


def trigger_retrain(deployment: str | None, distilled_version: str,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the retrain flow on its pool (deployment) or here, as a subflow."""
    if deployment:
        from prefect.deployments import run_deployment

        run = run_deployment(name=deployment, timeout=0,
                             parameters={"distilled_version": distilled_version,
                                         "retrain": overrides})
        return {"deployment": deployment, "flow_run_id": str(run.id)}
    return retrain_flow(distilled_version=distilled_version, retrain=overrides)
