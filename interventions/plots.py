"""Plots of intervention results (matplotlib, Agg backend): layer x region heatmaps of flip rate
and answer probabilities (E4 / E6), the per-layer winner of last-token patching (E2), accuracy
bars (E5) and alpha dose-response curves (E7)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def crisscross_heatmaps(table: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Heatmaps (region x layer) of flip rate, P(clean answer) and P(counterfactual answer).

    Parameters
    ----------
    table
        E4 / E6 rows (``layer``, ``region``, ``flip``, ``p_answer``, ``p_cf_answer``).
    path
        PNG to write.
    """
    plt = _plt()
    t = table[table["layer"] >= 0]
    metrics = [("flip", "flip rate"), ("p_answer", "P(clean answer)"),
               ("p_cf_answer", "P(criss-cross answer)")]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.35 * t["layer"].nunique() + 3),
                                                        1.1 * len(metrics) * max(1, t["region"]
                                                                                 .nunique()) + 2),
                             squeeze=False)
    for ax, (col, name) in zip(axes[:, 0], metrics):
        grid = t.pivot_table(index="region", columns="layer", values=col, aggfunc="mean")
        im = ax.imshow(grid.values.astype(float), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(len(grid.index)), list(grid.index))
        ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns], fontsize=7)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.025)
    axes[-1, 0].set_xlabel("residual site (0 = LM input)")
    fig.suptitle(title or "criss-cross patching")
    fig.tight_layout()
    return _save(fig, path)


def last_token_plot(table: pd.DataFrame, path: str | Path) -> Path:
    """E2: mean P(clean answer), P(ordinal-slot colour), P(counterfactual colour) per layer."""
    plt = _plt()
    g = table.groupby("layer")[["p_answer", "p_ordinal", "p_cf_answer"]].mean()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for col, lab in [("p_answer", "clean answer"), ("p_ordinal", "same ordinal slot (ordering)"),
                     ("p_cf_answer", "counterfactual colour (attribute)")]:
        ax.plot(g.index, g[col], marker="o", ms=3, label=lab)
    ax.set_xlabel("residual site patched at the last token (0 = LM input)")
    ax.set_ylabel("mean probability")
    ax.legend(fontsize=8)
    ax.set_title("E2 last-token patching")
    fig.tight_layout()
    return _save(fig, path)


def ablation_plot(summary: dict, path: str | Path) -> Path:
    """E5: baseline vs ablated accuracy with the chance line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3.5))
    vals = [summary["base_accuracy"], summary["ablated_accuracy"]]
    ax.bar(["baseline", "vision ordering\nablated"], vals, color=["#4c72b0", "#dd8452"])
    ax.axhline(summary["chance"], color="k", ls="--", lw=1, label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"E5 (n={summary['n_items']})")
    fig.tight_layout()
    return _save(fig, path)


def dose_response(summary: dict, path: str | Path) -> Path:
    """E7: accuracy, fixed and broken counts vs alpha, probe vs random control."""
    plt = _plt()
    d = pd.DataFrame(summary["dose_response"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for c, g in d.groupby("control"):
        g = g.sort_values("alpha")
        axes[0].plot(g["alpha"], g["accuracy"], marker="o", ms=3, label=c)
        axes[1].plot(g["alpha"], g["fixed"], marker="o", ms=3, label=f"{c}: fixed")
        axes[1].plot(g["alpha"], -g["broken"], ls="--", label=f"{c}: broken (negative)")
    axes[0].set_xlabel("alpha")
    axes[0].set_ylabel("strict accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_xlabel("alpha")
    axes[1].set_ylabel("items")
    axes[1].axhline(0, color="k", lw=0.5)
    # the probe's alpha selections: the held-out split's, and the cross-fitted folds' alphas
    from .amplification import CROSS_FITTED, HELD_OUT

    sel = {s.get("selection"): s for s in summary.get("selections", [])
           if s.get("control") == "probe"}
    held = sel.get(HELD_OUT)
    if held and held.get("alpha") is not None:
        for ax in axes:
            ax.axvline(held["alpha"], color="tab:gray", ls=":", lw=1,
                       label=f"held-out alpha {held['alpha']:g}" if ax is axes[0] else None)
    cf = sel.get(CROSS_FITTED)
    if cf and cf.get("fold_alphas"):
        fa = [float(a) for a in cf["fold_alphas"]]
        axes[0].scatter(fa, [0.0] * len(fa), marker="^", color="tab:red", zorder=3,
                        label=f"cross-fitted fold alphas {', '.join(f'{a:g}' for a in fa)}")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("E7 amplification dose-response")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def as_matrix(table: pd.DataFrame, value: str) -> tuple[list, list, np.ndarray]:
    """(regions, layers, region x layer means of ``value``) for custom plots."""
    g = table[table["layer"] >= 0].pivot_table(index="region", columns="layer", values=value,
                                                aggfunc="mean")
    return list(g.index), list(g.columns), g.values
