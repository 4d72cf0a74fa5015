"""Plots of probe results: accuracy by layer × role (heatmap and lines) and probe maps.

Figures are drawn with matplotlib's object API on an Agg canvas (no global backend switch, no
display needed) and saved as PNG; each function returns the path it wrote.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .maps import ProbeMap


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_accuracy_heatmap(table: pd.DataFrame, path, *, value: str = "accuracy") -> Path:
    """Heatmap of ``value`` over layer (x) × role (y), annotated; empty cells (errors) are grey."""
    t = table.dropna(subset=[value]) if value in table else table.iloc[:0]
    roles = list(dict.fromkeys(table["role"]))
    layers = sorted(table["layer"].unique())
    grid = np.full((len(roles), len(layers)), np.nan)
    for _, r in t.iterrows():
        grid[roles.index(r["role"]), layers.index(r["layer"])] = r[value]
    fig = Figure(figsize=(1.2 + 0.55 * len(layers), 1.0 + 0.5 * len(roles)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_facecolor("0.85")
    ax.set_xticks(range(len(layers)), [str(x) for x in layers])
    ax.set_yticks(range(len(roles)), roles)
    ax.set_xlabel("layer")
    ax.set_ylabel("token role")
    for i in range(len(roles)):
        for j in range(len(layers)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if grid[i, j] < 0.6 else "k")
    site = table["site"].iloc[0] if len(table) else ""
    ax.set_title(f"probe {value} ({table['label'].iloc[0] if len(table) else ''}) at {site}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path)


def plot_accuracy_lines(table: pd.DataFrame, path) -> Path:
    """Accuracy against layer, one line per role with its CI band; control task dashed, the
    position-only baseline dotted, an init-weights baseline (``init_accuracy``) dash-dotted,
    majority-class chance in grey."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ok = table.dropna(subset=["accuracy"]) if "accuracy" in table else table.iloc[:0]
    for i, (role, t) in enumerate(ok.groupby("role", sort=False)):
        t = t.sort_values("layer")
        c = f"C{i}"
        ax.plot(t["layer"], t["accuracy"], "-o", color=c, label=f"{role}", ms=3)
        ax.fill_between(t["layer"], t["ci_low"], t["ci_high"], color=c, alpha=0.15, lw=0)
        if "control_accuracy" in t and t["control_accuracy"].notna().any():
            ax.plot(t["layer"], t["control_accuracy"], "--", color=c, lw=1,
                    label=f"{role} control")
        if "position_accuracy" in t and t["position_accuracy"].notna().any():
            ax.plot(t["layer"], t["position_accuracy"], ":", color=c, lw=1,
                    label=f"{role} position-only")
        if "init_accuracy" in t and t["init_accuracy"].notna().any():
            ax.plot(t["layer"], t["init_accuracy"], "-.", color=c, lw=1,
                    label=f"{role} init weights")
    if len(ok):
        ax.axhline(ok["chance"].mean(), color="0.5", lw=0.8, label="majority class")
    ax.set_ylim(0, 1.02)
    layers = sorted(table["layer"].unique())
    ax.set_xticks(layers, [str(x) for x in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    return _save(fig, path)


def plot_probe_maps(pmap: ProbeMap, path, *, max_samples: int = 6) -> Path:
    """Per test sample, the probe's class probabilities on the token grid.

    Three classes are shown as RGB (class 0 red, 1 green, 2 blue); two as P(class 1). Object tokens
    are marked with their entity's target class.
    """
    probs = pmap.probs.isel(sample=slice(0, max_samples))
    n, k = probs.sizes["sample"], probs.sizes["class"]
    fig = Figure(figsize=(2.2 * n, 2.6))
    tok = pmap.tokens
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1)
        p = probs.isel(sample=i).values
        sid = str(probs["sample_id"].values[i])
        if k == 3:
            ax.imshow(np.nan_to_num(p, nan=1.0), interpolation="nearest")
        else:
            ax.imshow(p[..., -1], vmin=0, vmax=1, cmap="coolwarm", interpolation="nearest")
        obj = tok[(tok["sample_id"] == sid) & (tok["region"] == "object")]
        for _, r in obj.iterrows():
            ax.text(r["col"], r["row"], str(pmap.classes[int(r["target_class"])])
                    if r["target_class"] >= 0 else "?", ha="center", va="center", fontsize=6,
                    color="w")
        ax.set_title(sid, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    legend = ("RGB = P(" + ", ".join(map(str, pmap.classes)) + ")" if k == 3
              else f"colour = P({pmap.classes[-1]})")
    a = pmap.probs.attrs
    fig.suptitle(f"probe map {a.get('site')} layer {a.get('layer')}: {legend}; "
                 "numbers mark object tokens", fontsize=8)
    return _save(fig, path)
