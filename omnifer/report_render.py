"""The run report's page: matplotlib charts (Agg, PNG as ``data:`` URIs) and the HTML around
them, from the plain :class:`omnifer.report.ReportFacts` (no catalog access here).

Kept apart from :mod:`omnifer.report` so that what is shown (queries) and how it looks
(charts, CSS) change independently. The page has no script and loads nothing: every image is
inline, so it opens anywhere, offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from typing import Any

import numpy as np

from omnifer.report import SAMPLES_PER_CLASS, ReportFacts
from omnifer.version import code_version

# Colours: one per class (stable across reports), and per image status.
CLASS_COLOURS = ("#264653", "#e8a33d", "#4c72b0", "#8c5fb5", "#2a9d8f", "#6a994e", "#c44e52",
                 "#8d6e63")
STATUS_COLOURS = {"ok": "#4c9f70", "no_face": "#9aa5b1", "duplicate": "#6c8ebf"}
ERROR_COLOUR = "#d1495b"
METRIC_KEYS = ("accuracy", "mean_class_accuracy", "val_accuracy")


def render_charts(facts: ReportFacts) -> dict[str, str | None]:
    """Each chart as a PNG data URI (None where there is nothing to draw)."""
    return {"status": chart_status(facts), "selected": chart_selected(facts),
            "confidence": chart_confidence(facts), "models": chart_models(facts),
            "confusion": chart_confusion(facts)}


# ------------------------------------------------------------------------------ charts
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _style(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=9)


def _colour(classes: list[str], c: str) -> str:
    return CLASS_COLOURS[classes.index(c) % len(CLASS_COLOURS)] if c in classes else "#555"


def chart_status(facts: ReportFacts) -> str | None:
    if not facts.status:
        return None
    names = [s for s, _, _ in facts.status][::-1]
    counts = [n for _, n, _ in facts.status][::-1]
    fig = _figure(6.0, 0.35 * len(names) + 0.8)
    ax = fig.add_subplot()
    colours = [STATUS_COLOURS.get(s, ERROR_COLOUR) for s in names]
    bars = ax.barh(names, counts, color=colours)
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts], padding=3, fontsize=9)
    ax.set_xlim(0, max(counts) * 1.15)
    ax.set_xlabel("images", fontsize=9)
    _style(ax)
    return _png(fig)


def chart_selected(facts: ReportFacts) -> str | None:
    tonight = facts.selected_history.get(facts.ingest_date, {})
    before = [h for d, h in facts.selected_history.items() if d != facts.ingest_date]
    if not tonight and not before:
        return None
    classes = facts.classes
    x = np.arange(len(classes))
    fig = _figure(7.2, 3.0)
    ax = fig.add_subplot()
    vals = [tonight.get(c, 0) for c in classes]
    bars = ax.bar(x, vals, color=[_colour(classes, c) for c in classes], width=0.6,
                  label=f"tonight ({facts.ingest_date})")
    ax.bar_label(bars, labels=[str(v) for v in vals], padding=2, fontsize=8)
    if before:
        prev = np.array([[h.get(c, 0) for c in classes] for h in before], np.float64)
        mean = prev.mean(axis=0)
        lo, hi = prev.min(axis=0), prev.max(axis=0)
        ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="D", color="#222", ms=5,
                    capsize=4, lw=1, label=f"previous {len(before)} night(s): mean, min–max")
    ax.set_xticks(x, classes)
    ax.set_ylabel("selected faces", fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    top = max([*vals, *(hi if before else [0])]) or 1
    ax.set_ylim(0, top * 1.25)
    _style(ax)
    return _png(fig)


def chart_confidence(facts: ReportFacts) -> str | None:
    classes = [c for c in facts.classes if len(facts.scores.get(c, ((), ()))[0])]
    if not classes:
        return None
    panels = len(classes) + 1
    cols = 4
    rows = -(-panels // cols)
    fig = _figure(12.0, 2.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    bins = np.linspace(0, 1, 41)
    for ax, c in zip(axes, classes, strict=False):
        conf, sel = facts.scores[c]
        ax.hist(conf, bins=bins, color="#c9ced6", label="scored")
        ax.hist(conf[sel], bins=bins, color=_colour(facts.classes, c), label="selected")
        t = facts.thresholds.get(c)
        if t is not None:
            ax.axvline(t, color=ERROR_COLOUR, ls="--", lw=1.3)
            ax.text(t, 0.97, f" ≥ {t:.2f}", color=ERROR_COLOUR, fontsize=8, va="top",
                    transform=ax.get_xaxis_transform())
        ax.set_title(f"{c}: {int(sel.sum())} of {len(conf)} selected", fontsize=9)
        ax.set_xlim(0, 1)
        _style(ax)
    ax = axes[len(classes)]
    simil, sel = facts.similarity
    ok = np.isfinite(simil)
    sbins = np.linspace(min(-0.2, float(np.nanmin(simil)) if ok.any() else 0), 1, 41)
    ax.hist(simil[ok], bins=sbins, color="#c9ced6")
    ax.hist(simil[ok & sel], bins=sbins, color="#555")
    t = facts.policy.get("min_similarity")
    if t is not None:
        ax.axvline(t, color=ERROR_COLOUR, ls="--", lw=1.3)
        ax.text(t, 0.97, f" ≥ {t:.2f}", color=ERROR_COLOUR, fontsize=8, va="top",
                transform=ax.get_xaxis_transform())
    ax.set_title("all classes: similarity to prototype", fontsize=9)
    _style(ax)
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


def chart_models(facts: ReportFacts) -> str | None:
    models = facts.models
    keys = [k for k in METRIC_KEYS
            if any(isinstance(m["metrics"].get(k), int | float) for m in models)]
    if not models or not keys:
        return None
    fig = _figure(max(4.5, 1.0 + 0.9 * len(models)), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(models))
    offsets = (8, -14, 20)
    for n, (k, colour) in enumerate(zip(keys, ("#4c72b0", "#e8a33d", "#6a994e"),
                                        strict=False)):
        y = [m["metrics"].get(k) for m in models]
        y = [np.nan if not isinstance(v, int | float) else float(v) for v in y]
        ax.plot(x, y, "-", color=colour, lw=1.5, label=k.replace("_", " "))
        for xi, yi, m in zip(x, y, models, strict=True):
            if np.isnan(yi):
                continue
            marker = {"promoted": "o", "rejected": "X"}.get(m["verdict"], "s")
            face = colour if m["verdict"] != "rejected" else ERROR_COLOUR
            ax.plot(xi, yi, marker, color=face, ms=9 if m["current"] else 6,
                    mec="black" if m["current"] else face)
            ax.annotate(f"{yi:.3f}", (xi, yi), textcoords="offset points", xytext=(0, offsets[n]),
                        ha="center", fontsize=8)
    ax.set_xticks(x, [m["version"] + (" ★" if m["current"] else "") for m in models])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test figure", fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    _style(ax)
    return _png(fig)


def chart_confusion(facts: ReportFacts) -> str | None:
    if not facts.confusions:
        return None
    n = len(facts.confusions)
    fig = _figure(4.6 * n, 4.2)
    axes = fig.subplots(1, n, squeeze=False).ravel()
    for ax, cm in zip(axes, facts.confusions, strict=True):
        mat = cm["matrix"]
        names = cm["classes"] if len(cm["classes"]) == len(mat) else [str(i) for i in
                                                                       range(len(mat))]
        rows = mat.sum(axis=1, keepdims=True)
        frac = np.divide(mat, np.maximum(rows, 1))
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(mat)):
            for j in range(len(mat)):
                ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted", fontsize=9)
        ax.set_ylabel("true", fontsize=9)
        diag = np.trace(mat) / max(mat.sum(), 1)
        ax.set_title(f"model {cm['version']} (accuracy {diag:.3f}, n={int(mat.sum())})",
                     fontsize=9)
    return _png(fig)


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


def _fmt(value: Any) -> str:
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
        parts.append(f"{_e(k)} <b>{_e(_fmt(v))}</b>")
    return ", ".join(parts)


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
        w(f"<div class=kpi><b data-k='{key}'>{_e(_fmt(value))}</b><span>{_e(label)}</span>"
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
        w(f"<tr><td>{label}</td><td class=n data-k='faces:{key}'>{_e(_fmt(f[key]))}</td></tr>")
    w("</table><table><tr><th>faces in an image</th><th class=n>images</th></tr>")
    for k, n in facts.faces_per_image:
        w(f"<tr><td>{_e(k)}</td><td class=n>{n:,}</td></tr>")
    w("</table></div></section>")

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
        w(f"<p class=sub>version <code>{_e(d['version'])}</code> · {_e(d.get('method'))} · "
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
          f"{verdict}'>{verdict}</span> (test accuracy {_e(_fmt(retrain.get('accuracy')))} "
          f"vs {_e(retrain.get('parent_version'))} "
          f"{_e(_fmt(retrain.get('parent_accuracy')))})</p>")
    w("<div class=row>")
    w(_img(charts.get("models"), "metrics over versions"))
    w(_img(charts.get("confusion"), "confusion matrix"))
    w("</div><table><tr><th>version</th><th>parent</th><th>verdict</th><th class=n>accuracy</th>"
      "<th class=n>mean per-class</th><th>registered</th></tr>")
    for m in facts.models:
        v = m["version"]
        star = " ★ primitive" if m["current"] else ""
        w(f"<tr><td><b>{_e(v)}</b>{star}</td><td>{_e(m['parent'] or '–')}</td>"
          f"<td><span class='state {_e(m['verdict'])}'>{_e(m['verdict'])}</span></td>"
          f"<td class=n data-k='model:{_e(v)}:accuracy'>"
          f"{_e(_fmt(m['metrics'].get('accuracy')))}</td>"
          f"<td class=n>{_e(_fmt(m['metrics'].get('mean_class_accuracy')))}</td>"
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
