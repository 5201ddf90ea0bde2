"""Reliability figures: the bad-input corpus and the fault cases, one table.

    .venv/bin/python benchmarks/reliability.py [--work DIR] [--keep]

For every corpus file: the status it must get and the one it got. For every fault (SIGKILL
mid-shard, S3 answering 500/503 or stalling, S3 down for one object, a full disk, a tampered
detector file, two runs at once): what must happen, what happened, and after the rerun how many
rows were lost or duplicated against a clean run (``source_uri`` in images, ``face_id`` in
faces, ``(face_id, model_version)`` in scores). Exits 1 when any case is not as expected.
Everything runs on 127.0.0.1 (S3 is moto behind a fault-injecting proxy), in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-29"
SHARD = 3
HELPER = REPO / "tests" / "helpers_faults.py"


def _setup_env(work: Path) -> None:
    import logging

    from omnifer.models import modelfiles

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                       "OMNIFER_PROGRESS": "log", "PYTHONDONTWRITEBYTECODE": "1"}.items():
        os.environ.setdefault(key, value)
    mirrors = [m for m in os.environ.get("OMNIFER_MODEL_MIRROR", "").split(os.pathsep) if m]
    mirrors += [str(REPO.parent / "shared" / "models"), str(modelfiles.models_dir())]
    os.environ["OMNIFER_MODEL_MIRROR"] = os.pathsep.join(mirrors)
    home = work / "home"
    modelfiles.fetch(["yunet"], home=home, download=False)
    os.environ["OMNIFER_HOME"] = str(home)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, bool]] = []

    def add(self, case: str, expected: str, observed: str, lost: int | str = "-",
            dup: int | str = "-", ok: bool | None = None) -> None:
        good = ok if ok is not None else (expected == observed and lost in (0, "-")
                                          and dup in (0, "-"))
        self.rows.append((case, expected, observed, str(lost), str(dup), good))
        print(f"  {'ok ' if good else 'BAD'} {case}: {observed}", flush=True)

    def print(self) -> None:
        head = ("case", "expected", "observed", "rows lost", "rows duplicated", "")
        cells = [head] + [(*r[:5], "" if r[5] else "<-- NOT AS EXPECTED") for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(6)]
        for n, row in enumerate(cells):
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths[:5]))


def corpus_cases(work: Path, table: Table) -> None:
    from omnifer.models.versions import primitive_model
    from omnifer.pipeline import ingest
    from omnifer.sources import LocalSource
    from omnifer.testing.badinput import case_uri, sabotage, write_corpus
    from omnifer.testing.faults import make_catalog, promote_tiny_model

    catalog, _ = make_catalog(work, "corpus")
    promote_tiny_model(catalog, work / "model-corpus")
    root = work / "corpus-in"
    cases = write_corpus(root)
    version, uri = primitive_model(catalog)
    params = ingest.IngestParams(model_version=version, model_uri=uri)
    plan = ingest.plan_ingest(catalog, [LocalSource(root=str(root))], DATE, params, 1000)
    sabotage(root, cases)
    ingest.process_shard(catalog, plan, plan.shards[0], "bench")
    listing = plan.listing
    n_rowed = catalog.connect().execute("SELECT count(*) FROM images").fetchone()[0]
    table.add("listing: listed vs rowed", f"{sum(c.status is not None for c in cases)} = "
              f"{sum(c.status is not None for c in cases)}", f"{listing['listed']} = {n_rowed}")
    table.add("listing: junk ignored, odd entries skipped",
              f"{sum(c.no_row == 'ignored' for c in cases)}, "
              f"{sum((c.no_row or '').startswith('skipped') for c in cases)}",
              f"{listing['ignored']}, {listing['skipped_entries']}")
    rows: dict[str, list[tuple]] = {}
    for r in catalog.connect().execute(
            "SELECT source_uri, status, n_faces, error FROM images").fetchall():
        rows.setdefault(r[0], []).append(r[1:])
    for case in cases:
        got = rows.get(case_uri(root, case), [])
        if case.status is None:  # junk or an odd entry: listing leaves it out, with a count
            seen = f"no row ({case.no_row})" if not got else f"{len(got)} row(s)"
            table.add(f"input: {case.key}", f"no row ({case.no_row})", seen, "-", len(got))
            continue
        want = case.status + (f", {case.n_faces} faces" if case.n_faces is not None else "")
        if got:
            status, n_faces, _error = got[0]
            seen = status + (f", {n_faces} faces" if case.n_faces is not None else "")
        else:
            seen = "no row"
        table.add(f"input: {case.key}", want, seen, 0 if got else 1, max(0, len(got) - 1))


def _sub(mode: str, cat_path: Path, source: str, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), mode, str(cat_path), source, DATE,
                           str(SHARD)], env={**os.environ, **(env or {})}, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def fault_cases(work: Path, table: Table) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from omnifer.models.modelfiles import MODEL_FILES
    from omnifer.testing.faults import (
        FaultPlan,
        FaultProxy,
        catalog_rows,
        compare_rows,
        face_folder,
        make_catalog,
        promote_tiny_model,
        run_night,
    )

    folder = face_folder(work / "faces-in")
    n = 0

    def fresh(data_root: str | None = None):  # noqa: ANN202
        nonlocal n
        n += 1
        catalog, path = make_catalog(work, f"cat{n}", data_root)
        promote_tiny_model(catalog, work / f"model{n}")
        return catalog, path

    def after(catalog, clean) -> tuple[int, int]:  # noqa: ANN001
        diff = compare_rows(clean, catalog_rows(catalog))
        return diff["lost"] + diff["changed"], diff["duplicated"]

    clean_cat, _ = fresh()
    assert run_night(clean_cat, [str(folder)], DATE, SHARD).failed == {}
    clean = catalog_rows(clean_cat)

    # SIGKILL while the second shard is committing (faces + scores in, images staged).
    catalog, path = fresh()
    proc = _sub("kill-staged:6", path, str(folder))
    killed = proc.returncode == -9
    rerun = run_night(catalog, [str(folder)], DATE, SHARD)
    table.add("SIGKILL mid-shard", "killed; rerun = clean run",
              ("killed" if killed else f"exit {proc.returncode}")
              + ("; rerun = clean run" if not rerun.failed else "; rerun failed"),
              *after(catalog, clean))

    # Full disk: RLIMIT_FSIZE in a subprocess (writes fail with EFBIG).
    catalog, path = fresh()
    proc = _sub("fsize:4096", path, str(folder))
    clear = proc.returncode == 1 and "File too large" in proc.stdout
    strays = [p for p in (work / f"cat{n}").rglob("*") if p.name.endswith(".tmp")]
    rerun = run_night(catalog, [str(folder)], DATE, SHARD)
    table.add("catalog disk full", "clear failure, no partial files; rerun = clean run",
              ("clear failure" if clear else "unclear failure")
              + (", no partial files" if not strays else f", {len(strays)} temp files")
              + ("; rerun = clean run" if not rerun.failed else "; rerun failed"),
              *after(catalog, clean))

    # A detector file whose sha256 does not match.
    catalog, path = fresh()
    bad_home = work / "bad_home"
    shutil.copytree(Path(os.environ["OMNIFER_HOME"]) / "models", bad_home / "models",
                    dirs_exist_ok=True)
    yunet = bad_home / "models" / MODEL_FILES["yunet"].filename
    yunet.write_bytes(yunet.read_bytes()[:-4] + b"evil")
    proc = _sub("clean", path, str(folder), env={"OMNIFER_HOME": str(bad_home)})
    refused = proc.returncode == 1 and "refusing to load" in proc.stdout
    rerun = run_night(catalog, [str(folder)], DATE, SHARD)
    table.add("tampered model file", "refused; rerun = clean run",
              ("refused" if refused else "NOT refused")
              + ("; rerun = clean run" if not rerun.failed else "; rerun failed"),
              *after(catalog, clean))

    # Two runs at once on one catalog.
    catalog, _ = fresh()
    gate = threading.Barrier(2)

    def night(i: int):  # noqa: ANN202
        gate.wait()
        return run_night(catalog, [str(folder)], DATE, SHARD, run_id=f"overlap-{i}")

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(night, range(2)))
    both = all(not r.failed for r in results)
    table.add("two runs at once", "both succeed, rows once",
              "both succeed, rows once" if both else "a run failed", *after(catalog, clean))

    # S3: moto behind a proxy that fails or stalls requests.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        upstream = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=upstream, region_name="us-east-1")
        s3.create_bucket(Bucket="benchsrc")
        for p in sorted(q for q in folder.rglob("*") if q.is_file()):
            s3.put_object(Bucket="benchsrc", Key=f"night/{p.relative_to(folder)}",
                          Body=p.read_bytes())
        with FaultProxy(upstream) as proxy:
            spec = json.dumps({"kind": "s3", "bucket": "benchsrc", "prefix": "night/",
                               "endpoint_url": proxy.endpoint, "retries": 2, "timeout_s": 0.5})

            def obj(m: str, p: str) -> bool:
                return m == "GET" and p.startswith("/benchsrc/night/")

            catalog, _ = fresh()
            assert run_night(catalog, [spec], DATE, SHARD).failed == {}
            s3_clean = catalog_rows(catalog)

            catalog, _ = fresh()
            plan = proxy.add(FaultPlan(match=obj, fail_first=1, delay_first=2, delay_s=1.0,
                                       per_path=True))
            started = time.monotonic()
            result = run_night(catalog, [spec], DATE, SHARD)
            proxy.clear()
            faults = sum(plan.injected.values())
            table.add("S3 500/503 then slow", "retried with backoff, all rows",
                      (f"{faults} faults retried, all rows" if not result.failed
                       else f"{len(result.failed)} shards failed")
                      + f" ({time.monotonic() - started:.1f}s)", *after(catalog, s3_clean),
                      ok=not result.failed and faults > 0)

            catalog, _ = fresh()
            proxy.add(FaultPlan(match=lambda m, p: obj(m, p) and "face-003" in p,
                                fail_always=True, statuses=(503,)))
            first = run_night(catalog, [spec], DATE, SHARD)
            proxy.clear()
            rerun = run_night(catalog, [spec], DATE, SHARD)
            observed = (f"{len(first.failed)} of {first.shards} shards failed"
                        + ("; rerun = clean run" if not rerun.failed else "; rerun failed"))
            lost, dup = after(catalog, s3_clean)
            table.add("S3 down for one object", "1 of 3 shards failed; rerun = clean run",
                      observed, lost, dup)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="omnifer-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        _setup_env(work)
        table = Table()
        print("bad-input corpus …", flush=True)
        corpus_cases(work, table)
        print("faults …", flush=True)
        fault_cases(work, table)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    table.print()
    bad = [r[0] for r in table.rows if not r[5]]
    print(f"\n{len(table.rows)} cases, {len(bad)} not as expected, "
          f"{time.monotonic() - started:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
