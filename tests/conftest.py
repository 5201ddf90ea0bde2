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
    from omnifer.models import modelfiles

    home = tmp_path_factory.mktemp("omnifer_home")
    # Mirrors: the configured ones, ../shared/models, and the user's cache that
    # 'make setup' (omnifer models fetch) has just filled.
    mirrors = [m for m in os.environ.get("OMNIFER_MODEL_MIRROR", "").split(os.pathsep) if m]
    mirrors += [str(DEFAULT_MIRROR), str(modelfiles.models_dir())]
    os.environ["OMNIFER_MODEL_MIRROR"] = os.pathsep.join(mirrors)
    modelfiles.fetch(home=home, download=False)
    os.environ["OMNIFER_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def yunet_model_path(omnifer_home: Path) -> Path:
    from omnifer.models import modelfiles

    return modelfiles.model_path("yunet", home=omnifer_home)


@pytest.fixture()
def catalog_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the repository's catalog whose root is a fresh temp folder."""
    import yaml

    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["root"] = str(tmp_path / "catalog")
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("OMNIFER_CATALOG", str(path))
    monkeypatch.delenv("OMNIFER_CATALOG_ROOT", raising=False)
    return path


@pytest.fixture()
def data_catalog(catalog_file: Path):
    from omnifer.catalog import DataCatalog
    from omnifer.config import load_catalog

    return DataCatalog(load_catalog(catalog_file))


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-speaking server (moto's server mode) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """One temporary Prefect server and database for the whole session."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _world(factory: pytest.TempPathFactory, name: str, seed: int, scenes: int) -> Path:
    from omnifer.demo.world import generate_world

    out = factory.mktemp(name)
    generate_world(out, seed=seed, labeled_per_class=6, test_per_class=2,
                   unlabeled_images=scenes, workers=1)
    return out


def _model(factory: pytest.TempPathFactory, name: str, world: Path, epochs: int) -> Path:
    from omnifer.labeled import read_rafdb
    from omnifer.training.config import TrainConfig
    from omnifer.training.train import train_model

    out = factory.mktemp(name) / "v1"
    train_model(read_rafdb(world / "labeled", "train"), TrainConfig(epochs=epochs, seed=0), out)
    return out


@pytest.fixture(scope="session")
def ops_world(tmp_path_factory: pytest.TempPathFactory, omnifer_home: Path) -> Path:
    """A tiny seeded world for the operations tests (24 scenes: a few shards of 4)."""
    return _world(tmp_path_factory, "ops_world", seed=5, scenes=24)


@pytest.fixture(scope="session")
def ops_model(ops_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A primitive model checkpoint trained for one epoch on ``ops_world``'s labeled faces."""
    return _model(tmp_path_factory, "ops_model", ops_world, epochs=1)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory, omnifer_home: Path) -> Path:
    """40 seeded scenes and a small labeled set (6 train / 2 test faces per class)."""
    return _world(tmp_path_factory, "world", seed=3, scenes=40)


@pytest.fixture(scope="session")
def tiny_model(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A primitive model trained for two epochs on ``small_world``'s labeled faces."""
    return _model(tmp_path_factory, "model", small_world, epochs=2)
