"""The deployments' pull step: enter the omnifer checkout named in the *worker's* environment.

``deploy/prefect.yaml`` used ``set_working_directory: {directory: "{{ $OMNIFER_REPO }}"}``.
``prefect deploy`` resolves ``{{ $VAR }}`` in pull steps itself whenever ``VAR`` is set in the
deploying shell (``apply_values`` on the pull steps, prefect/cli/deploy/_core.py), so the path
of the operator's checkout was baked into the deployment and every worker, on any machine,
changed into it. The variable's *name* is a plain string here: nothing for ``prefect deploy``
to resolve, and the value is read by :func:`enter_checkout` when a flow run starts, on the
worker that runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

from omnifer.config import variable as environment_variable
from omnifer.errors import ConfigError


def enter_checkout(variable: str = "OMNIFER_REPO") -> dict[str, str]:
    """Prefect pull step: change into the checkout that ``$variable`` names on this worker.

    Returns ``{"directory": path}`` (Prefect makes it the flow run's working directory).
    Raises :class:`ConfigError` (one line, shown in the flow run's log) when the variable is
    unset or does not name a checkout (a folder with ``flows/`` in it).
    """
    value = environment_variable(variable) or ""
    if not value:
        raise ConfigError(f"{variable} is not set on this worker: export {variable}=/path/to/"
                          "the/omnifer/checkout before 'prefect worker start' "
                          "(docs/operations.md, step 4)")
    path = Path(value).expanduser().resolve()
    if not (path / "flows").is_dir():
        raise ConfigError(f"{variable}={value} is not an omnifer checkout (no flows/ folder "
                          "in it): point it at the repository root")
    os.chdir(path)
    return {"directory": str(path)}
