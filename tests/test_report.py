"""Run reports: built by the nightly flow for real, checked against the catalog, rendered in
a real headless Chromium.

Two nights of a small seeded world run through the real flow (Prefect, Parquet, DuckDB); a
tiny distilled set and a rejected second model version are then added, so every section of
the report has something to show and every number on it can be compared with a query.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from omnifer.catalog import DataCatalog, runs
from omnifer.config import load_catalog
from omnifer.errors import OmniferError
from omnifer.models import versions
from omnifer.report import SAMPLES_PER_CLASS, build_report
from omnifer.report.render import format_value

REPO = Path(__file__).resolve().parents[1]
NIGHT1, NIGHT2 = "2026-11-28", "2026-11-29"
POLICY = {"min_confidence": {"happy": 0.3}, "default_confidence": 0.15,
          "require_flip_agreement": False, "min_similarity": -1.0}


# ------------------------------------------------------------------------------ fixtures
@dataclass
class Nights:
    catalog: DataCatalog
    catalog_file: Path
    config_file: Path
    first: dict[str, Any]
    second: dict[str, Any]
    report: Path  # the second night's report, rebuilt after distill + v2
    metrics: dict[str, dict[str, Any]]
    build_seconds: float


@pytest.fixture(scope="module")
def nights(prefect_harness, omnifer_home: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nights]:
    from flows.ingest import nightly_ingest
    from omnifer.demo.world import generate_world
    from omnifer.labeled import read_rafdb
    from omnifer.models.checkpoints import load_checkpoint
    from omnifer.training.config import TrainConfig
    from omnifer.training.evaluate import evaluate_model
    from omnifer.training.train import train_model

    tmp = tmp_path_factory.mktemp("report")
    world = tmp / "world"
    generate_world(world, seed=5, labeled_per_class=8, test_per_class=3, unlabeled_images=48,
                   workers=1)
    model = tmp / "model"
    # Small and quick, yet trained enough to predict several classes (not one for all).
    cfg = TrainConfig(arch="fercnn_tiny", input_size=32, epochs=12, lr=0.005, batch_size=32,
                      patience=0, seed=0)
    train_model(read_rafdb(world / "labeled", "train"), cfg, model)

    # Two nights: half of the scenes each (same folder layout under night1/ and night2/).
    files = sorted(p for p in (world / "unlabeled").rglob("*") if p.is_file())
    for i, path in enumerate(files):
        dest = tmp / ("night1" if i % 2 else "night2") / path.relative_to(world / "unlabeled")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)

    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["root"] = str(tmp / "catalog")
    catalog_file = tmp / "data_catalog.yaml"
    catalog_file.write_text(yaml.safe_dump(raw))
    config_file = tmp / "omnifer.yaml"
    config_file.write_text(yaml.safe_dump({"ingest": {"detector": "yunet"},
                                           "selection": POLICY}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIFER_CATALOG", str(catalog_file))
        mp.setenv("OMNIFER_CONFIG", str(config_file))
        mp.delenv("OMNIFER_CATALOG_ROOT", raising=False)
        catalog = DataCatalog(load_catalog(catalog_file))
        loaded = load_checkpoint(model)
        m1 = evaluate_model(loaded, read_rafdb(world / "labeled", "test",
                                               size=loaded.card.input_size))
        versions.register_version(catalog, model, "v1", metrics=m1)
        versions.record_event(catalog, "v1", "promoted", {"accuracy": m1["accuracy"]})

        first = nightly_ingest(date=NIGHT1, sources=[str(tmp / "night1")], shard_size=16,
                               workers=2)
        second = nightly_ingest(date=NIGHT2, sources=[str(tmp / "night2")], shard_size=16,
                                workers=2)

        # A second version, evaluated on other data (so its figures differ), then rejected.
        m2 = evaluate_model(loaded, read_rafdb(world / "labeled", "train",
                                               size=loaded.card.input_size))
        versions.register_version(catalog, model, "v2", parent="v1", metrics=m2)
        versions.record_event(catalog, "v2", "rejected", {"accuracy": m2["accuracy"],
                                                          "gain": m2["accuracy"] - 0.5})
        _distil(catalog, second["curated_version"])
        started = time.monotonic()
        report = Path(build_report(catalog, run_id=second["run_id"]))
        seconds = time.monotonic() - started
        yield Nights(catalog, catalog_file, config_file, first, second, report,
                     {"v1": m1, "v2": m2}, seconds)


def _distil(catalog: DataCatalog, curated_version: str) -> None:
    """A tiny distilled set (2 per class) from the night's curated crops, committed."""
    import numpy as np
    import torch

    from omnifer.distill import DistillConfig, TensorClassSampler, distill
    from omnifer.distill.samplers import crop_to_chw

    con = catalog.connect()
    rows = con.execute("SELECT c.label, f.crop FROM curated c JOIN faces f USING (face_id) "
                       "WHERE c.curated_version = ? ORDER BY c.face_id",
                       [curated_version]).fetchall()
    classes = sorted({label for label, _ in rows})
    images = torch.from_numpy(np.stack([crop_to_chw(bytes(c), 16) for _, c in rows]))
    labels = torch.tensor([classes.index(label) for label, _ in rows])
    config = DistillConfig(ipc=2, iterations=1, image_size=16, batch_real=4, net_width=8,
                           net_depth=2, device="cpu")
    result = distill(TensorClassSampler(images, labels, len(classes)), classes, config,
                     progress=False)
    table = result.to_arrow(curated_version=curated_version, distilled_version="d-test",
                            run_id="distill-test")
    catalog.write("distilled", "part-d-test.parquet", table)


class _Page(HTMLParser):
    """Collects what the tests look at: data-k values, <img> tags, src/href, tags used."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.section_ids: list[str] = []
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "img":
            self.images.append(a)
        if tag == "section":
            self.section_ids.append(a.get("id", ""))
        self.links += [v for k, v in a.items() if k in ("src", "href", "action", "poster")]
        if "data-k" in a:
            self._key = a["data-k"]

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self.values[self._key] = data.strip()
            self._key = None


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _num(text: str) -> int:
    return int(text.replace(",", ""))


# ------------------------------------------------------------------------------ fast tests
def test_nightly_flow_writes_the_report_and_links_it_from_the_prefect_run(
    nights: Nights,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    second = nights.second
    run_id = second["run_id"]
    expected = Path(nights.catalog.aux_uri("_reports", f"ingest_date={NIGHT2}", f"{run_id}.html"))
    assert Path(second["report"]) == expected and expected.is_file()
    assert Path(nights.first["report"]).parent.name == f"ingest_date={NIGHT1}"
    stage = runs.get_run(nights.catalog, run_id)["stages"]["report"]
    assert stage["state"] == "completed" and stage["uri"] == str(expected)

    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        runs_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        links = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["nightly-report"])),
            flow_run_filter=runs_filter)
        summaries = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["nightly-summary"])),
            flow_run_filter=runs_filter)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert len(links) == 1  # Prefect keeps a link artifact as markdown: [text](link)
    assert expected.as_uri() in links[0].data
    assert len(summaries) == 1 and str(expected) in summaries[0].data
    # Progress of the shards reached the Prefect run's log (plain lines: not a terminal).
    n_images = second["images"]
    assert any(re.search(rf"ingest {NIGHT2}: done, {n_images} img in", log.message)
               for log in logs), [log.message for log in logs][-20:]


def test_report_numbers_match_the_catalog(nights: Nights) -> None:
    con = nights.catalog.connect()
    page = _parse(nights.report)
    v = page.values
    one = lambda sql, *p: con.execute(sql, list(p)).fetchone()[0]  # noqa: E731

    assert _num(v["images"]) == one("SELECT count(*) FROM images WHERE ingest_date = ?", NIGHT2)
    assert _num(v["images"]) == nights.second["images"]
    statuses = dict(con.execute("SELECT status, count(*) FROM images WHERE ingest_date = ? "
                                "GROUP BY 1", [NIGHT2]).fetchall())
    shown = {k.split(":", 1)[1]: _num(x) for k, x in v.items() if k.startswith("status:")}
    assert shown == statuses and len(shown) >= 2
    assert _num(v["faces"]) == one("SELECT count(*) FROM faces WHERE ingest_date = ?", NIGHT2)
    assert _num(v["faces:faces"]) == _num(v["faces"]) > 0
    assert _num(v["faces:images_with_faces"]) == one(
        "SELECT count(*) FROM images WHERE ingest_date = ? AND n_faces > 0", NIGHT2)

    cv = nights.second["curated_version"]
    per_class = dict(con.execute("SELECT label, count(*) FROM curated WHERE curated_version = ?"
                                 " GROUP BY 1", [cv]).fetchall())
    assert len(per_class) >= 3, per_class
    selected = {k.split(":", 1)[1]: _num(x) for k, x in v.items() if k.startswith("selected:")}
    assert {k: n for k, n in selected.items() if n} == per_class
    assert _num(v["selected"]) == sum(per_class.values()) == nights.second["selected"]
    # The previous night is a column of the per-class table.
    assert NIGHT1 in nights.report.read_text() and nights.first["selected"] > 0

    # Sample faces: up to SAMPLES_PER_CLASS per class, the real crops of curated faces.
    crops = {bytes(c) for (c,) in con.execute(
        "SELECT f.crop FROM curated c JOIN faces f USING (face_id) WHERE curated_version = ?",
        [cv]).fetchall()}
    faces = [i for i in page.images if "data-class" in i]
    for label, n in per_class.items():
        mine = [i for i in faces if i["data-class"] == label]
        assert len(mine) == min(n, SAMPLES_PER_CLASS), label
        for img in mine:
            assert base64.b64decode(img["src"].split(",", 1)[1]) in crops

    # Models over versions, and the distilled set.
    for version in ("v1", "v2"):
        assert v[f"model:{version}:accuracy"] == format_value(nights.metrics[version]["accuracy"])
    # the night's model
    assert v["model-accuracy"] == format_value(nights.metrics["v1"]["accuracy"])
    assert _num(v["distilled-images"]) == 2 * len(per_class)
    assert len([i for i in page.images if i.get("alt", "").startswith("distilled ")]) == len(
        per_class)
    assert "no confusion matrix" not in nights.report.read_text()


def test_report_is_self_contained_and_every_image_decodes(nights: Nights) -> None:
    text = nights.report.read_text()
    page = _parse(nights.report)
    assert page.section_ids == ["images", "faces", "dedup", "selected", "confidence",
                                "samples", "distilled", "model", "run"]
    assert {"script", "link", "iframe", "object", "embed"}.isdisjoint(page.tags)
    assert "url(" not in text and "@import" not in text
    assert page.links and all(link.startswith("data:image/") for link in page.links)
    charts = {i["alt"] for i in page.images if i.get("class") == "chart"}
    assert {"images by status", "selected per class", "confidence histograms",
            "metrics over versions", "confusion matrix"} <= charts
    for img in page.images:
        head, data = img["src"].split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            assert min(im.size) >= 8
    assert nights.build_seconds < 30, nights.build_seconds


def test_report_shows_the_grids_kept_by_the_distill_stage(nights: Nights,
                                                          tmp_path: Path) -> None:
    """When the distill stage kept PNG grids beside the catalog, the report shows those."""
    from omnifer import storage

    marker = Image.new("RGB", (40, 20), (255, 0, 0))
    buf = io.BytesIO()
    marker.save(buf, format="PNG")
    storage.write_bytes_atomic(nights.catalog.aux_uri("_distilled_grids", "d-test", "sad.png"),
                               buf.getvalue())
    try:
        out = Path(build_report(nights.catalog, run_id=nights.second["run_id"][:8],
                                out=tmp_path / "r.html"))
    finally:
        storage.delete(nights.catalog.aux_uri("_distilled_grids", "d-test", "sad.png"))
    grids = [i for i in _parse(out).images if i.get("alt", "").startswith("distilled ")]
    assert [g["alt"] for g in grids] == ["distilled sad"]
    assert base64.b64decode(grids[0]["src"].split(",", 1)[1]) == buf.getvalue()


def test_report_cli_prints_the_path_and_fails_in_one_line(nights: Nights,
                                                          tmp_path: Path) -> None:
    env = {**os.environ, "OMNIFER_CATALOG": str(nights.catalog_file),
           "OMNIFER_CONFIG": str(nights.config_file)}
    out = tmp_path / "night1.html"
    done = subprocess.run([sys.executable, "-m", "omnifer", "report", "--date", NIGHT1,
                           "--out", str(out)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert f"Nightly run {NIGHT1}" in out.read_text()
    assert _num(_parse(out).values["images"]) == nights.first["images"]

    bad = subprocess.run([sys.executable, "-m", "omnifer", "report", "no-such-run"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 4
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: no run 'no-such-run' in the catalog (see 'omnifer runs')")


def test_report_of_an_empty_night_says_so_instead_of_failing(data_catalog: DataCatalog,
                                                              tmp_path: Path) -> None:
    """A night that found nothing (no images, no model yet) still gets a readable page."""
    record = runs.start(data_catalog, "empty-run", "nightly-ingest", "2026-12-01",
                        {"sources": ["/nowhere"]})
    runs.finish(data_catalog, record, "completed", {"ingest_date": "2026-12-01", "images": 0})
    out = Path(build_report(data_catalog, date="2026-12-01"))
    assert out == Path(data_catalog.aux_uri("_reports", "ingest_date=2026-12-01",
                                            "empty-run.html"))
    page = _parse(out)
    assert page.values["images"] == "0" and page.values["faces"] == "0"
    assert page.images == []  # no chart without data, and no broken image either
    assert out.read_text().count("no data.") >= 4
    with pytest.raises(OmniferError, match="no nightly run recorded for ingest date"):
        build_report(data_catalog, date="2026-12-02")


def test_report_of_an_s3_catalog_goes_beside_it_on_s3(
    s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="reports")
    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["root"] = "s3://reports/omnifer"
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(raw))
    catalog = DataCatalog(load_catalog(tmp_path / "catalog.yaml"))
    record = runs.start(catalog, "s3-run", "nightly-ingest", NIGHT2, {"sources": []})
    runs.finish(catalog, record, "completed", {"ingest_date": NIGHT2})

    uri = build_report(catalog, run_id="s3-run")

    assert uri == f"s3://reports/omnifer/_reports/ingest_date={NIGHT2}/s3-run.html"
    body = boto3.client("s3", endpoint_url=s3_server).get_object(
        Bucket="reports", Key=uri.removeprefix("s3://reports/"))["Body"].read().decode()
    assert body.startswith("<!DOCTYPE html>") and "s3-run" in body


# ------------------------------------------------------------------------------ browser
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (root), else the test skips."""
    for name in ("chromium", "/usr/bin/chromium"):
        found = shutil.which(name)
        if found:
            return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it "
                    "(on Debian: apt-get install chromium)")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it needs root: "
                    "run 'apt-get install -y chromium'")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    found = shutil.which("chromium")
    if done.returncode != 0 or not found:
        pytest.skip(f"'apt-get install chromium' failed: {done.stderr.strip()[-300:]}")
    return found


class _DevTools:
    """The few Chrome DevTools protocol calls the test needs, over one page's websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, open_timeout=30)
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline
                                                                   - time.monotonic()))))

    def close(self) -> None:
        self.ws.close()


CHECK_PAGE = """(() => {
  const imgs = Array.from(document.images);
  return {images: imgs.length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
          scripts: document.scripts.length,
          height: document.documentElement.scrollHeight,
          width: document.documentElement.scrollWidth,
          title: document.title};
})()"""


@pytest.mark.slow
def test_report_renders_in_headless_chromium(nights: Nights, chromium: str,
                                              tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    log = (tmp_path / "chromium.log").open("w")
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "--window-size=1280,900",
                             "about:blank"], stdout=log, stderr=log)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, (tmp_path / "chromium.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            targets = json.load(r)
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        dt = _DevTools(page_ws)
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                dt.call(f"{domain}.enable")
            url = nights.report.resolve().as_uri()
            dt.call("Page.navigate", url=url)
            dt.wait_for("Page.loadEventFired")
            state = dt.call("Runtime.evaluate", expression=CHECK_PAGE,
                            returnByValue=True)["result"]["value"]
            shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        finally:
            dt.close()
    finally:
        proc.kill()
        proc.wait()
        log.close()

    n_imgs = nights.report.read_text().count("<img ")
    assert state["images"] == n_imgs > 20
    assert state["broken"] == []
    assert state["scripts"] == 0 and state["title"].startswith(f"omnifer night {NIGHT2}")
    assert state["height"] > 2000 and state["width"] <= 1280
    methods = [e.get("method") for e in dt.events]
    errors = [e for e in dt.events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"].get("type") in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"].get("level") == "error")
              or e.get("method") == "Network.loadingFailed"]
    assert errors == [], errors
    requested = [e["params"]["request"]["url"] for e in dt.events
                 if e.get("method") == "Network.requestWillBeSent"]
    assert url in requested, methods
    assert all(u.startswith(("data:", "file:")) for u in requested), \
        [u for u in requested if not u.startswith(("data:", "file:"))]
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    with Image.open(io.BytesIO(png)) as im:
        assert im.size[1] > 2000 and len(set(im.convert("L").tobytes())) > 50
