"""Subprocess side of the erasure fault tests: run one forget, and die where told.

``python tests/helpers_forget.py MODE CATALOG_YAML SOURCE_PREFIX``

MODE:
  clean          run the forget to the end
  step:NAME      SIGKILL itself once step NAME has committed (``requested``, ``distilled``,
                 ``models``, ``rows``, ``applied``, ``reports``, ``done``)
  replace:K      SIGKILL itself at the K-th atomic rename of the forget (``os.replace``: a
                 staged Parquet file, a rewritten row file, a report), before it happens
  link:K         SIGKILL itself at the K-th exclusive link (a compaction state's switch),
                 before it happens
  after-link:K   the same, right after it happened (switched, replaced files not deleted)

Prints ``request=<id> state=<state>`` when it gets to the end.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at(name: str, nth: int, after: bool = False) -> None:
    real = getattr(os, name)
    count = {"n": 0}

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - os.replace/os.link's
        count["n"] += 1
        if count["n"] == nth:
            if after:
                real(*args, **kwargs)
            _die()
        return real(*args, **kwargs)

    setattr(os, name, wrapper)


def main(argv: list[str]) -> int:
    mode, catalog_yaml, prefix = argv
    from omnifer.catalog import DataCatalog
    from omnifer.config import load_catalog, load_settings
    from omnifer.erasure import forget, make_rules
    from omnifer.erasure.forget import STEP_HOOKS

    catalog = DataCatalog(load_catalog(Path(catalog_yaml)))
    settings = load_settings()
    rules = make_rules([prefix])
    if mode.startswith("step:"):
        target = mode.split(":", 1)[1]
        STEP_HOOKS.append(lambda step: _die() if step == target else None)
    elif mode.startswith(("replace:", "link:", "after-link:")):
        name, nth = mode.split(":")
        _kill_at(name.removeprefix("after-"), int(nth), after=name.startswith("after-"))
    result = forget(catalog, rules, "withdrawn by its publisher", settings=settings)
    print(f"request={result.request_id} state={result.state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
