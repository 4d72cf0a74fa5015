"""The paper's other tasks in the demo: Objects (E1), stitched What'sUp (E1, with ``--whatsup``),
grid probes (App. C.6, E3 at the projector) and E7's sanity controls (shuffled images, swapped
objects). Each is a resumable demo stage per model; ``study.report`` puts their numbers in the
report (``tasks_section``, ``controls_table``).

Stimuli use the demo's canvas (the preset's grid, or the organisms' 8 x 8 tokens of 28 px), so
every model sees them at its own token geometry. What cannot run is recorded with the reason
(e.g. a grid that does not fit, a tokenizer that keeps no What'sUp side object), never skipped
silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

TASKS = ("objects", "grids", "controls", "whatsup-stitched")
DEFAULT_TASKS = ("objects", "grids", "controls", "whatsup-stitched")


def task_data(cfg, out: Path, grid: dict[str, int], *, progress: bool) -> dict[str, Any]:
    """Generate the shared stimulus sets of the enabled tasks (model-independent)."""
    from scenegen.config import GenerateConfig
    from scenegen.errors import ConfigError
    from scenegen.generate import generate

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
                degraded: Path, grid: dict[str, int], *, progress: bool,
                echo) -> dict[str, Any]:
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
                                         lambda: _stitched(model, cfg, root, adapter, e1, grid,
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


def _stitched(model, cfg, root: Path, adapter, e1, grid, *,
              progress: bool) -> dict[str, Any]:
    """Stitched What'sUp at the demo canvas size, side objects filtered with this model's
    tokenizer; E1 on it."""
    if not cfg.whatsup:
        return {"skipped": "no --whatsup ROOT given"}
    from scenegen.config import GenerateConfig
    from scenegen.errors import SceneGenError
    from scenegen.generate import apply_task_options, generate

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


__all__ = ["DEFAULT_TASKS", "TASKS", "task_data", "task_stages"]
