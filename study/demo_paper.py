"""The demo's E1, E3 and E7 under the ``paper`` recipe, beside the robust ones (``--recipe both``
or ``paper``; interventions/RECIPES.md says what differs).

- ``e1-paper``: ``evaluate --recipe paper``; its ``golden.txt`` (the items answered right) is
  what E7's paper directions are trained on.
- ``e3-paper``: the authors' E3 on the store: base images only, one probe per orientation, a
  75/25 split by image, their torch linear probe, each entity's layout cells (projector and
  every stored LM layer, ``object`` tokens); then E7's paper directions (per axis, the rank-2
  probe on the golden items' layout-pooled projector features, 95/5 split by item) under
  ``e3-paper/directions-e7/<axis>/``, with what could not be trained listed.
- ``e7-paper``: ``amplify --recipe paper`` on the degraded stimuli with those directions (the
  authors' arithmetic, whole-vocabulary top-1, in-sample alpha).

An experiment that cannot run (no golden item on an axis, no direction) is recorded with its
reason rather than stopping the demo.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def paper_stages(model: str, cfg, st, m: str, root: Path, store: Path, data: Path,
                 degraded: Path, adapter, *, progress: bool) -> dict[str, Any]:
    """Run the three stages (each once; resumable through ``st``) and return their results as
    ``e1_paper``, ``e3_paper``, ``e7_paper``."""
    res: dict[str, Any] = {}
    res["e1_paper"] = st.run(f"{m}/e1-paper", lambda: _e1(model, cfg, root / "e1-paper", data,
                                                          adapter, progress))
    golden = root / "e1-paper" / "golden.txt"
    res["e3_paper"] = st.run(f"{m}/e3-paper", lambda: _or_error(lambda: _e3(
        model, cfg, store, root / "e3-paper", data, golden)))
    dirs = [str(root / "e3-paper" / "directions-e7" / e["path"])
            for e in ((res["e3_paper"] or {}).get("e7_directions") or {}).get("exported", [])]
    res["e7_paper"] = st.run(f"{m}/e7-paper", lambda: _or_error(lambda: _e7(
        model, cfg, root / "e7-paper", degraded, dirs, progress)))
    return res


def _or_error(fn):
    from interventions.errors import InterventionError
    from probes.errors import ProbeError

    try:
        return fn()
    except (InterventionError, ProbeError) as e:
        return {"error": str(e)}


def _e1(model, cfg, out: Path, data: Path, adapter, progress) -> dict[str, Any]:
    from .evaluate import EvalConfig, evaluate

    r = evaluate(EvalConfig(model=model, data=str(data), batch_size=cfg.batch_size,
                            recipe="paper"), out=out, adapter=adapter, progress=progress)
    n_golden = len((out / "golden.txt").read_text().split())
    return {"accuracy": float(r.predictions["correct"].mean()), "n": int(len(r.predictions)),
            "recipe": "paper", "n_golden": n_golden, "golden": str(out / "golden.txt")}


def _e3(model, cfg, store: Path, out: Path, data: Path, golden: Path) -> dict[str, Any]:
    import pandas as pd

    from probes.commands import export_paper_axis_directions, paper_probe_config
    from probes.config import SweepConfig
    from probes.dataset import open_store
    from probes.outputs import failed_cells
    from probes.sweep import sweep

    s = open_store(str(store))
    pconf = paper_probe_config(cfg.seed)
    tables = []
    for site in ("projector", "lm.resid"):
        sconf = SweepConfig(model=model, site=site, layers=tuple(s.layers(model, site)),
                            roles=("object",), label="ordinal", pool="token", baselines=(),
                            scheduler=cfg.scheduler, region="layout")
        for axis in ("horizontal", "vertical"):
            t = sweep(str(store), sconf, pconf, data=str(data), progress=False,
                      where={"axis": [axis], "counterfactual_of": [""]})
            tables.append(t.assign(site=site, orientation=axis))
    table = pd.concat(tables, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    ids = golden.read_text().split() if golden.is_file() else []
    rep = export_paper_axis_directions(s, out / "directions-e7", model=model, site="projector",
                                       layers=(0,), roles=("object",), items=ids,
                                       data=str(data), seed=cfg.seed)
    proj = table[(table["site"] == "projector") & table["error"].isna()]
    by_axis = {r["orientation"]: float(r["accuracy"]) for _, r in proj.iterrows()}
    return {"recipe": "paper", "region": "layout",
            "projector_object_accuracy": (sum(by_axis.values()) / len(by_axis)
                                          if by_axis else None),
            "projector_object_accuracy_by_orientation": by_axis,
            "n_cells": int(len(table)), "failed_cells": failed_cells(table),
            "n_golden": len(ids), "e7_directions": rep}


def _e7(model, cfg, out: Path, degraded: Path, dirs: list[str], progress) -> dict[str, Any]:
    from interventions.amplification import AmplifyConfig
    from interventions.errors import InterventionError
    from interventions.experiments import amplify_to_dir

    if not dirs:
        raise InterventionError("no paper E7 direction was exported by e3-paper (see its "
                                "e7_directions.not_exported)")
    return amplify_to_dir(model, str(degraded), str(out), AmplifyConfig(
        alphas=cfg.alphas, prompt="completion", both_orders=False, batch_size=cfg.batch_size,
        recipe="paper"), direction=dirs, progress=progress)
