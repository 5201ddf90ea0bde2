"""The run report's page: the HTML around the charts, from the plain
:class:`omnifer.report.facts.ReportFacts` (no catalog access here).

Kept apart from :mod:`omnifer.report.facts` so that what is shown (queries) and how it looks
(charts in :mod:`omnifer.report.charts`, CSS here) change independently. The page has no script
and loads nothing: every image is inline, so it opens anywhere, offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from typing import Any

from omnifer.report.facts import SAMPLES_PER_CLASS, ReportFacts
from omnifer.version import code_version

# ------------------------------------------------------------------------------ HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;
margin:0;background:#f4f5f7}
main{max-width:1240px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:17px;margin:0 0 10px}
.sub{color:#616e7c;font-size:13px}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin-top:14px}
.kpi{background:#fff;border-radius:8px;padding:10px 16px;min-width:130px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.kpi b{display:block;font-size:24px}.kpi span{color:#616e7c;font-size:12px}
.state{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;
vertical-align:middle}
.completed,.promoted{background:#3f8f5f}.failed,.rejected{background:#d1495b}
.running,.registered,.skipped,.triggered{background:#7b8794}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:3px 10px;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
img.chart{max-width:100%;height:auto}
.faces{display:grid;grid-template-columns:110px 1fr;gap:6px 12px;align-items:center}
.faces img{width:72px;height:72px;border-radius:4px;margin:0 3px 3px 0}
.grid figure{margin:0 18px 10px 0}.grid figcaption{font-size:13px;margin-bottom:2px}
.grid img{image-rendering:pixelated;max-width:100%;border:1px solid #e4e7eb}
.note{color:#8a4b08;font-size:13px}
code{font-size:12px;background:#f0f2f5;padding:1px 4px;border-radius:3px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_value(value: Any) -> str:
    """A value as the page shows it: yes/no, 3 decimals, thousands separators, – for None."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "–" if value is None else str(value)


def _img(uri: str | None, alt: str, cls: str = "chart") -> str:
    if uri is None:
        return f'<p class="sub">{_e(alt)}: no data.</p>'
    return f'<img class="{cls}" alt="{_e(alt)}" src="{uri}">'


def _duration(run: dict[str, Any]) -> str:
    try:
        start = dt.datetime.fromisoformat(run["started_at"])
        end = dt.datetime.fromisoformat(run["finished_at"])
    except (KeyError, TypeError, ValueError):
        return "–"
    seconds = int((end - start).total_seconds())
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _stage_details(info: dict[str, Any]) -> str:
    skip = {"state", "at", "failed_ids", "ran_ids", "per_class"}
    parts = []
    for k, v in info.items():
        if k in skip or isinstance(v, dict | list):
            continue
        parts.append(f"{_e(k)} <b>{_e(format_value(v))}</b>")
    return ", ".join(parts)


def distilled_marker(version: str) -> str:
    """The ``data-k`` value of the line that shows distilled ``version``'s grids (what
    erasure looks for in a report, :mod:`omnifer.erasure.match`)."""
    return f"distilled-version:{version}"


def render_html(facts: ReportFacts, charts: dict[str, str | None]) -> str:
    run = facts.run
    summary = run.get("summary") or {}
    tonight = facts.selected_history.get(facts.ingest_date, {})
    images = sum(n for _, n, _ in facts.status)
    selected = sum(tonight.values())
    faces = facts.faces["faces"]
    model = next((m for m in facts.models if m["version"] == facts.model_version), None)
    acc = model["metrics"].get("accuracy") if model else None
    state = str(run.get("state", "unknown"))
    failed = len(summary.get("failed_shards") or [])
    out = []
    w = out.append
    w("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>")
    w('<meta name="viewport" content="width=device-width, initial-scale=1">')
    w(f"<title>omnifer night {_e(facts.ingest_date)} · {_e(run.get('run_id'))}</title>")
    w(f"<style>{CSS}</style></head><body><main>")
    w(f"<h1>Nightly run {_e(facts.ingest_date)} <span class='state {_e(state)}'>"
      f"{_e(state)}</span></h1>")
    w(f"<div class=sub>run <code>{_e(run.get('run_id'))}</code> · started "
      f"{_e(run.get('started_at'))} · took {_e(_duration(run))} · model "
      f"<b>{_e(facts.model_version)}</b> · curated <code>{_e(facts.curated_version)}</code>"
      "</div>")
    w("<div class=kpis>")
    kpis = [("images", images, "images this night"), ("faces", faces, "faces found"),
            ("selected", selected,
             f"selected ({selected / faces:.0%} of faces)" if faces else "selected"),
            ("failed-shards", failed, "failed shards"),
            ("model-accuracy", acc, f"test accuracy of {facts.model_version}")]
    for key, value, label in kpis:
        w(f"<div class=kpi><b data-k='{key}'>{_e(format_value(value))}</b><span>{_e(label)}</span>"
          "</div>")
    w("</div>")
    for note in facts.notes:
        w(f"<p class=note>{_e(note)}</p>")

    # Images and faces
    w("<section id=images><h2>Images by status</h2><div class=row>")
    w(_img(charts.get("status"), "images by status"))
    w("<table><tr><th>status</th><th class=n>images</th><th>example error</th></tr>")
    for s, n, err in facts.status:
        w(f"<tr><td>{_e(s)}</td><td class=n data-k='status:{_e(s)}'>{n:,}</td>"
          f"<td class=sub>{_e(err or '')}</td></tr>")
    w("</table></div>")
    acc_ = facts.accounting
    if acc_.get("listed") is not None:
        why = ", ".join(f"{k} {v}" for k, v in {**acc_.get("ignored_by_reason", {}),
                                                **acc_.get("skipped_by_reason", {})}.items())
        w(f"<p class=sub>listed <b data-k='listed'>{acc_['listed']:,}</b> objects: "
          f"<b data-k='planned'>{acc_.get('planned', 0):,}</b> new → "
          f"<b data-k='rowed'>{acc_['rowed']:,}</b> rows, {acc_.get('unchanged', 0):,} "
          f"unchanged since an earlier night. Not listed: {acc_.get('ignored', 0):,} system "
          f"junk, {acc_.get('excluded', 0):,} excluded, {acc_.get('skipped_entries', 0):,} "
          f"odd entries skipped{f' ({_e(why)})' if why else ''}.</p>")
    w("</section>")
    f = facts.faces
    w("<section id=faces><h2>Faces found</h2><div class=row><table>")
    for key, label in (("faces", "faces found"), ("images_with_faces", "images with a face"),
                       ("decoded_images", "images decoded"),
                       ("det_score_median", "median detector score"),
                       ("face_size_median", "median face size (px)")):
        value = _e(format_value(f[key]))
        w(f"<tr><td>{label}</td><td class=n data-k='faces:{key}'>{value}</td></tr>")
    w("</table><table><tr><th>faces in an image</th><th class=n>images</th></tr>")
    for k, n in facts.faces_per_image:
        w(f"<tr><td>{_e(k)}</td><td class=n>{n:,}</td></tr>")
    w("</table></div></section>")
    w("<section id=dedup><h2>Near-duplicates and evaluation faces left out</h2>")
    if facts.dedup:
        w("<p class=sub>Faces dropped because a copy of them is kept (re-uploads, resizes, "
          "re-encodes) and faces of the evaluation sets (the labeled test split) caught in the "
          "crawl; neither enters a curated set.</p><table><tr><th>night</th>"
          "<th class=n>duplicates removed</th><th class=n>contaminated caught</th></tr>")
        for d, c in reversed(list(facts.dedup.items())):
            w(f"<tr><td>{_e(d)}</td><td class=n data-k='dedup:{_e(d)}:removed'>"
              f"{c['duplicates_removed']:,}</td><td class=n data-k='dedup:{_e(d)}:"
              f"contaminated'>{c['contaminated']:,}</td></tr>")
        w("</table>")
    else:
        w("<p class=sub>No deduplication recorded (dedup.enabled is off).</p>")
    w("</section>")

    # Selection
    w("<section id=selected><h2>Selected per class, against the previous nights</h2>")
    w("<div class=row>")
    w(_img(charts.get("selected"), "selected per class"))
    prev_dates = [d for d in facts.selected_history if d != facts.ingest_date]
    w("<table><tr><th>class</th><th class=n>tonight</th>")
    w("".join(f"<th class=n>{_e(d)}</th>" for d in reversed(prev_dates)) + "</tr>")
    for c in facts.classes:
        w(f"<tr><td>{_e(c)}</td><td class=n data-k='selected:{_e(c)}'>{tonight.get(c, 0):,}</td>")
        w("".join(f"<td class=n>{facts.selected_history[d].get(c, 0):,}</td>"
                  for d in reversed(prev_dates)) + "</tr>")
    w("</table></div></section>")
    w("<section id=confidence><h2>Confidence per predicted class, with the thresholds</h2>")
    gates = {k: v for k, v in facts.policy.items() if v not in (None, False) and k not in
             ("rank_by", "max_copies", "duplicate_to_k")}
    w(f"<p class=sub>Grey: every scored face; colour: the faces selected; red dashed line: the "
      f"class's minimum confidence. Policy ({_e(facts.policy_source)}): "
      f"<code>{_e(json.dumps(gates, sort_keys=True))}</code></p>")
    w(_img(charts.get("confidence"), "confidence histograms"))
    w("</section>")

    # Curated samples
    w("<section id=samples><h2>Sample curated faces</h2>")
    w(f"<p class=sub>Up to {SAMPLES_PER_CLASS} per class, a stable pseudo-random pick (by "
      "face id); hover for confidence and face id.</p><div class=faces>")
    for c in facts.classes:
        picks = facts.samples.get(c, [])
        w(f"<div><b>{_e(c)}</b><br><span class=sub>{tonight.get(c, 0):,} selected</span></div>"
          "<div>")
        for face_id, conf, jpeg in picks:
            uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
            w(f'<img data-class="{_e(c)}" src="{uri}" alt="{_e(c)}" '
              f'title="{_e(c)} {conf:.3f} {_e(face_id)}">')
        if not picks:
            w("<span class=sub>none selected</span>")
        w("</div>")
    w("</div></section>")

    # Distilled
    d = facts.distilled
    w("<section id=distilled><h2>Distilled images</h2>")
    if d.get("version"):
        w(f"<p class=sub data-k='{_e(distilled_marker(d['version']))}'>version "
          f"<code>{_e(d['version'])}</code> · {_e(d.get('method'))} · "
          f"<b data-k='distilled-images'>{d['images']}</b> images from curated "
          f"<code>{_e(d.get('curated'))}</code></p><div class='row grid'>")
        for name, png in d["grids"]:
            uri = "data:image/png;base64," + base64.b64encode(png).decode()
            w(f'<figure><figcaption>{_e(name)}</figcaption><img src="{uri}" '
              f'alt="distilled {_e(name)}"></figure>')
        w("</div>")
    else:
        latest = d.get("latest")
        w("<p class=sub>No distilled set includes this night's curated version yet"
          + (f" (latest distilled set: <code>{_e(latest)}</code>)." if latest else ".")
          + "</p>")
    w("</section>")

    # Model
    w("<section id=model><h2>Model</h2>")
    retrain = (summary.get("retraining") or {}).get("retrain")
    if isinstance(retrain, dict) and retrain.get("model_version"):
        verdict = "promoted" if retrain.get("promoted") else "rejected"
        w(f"<p>This run trained <b>{_e(retrain['model_version'])}</b>: <span class='state "
          f"{verdict}'>{verdict}</span> (test accuracy {_e(format_value(retrain.get('accuracy')))} "
          f"vs {_e(retrain.get('parent_version'))} "
          f"{_e(format_value(retrain.get('parent_accuracy')))})</p>")
    w("<div class=row>")
    w(_img(charts.get("models"), "metrics over versions"))
    w(_img(charts.get("confusion"), "confusion matrix"))
    w("</div><table><tr><th>version</th><th>parent</th><th>verdict</th><th class=n>accuracy</th>"
      "<th class=n>mean per-class</th><th>registered</th></tr>")
    for m in facts.models:
        v = m["version"]
        star = " ★ primitive" if m["current"] else ""
        for flag in m.get("trained_on_erased") or []:
            star += (f" <span class='state failed' data-k='model:{_e(v)}:trained_on_erased' "
                     f"title='{_e(flag.get('why', ''))}'>trained on erased data "
                     f"({_e(flag.get('erasure', ''))})</span>")
        w(f"<tr><td><b>{_e(v)}</b>{star}</td><td>{_e(m['parent'] or '–')}</td>"
          f"<td><span class='state {_e(m['verdict'])}'>{_e(m['verdict'])}</span></td>"
          f"<td class=n data-k='model:{_e(v)}:accuracy'>"
          f"{_e(format_value(m['metrics'].get('accuracy')))}</td>"
          f"<td class=n>{_e(format_value(m['metrics'].get('mean_class_accuracy')))}</td>"
          f"<td class=sub>{_e(str(m['registered_at'])[:19])}</td></tr>")
    w("</table></section>")

    # Run record
    w("<section id=run><h2>Run</h2><table><tr><th>stage</th><th>state</th><th>figures</th>"
      "</tr>")
    for name, info in (run.get("stages") or {}).items():
        st = str(info.get("state", ""))
        w(f"<tr><td>{_e(name)}</td><td><span class='state {_e(st)}'>{_e(st)}</span></td>"
          f"<td>{_stage_details(info)}</td></tr>")
    w("</table>")
    sources = (run.get("parameters") or {}).get("sources") or []
    w("<p class=sub>sources: " + ", ".join(f"<code>{_e(s)}</code>" for s in sources) + "</p>")
    w(f"<p class=sub>report written {_e(dt.datetime.now(dt.UTC).isoformat(timespec='seconds'))}"
      f" by omnifer {_e(code_version())}</p></section>")
    w("</main></body></html>")
    return "\n".join(out)
