"""What an erasure request reaches: its rules, the content they match, and everything derived.

:func:`plan_erasure` answers, from the catalog as it is now, what ``omnifer forget`` would
touch: the content (sha256s of images, ids of faces), the rows per dataset and night, the
curated versions that lose rows, the distilled versions made from those (stale), the model
versions that learned from them (flagged), and the run reports that show a forgotten face or
a stale distilled set. ``--dry-run`` prints exactly this; :mod:`omnifer.erasure.forget` acts
on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pyarrow.dataset as ds
from pydantic import BaseModel, Field

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.erasures import ErasedContent, ErasureRequest, ErasureRule, lineage_touches
from omnifer.catalog.purge import erasable_datasets, faces_of, visible_rows
from omnifer.errors import ConfigError
from omnifer.report.render import distilled_marker

SHA256 = re.compile(r"[0-9a-f]{64}")
FACE_ID = re.compile(r"[0-9a-f]{32}")


class ErasurePlan(BaseModel):
    """What a request reaches in the catalog now (what ``--dry-run`` prints)."""

    sha256s: list[str] = Field(default_factory=list)
    face_ids: list[str] = Field(default_factory=list)
    rows: dict[str, dict[str, int]] = Field(default_factory=dict)  # dataset -> night -> rows
    curated_versions: list[str] = Field(default_factory=list)
    stale_distilled: list[str] = Field(default_factory=list)
    flagged_models: dict[str, str] = Field(default_factory=dict)  # version -> why
    reports: list[str] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.rows or self.stale_distilled or self.flagged_models or self.reports)


# -- rules -----------------------------------------------------------------------------------
def normalise_prefix(text: str) -> str:
    """A source prefix as the catalog writes URIs: URIs stay as given; a local path becomes a
    ``file://`` URI, with a trailing ``/`` when it is a folder or is written with one (so
    ``/data/a`` does not also match ``/data/ab``; write the ``/`` for a folder that is gone)."""
    text = text.strip()
    if not text:
        raise ConfigError("an empty source prefix would erase every source")
    if "://" in text:
        return text
    path = Path(text).expanduser().absolute()
    folder = path.is_dir() or text.endswith("/")
    return path.as_uri() + ("/" if folder else "")


def make_rule(kind: str, value: str) -> ErasureRule:
    """One rule, checked: ``sha256`` is 64 hex digits, ``face_id`` 32, a source prefix is
    normalised (:func:`normalise_prefix`). Raises :class:`~omnifer.errors.ConfigError`."""
    value = value.strip()
    if kind == "sha256":
        if not SHA256.fullmatch(value.lower()):
            raise ConfigError(f"not a sha256 (64 hex digits): {value!r}")
        return ErasureRule(rule="sha256", value=value.lower())
    if kind == "face_id":
        if not FACE_ID.fullmatch(value.lower()):
            raise ConfigError(f"not a face id (32 hex digits): {value!r}")
        return ErasureRule(rule="face_id", value=value.lower())
    if kind == "source_prefix":
        return ErasureRule(rule="source_prefix", value=normalise_prefix(value))
    raise ConfigError(f"unknown rule {kind!r}: use source_prefix, sha256 or face_id")


def read_rule_file(path: Path | str) -> list[ErasureRule]:
    """Rules from a file, one per line: ``sha256:<hex>``, ``face_id:<hex>``,
    ``source_prefix:<uri>``, or a bare value (64 hex digits: a sha256; 32: a face id;
    anything else: a source prefix). Blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the list {path}: {exc.strerror or exc}") from None
    rules = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, value = line.partition(":")
        if sep and kind in ("sha256", "face_id", "source_prefix"):
            rules.append(make_rule(kind, value))
        elif SHA256.fullmatch(line.lower()):
            rules.append(make_rule("sha256", line))
        elif FACE_ID.fullmatch(line.lower()):
            rules.append(make_rule("face_id", line))
        else:
            rules.append(make_rule("source_prefix", line))
    return rules


def make_rules(source_prefixes: Iterable[str] = (), sha256s: Iterable[str] = (),
               face_ids: Iterable[str] = (), from_file: Path | str | None = None
               ) -> list[ErasureRule]:
    """The rules of one request, deduplicated and in a stable order."""
    rules = [make_rule("source_prefix", v) for v in source_prefixes]
    rules += [make_rule("sha256", v) for v in sha256s]
    rules += [make_rule("face_id", v) for v in face_ids]
    if from_file is not None:
        rules += read_rule_file(from_file)
    if not rules:
        raise ConfigError("say what to forget: --source-prefix, --sha256, --face-id or "
                          "--from-file")
    unique = {(r.rule, r.value): r for r in rules}
    return [unique[k] for k in sorted(unique)]


# -- matching --------------------------------------------------------------------------------
def match_content(catalog: DataCatalog, rules: list[ErasureRule]) -> ErasedContent:
    """The content ``rules`` name: the sha256s asked for and those of every image under a
    source prefix; the faces asked for and every face of that content."""
    prefixes = tuple(sorted(r.value for r in rules if r.rule == "source_prefix"))
    sha256s = {r.value for r in rules if r.rule == "sha256"}
    face_ids = {r.value for r in rules if r.rule == "face_id"}
    if prefixes:
        table = catalog.read("images", columns=["source_uri", "sha256"])
        under = table.filter(ErasedContent(source_prefixes=prefixes).mask(table))
        sha256s |= {s for s in under["sha256"].to_pylist() if s}
    content = ErasedContent(frozenset(sha256s), frozenset(face_ids), prefixes)
    return content.with_face_ids(faces_of(catalog, content))


def _stale_distilled(catalog: DataCatalog, curated_versions: set[str]) -> list[str]:
    if not curated_versions:
        return []
    table = catalog.read("distilled", columns=["distilled_version", "curated_version"])
    return sorted({d for d, c in zip(table["distilled_version"].to_pylist(),
                                     table["curated_version"].to_pylist(), strict=True)
                   if set((c or "").split(",")) & curated_versions})


def flagged_by(catalog: DataCatalog, request: ErasureRequest) -> dict[str, str]:
    """Model versions that learned from what ``request`` erases → why: a curated or distilled
    version that lost rows, or a flagged model as teacher (in registration order)."""
    table = catalog.read("models", filter=ds.field("event") == "registered").sort_by(
        [("created_at", "ascending"), ("model_version", "ascending")])
    flagged: dict[str, str] = {}
    for row in table.to_pylist():
        lineage = json.loads(row["train_datasets"] or "{}")
        teacher = (lineage.get("teacher") or {}).get("model_version")
        if lineage_touches(lineage, request):
            used = sorted(set(lineage.get("curated") or []) & set(request.curated_versions))
            distilled = lineage.get("distilled")
            flagged[row["model_version"]] = (
                f"distilled {distilled}" if distilled in request.stale_distilled
                else f"curated {', '.join(used)}")
        elif teacher in flagged and request.request_id not in (lineage.get("erasures") or []):
            flagged[row["model_version"]] = f"teacher {teacher}"
    return flagged


def report_needles(face_ids: Iterable[str], stale_distilled: Iterable[str]) -> list[bytes]:
    """What a report page holds when it shows one of ``face_ids`` (a sample face carries its
    id) or the grids of a stale distilled version (a marked line)."""
    return [n.encode() for n in (*face_ids, *(distilled_marker(v) for v in stale_distilled))]


def reports_showing(catalog: DataCatalog, face_ids: Iterable[str],
                    stale_distilled: Iterable[str]) -> list[str]:
    """Run reports (under ``_reports/``) that show one of ``face_ids`` or a grid of a stale
    distilled version (:func:`report_needles`)."""
    needles = report_needles(face_ids, stale_distilled)
    if not needles:
        return []
    out = []
    for uri in storage.list_files(catalog.reports_uri(), ".html"):
        try:
            page = storage.read_bytes(uri)
        except OSError:
            continue
        if any(n in page for n in needles):
            out.append(uri)
    return out


def plan_erasure(catalog: DataCatalog, rules: list[ErasureRule], request_id: str = "",
                 content: ErasedContent | None = None) -> ErasurePlan:
    """What ``rules`` reach in the catalog now; see the module docstring. ``content``: what
    a resumed request recorded (added to what the rules match now)."""
    found = match_content(catalog, rules)
    if content is not None:
        found = ErasedContent(found.sha256s | content.sha256s, found.face_ids | content.face_ids,
                              found.source_prefixes)
    rows: dict[str, dict[str, int]] = {}
    for name in erasable_datasets(catalog):
        if per_folder := visible_rows(catalog, name, found):
            rows[name] = {(f.removeprefix("ingest_date=") or "-"): n
                          for f, n in sorted(per_folder.items())}
    curated = set()
    if found.face_ids:
        table = catalog.read("curated", columns=["curated_version"],
                             filter=ds.field("face_id").isin(sorted(found.face_ids)))
        curated = set(table["curated_version"].to_pylist())
    stale = _stale_distilled(catalog, curated)
    probe = ErasureRequest(request_id=request_id or "-", rules=rules,
                           curated_versions=sorted(curated), stale_distilled=stale)
    return ErasurePlan(
        sha256s=sorted(found.sha256s), face_ids=sorted(found.face_ids), rows=rows,
        curated_versions=sorted(curated), stale_distilled=stale,
        flagged_models=flagged_by(catalog, probe),
        reports=reports_showing(catalog, found.face_ids, stale),
    )
