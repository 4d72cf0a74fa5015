"""Files of a probe sweep, written by ``spatialbind probe`` and by the study's demo::

    results.parquet, results.csv   one row per (layer, role)
    accuracy_heatmap.png           accuracy by layer x role (selectivity_heatmap.png with control)
    accuracy_lines.png             accuracy by layer, one line per role, CI bands and baselines
    maps/layer<NNN>.png            probe maps of held-out images (``map_samples`` > 0); under the
                                   paper recipe maps/<orientation>/layer<NNN>.png, one probe each
    maps/summary.csv               mean P(object's class) over object / strip / background tokens
                                   (``samples``: the held-out images mapped, ';'-separated)
    config.json                    resolved configs and versions
"""
from __future__ import annotations

import json
from pathlib import Path


def write_outputs(store, table, sconf, pconf, where, map_samples, out: Path,
                  data_dir=None, recipe: str = "robust", e7_directions: dict | None = None
                  ) -> None:
    """Write a probe sweep's outputs under ``out`` (see the module docstring for the files).

    A table with an ``orientation`` column (the paper recipe: one probe per orientation) is
    plotted with one row per (role, orientation); ``config.json`` records the ``recipe`` and
    whether identical images were grouped (``image_groups``: a dataset was given), which tokens
    were an entity's (``region``: ``layout`` cells or the store's ``role``), the cells that
    failed (``failed_cells``: layer, role, orientation, error) and, for the paper recipe's E7
    export, what was and was not exported (``e7_directions``)."""
    from .maps import heldout_probe_map, map_summary
    from .plots import plot_accuracy_heatmap, plot_accuracy_lines, plot_probe_maps

    table.to_parquet(out / "results.parquet", index=False)
    table.to_csv(out / "results.csv", index=False)
    shown = table if "orientation" not in table else table.assign(
        role=table["role"] + " (" + table["orientation"] + ")")  # one probe per orientation
    plot_accuracy_heatmap(shown, out / "accuracy_heatmap.png")
    plot_accuracy_lines(shown, out / "accuracy_lines.png")
    if pconf.control:
        plot_accuracy_heatmap(shown, out / "selectivity_heatmap.png", value="selectivity")
    summaries = []
    map_role = "object" if "object" in sconf.roles else sconf.roles[0]
    if map_samples > 0 and sconf.pool == "token" and sconf.label in ("ordinal", "side"):
        # the paper recipe: one probe per orientation (base images), so one map set per orientation
        views = [(None, where, table)] if "orientation" not in table else [
            (o, {**(where or {}), "axis": [o], "counterfactual_of": [""]},
             table[table["orientation"] == o]) for o in ("horizontal", "vertical")]
        for orient, w, part in views:
            for layer in sconf.layers:
                cell = part[(part["layer"] == layer) & (part["role"] == map_role)]
                if cell.empty or cell["accuracy"].isna().all():
                    continue
                pm = heldout_probe_map(store, model=sconf.model, site=sconf.site, layer=layer,
                                       role=map_role, label=sconf.label, config=pconf, where=w,
                                       n_samples=map_samples, data=data_dir, region=sconf.region)
                sub = out / "maps" if orient is None else out / "maps" / orient
                plot_probe_maps(pm, sub / f"layer{layer:03d}.png")
                summ = map_summary(pm).assign(
                    layer=layer, trained_on=map_role,
                    samples=";".join(dict.fromkeys(pm.tokens["sample_id"].astype(str))))
                summaries.append(summ if orient is None else summ.assign(orientation=orient))
    if summaries:
        import pandas as pd

        pd.concat(summaries).to_csv(out / "maps" / "summary.csv", index=False)
    (out / "config.json").write_text(json.dumps(
        {"sweep": sconf.to_dict(), "probe": pconf.to_dict(), "where": where, "data": data_dir,
         "recipe": recipe, "image_groups": data_dir is not None, "region": sconf.region,
         "failed_cells": failed_cells(table), "e7_directions": e7_directions,
         "toolkit_version": _version()}, indent=1, default=str))


def failed_cells(table) -> list[dict]:
    """``{layer, role, orientation, error}`` of every cell of ``table`` that could not be fitted."""
    if "error" not in table:
        return []
    bad = table[table["error"].notna()]
    return [{"layer": int(r["layer"]), "role": r["role"],
             "orientation": r.get("orientation") if "orientation" in bad else None,
             "error": r["error"]} for _, r in bad.iterrows()]


def _version() -> str:
    from .directions import _version as v

    return v()
