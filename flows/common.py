"""What every flow shares: the id of the current run, and Prefect's state of earlier runs."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.request

from prefect.runtime import flow_run

from omnifer.config import variable


def flow_run_id(prefix: str) -> str:
    """The Prefect flow run's id; outside a run, ``<prefix>-<UTC timestamp>``."""
    return str(flow_run.get_id() or f"{prefix}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def prefect_states(run_ids: list[str]) -> dict[str, str]:
    """Prefect's state type for each flow run id, from the server this shell is configured for
    (``PREFECT_API_URL``, else the active Prefect profile). Empty when no server is configured
    or it does not answer within 3 s: the caller falls back on the run's heartbeat."""
    ids = [i for i in run_ids if _UUID.fullmatch(i)]
    if not ids:
        return {}
    url, key = variable("PREFECT_API_URL"), variable("PREFECT_API_KEY")
    if not url:
        try:
            from prefect.settings import get_current_settings

            api = get_current_settings().api
            url = api.url
            key = api.key.get_secret_value() if api.key else None
        except Exception:  # noqa: BLE001 - no Prefect settings: no server to ask
            return {}
    if not url:
        return {}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"flow_runs": {"id": {"any_": ids}}, "limit": 200}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/flow_runs/filter", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            rows = json.loads(resp.read())
    except (OSError, ValueError):
        return {}
    return {str(r.get("id")): str((r.get("state") or {}).get("type"))
            for r in rows if isinstance(r, dict)}
