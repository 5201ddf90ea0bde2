"""The run report's charts: matplotlib (Agg) figures as PNG ``data:`` URIs, from the plain
:class:`omnifer.report.facts.ReportFacts` (no catalog access here)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from omnifer.report.facts import ReportFacts

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
