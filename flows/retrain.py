"""Retrain flow (``gpu`` pool): labeled + curated / distilled → new version → promote if better.

Parameters left at None come from ``retrain`` in omnifer.yaml (recipe, labeled set, training
overrides). The verdict and both test figures are in the ``models`` dataset and in the run's
markdown artifact.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_run_id
from flows.hooks import end_run_record
from omnifer.catalog import DataCatalog
from omnifer.catalog.runs import recorded_run
from omnifer.config import load_settings
from tasks.retrain import retrain_task


@flow(name="retrain", log_prints=True, on_failure=[end_run_record],
      on_crashed=[end_run_record])
def retrain_flow(
    recipe: str | None = None,
    distilled_version: str | None = None,
    curated_versions: list[str] | None = None,
    labeled_path: str | None = None,
    labeled_format: str | None = None,
    epochs: int | None = None,
    retrain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrain and promote only if the new model beats the primitive model on the test split."""
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    rs = settings.retrain_settings(retrain)
    labeled = rs.labeled.model_copy(update={k: v for k, v in
                                            {"path": labeled_path, "format": labeled_format}.items()
                                            if v is not None})
    train = {**rs.train, **({"epochs": epochs} if epochs else {})}
    rs = rs.model_copy(update={"labeled": labeled, "train": train})
    run_id = flow_run_id("retrain")
    parameters = {"recipe": recipe or rs.recipe, "distilled_version": distilled_version,
                  "curated_versions": curated_versions}
    with recorded_run(catalog, run_id, "retrain", dt.datetime.now(dt.UTC).date().isoformat(),
                      parameters) as run:
        try:
            outcome = retrain_task(catalog, rs, recipe, curated_versions, distilled_version,
                                   run_id)
        except Exception as exc:
            run.stage("retrain", "failed", {"error": str(exc)})
            raise
        result = outcome.model_dump()
        run.stage("retrain", "completed", result)
        run.finish("completed", result)
    verdict = "promoted" if outcome.promoted else "rejected"
    create_markdown_artifact(
        key="retrain-verdict",
        markdown=(f"# Retrain {outcome.model_version}: **{verdict}**\n\n"
                  f"| model | test accuracy |\n|---|---|\n"
                  f"| {outcome.model_version} (new, {outcome.recipe}) | {outcome.accuracy:.4f} |\n"
                  f"| {outcome.parent_version} (primitive) | {outcome.parent_accuracy:.4f} |\n\n"
                  f"{outcome.train_images} training images, {outcome.train_seconds:.0f}s; "
                  f"distilled {outcome.distilled_version}, curated {outcome.curated_versions}"),
        description="omnifer retrain verdict",
    )
    get_run_logger().info("%s %s: %.4f vs %s %.4f", outcome.model_version, verdict,
                          outcome.accuracy, outcome.parent_version, outcome.parent_accuracy)
    if outcome.promoted and settings.backfill.on_promotion:
        result["backfill"] = start_backfill(settings.backfill.deployment,
                                            outcome.model_version)
    return result


def start_backfill(deployment: str | None, model_version: str) -> dict[str, Any]:
    """Re-score the stored faces with a just-promoted model (``backfill.on_promotion``):
    through ``deployment`` when set (not awaited), else here as a subflow."""
    if deployment:
        from prefect.deployments import run_deployment

        run = run_deployment(name=deployment, parameters={"model": model_version}, timeout=0)
        return {"flow_run": str(run.id)}
    from flows.backfill import backfill_flow

    summary = backfill_flow(model=model_version)
    return {"run_id": summary["run_id"], "faces_scored": summary["faces_scored"]}
