"""Contact sheets: look at a dataset's images, masks and labels in one PNG.

``spatialbind show DIR`` calls :func:`contact_sheet`: one row per sampled base stimulus with its
image, its instance mask (entities coloured, boxes drawn, ordinal slots written at the mask
centroids), its twins (when present) and the labels (id, relation, split, prompt, answer).
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

from common.io import boundary, check_writable

from .dataset import Dataset, read_dataset
from .errors import DatasetError

_COLORS = np.array([
    [255, 255, 255], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
    [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34],
    [23, 190, 207]], dtype=np.uint8)


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of an instance mask: background white, ids in distinct colours."""
    m = np.asarray(mask).astype(np.int64)
    idx = np.where(m == 0, 0, 1 + (m - 1) % (len(_COLORS) - 1))
    return _COLORS[idx]


def pick(ds: Dataset, k: int) -> list:
    """``k`` base stimuli spread evenly over the dataset (deterministic)."""
    base = [s for s in ds.base() if s.entities] or list(ds.stimuli)
    if not base:
        raise DatasetError(f"{ds.root} holds no stimuli to show; generate some first")
    k = min(k, len(base))
    return [base[i] for i in np.linspace(0, len(base) - 1, k).round().astype(int)]


def contact_sheet(path: str | os.PathLike, *, n: int = 8, out: str | os.PathLike | None = None,
                  twins: bool = True) -> Path:
    """Write a contact-sheet PNG of ``n`` samples of the dataset at ``path``.

    Parameters
    ----------
    path
        Dataset directory.
    n
        Number of base stimuli (rows).
    out
        PNG to write; default ``<path>/contact_sheet.png``.
    twins
        Also show each sample's twins (up to 3 columns).

    Returns
    -------
    Path
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"n={n!r}: must be a positive int")
    out = Path(out) if out is not None else Path(path) / "contact_sheet.png"
    if out.is_dir():
        raise DatasetError(f"--out {out} is a directory; give the PNG file to write, e.g. "
                           f"{out / 'contact_sheet.png'}")
    ds = read_dataset(path)
    check_writable(out, kind="file", error=DatasetError)
    rows = pick(ds, n)
    twin_lists = [ds.twins(s.id)[:3] if twins else [] for s in rows]
    n_twin = max((len(t) for t in twin_lists), default=0)
    ncol = 3 + n_twin
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.6 * ncol, 2.7 * len(rows)),
                             squeeze=False)
    for r, (stim, tw) in enumerate(zip(rows, twin_lists)):
        ax = axes[r]
        ax[0].imshow(ds.image(stim), interpolation="nearest")
        ax[0].set_title(stim.id, fontsize=7)
        ax[1].imshow(colorize_mask(ds.mask(stim)), interpolation="nearest")
        ax[1].set_title("mask (ordinal at centroid)", fontsize=7)
        for e in stim.entities:
            if e.centroid is None:
                continue
            x0, y0, x1, y1 = e.box
            ax[1].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                          lw=0.8, ec="black"))
            label = "d" if e.ordinal is None else str(e.ordinal)
            ax[1].text(e.centroid[0], e.centroid[1], label, ha="center", va="center",
                       fontsize=8, color="black", weight="bold")
        for j, t in enumerate(tw):
            ax[2 + j].imshow(ds.image(t), interpolation="nearest")
            ax[2 + j].set_title(t.counterfactual_kind + ("" if t.isolates is None else
                                                          f" (id {t.isolates})"), fontsize=7)
        txt = _labels(stim)
        ax[ncol - 1].text(0.0, 1.0, txt, va="top", ha="left", fontsize=6.5, family="monospace",
                          transform=ax[ncol - 1].transAxes)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
        ax[ncol - 1].axis("off")
        for j in range(2 + len(tw), ncol - 1):
            ax[j].axis("off")
    fig.tight_layout()
    with boundary(out, action="write", error=DatasetError):
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90, format="png")
    plt.close(fig)
    return out


def _labels(stim) -> str:
    lines = [f"relation: {stim.relation}  axis: {stim.axis}", f"split: {stim.split}  "
             f"task: {stim.task}"]
    ents = ", ".join(f"{e.mask_id}:{e.name or e.color}" + ("" if e.ordinal is None else
                                                            f"@{e.ordinal}")
                     for e in stim.entities)
    lines += textwrap.wrap("entities: " + ents, 38)
    if stim.degradation:
        lines.append(f"degraded: {stim.degradation['kind']} {stim.degradation['strength']:.2f}")
    for p in stim.prompts[:2]:
        lines += textwrap.wrap(f"[{p.kind}] {p.text.strip()} -> {p.answer}", 38)
    return "\n".join(lines)
