"""Model files the pipeline needs: where they come from, what they must hash to.

``fetch`` fills the cache (``$OMNIFER_HOME/models``) from a local mirror first, then from the
upstream URL; every file is checked against its sha256 before it is used, so a truncated or
tampered file is refused rather than loaded. Weights are never committed to the repository.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from omnifer.config import environment
from omnifer.errors import ModelFileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    """One downloadable model file."""

    name: str
    filename: str
    sha256: str
    url: str
    licence: str
    required: bool = True  # optional files (SCRFD) are fetched only when a mirror has them


MODEL_FILES: dict[str, ModelFile] = {
    "yunet": ModelFile(
        name="yunet",
        filename="face_detection_yunet_2023mar.onnx",
        sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
        "face_detection_yunet_2023mar.onnx",
        licence="Apache-2.0 / MIT (OpenCV Zoo)",
    ),
    "scrfd": ModelFile(
        name="scrfd",
        filename="det_500m.onnx",
        sha256="5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_sc.zip",
        licence="InsightFace model licence: non-commercial research use only",
        required=False,
    ),
}


def omnifer_home() -> Path:
    """Cache root: ``$OMNIFER_HOME`` or ``~/.cache/omnifer`` (see ``config.Environment``)."""
    return environment().home


def models_dir(home: Path | None = None) -> Path:
    return (home or omnifer_home()) / "models"


def mirror_dirs() -> list[Path]:
    """Folders named by ``$OMNIFER_MODEL_MIRROR`` (``os.pathsep``-separated)."""
    return list(environment().model_mirrors)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _where_to_put(spec: ModelFile, home: Path | None) -> str:
    return (
        f"model file '{spec.filename}' ({spec.name}) is missing: put it in "
        f"{models_dir(home)} (or in a folder named by OMNIFER_MODEL_MIRROR) and run "
        f"'omnifer models fetch'; upstream: {spec.url}"
    )


def model_path(name: str, home: Path | None = None, verify: bool = True) -> Path:
    """Path of a fetched, checksum-verified model file; raises ModelFileError otherwise."""
    if name not in MODEL_FILES:
        raise ModelFileError(f"unknown model file '{name}'; known: {', '.join(MODEL_FILES)}")
    spec = MODEL_FILES[name]
    path = models_dir(home) / spec.filename
    if not path.exists():
        raise ModelFileError(_where_to_put(spec, home))
    if verify:
        actual = sha256_file(path)
        if actual != spec.sha256:
            raise ModelFileError(
                f"model file {path} has sha256 {actual[:12]}…, expected {spec.sha256[:12]}…; "
                f"refusing to load it. Delete it and run 'omnifer models fetch'."
            )
    return path


def _install(src: Path, spec: ModelFile, dest_dir: Path) -> Path:
    actual = sha256_file(src)
    if actual != spec.sha256:
        raise ModelFileError(
            f"{src} has sha256 {actual[:12]}…, expected {spec.sha256[:12]}… for {spec.name}"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".fetch-")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest_dir / spec.filename)
    return dest_dir / spec.filename


def _download(spec: ModelFile, dest_dir: Path, timeout_s: float = 30.0) -> Path:
    if spec.url.endswith(".zip"):
        raise ModelFileError(_where_to_put(spec, None) + " (it ships inside a zip: unpack it)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download-")
    os.close(fd)
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout_s) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        return _install(Path(tmp), spec, dest_dir)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch(
    names: list[str] | None = None, home: Path | None = None, download: bool = True
) -> dict[str, Path]:
    """Make every needed model file present and verified; returns name → path.

    Optional files (``required=False``) are taken from a mirror when it has them and skipped
    otherwise, so a machine without SCRFD still gets a working pipeline (YuNet).
    """
    wanted = names or list(MODEL_FILES)
    dest_dir = models_dir(home)
    result: dict[str, Path] = {}
    for name in wanted:
        if name not in MODEL_FILES:
            raise ModelFileError(f"unknown model file '{name}'; known: {', '.join(MODEL_FILES)}")
        spec = MODEL_FILES[name]
        dest = dest_dir / spec.filename
        if dest.exists():
            actual = sha256_file(dest)
            if actual == spec.sha256:
                result[name] = dest
                continue
            # Tampered or truncated: never leave it where model_path() would find it.
            dest.unlink()
            log.warning("model %s: %s had sha256 %s…, expected %s…; removed", name, dest,
                        actual[:12], spec.sha256[:12])
        candidates = (m / spec.filename for m in mirror_dirs())
        mirrored = next((c for c in candidates if c.exists()), None)
        if mirrored is not None:
            result[name] = _install(mirrored, spec, dest_dir)
            log.info("model %s: copied from mirror %s", name, mirrored.parent)
            continue
        explicit = names is not None and name in names
        if not spec.required and not explicit:
            log.info("model %s: optional, not in any mirror; skipped", name)
            continue
        if not download:
            raise ModelFileError(_where_to_put(spec, home))
        try:
            result[name] = _download(spec, dest_dir)
        except ModelFileError:
            raise
        except Exception as exc:  # network errors of every kind end in one clear line
            raise ModelFileError(
                f"{_where_to_put(spec, home)} (download failed: {type(exc).__name__})"
            ) from None
    return result
