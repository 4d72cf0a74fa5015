"""Probe maps: a trained probe applied to every image token of test images (the paper's E3 heatmaps).

:func:`probe_map` returns, per sample, the probe's class probabilities on the image-token grid, plus
one row per token saying which region it is in and which class "its object" has:

- ``object`` tokens: the class of their entity's ordinal slot;
- ``strip`` tokens (the row/column band of a target, background included): the class of the target
  whose band they lie in (the store's ``entity`` coord);
- far ``background`` (and ``distractor``) tokens: the class of the *nearest* target along the
  layout axis (column distance for a row of targets, row distance for a column of targets, both
  inferred from the object tokens' positions), so the strip finding predicts high values here too
  if the ordering signal spreads over the whole half-plane, and chance otherwise.

:func:`map_summary` averages the probability of that class over each region: the paper's claim is
object ≈ strip ≫ chance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .dataset import flatten, open_store, role_names
from .errors import DataError

REGIONS = ("object", "strip", "background")


@dataclass(frozen=True, eq=False)
class ProbeMap:
    """Probabilities on the token grid and the per-token table behind them."""

    probs: xr.DataArray
    """``(sample, row, col, class)`` probabilities (NaN where a sample has no image token)."""
    tokens: pd.DataFrame
    """One row per image token: sample_id, row, col, role, region, entity, target_class,
    p_target (probability of ``target_class``), pred (argmax class code)."""
    classes: tuple


def probe_map(pipeline, store, *, model: str, site: str, layer: int, sample_ids, classes,
              label: str = "ordinal") -> ProbeMap:
    """Apply a fitted probe to every image token of ``sample_ids``.

    Parameters
    ----------
    pipeline : sklearn Pipeline
        Fitted probe (class codes index ``classes``).
    store : store or path
        Activation store.
    model, site, layer : str, str, int
        The query the probe was trained on (the probe only makes sense on the same one).
    sample_ids : sequence of str
        Test samples (ones the probe never saw).
    classes : sequence
        Label value of each class code.
    label : {'ordinal', 'side'}
        What the probe predicts; decides each token's target class.

    Returns
    -------
    ProbeMap
    """
    if label not in ("ordinal", "side"):
        raise DataError(f"probe maps need an ordinal or side probe; got label={label!r}.")
    store = open_store(store)
    da = store.select(model=model, site=site, layer=layer, role=None,
                      where={"sample_id": list(sample_ids)})
    X, tok = flatten(da, role_names=role_names(store))
    img = (tok["row"].to_numpy() >= 0) & (tok["col"].to_numpy() >= 0)
    X, tok = X[img], tok[img].reset_index(drop=True)
    if len(tok) == 0:
        raise DataError(f"no image tokens for samples {list(sample_ids)[:3]}... at {site} layer {layer}.")
    proba = pipeline.predict_proba(X)
    full = np.zeros((len(tok), len(classes)))
    full[:, pipeline[-1].classes_.astype(int)] = proba
    tok = _target_classes(tok, classes, label)
    has = tok["target_class"].to_numpy() >= 0
    tok["p_target"] = np.where(has, full[np.arange(len(tok)), np.maximum(tok["target_class"], 0)],
                               np.nan)
    tok["pred"] = full.argmax(1)
    samples = list(dict.fromkeys(tok["sample_id"]))
    nr, nc = int(tok["row"].max()) + 1, int(tok["col"].max()) + 1
    grid = np.full((len(samples), nr, nc, len(classes)), np.nan)
    si = pd.Index(samples).get_indexer(tok["sample_id"])
    grid[si, tok["row"].to_numpy(), tok["col"].to_numpy()] = full
    probs = xr.DataArray(grid, dims=("sample", "row", "col", "class"),
                         coords={"sample_id": ("sample", samples),
                                 "class": [str(c) for c in classes]},
                         attrs={"model": model, "site": site, "layer": int(layer), "label": label})
    return ProbeMap(probs=probs, tokens=tok, classes=tuple(classes))


def _target_classes(tok: pd.DataFrame, classes, label: str) -> pd.DataFrame:
    tok = tok.copy()
    role = tok["role"].astype(str)
    tok["region"] = np.where(role.isin(["object", "strip"]), role, "background")
    tc = np.full(len(tok), -1)
    cls_index = {c: i for i, c in enumerate(classes)}
    for sid, part in tok.groupby("sample_id", sort=False):
        obj = part[part["role"].astype(str) == "object"]
        if obj.empty:
            continue
        ent = obj.groupby("entity").agg(ordinal=("ordinal", "first"), row=("row", "mean"),
                                        col=("col", "mean"))
        n_slots = int(ent["ordinal"].max()) + 1
        horizontal = np.ptp(ent["col"]) >= np.ptp(ent["row"])
        along, centres = ("col", ent["col"]) if horizontal else ("row", ent["row"])
        ordinal = part["entity"].map(ent["ordinal"])  # object and strip tokens: their target
        nearest = ent["ordinal"].to_numpy()[
            np.abs(part[along].to_numpy()[:, None] - centres.to_numpy()[None, :]).argmin(1)]
        far = part["region"].to_numpy() == "background"
        o = np.where(far | ordinal.isna().to_numpy(), nearest, ordinal.fillna(-1).to_numpy())
        if label == "side":
            o = np.where(o == 0, 0, np.where(o == n_slots - 1, 1, -1))
        tc[tok.index.get_indexer(part.index)] = [cls_index.get(int(v), -1) for v in o]
    tok["target_class"] = tc
    return tok


def map_summary(pmap: ProbeMap) -> pd.DataFrame:
    """Per region (object, strip, background): tokens, mean probability of the target class, and
    argmax accuracy against it; ``chance`` = 1 / number of classes."""
    t = pmap.tokens[pmap.tokens["target_class"] >= 0]
    rows = []
    for region in REGIONS:
        r = t[t["region"] == region]
        rows.append({"region": region, "n_tokens": len(r),
                     "mean_p_target": float(r["p_target"].mean()) if len(r) else np.nan,
                     "argmax_accuracy": float((r["pred"] == r["target_class"]).mean())
                     if len(r) else np.nan,
                     "chance": 1.0 / len(pmap.classes)})
    return pd.DataFrame(rows)


def heldout_probe_map(store, *, model: str, site: str, layer: int, role: str = "object",
                      label: str = "ordinal", config=None, where: dict | None = None, items=None,
                      n_samples: int = 4, data=None, region: str = "role") -> ProbeMap:
    """Train a probe on the first grouped split's training scenes and map ``n_samples`` of its
    held-out samples (so the map shows images the probe never saw).

    Parameters are those of :func:`probes.dataset` (``data``: dataset directory for scene factors,
    needed when ``config.group_by`` names one; ``region='layout'``: train on the entities' layout
    cells, as the paper recipe does) plus ``config`` (a ``ProbeConfig``) and the number of test
    samples to map. The map itself shows every token of the held-out images.
    """
    from .config import ProbeConfig
    from .dataset import dataset
    from .fit import _fit, make_probe, make_splits, split_groups

    config = config or ProbeConfig()
    store = open_store(store)
    pd_ = dataset(store, model=model, site=site, layer=layer, role=role, label=label,
                  where=where, items=items, data=data, region=region)
    tr, te = make_splits(split_groups(pd_.frame, config.group_by), config)[0]
    pipe = _fit(make_probe(config), pd_.X[tr], pd_.y[tr])
    test_ids = list(dict.fromkeys(pd_.frame["sample_id"].iloc[te]))[:n_samples]
    return probe_map(pipe, store, model=model, site=site, layer=layer, sample_ids=test_ids,
                     classes=pd_.classes, label=label)
