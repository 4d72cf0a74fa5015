"""The paper's other tasks in the demo: Objects (E1), stitched What'sUp (E1, with ``--whatsup``),
grid probes (App. C.6, E3 at the projector) and E7's sanity controls (shuffled images, swapped
objects). Each is a resumable demo stage per model; :func:`report_section` and
:func:`controls_table` put their numbers in the report.

Stimuli use the demo's canvas (the preset's grid, or the organisms' 8 x 8 tokens of 28 px), so
every model sees them at its own token geometry. What cannot run is recorded with the reason
(e.g. a grid that does not fit, a tokenizer that keeps no What'sUp side object), never skipped
silently.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

TASKS = ("objects", "grids", "controls", "whatsup-stitched")
DEFAULT_TASKS = ("objects", "grids", "controls", "whatsup-stitched")


def _grid_of(cfg) -> dict[str, int]:
    from .demo import stimulus_config

    d = stimulus_config(cfg, degraded=False)
    return dict((d.get("flat") or {}).get("grid") or
                {"num_tokens": 12, "token_px": 28, "size": 2, "spacing": 2})


def task_data(cfg, out: Path, *, progress: bool) -> dict[str, Any]:
    """Generate the shared stimulus sets of the enabled tasks (model-independent)."""
    from scenegen.config import GenerateConfig
    from scenegen.errors import ConfigError
    from scenegen.generate import generate

    grid = _grid_of(cfg)
    made: dict[str, Any] = {}
    n = max(8, min(cfg.n, 48))
    if "objects" in cfg.tasks:
        d = {"generator": "flat", "seed": cfg.seed, "n": n, "twins": [],
             "flat": {"task": "objects", "grid": grid, "prompts": ["completion"]}}
        made["objects"] = str(generate(GenerateConfig.from_dict(d), out / "data" / "objects",
                                       progress=progress))
    if "grids" in cfg.tasks:
        for k in (2, 3):
            d = {"generator": "flat", "seed": cfg.seed, "n": n, "twins": [],
                 "splits": {"by": "scene", "train": 0.75, "val": 0.0, "test": 0.25},
                 "flat": {"task": "shapes", "layout": "grid", "grid_k": k, "grid": grid,
                          "prompts": ["completion"]}}
            try:
                made[f"grid{k}"] = str(generate(GenerateConfig.from_dict(d),
                                                out / "data" / f"grid{k}", progress=progress))
            except ConfigError as e:
                made[f"grid{k}"] = {"skipped": str(e)}
    return made


def task_stages(model: str, cfg, st, out: Path, root: Path, adapter, data: dict[str, Any],
                degraded: Path, *, progress: bool, echo) -> dict[str, Any]:
    """Run the enabled tasks for one model; returns ``{stage: result}`` for the report."""
    from .evaluate import EvalConfig, evaluate

    res: dict[str, Any] = {}
    m = root.name

    def e1(path, sub):
        r = evaluate(EvalConfig(model=model, data=str(path), batch_size=cfg.batch_size),
                     out=root / sub, adapter=adapter, progress=progress)
        p = r.predictions
        return {"accuracy": float(p["correct"].mean()), "n": int(len(p))}

    if "objects" in data:
        res["objects"] = st.run(f"{m}/e1-objects", lambda: e1(data["objects"], "e1-objects"))
    if "whatsup-stitched" in cfg.tasks:
        res["whatsup_stitched"] = st.run(f"{m}/e1-whatsup-stitched",
                                         lambda: _stitched(model, cfg, root, adapter, e1,
                                                           progress=progress))
    for k in (2, 3):
        if f"grid{k}" in data:
            res[f"grid{k}"] = st.run(f"{m}/e3-grid{k}", lambda k=k: _grid_probe(
                model, cfg, data[f"grid{k}"], out / f"grid{k}.zarr", root / f"e3-grid{k}", k,
                adapter, progress=progress, echo=echo))
    if "controls" in cfg.tasks:
        from interventions.controls import ControlsConfig, controls_to_dir

        res["controls"] = st.run(f"{m}/e7-controls", lambda: controls_to_dir(
            adapter, str(degraded), root / "e7-controls",
            ControlsConfig(n_per_axis=max(4, min(cfg.n_degraded // 4, 60)), seed=cfg.seed),
            progress=progress))
    return res


def _stitched(model, cfg, root: Path, adapter, e1, *, progress: bool) -> dict[str, Any]:
    """Stitched What'sUp at the demo canvas size, side objects filtered with this model's
    tokenizer; E1 on it."""
    if not cfg.whatsup:
        return {"skipped": "no --whatsup ROOT given"}
    from scenegen.config import GenerateConfig
    from scenegen.errors import SceneGenError
    from scenegen.generate import apply_task_options, generate

    grid = _grid_of(cfg)
    d = {"generator": "whatsup_stitched", "seed": cfg.seed, "n": None, "twins": [],
         "whatsup_stitched": {"size": grid["num_tokens"] * grid["token_px"]}}
    try:
        d = apply_task_options(d, whatsup=cfg.whatsup, tokenizer=adapter.tokenizer,
                               tokenizer_name=model)
        path = generate(GenerateConfig.from_dict(d), root / "data-whatsup-stitched",
                        progress=progress)
    except SceneGenError as e:
        return {"skipped": str(e)}
    r = e1(path, "e1-whatsup-stitched")
    w = d["whatsup_stitched"]
    r.update(kept={k: len(v) for k, v in w["sides"].items()},
             dropped={k: len(v) for k, v in w["dropped"].items()})
    return r


def _grid_probe(model, cfg, data, store: Path, out: Path, k: int, adapter, *,
                progress: bool, echo) -> dict[str, Any]:
    """Extract the projector for the grid set and probe ``ordinal`` (k classes) on object
    tokens, split by image."""
    if isinstance(data, dict):
        return data
    from probes.config import ProbeConfig, SweepConfig
    from probes.sweep import sweep
    from vlms.extract import ExtractConfig, run_extract

    run_extract(ExtractConfig(model=model, data=str(data), store=str(store), sites=("projector",),
                              batch_size=cfg.batch_size), progress=progress, echo=echo,
                adapter=adapter)
    pconf = ProbeConfig(control=False, n_splits=3, max_iter=300, random_state=cfg.seed)
    sconf = SweepConfig(model=model, site="projector", layers=(0,), roles=("object",),
                        label="ordinal", pool="token", baselines=(), scheduler="serial")
    table = sweep(str(store), sconf, pconf, data=str(data), progress=False)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    row = table.iloc[0]
    return {"accuracy": float(row["accuracy"]), "n_classes": int(row["n_classes"]),
            "chance": 1.0 / k, "n_tokens": int(row["n"]), "n_images": int(row["n_groups"])}


def _v(x):
    if x is None:
        return None
    if isinstance(x, float):
        return round(x, 3)
    return x


def report_section(models, results: dict[str, dict]) -> str:
    """HTML: the paper's other tasks, one row per model."""
    rows = []
    for m in models:
        r = results[m].get("tasks") or {}
        ws = r.get("whatsup_stitched") or {}
        rows.append({
            "model": m,
            "Objects E1 accuracy": _v((r.get("objects") or {}).get("accuracy")),
            "Objects n": (r.get("objects") or {}).get("n"),
            "stitched What'sUp E1": _v(ws.get("accuracy")) if "accuracy" in ws
            else ws.get("skipped"),
            "stitched What'sUp n": ws.get("n"),
            "grid 2x2 probe (chance 0.5)": _v((r.get("grid2") or {}).get("accuracy"))
            if "accuracy" in (r.get("grid2") or {}) else (r.get("grid2") or {}).get("skipped"),
            "grid 3x3 probe (chance 0.333)": _v((r.get("grid3") or {}).get("accuracy"))
            if "accuracy" in (r.get("grid3") or {}) else (r.get("grid3") or {}).get("skipped"),
        })
    if not any(len([v for k, v in x.items() if k != "model" and v is not None]) for x in rows):
        return ""
    from .report import _table

    return ("<h2>The paper's other tasks: Objects, stitched What'sUp, grid probes</h2><p>"
            "Objects: three object sprites on the model's token cells (our own renders of the "
            "scene3d shapes; the authors' stickpng photos cannot be downloaded here), the "
            "paper's prompt <code>The object {prep} the {middle} is a(n)</code>, top-1 next "
            "token. Stitched What'sUp: the paper's Table 1 variant (left half of one "
            "controlled photo + right half of another), side objects kept when one token for "
            "this model's tokenizer. Grid probes (App. C.6): random k×k grids of the paper's "
            "shapes, a linear probe of the column (horizontal) or row (vertical) on projector "
            "object tokens, split by image. These numbers are on this demo's models and "
            "stimuli, not the paper's, so no paper number stands beside them.</p>"
            + _table(rows))


def controls_table(result: dict[str, Any]) -> str:
    """HTML rows of E7's sanity controls for one model (beside its probe / random rows)."""
    s = (result.get("tasks") or {}).get("controls")
    if not s:
        return ""
    from .report import _table

    rows = [{k: _v(r.get(k)) for k in ("control", "axis", "measures", "hit", "valid", "n",
                                       "rate", "two_option_rate", "expected")}
            for r in s.get("rows", []) if r.get("axis") == "all"]
    return ("<p>Sanity controls (the authors' COCO checks, no amplification; two-option "
            "question, top-1 over the vocabulary, invalid answers left out of the rate):</p>"
            + _table(rows))


__all__ = ["DEFAULT_TASKS", "TASKS", "controls_table", "report_section", "task_data",
           "task_stages"]
