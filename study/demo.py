"""The end-to-end study in one call: ``spatialbind demo``.

generate stimuli -> extract activations of every model into one store -> E1 behaviour ->
E3 probes with probe maps -> E4 object vs strip criss-cross -> E5 ablation / E6 LM backup ->
E7 amplification with held-out and cross-fitted alpha -> one self-contained HTML report.

By default it runs offline on a CPU on the two shipped Qwen2-VL model organisms
(``vlms/organisms``: one whose ordering must live in the vision tokens, one whose ordering is
computed in the LM), so the paper's question has a known answer and the report shows whether the
toolkit's experiments tell the two apart. With ``--model qwen2-vl-7b`` (or any adapter) and the
paper-geometry preset it runs the real study; ``--whatsup ROOT`` adds What'sUp to E1.
Each stage writes into its own sub-folder of ``--out`` and is skipped when its outputs exist, so
an interrupted demo resumes where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from interventions.errors import InterventionError

#: Shipped organisms, in report order: (alias, mechanism planted).
ORGANISMS = (("organism-qwen2-vl-vision", "vision"), ("organism-qwen2-vl-dual", "dual"),
             ("organism-qwen2-vl-lm", "lm"), ("organism-gemma-3-vision", "vision"),
             ("organism-gemma-3-dual", "dual"), ("organism-gemma-3-lm", "lm"))


def shipped_organisms() -> tuple[tuple[str, str], ...]:
    """The entries of :data:`ORGANISMS` whose checkpoint is in this checkout."""
    from vlms.registry import ORGANISM_PREFIX, SHIPPED

    return tuple((a, m) for a, m in ORGANISMS
                 if (SHIPPED / a.removeprefix(ORGANISM_PREFIX) / "config.json").is_file())


#: Named degradations of the E7 stimulus set (``DemoConfig.degraded``): each degraded base
#: stimulus gets one of them at a strength drawn from the range (``scenegen.degrade``).
#: ``mild`` is the set used up to 2026-11-29: the organisms answered nearly all of it right
#: (4 of 48 wrong for the vision organism), which leaves E7 nothing to fix. ``hard`` is strong
#: enough that they get a substantial share wrong (measured on the vision organism, 48 items
#: each: noise 1.0 -> 0.69, occluder 1.0 -> 0.73, contrast 0.8 -> 0.04; blur 1.0 -> 0.94).
#: ``noise`` is ``hard``'s noise alone (same strengths): the one kind that leaves every square's
#: colour readable while it can weaken the ordering code (measured 2026-11-30 on the shipped
#: vision organisms, against each item's undegraded twin: the answer square's colour part keeps a
#: cosine of 0.97-0.99 under noise and 0.0-0.6 on the contrast / occluder items they fail, whose
#: answers name another square's colour or the occluder's grey; the failing noise items keep their
#: colour but their slot separation along the E7 direction drops to 0.2-0.33 of the twin's). An
#: ordering direction can only fix errors of ordering, so this is the set that asks E7's question
#: (vlms/organisms/README.md, criterion 4).
DEGRADED_PRESETS: dict[str, tuple[tuple[str, tuple[float, float]], ...]] = {
    "mild": (("blur", (0.3, 0.7)), ("noise", (0.3, 0.7)), ("contrast", (0.3, 0.7))),
    "hard": (("noise", (0.8, 1.0)), ("occluder", (0.6, 1.0)), ("contrast", (0.5, 0.7))),
    "noise": (("noise", (0.8, 1.0)),),
}


#: ``DemoConfig.items``: the organisms' held-out colour triples, or every triple.
ITEMS = ("heldout", "all")


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoConfig:
    """Options of ``spatialbind demo``."""

    out: str = "out/demo"
    """Output folder (one sub-folder per stage, ``report.html`` at the top)."""
    models: tuple[str, ...] = ()
    """Models to study; empty = every shipped organism (:func:`shipped_organisms`)."""
    preset: str | None = None
    """Stimulus preset (``spatialbind generate --preset``); None = the organisms' 8x8-token
    Squares canvas (224 px, squares of 1 token, spacing 2)."""
    n: int = 96
    """Base stimuli to generate (each with swap / criss-cross / isolated twins)."""
    n_degraded: int = 96
    """Degraded base stimuli for E7."""
    degraded: str = "hard"
    """Degradation preset of the E7 set (:data:`DEGRADED_PRESETS`): ``hard`` (noise, occluder,
    contrast; strong enough that the organisms err), ``mild`` (blur, noise, contrast at
    0.3-0.7) or ``noise`` (``hard``'s noise alone: colours stay readable, so errors are not
    colour errors)."""
    whatsup: str | None = None
    """What'sUp root: adds ``whatsup:ROOT`` to E1 (needs the downloaded release)."""
    alphas: str = "0:8:1"
    """E7 amplification strengths."""
    seed: int = 0
    """Seed of the stimuli."""
    batch_size: int = 16
    """Items per forward pass."""
    scheduler: str = "serial"
    """Probe sweep scheduler: ``serial``, ``local`` (dask LocalCluster) or an address."""
    recipe: str = "both"
    """Recipes E1 and E3-E7 run under (interventions/RECIPES.md): ``both`` (side by side in
    the report), ``paper`` or ``robust``. The robust E1, E3 and E7 always run (the organism
    contrasts read them); ``both``/``paper`` add the paper ones (:mod:`study.demo_paper`: E7
    with the paper directions, trained on E1's golden items)."""
    items: str = "heldout"
    """Which Squares items E1-E7 run on: ``heldout`` (the colour triples every studied organism
    held out of its training, from its ``train_log.json``: the organism criteria are the paper's
    effects *on held-out items*; every triple when no studied model records a split) or ``all``
    (every ordered triple of the six colours, as up to 2026-11-30)."""
    tasks: tuple[str, ...] = ("objects", "grids", "controls", "whatsup-stitched")
    """The paper's other tasks to add (:mod:`study.tasks`): ``objects`` (E1), ``grids`` (App.
    C.6 probes), ``controls`` (E7 sanity controls), ``whatsup-stitched`` (E1, with whatsup)."""

    def __post_init__(self):
        if self.recipe not in ("both", "paper", "robust"):
            raise InterventionError(f"The 'recipe' parameter of DemoConfig must be both, paper "
                                    f"or robust. Got {self.recipe!r} instead.")
        if not isinstance(self.n, int) or self.n < 4:
            raise InterventionError(f"The 'n' parameter of DemoConfig must be an int >= 4. "
                                    f"Got {self.n!r} instead.")
        if self.degraded not in DEGRADED_PRESETS:
            raise InterventionError(f"The 'degraded' parameter of DemoConfig must be one of "
                                    f"{', '.join(DEGRADED_PRESETS)}. Got {self.degraded!r} "
                                    "instead.")
        if self.items not in ITEMS:
            raise InterventionError(f"The 'items' parameter of DemoConfig must be one of "
                                    f"{', '.join(ITEMS)}. Got {self.items!r} instead.")
        if not isinstance(self.n_degraded, int) or self.n_degraded < 4:
            raise InterventionError(f"The 'n_degraded' parameter of DemoConfig must be an int "
                                    f">= 4. Got {self.n_degraded!r} instead.")
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        from .tasks import TASKS

        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise InterventionError(f"unknown demo task(s) {bad}; choose from {list(TASKS)}")


def stimulus_config(cfg: DemoConfig, *, degraded: bool,
                    triples: list[list[str]] | None = None) -> dict[str, Any]:
    """The generate config of the demo's clean (or degraded) stimulus set; ``triples`` (from
    :func:`heldout_items`) restricts its Squares items to those colour triples."""
    if cfg.preset:
        from scenegen.presets import preset

        d = preset(cfg.preset)
    else:
        d = {"generator": "flat",
             "flat": {"task": "squares",
                      "grid": {"num_tokens": 8, "token_px": 28, "size": 1, "spacing": 2}}}
    if triples:
        d["flat"] = {**d["flat"], "triples": [list(t) for t in triples]}
    d["seed"] = cfg.seed + (1 if degraded else 0)
    d["n"] = cfg.n_degraded if degraded else cfg.n
    if degraded:
        d["twins"] = []
        d["degradations"] = [{"kind": k, "strength": list(r)}
                             for k, r in DEGRADED_PRESETS[cfg.degraded]]
    return d


def _split_of(model: str) -> tuple[str | None, list[tuple[str, ...]] | None]:
    """(train_log path, held-out colour triples) a trained organism recorded; (None, None) for a
    model without a training record (a hub model, a tiny build)."""
    from vlms.registry import organism_aliases

    path = organism_aliases().get(model)
    if path is None:
        p = Path(model).expanduser()
        path = p if p.is_dir() else None
    log = path / "train_log.json" if path is not None else None
    if log is None or not log.is_file():
        return None, None
    try:
        held = json.loads(log.read_text())["splits"]["heldout_triples"]
    except (ValueError, KeyError, TypeError):
        return str(log), None
    return str(log), [tuple(t) for t in held]


def heldout_items(cfg: DemoConfig, models: tuple[str, ...]) -> dict[str, Any]:
    """The demo's item set (``cfg.items``): the colour triples every studied organism held out of
    its training, what they came from, and how many base items they allow.

    Raises :class:`InterventionError` when the organisms share no held-out triple, when the
    stimulus set is not the Squares task, or when ``--n`` / ``--n-degraded`` ask for more items
    than the held-out triples give."""
    if cfg.items == "all":
        return {"items": "all", "triples": None}
    logs = {m: _split_of(m) for m in models}
    unreadable = [str(log) for log, held in logs.values() if log and held is None]
    if unreadable:
        raise InterventionError(
            f"{unreadable[0]} records no readable splits.heldout_triples; retrain the organism "
            "with this toolkit's trainer, or pass --items all")
    recorded = {m: held for m, (_, held) in logs.items() if held is not None}
    if not recorded:
        return {"items": "all", "triples": None,
                "note": "no studied model records held-out triples (not an organism)"}
    common = set.intersection(*(set(h) for h in recorded.values()))
    if not common:
        raise InterventionError(
            f"the organisms {sorted(recorded)} hold out no colour triple in common (trained with "
            "different --split-seed); study them in separate demos, or pass --items all")
    stim = stimulus_config(cfg, degraded=False)
    flat = stim.get("flat") or {}
    if stim.get("generator") != "flat" or flat.get("task", "squares") != "squares":
        raise InterventionError(
            f"--items heldout draws the Squares task's held-out colour triples, but preset "
            f"{cfg.preset!r} is not a Squares set; pass --items all")
    from scenegen.config import FlatConfig

    fc = FlatConfig.from_dict({k: v for k, v in flat.items() if k != "grid"})
    triples = sorted(t for t in common if set(t) <= set(fc.colors))
    available = len(triples) * len(fc.directions)
    for name, want in (("--n", cfg.n), ("--n-degraded", cfg.n_degraded)):
        if want > available:
            raise InterventionError(
                f"{name} {want} exceeds the {available} held-out items ({len(triples)} colour "
                f"triples held out of every organism's training x {len(fc.directions)} "
                f"directions, centred layout); lower {name} to at most {available} or pass "
                "--items all")
    return {"items": "heldout", "triples": [list(t) for t in triples],
            "n_triples": len(triples), "available": available,
            "from": {m: logs[m][0] for m in recorded},
            "not_organisms": [m for m in models if m not in recorded]}


class Stages:
    """Runs named stages once, records their timing, and skips those already finished."""

    def __init__(self, out: Path, echo: Callable[[str], Any]):
        self.out, self.echo = out, echo
        self.log_path = out / "stages.json"
        self.log: dict[str, Any] = (json.loads(self.log_path.read_text())
                                    if self.log_path.exists() else {})

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.log.get(name, {}).get("done"):
            self.echo(f"[demo] {name}: done earlier, skipped")
            return self.log[name].get("result")
        self.echo(f"[demo] {name} ...")
        t0 = time.perf_counter()
        result = fn()
        self.log[name] = {"done": True, "seconds": round(time.perf_counter() - t0, 1),
                          "result": _jsonable(result)}
        self.log_path.write_text(json.dumps(self.log, indent=1))
        self.echo(f"[demo] {name}: {self.log[name]['seconds']} s")
        return self.log[name]["result"]


def _jsonable(x):
    try:
        json.dumps(x)
        return x
    except TypeError:
        return json.loads(json.dumps(x, default=str))


def run_demo(cfg: DemoConfig, *, progress: bool = True,
             echo: Callable[[str], Any] = print) -> Path:
    """Run the whole study and write ``report.html``; returns its path."""
    from scenegen.config import GenerateConfig
    from scenegen.generate import generate

    out = Path(cfg.out)
    models = cfg.models or tuple(name for name, _ in shipped_organisms())
    resolved = heldout_items(cfg, models)  # bad --n / --items: refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "demo_config.json"
    mine = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != mine:
        old = json.loads(cfg_path.read_text())
        diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
        raise InterventionError(f"out={str(out)!r} holds a demo run with other options "
                                f"({', '.join(diff)}); choose a new folder or delete it")
    cfg_path.write_text(json.dumps(mine, indent=1))
    st = Stages(out, echo)
    items = st.run("items", lambda: resolved)
    triples = items.get("triples")
    if items["items"] == "heldout":
        echo(f"[demo] items: the {items['n_triples']} colour triples held out of every "
             f"organism's training ({items['available']} base items)")
    data, degraded = out / "data" / "clean", out / "data" / "degraded"
    st.run("generate", lambda: str(generate(
        GenerateConfig.from_dict(stimulus_config(cfg, degraded=False, triples=triples)), data,
        progress=progress)))
    st.run("generate-degraded", lambda: str(generate(
        GenerateConfig.from_dict(stimulus_config(cfg, degraded=True, triples=triples)),
        degraded, progress=progress)))
    from .tasks import task_data, task_stages

    grid = dict((stimulus_config(cfg, degraded=False).get("flat") or {}).get("grid") or
                {"num_tokens": 12, "token_px": 28, "size": 2, "spacing": 2})
    extra = st.run("generate-tasks", lambda: task_data(cfg, out, grid, progress=progress))
    store = out / "store.zarr"
    results: dict[str, dict[str, Any]] = {}
    for model in models:
        results[model] = _study(model, cfg, st, out, data, degraded, store, progress=progress,
                                echo=echo)
        results[model]["tasks"] = task_stages(
            model, cfg, st, out, Path(results[model]["dir"]), results[model].pop("_adapter"),
            extra or {},
            degraded, grid, progress=progress, echo=echo)
    from .report import write_report

    # the mechanism each organism was trained with (its training record), else the default list's
    mechanisms = dict(ORGANISMS)
    for m in models:
        mech = (results[m].get("organism") or {}).get("mechanism")
        if mech:
            mechanisms[m] = mech
    path = write_report(out, cfg=cfg, models=models, results=results, stages=st.log,
                        mechanisms=mechanisms)
    echo(f"[demo] report: {path}")
    return path


def _slug(model: str) -> str:
    return model.strip("/").replace("/", "--")


def _study(model: str, cfg: DemoConfig, st: Stages, out: Path, data: Path, degraded: Path,
           store: Path, *, progress: bool, echo) -> dict[str, Any]:
    from vlms.extract import ExtractConfig, run_extract
    from vlms.registry import load_adapter

    from interventions.ablation import AblateConfig
    from interventions.amplification import AmplifyConfig
    from interventions.experiments import ablate_to_dir, amplify_to_dir, patch_to_dir
    from interventions.patching import PatchConfig

    from .evaluate import EvalConfig, evaluate

    m = _slug(model)
    root = out / m
    res: dict[str, Any] = {"dir": str(root)}
    adapter = load_adapter(model)
    res["organism"] = _training_record(adapter.source)
    res["_adapter"] = adapter  # reused by study.tasks; popped before the report
    res["extract"] = st.run(f"{m}/extract", lambda: run_extract(ExtractConfig(
        model=model, data=str(data), store=str(store), sites=("projector", "lm.resid"),
        batch_size=cfg.batch_size), progress=progress, echo=echo, adapter=adapter))

    def e1():
        r = evaluate(EvalConfig(model=model, data=str(data), batch_size=cfg.batch_size),
                     out=root / "e1", adapter=adapter, progress=progress)
        p = r.predictions
        return {"accuracy": float(p["correct"].mean()), "n": int(len(p))}
    res["e1"] = st.run(f"{m}/e1", e1)
    if cfg.whatsup:
        def e1w():
            r = evaluate(EvalConfig(model=model, data=f"whatsup:{cfg.whatsup}",
                                    batch_size=cfg.batch_size),
                         out=root / "e1-whatsup", adapter=adapter, progress=progress)
            return {"accuracy": float(r.predictions["correct"].mean()),
                    "n": int(len(r.predictions))}
        res["e1_whatsup"] = st.run(f"{m}/e1-whatsup", e1w)
    res["e3"] = st.run(f"{m}/e3", lambda: _probes(model, cfg, store, root / "e3", data))
    # E4-E6 under both recipes: robust (spatialbind's own, with the band region) and paper
    # (the authors' exact regions, metrics and filters); the report shows them side by side
    if cfg.recipe in ("both", "robust"):
        res["e4"] = st.run(f"{m}/e4", lambda: patch_to_dir(
            model, str(data), str(root / "e4"),
            PatchConfig(experiment="e4", layers="all", regions=("object", "strip", "band"),
                        batch_size=cfg.batch_size, recipe="robust"),
            progress=progress))
        res["e5"] = st.run(f"{m}/e5", lambda: ablate_to_dir(
            model, str(data), str(root / "e5"), AblateConfig(batch_size=cfg.batch_size,
                                                             recipe="robust"),
            progress=progress))
        res["e6"] = st.run(f"{m}/e6", lambda: patch_to_dir(
            model, str(data), str(root / "e6"),
            PatchConfig(experiment="e6", layers="all", batch_size=cfg.batch_size,
                        recipe="robust"),
            progress=progress))
    if cfg.recipe in ("both", "paper"):
        # the authors' pairs, at most n/4 draws per direction: as many forwards as n items
        per_dir = max(1, cfg.n // 4)
        authors = {"pairs": "authors", "limit": per_dir, "max_attempts": per_dir}
        res["e4_paper"] = st.run(f"{m}/e4-paper", lambda: _or_error(lambda: patch_to_dir(
            model, str(data), str(root / "e4-paper"),
            PatchConfig(experiment="e4", layers="all", regions=("object", "strip"),
                        batch_size=cfg.batch_size, recipe="paper", **authors),
            progress=progress)))
        res["e5_paper"] = st.run(f"{m}/e5-paper", lambda: _or_error(lambda: ablate_to_dir(
            model, str(data), str(root / "e5-paper"),
            AblateConfig(batch_size=cfg.batch_size, recipe="paper"), progress=progress)))
        res["e6_paper"] = st.run(f"{m}/e6-paper", lambda: _or_error(lambda: patch_to_dir(
            model, str(data), str(root / "e6-paper"),
            PatchConfig(experiment="e6", layers="all", batch_size=cfg.batch_size, recipe="paper",
                        **authors),
            progress=progress)))
        from .demo_paper import paper_stages  # E1, E3 and E7 under the paper recipe

        res.update(paper_stages(model, cfg, st, m, root, store, data, degraded, adapter,
                                progress=progress))
    dirs = sorted(str(p) for p in (root / "e3" / "directions-e7").glob("*") if p.is_dir())
    unusable = (res["e3"] or {}).get("directions_not_exported") or {}
    if not dirs and unusable:
        # a model whose projector carries no side information (an lm organism on mirror-balanced
        # items): E3's side probe has no direction, so there is nothing to amplify; recorded as
        # the reason E7 did not run, as the paper recipe records its own, not a crash
        why = "; ".join(f"{a}: {r}" for a, r in sorted(unusable.items()))
        res["e7"] = st.run(f"{m}/e7", lambda: {
            "error": f"E7 not run: E3 exported no ordering direction ({why})"})
        return res
    if not dirs:
        raise InterventionError(f"E3 wrote no E7 directions under {root / 'e3'}; delete "
                                f"{root / 'e3'} and rerun the demo")
    res["e7"] = st.run(f"{m}/e7", lambda: amplify_to_dir(
        model, str(degraded), str(root / "e7"),
        # the completion prompt: the one every model (organisms included) is asked in E1
        AmplifyConfig(alphas=cfg.alphas, prompt="completion", both_orders=False,
                      batch_size=cfg.batch_size, recipe="robust"), direction=dirs,
        progress=progress))
    return res


def _or_error(fn):
    """Run an experiment; an experiment that cannot run at all (e.g. paper E6 when no pair is
    answered right under the ablation) is recorded with its reason instead of stopping the demo."""
    try:
        return fn()
    except InterventionError as e:
        return {"error": str(e)}


def _training_record(source: str | None) -> dict[str, Any] | None:
    """Held-out accuracies and mechanism check a trained organism recorded (None otherwise)."""
    log = Path(str(source or "")) / "train_log.json"
    if not log.is_file():
        return None
    d = json.loads(log.read_text())
    summary = (d.get("mechanism_check") or {}).get("summary") or {}
    return {"mechanism": (d.get("config") or {}).get("mechanism"),
            "final": d.get("final"), "n_items": d.get("final_eval_items"),
            "train_minutes": round(float(d.get("total_train_time_s", d.get("train_time_s", 0)))
                                   / 60, 1),
            "cpu_minutes": (round(float(d.get("total_cpu_time_s", d["cpu_time_s"])) / 60, 1)
                            if "cpu_time_s" in d else None),
            "steps": (d.get("history") or [{}])[-1].get("step"),
            "probe_projector_slot": summary.get("probe_projector_slot"),
            "accuracy_shuffled_tokens": summary.get("accuracy_shuffled_tokens")}


def _probes(model: str, cfg: DemoConfig, store: Path, out: Path, data: Path) -> dict[str, Any]:
    """E3: ordinal-slot probes over projector + LM layers, maps, and E7's axis directions."""
    import pandas as pd
    from probes.outputs import write_outputs
    from probes.config import ProbeConfig, SweepConfig
    from probes.dataset import open_store
    from probes.directions import axis_directions, save_direction
    from probes.sweep import sweep

    from scenegen import read_dataset

    s = open_store(str(store))
    # the paper's probes see base images only: isolated twins carry their base slot label
    # without the layout that defines it, and swap / criss-cross twins repeat base layouts
    base = [st.id for st in read_dataset(data).base()]
    pconf = ProbeConfig(control=True, n_splits=3, max_iter=300, random_state=cfg.seed)
    tables = []
    for site, roles in (("projector", ("object", "strip")), ("lm.resid", ("object",))):
        sconf = SweepConfig(model=model, site=site, layers=tuple(s.layers(model, site)),
                            roles=roles, label="ordinal", pool="token",
                            baselines=("position",), scheduler=cfg.scheduler)
        table = sweep(str(store), sconf, pconf, items=base, data=str(data), progress=False)
        (out / site).mkdir(parents=True, exist_ok=True)
        write_outputs(s, table, sconf, pconf, None, 4 if site == "projector" else 0,
                      out / site, str(data))
        tables.append(table.assign(site=site))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "results.csv", index=False)
    # E7 directions: per axis, side probes on entity-pooled projector outputs of items the
    # model answers correctly (paper §5.4), exported as labelled arrays.
    pred = pd.read_parquet(out.parent / "e1" / "predictions.parquet")
    right = sorted(set(pred.loc[pred["correct"].astype(bool), _id_col(pred)]))
    # the paper trains on items the model gets right; with too few of them (an untrained
    # model), fall back to all items and say so in the report
    items = right if len(right) >= 8 else None
    dconf = ProbeConfig(control=False, split="group_shuffle", random_state=cfg.seed)
    dirs = axis_directions(s, model=model, site="projector", layer=0, items=items,
                           config=dconf)
    unusable = {}
    for axis, d in dirs.items():
        why = unusable_direction(d)
        if why:
            unusable[axis] = why
        else:
            save_direction(d, out / "directions-e7" / axis)
    proj = table[(table["site"] == "projector") & (table["role"] == "object")]
    row = proj.iloc[0] if len(proj) else None
    maps = out / "projector" / "maps" / "summary.csv"
    return {
        "projector_object_accuracy": None if row is None else float(row["accuracy"]),
        "projector_object_ci": None if row is None else [float(row.get("ci_low", float("nan"))),
                                                          float(row.get("ci_high", float("nan")))],
        "projector_object_control": None if row is None else _f(row.get("control_accuracy")),
        "projector_object_position_baseline": None if row is None else _f(
            row.get("position_accuracy")),
        "projector_strip_accuracy": _f(table[(table["site"] == "projector")
                                             & (table["role"] == "strip")]["accuracy"].max()),
        "n_items_right": len(right),
        "directions_trained_on": "items answered correctly" if items else "all items",
        "maps_summary": str(maps) if maps.exists() else None,
        "directions_cv_accuracy": {a: _f(d.cv_accuracy) for a, d in dirs.items()},
        "directions_not_exported": unusable,
    }


def unusable_direction(d) -> str | None:
    """Why an E3 side-probe direction cannot be amplified (None when it can): weights that are
    not finite, or a zero row. Logistic regression returns exactly zero weights when the two
    sides' mean tokens are equal, e.g. an lm organism's projector (no positions in its vision
    tokens) on items where every colour stands on both sides equally often."""
    w = np.asarray(d.weights, dtype=float)
    cv = "n/a" if _f(d.cv_accuracy) is None else f"{_f(d.cv_accuracy):.2f}"
    if not np.isfinite(w).all():
        return f"the side probe's weights are not finite (cv accuracy {cv})"
    if (np.linalg.norm(w, axis=-1) == 0).any():
        return (f"the side probe's weights are all zero (cv accuracy {cv}): the "
                "two sides' entity tokens have the same mean, so no linear direction separates "
                "them")
    return None


def _id_col(pred) -> str:
    for c in ("id", "sample_id", "item"):
        if c in pred.columns:
            return c
    raise InterventionError("E1 predictions have no id column")


def _f(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


__all__ = ["DEGRADED_PRESETS", "DemoConfig", "ORGANISMS", "run_demo", "shipped_organisms", "stimulus_config"]
