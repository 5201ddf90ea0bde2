"""Shared fixtures: an isolated OMNIFER_HOME with the model files, tiny seeded data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = REPO.parent / "shared" / "models"

# Keep Prefect offline, quiet and out of the user's home during tests.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("OMNIFER_PROGRESS", "log")


@pytest.fixture(scope="session")
def omnifer_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide OMNIFER_HOME with the model files fetched from the mirror."""
    from omnifer import modelfiles

    home = tmp_path_factory.mktemp("omnifer_home")
    if not os.environ.get("OMNIFER_MODEL_MIRROR") and DEFAULT_MIRROR.exists():
        os.environ["OMNIFER_MODEL_MIRROR"] = str(DEFAULT_MIRROR)
    modelfiles.fetch(home=home, download=False)
    os.environ["OMNIFER_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def yunet_model_path(omnifer_home: Path) -> Path:
    from omnifer import modelfiles

    return modelfiles.model_path("yunet", home=omnifer_home)
