"""Interchange patching experiments: E2 (last-token patching per LM layer), E4 (criss-cross over
``object`` vs ``strip`` regions per layer) and E6 (object criss-cross under E5's ablation).

Each experiment is one function ``run_e*(adapter, dataset, config) -> (table, summary)``; a table
row is one (stimulus, layer[, region]) with option probabilities; the summary aggregates per layer
(and region) and counts forward passes. Probabilities are renormalised over the answer options
(the paper's "probability over {c0, c1, c2}"); ``option_mass`` keeps the raw mass on them.
Layers are residual sites: layer ``l`` = ``lm.resid.l`` (0 = the LM input, i.e. the projector output in place; ``l >= 1`` = output of LM layer ``l-1``).
Every source run is made once per item and every layer's patch of an item goes into batched
forwards (:func:`interventions.sweeps.sweep`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from .ablation import ablation_edits, blank_acts, references, vocab_top1, vocab_top1_answer
from .errors import InterventionError
from .hooks import Interchange, n_resid_sites
from .recipes import RECIPES, describe, get as get_recipe, resolve
from .regions import RegionError, ablation_pairs, crisscross_pairs, pairs_frame, uses_layout
from .stimuli import (base_items, option_ids, pick_prompt, prepare, slot_colors, twin)
from .sweeps import Edit, ForwardCounter, SourceRun, option_probs, sweep

EXPERIMENTS = ("e2", "e4", "e6")
REGIONS = ("object", "strip", "band")
DEFAULT_REGIONS = ("object", "strip")
PARTNERS = ("opposite", "swap", "crisscross")
PAIRS = ("authors", "dataset")


def parse_layers(spec: str | None, n_sites: int) -> list[int]:
    """``None``/``all`` -> every residual site; ``a:b[:s]`` or ``a-b`` (inclusive) or ``1,4,7``
    (:func:`common.parse_layers`, the grammar every command shares).

    Raises
    ------
    InterventionError
        Empty selection or a layer outside ``0 .. n_sites-1``.
    """
    from common import parse_layers as parse

    return list(parse(spec, range(n_sites), where="this model's residual sites (0 = LM input)",
                      error=InterventionError))


@dataclass(frozen=True, kw_only=True, slots=True)
class PatchConfig:
    """Options of E2 / E4 / E6 (``spatialbind patch``)."""

    experiment: str = "e4"
    """``e2`` (last token), ``e4`` (criss-cross regions) or ``e6`` (criss-cross under ablation)."""
    layers: str | None = None
    """Residual sites to patch: ``all``, ``a:b[:step]`` (inclusive) or ``0,4,8``."""
    regions: tuple[str, ...] = DEFAULT_REGIONS
    """E4: regions to criss-cross: ``object``, ``strip`` (the store's role: the object's
    rows/columns), ``band`` (the paper's tiled strips, width = size + spacing); E6 always uses
    ``object``."""
    partner: str = "opposite"
    """E2: counterfactual partner: ``opposite`` (another stimulus asking the opposite direction
    with the same reference colour: the paper's design), ``swap`` or ``crisscross`` twin."""
    prompt: str = "completion"
    """Prompt kind asked."""
    limit: int | None = None
    """Use the first N base stimuli (None: all)."""
    batch_size: int = 8
    """Patched rows per batched forward."""
    recipe: str | None = None
    """``paper`` or ``robust`` (interventions/RECIPES.md); None: ``paper`` for the paper's
    presets, else ``robust``. ``paper`` takes the regions ``object`` and ``strip`` only."""
    pairs: str | None = None
    """E4/E6 items: ``authors`` (the authors' pairs: random triples from their pool, drawn
    with their seed and rule and rendered at the dataset's geometry, kept when the model answers
    them right, see :mod:`interventions.authors_pairs`; ``limit`` is then the pairs wanted per
    direction, default 50) or ``dataset`` (the dataset's own base items, first ``limit``).
    None: ``authors`` under the ``paper`` recipe on a flat dataset, else ``dataset``."""
    max_attempts: int | None = None
    """``pairs='authors'``: draws per direction at most (the authors'
    ``--max-attempts-per-direction``; None: their 2000). A smaller cap bounds the work on a
    model that answers few candidates right, and changes which triples later directions draw."""

    def __post_init__(self):
        if self.recipe is not None and self.recipe not in RECIPES:
            raise InterventionError(f"The 'recipe' parameter of PatchConfig must be one of "
                                    f"{RECIPES}. Got {self.recipe!r} instead.")
        if self.max_attempts is not None and (not isinstance(self.max_attempts, int)
                                              or self.max_attempts < 1):
            raise InterventionError(f"The 'max_attempts' parameter of PatchConfig must be an "
                                    f"int >= 1 or None. Got {self.max_attempts!r} instead.")
        if self.pairs is not None and self.pairs not in PAIRS:
            raise InterventionError(f"The 'pairs' parameter of PatchConfig must be one of "
                                    f"{PAIRS} or None. Got {self.pairs!r} instead.")
        if self.experiment not in EXPERIMENTS:
            raise InterventionError(f"The 'experiment' parameter of PatchConfig must be one of "
                                    f"{EXPERIMENTS}. Got {self.experiment!r} instead.")
        regions = tuple(self.regions)
        object.__setattr__(self, "regions", regions)
        if not regions or any(r not in REGIONS for r in regions):
            raise InterventionError(f"The 'regions' parameter of PatchConfig must be a non-empty "
                                    f"subset of {REGIONS}. Got {list(regions)!r} instead.")
        if self.partner not in PARTNERS:
            raise InterventionError(f"The 'partner' parameter of PatchConfig must be one of "
                                    f"{PARTNERS}. Got {self.partner!r} instead.")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise InterventionError(f"The 'limit' parameter of PatchConfig must be an int >= 1 or "
                                    f"None. Got {self.limit!r} instead.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InterventionError(f"The 'batch_size' parameter of PatchConfig must be an int "
                                    f">= 1. Got {self.batch_size!r} instead.")


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True, unit="row")


# --------------------------------------------------------------------------- E4 / E6
PAPER_REGIONS = ("object", "strip")
#: The authors' pairs per direction (E4 and E6 ``cf_pairs``).
PAPER_PAIRS_PER_DIRECTION = 50


def _recipe_of(config, ds) -> str:
    recipe = resolve(config.recipe, ds)
    if recipe == "paper" and config.experiment == "e4":
        bad = [r for r in config.regions if r not in PAPER_REGIONS]
        if bad:
            raise InterventionError(f"--recipe paper patches the regions object and strip only "
                                    f"(the authors'); {bad} exist in --recipe robust")
    return recipe


def _crisscross_rows(p, cf, pairs, layers, ic, *, extra=()):
    rows, keys = [], []
    for pr in pairs:
        bpos = p.layout.image_positions[pr.clean]
        spos = cf.layout.image_positions[pr.source]
        for l in layers:
            rows.append(list(extra) + [Edit(site=f"lm.resid.{l}", intervention=ic,
                                            tokens=bpos.tolist(), source="cf",
                                            source_tokens=spos.tolist())])
            keys.append((l, pr.region))
    return rows, keys


def _slot_probs(adapter, stim, res, keys, cf_answer, answer):
    colors = slot_colors(stim)
    ids = option_ids(adapter.tokenizer, colors)
    out = []
    base = option_probs(res.base_logits, ids)
    mass = option_probs(res.row_logits, ids).sum(-1)
    probs = option_probs(res.row_logits, ids, normalize=True)
    for (l, region), pr, m, lg in zip(keys, probs, mass, res.row_logits):
        pred = colors[int(pr.argmax())]
        row = {"item": stim.id, "relation": stim.relation, "axis": stim.axis, "layer": l,
               "region": region, "answer": answer, "cf_answer": cf_answer, "pred": pred,
               "flip": pred == cf_answer, "p_answer": float(pr[colors.index(answer)]),
               "p_cf_answer": float(pr[colors.index(cf_answer)]),
               "base_pred": colors[int(base.argmax())], "option_mass": float(m),
               "top1": vocab_top1(adapter.tokenizer, lg)}
        row.update({f"p_slot{k}": float(v) for k, v in enumerate(pr)})
        out.append(row)
    return out


@dataclass
class _ItemRun:
    """One E4/E6 item run: its token pairs, the sweep result and the correctness check."""

    stim: Any
    pairs: list
    keys: list
    res: Any
    answer: str
    cf_answer: str
    clean_right: bool
    cf_right: bool
    blank_forwards: int = 0

    @property
    def right(self) -> bool:
        return self.clean_right and self.cf_right


def _e4_item(adapter, ds, stim, config, recipe, layers, ic, *, patch: bool = True,
             bar=None, patch_regions=None) -> _ItemRun:
    """E4 on one item: clean <- its criss-cross twin in each region and layer (``patch=False``:
    only the clean and counterfactual runs, for the correctness check; ``patch_regions``: patch
    only these of ``config.regions``, while every region's pairs decide whether the item can
    run). Raises RegionError."""
    prompt = pick_prompt(stim, config.prompt)
    cc = twin(ds, stim, "crisscross")
    p = prepare(adapter, ds, stim, prompt)
    cf = prepare(adapter, ds, cc, prompt)
    lays = None if uses_layout(stim, recipe) else (p.layout, cf.layout)
    pairs = [crisscross_pairs(ds, stim, cc, p.layout.grid, recipe, r, layouts=lays)
             for r in config.regions]
    todo = [pr for pr in pairs if patch_regions is None or pr.region in patch_regions]
    rows, keys = _crisscross_rows(p, cf, todo, layers, ic) if patch else ([], [])
    res = sweep(adapter, p.inputs, rows, sources={"cf": SourceRun(inputs=cf.inputs)},
                batch_size=config.batch_size, progress=bar)
    cf_answer = pick_prompt(cc, config.prompt).answer
    tok = adapter.tokenizer
    return _ItemRun(stim, pairs, keys, res, prompt.answer, cf_answer,
                    vocab_top1(tok, res.base_logits) == vocab_top1_answer(prompt.answer),
                    vocab_top1(tok, res.sources["cf"]) == vocab_top1_answer(cf_answer))


def _e6_item(adapter, ds, stim, config, recipe, layers, ic, blanks: dict, *,
             patch: bool = True, bar=None) -> _ItemRun:
    """E6 on one item: E5's ablation on both runs, then the object criss-cross per layer, plus
    the ablated run without criss-cross (layer -1); ``patch=False`` runs only the ablated runs
    (the correctness check). Raises RegionError."""
    prompt = pick_prompt(stim, config.prompt)
    cc = twin(ds, stim, "crisscross")
    p = prepare(adapter, ds, stim, prompt)
    cf = prepare(adapter, ds, cc, prompt)
    grid = p.layout.grid
    lays = None if uses_layout(stim, recipe) else (p.layout, cf.layout)
    cross = crisscross_pairs(ds, stim, cc, grid, recipe, "object", layouts=lays)
    abl = ablation_pairs(ds, stim, grid, recipe, region_prefix="ablation:", layout=p.layout)
    cf_abl = ablation_pairs(ds, cc, grid, recipe, base=stim, region_prefix="cf-ablation:",
                            run="counterfactual", layout=cf.layout)
    n_blank = len(blanks)
    blank = blank_acts(adapter, ds, prompt, stim, cache=blanks)
    refs = references(adapter, ds, stim, prompt, blank)
    base_edits, sources = ablation_edits(p, refs, abl)
    cf_edits, cf_sources = ablation_edits(cf, refs, cf_abl)
    sources.update(cf_sources)
    sources["cf"] = SourceRun(inputs=cf.inputs, edits=tuple(cf_edits))
    rows, keys = _crisscross_rows(p, cf, [cross], layers, ic, extra=base_edits) \
        if patch else ([], [])
    rows.append(list(base_edits))  # the ablated run without criss-cross (E5's prediction)
    keys.append((-1, "none"))
    res = sweep(adapter, p.inputs, rows, sources=sources, batch_size=config.batch_size,
                progress=bar)
    cf_answer = pick_prompt(cc, config.prompt).answer
    tok = adapter.tokenizer
    return _ItemRun(stim, [cross, *abl, *cf_abl], keys, res, prompt.answer, cf_answer,
                    vocab_top1(tok, res.row_logits[-1]) == vocab_top1_answer(prompt.answer),
                    vocab_top1(tok, res.sources["cf"]) == vocab_top1_answer(cf_answer),
                    blank_forwards=len(blanks) - n_blank)


def _use_authors(config, ds, recipe: str) -> bool:
    """Whether E4/E6 run on the authors' generated pairs (see :class:`PatchConfig`.pairs)."""
    if config.pairs == "authors" and recipe != "paper":
        raise InterventionError("pairs='authors' belongs to the paper recipe (the authors keep "
                                "the pairs their model answers right); add --recipe paper or "
                                "drop --pairs")
    if config.pairs == "dataset" or recipe != "paper":
        return False
    flat = (getattr(ds, "config", None) or {}).get("generator") == "flat"
    if config.pairs == "authors" and not flat:
        raise InterventionError("pairs='authors' renders the authors' triples with the flat "
                                "generator; this dataset is not flat: use --pairs dataset")
    return flat


def _run_authors(adapter, ds, config, recipe, layers, *, name: str, progress: bool,
                 regions: list | None, patch_regions=None):
    """E4/E6 on the authors' pairs (:mod:`interventions.authors_pairs`): draw candidates with
    the authors' rule, check each (E4: both runs right; E6: both ablated runs right), patch the
    kept ones. ``--limit`` is the authors' ``--target`` (pairs wanted per direction, 50)."""
    from .authors_pairs import AUTHORS_MAX_ATTEMPTS, AUTHORS_SEED, AUTHORS_TARGET, AuthorsData, \
        collect

    data = AuthorsData(ds, adapter.tokenizer, isolated=name == "E6")
    target = config.limit or AUTHORS_TARGET
    ic = Interchange()
    counter = ForwardCounter()
    blanks: dict = {}
    out, skipped, dropped = [], [], []
    n_reg = len(patch_regions if patch_regions is not None else config.regions)
    per_row = (len(layers) * n_reg) if name == "E4" else len(layers) + 1
    bar = _bar(len(data.directions) * target * per_row,
               f"{name} criss-cross (the authors' pairs)", progress)

    def run_item(stim, patch):
        if name == "E4":
            return _e4_item(adapter, data, stim, config, recipe, layers, ic, patch=patch,
                            bar=bar if patch else None, patch_regions=patch_regions)
        r = _e6_item(adapter, data, stim, config, recipe, layers, ic, blanks, patch=patch,
                     bar=bar if patch else None)
        counter.forwards += r.blank_forwards
        return r

    def keep(direction, attempt, triple) -> bool:
        stim = data.render(direction, attempt, triple)
        entry = {"item": stim.id, "direction": direction, "attempt": attempt,
                 "triple": [data.name(t) for t in triple]}
        try:
            try:
                chk = run_item(stim, False)
            except RegionError as e:  # geometry: an entity too small for the token grid
                skipped.append({**entry, "reason": str(e)})
                return False
            counter.add(chk.res.counter)
            if not chk.right:
                dropped.append({**entry, "clean_right": bool(chk.clean_right),
                                "cf_right": bool(chk.cf_right)})
                return False
            r = run_item(stim, True)
            counter.add(r.res.counter)
            if regions is not None:
                regions.append(pairs_frame(stim.id, r.pairs))
            out.extend(_slot_probs(adapter, stim, r.res, r.keys, r.cf_answer, r.answer))
            return True
        finally:
            data.forget(stim)

    max_attempts = config.max_attempts or AUTHORS_MAX_ATTEMPTS
    found = collect(data.pool, data.directions, keep, target=target,
                    max_attempts=max_attempts, seed=AUTHORS_SEED)
    bar.close()
    table, summary = _finish(out, counter, config, name, skipped, recipe, dropped=dropped)
    short = {d: {"kept": len(v["kept"]), "attempts": v["attempts"]}
             for d, v in found.items() if len(v["kept"]) < target}
    summary.update({
        "pairs_source": "authors",
        "pool": [data.name(t) for t in data.pool],
        "wanted_per_direction": target, "max_attempts_per_direction": max_attempts,
        "seed": AUTHORS_SEED,
        "pairs_per_direction": {d: {"kept": len(v["kept"]), "attempts": v["attempts"]}
                                for d, v in found.items()},
        "n_directions_short": len(short), "directions_short": short,
        # the authors' cf_pairs JSON format: {direction: [[t0, t1, t2], ...]}
        "pairs": {d: [[data.name(t) for t in tr] for tr in v["kept"]]
                  for d, v in found.items()},
    })
    if name == "E4":
        summary["n_dropped_wrong"] = len(dropped)
        summary["dropped_wrong"] = dropped
    return table, summary


def _run_dataset(adapter, ds, config, run_item, *, steps: int, label: str, keep_right: bool,
                 progress: bool, regions: list | None):
    """The dataset-items loop shared by E4 and E6: ``run_item(stim, bar)`` patches one item.

    With ``keep_right`` (the authors' filter) an item enters only if answered right on both
    runs, at most :data:`PAPER_PAIRS_PER_DIRECTION` per direction (later ones are listed, not
    run). Items whose regions do not fit the token grid are counted and listed.
    Returns ``(rows, counter, skipped, dropped, beyond)``.
    """
    counter = ForwardCounter()
    out, skipped, dropped, beyond = [], [], [], []
    kept: dict[str, int] = {}
    items = base_items(ds, limit=config.limit)
    bar = _bar(len(items) * steps, label, progress)
    for stim in items:
        if keep_right and kept.get(stim.relation, 0) >= PAPER_PAIRS_PER_DIRECTION:
            beyond.append(stim.id)  # the authors use 50 pairs per direction
            bar.update(steps)
            continue
        try:
            r = run_item(stim, bar)
        except RegionError as e:  # geometry: an entity too small for the token grid
            skipped.append({"item": stim.id, "reason": str(e)})
            bar.update(steps)
            continue
        counter.forwards += r.blank_forwards
        counter.add(r.res.counter)
        if keep_right:
            if not r.right:
                dropped.append({"item": stim.id, "clean_right": bool(r.clean_right),
                                "cf_right": bool(r.cf_right)})
                continue
            kept[stim.relation] = kept.get(stim.relation, 0) + 1
        if regions is not None:
            regions.append(pairs_frame(stim.id, r.pairs))
        out += _slot_probs(adapter, stim, r.res, r.keys, r.cf_answer, r.answer)
    bar.close()
    return out, counter, skipped, dropped, beyond


def run_e4(adapter, ds, config: PatchConfig, *, progress: bool = True,
           regions: list | None = None, patch_regions=None):
    """E4: criss-cross interchange (clean (c0,c1,c2) <- its ``crisscross`` twin) per layer/region.

    The recipe decides the token pairs (:func:`interventions.regions.crisscross_pairs`);
    ``regions`` (a list) collects each item's ``regions.parquet`` rows (every region's, also
    with ``patch_regions``: patch only those regions, the cluster's cells). Under ``paper`` on a flat
    dataset the items are the authors' generated pairs (:func:`_run_authors`), else the
    dataset's base items.

    Returns
    -------
    (table, summary)
        Rows per (item, layer, region): probability of each slot's colour, prediction, flip.
    """
    recipe = _recipe_of(config, ds)
    layers = parse_layers(config.layers, n_resid_sites(adapter))
    if _use_authors(config, ds, recipe):
        return _run_authors(adapter, ds, config, recipe, layers, name="E4", progress=progress,
                            regions=regions, patch_regions=patch_regions)
    n_reg = len(patch_regions if patch_regions is not None else config.regions)
    ic = Interchange()
    out, counter, skipped, dropped, beyond = _run_dataset(
        adapter, ds, config, lambda stim, bar: _e4_item(
            adapter, ds, stim, config, recipe, layers, ic, bar=bar, patch_regions=patch_regions),
        steps=len(layers) * n_reg, label="E4 criss-cross", keep_right=recipe == "paper",
        progress=progress, regions=regions)
    table, summary = _finish(out, counter, config, "E4", skipped, recipe, dropped=dropped)
    if recipe == "paper":
        summary["pairs_source"] = "dataset"
        summary["n_dropped_wrong"] = len(dropped)
        summary["dropped_wrong"] = dropped
        summary["n_beyond_50_per_direction"] = len(beyond)
        summary["beyond_50_per_direction"] = beyond
    return table, summary


def run_e6(adapter, ds, config: PatchConfig, *, progress: bool = True,
           regions: list | None = None):
    """E6: E5's ablation on both runs, then object-token criss-cross per layer.

    A flip at layer ``l`` means the LM's own (backup) ordering representation at that layer
    decides the answer once the vision tokens carry no ordering. Under the ``paper`` recipe only
    pairs the ablated model still answers right (top-1 = the clean answer on the clean run and
    the counterfactual answer on the counterfactual run, as the authors' pool filter) enter the
    flip statistics; the others are counted and listed (``dropped_ablated_wrong``). Under
    ``paper`` on a flat dataset the items are the authors' generated pairs
    (:func:`_run_authors`), else the dataset's base items.
    """
    recipe = _recipe_of(config, ds)
    rcp = get_recipe(recipe)
    layers = parse_layers(config.layers, n_resid_sites(adapter))
    if _use_authors(config, ds, recipe):
        return _run_authors(adapter, ds, config, recipe, layers, name="E6", progress=progress,
                            regions=regions)
    ic = Interchange()
    blanks: dict = {}
    out, counter, skipped, dropped, beyond6 = _run_dataset(
        adapter, ds, config, lambda stim, bar: _e6_item(
            adapter, ds, stim, config, recipe, layers, ic, blanks, bar=bar),
        steps=len(layers) + 1, label="E6 ablated criss-cross",
        keep_right=rcp.e6_keep == "ablated_correct", progress=progress, regions=regions)
    table, summary = _finish(out, counter, config, "E6", skipped, recipe, dropped=dropped)
    if rcp.e6_keep == "ablated_correct":
        summary["pairs_source"] = "dataset"
        summary["n_beyond_50_per_direction"] = len(beyond6)
        summary["beyond_50_per_direction"] = beyond6
    return table, summary


def _finish(rows, counter, config, name, skipped=(), recipe="robust", dropped=()):
    if not rows:
        why = skipped[0]["reason"] if skipped else \
            ("no pair is answered right under the ablation" if name == "E6" else
             "no pair is answered right on both runs") if dropped else "no items"
        raise InterventionError(f"{name}: every item was skipped; first reason: {why}")
    table = pd.DataFrame(rows)
    patched = table[table["layer"] >= 0]
    agg = patched.groupby(["region", "layer"]).agg(
        flip_rate=("flip", "mean"), p_answer=("p_answer", "mean"),
        p_cf_answer=("p_cf_answer", "mean"), n=("flip", "size")).reset_index()
    summary: dict[str, Any] = {
        "experiment": name, "recipe": recipe, "n_items": int(table["item"].nunique()),
        "by_layer": agg.to_dict(orient="records"),
        "flip_layers": {r: sorted(int(l) for l in g.loc[g["flip_rate"] > 0.5, "layer"])
                        for r, g in agg.groupby("region")},
        "forwards": counter.forwards, "rows": counter.rows,
        "naive_forwards": counter.naive_forwards,
        "config": {**_cfg(config), "recipe": recipe}, "recipe_definition": describe(recipe),
        "n_skipped": len(skipped), "skipped": list(skipped),
    }
    if name == "E6":
        ab = table[table["layer"] < 0]
        summary["ablated_accuracy"] = float((ab["pred"] == ab["answer"]).mean())
        summary["n_dropped_ablated_wrong"] = len(dropped)
        summary["dropped_ablated_wrong"] = list(dropped)
    return table, summary


def _cfg(config) -> dict:
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --------------------------------------------------------------------------- E2
def find_partner(ds, stim, items, prompt_kind: str, partner: str):
    """The counterfactual partner of ``stim`` for E2 (see :class:`PatchConfig`.partner)."""
    if partner in ("swap", "crisscross"):
        return twin(ds, stim, partner)
    opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}
    colors = slot_colors(stim)
    cands = [s for s in items if s.id != stim.id and s.axis == stim.axis and s.task == stim.task
             and s.relation == opposite.get(stim.relation) and len(s.targets) == len(colors)]
    if not cands:
        raise InterventionError(f"no partner for {stim.id}: the dataset has no stimulus asking "
                                f"{opposite.get(stim.relation)!r} on the {stim.axis} axis; use "
                                "partner='swap' or generate more stimuli")

    def score(s):
        sc = slot_colors(s)
        same_ref = sc[len(sc) // 2] == colors[len(colors) // 2]
        ans = pick_prompt(s, prompt_kind).answer
        return (same_ref, ans not in colors, -len(set(sc) & set(colors)))

    return max(cands, key=score)


#: The authors' E2 colour pool (``last_token_exp``: their palette minus white): the preset's six
#: colours plus orange (255, 165, 0).
PAPER_E2_COLORS = ("red", "green", "blue", "black", "brown", "gray", "orange")
PAPER_E2_PER_DIRECTION = 50
PAPER_E2_MAX_ATTEMPTS = 2000
OPPOSITE_OF = {"left": "right", "right": "left", "above": "below", "below": "above"}


class _Memory:
    """Rendered stimuli held in memory, with the two dataset methods :func:`prepare` uses."""

    def __init__(self):
        self.rendered: dict[str, Any] = {}

    def add(self, r):
        self.rendered[r.stimulus.id] = r
        return r.stimulus

    def image(self, stim):
        return self.rendered[stim.id].image

    def mask(self, stim):
        return self.rendered[stim.id].mask


def _paper_generator(ds):
    """A flat generator with the dataset's geometry and the authors' E2 entity pool."""
    import copy

    from scenegen.config import GenerateConfig
    from scenegen.flat import FlatGenerator

    cfg = copy.deepcopy(getattr(ds, "config", None) or {})
    if cfg.get("generator") != "flat":
        raise InterventionError("--recipe paper E2 renders the authors' pairs with the flat "
                                "generator; give a flat dataset (spatialbind generate --preset "
                                "squares-qwen2-vl ...) or use --recipe robust")
    flat = cfg["flat"]
    if flat.get("task") == "squares":
        flat["colors"] = list(PAPER_E2_COLORS)
    flat["layout"] = "centred"
    flat.pop("triples", None)  # the authors' pool, whatever triples the dataset holds
    g = GenerateConfig.from_dict({**cfg, "n": None, "twins": [], "degradations": []})
    return FlatGenerator(g.flat, seed=g.seed, twins=())


def _render(gen, mem, sid, items, direction):
    from scenegen.config import PALETTE
    from scenegen.flat import AXIS_OF, Placed, centred_layout

    g = gen.config.grid
    layout = centred_layout(g.num_tokens, g.size, g.spacing, AXIS_OF[direction])
    placed = []
    for i, item in enumerate(items):
        kind, color = gen._attrs(item)
        placed.append(Placed(mask_id=i + 1, kind=kind, color=color,
                             rgb=tuple(PALETTE[color]), origin=layout.origin(i),
                             size=layout.size, ordinal=i))
    r = gen._stimulus(sid, placed, task=gen.config.task, direction=direction, layout=layout,
                      split="test", scene_id=sid, index=-1, choice_bits=(False, False),
                      triple=tuple(items))
    return mem.add(r)


def _single_token(tokenizer, word: str) -> bool:
    return all(len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1
               for w in (word.lower(), word.capitalize()))


def four_variant_ids(tokenizer, word: str) -> list[int]:
    """First token ids of the authors' four spellings: lower, Capitalised, ' '+lower,
    ' '+Capitalised (summed as the authors gather them: a repeated id counts twice)."""
    out = []
    for v in (word.lower(), word.capitalize(), " " + word.lower(), " " + word.capitalize()):
        ids = tokenizer(v, add_special_tokens=False)["input_ids"]
        if ids:
            out.append(int(ids[0]))
    return out


def run_e2_paper(adapter, ds, config: PatchConfig, *, progress: bool = True,
                 seed: int = 0, per_direction: int | None = None,
                 max_attempts: int | None = None):
    """E2 as the authors run it (``last_token_exp``): for each direction, random 5-tuples
    (t0..t4) of the pool (Squares: 7 colours with orange; Shapes: the task's fixed shapes) make
    a clean image (t0, t1, t2) asked ``direction`` (answer t0; right/below: (t2, t1, t0)) and a
    counterfactual (t4, t1, t3) asked the opposite direction (answer t3; right/below:
    (t3, t1, t4)); only pairs whose top-1 token is right on both runs are kept, up to
    ``per_direction`` (default 50; ``--limit``) after at most ``max_attempts`` draws per
    direction (default 40 per wanted pair, the authors' 2000 for 50). Each kept pair's last
    token is patched from the counterfactual at every layer; the probability of each of the
    five words is the softmax mass summed over its four spellings (not renormalised).
    """
    import random

    recipe = "paper"
    want = per_direction or config.limit or PAPER_E2_PER_DIRECTION
    cap = max_attempts or min(PAPER_E2_MAX_ATTEMPTS, 40 * want)
    layers = parse_layers(config.layers, n_resid_sites(adapter))
    gen = _paper_generator(ds)
    mem = _Memory()
    tok = adapter.tokenizer
    pool = [it for it in gen.items if _single_token(tok, gen._attrs(it)[1])]
    if len(pool) < 5:
        raise InterventionError(f"E2 (paper) needs 5 single-token answer words; the tokenizer "
                                f"keeps {len(pool)} of {list(gen.items)}")
    directions = [d for d in gen.config.directions]
    rng = random.Random(seed)
    ic = Interchange()
    counter = ForwardCounter()
    out, found = [], {}
    bar = _bar(len(directions) * want * len(layers), "E2 last token (paper)", progress)
    for direction in directions:
        seen: set = set()
        kept = attempts = 0
        while kept < want and attempts < cap:
            attempts += 1
            tup = tuple(rng.sample(pool, 5))
            if tup in seen:
                continue
            seen.add(tup)
            t0, t1, t2, t3, t4 = tup
            first = direction in ("left", "above")
            clean_items = (t0, t1, t2) if first else (t2, t1, t0)
            cf_items = (t4, t1, t3) if first else (t3, t1, t4)
            sid = f"e2-{direction}-{attempts:04d}"
            stim = _render(gen, mem, sid, clean_items, direction)
            other = _render(gen, mem, sid + "-cf", cf_items, OPPOSITE_OF[direction])
            prompt, oprompt = pick_prompt(stim, config.prompt), pick_prompt(other, config.prompt)
            p = prepare(adapter, mem, stim, prompt)
            cf = prepare(adapter, mem, other, oprompt)
            rows = [[Edit(site=f"lm.resid.{l}", intervention=ic, tokens=[p.layout.last],
                          source="cf", source_tokens=[cf.layout.last])] for l in layers]
            res = sweep(adapter, p.inputs, rows, sources={"cf": SourceRun(inputs=cf.inputs)},
                        batch_size=config.batch_size)
            counter.add(res.counter)
            ok = (vocab_top1(tok, res.base_logits) == vocab_top1_answer(prompt.answer)
                  and vocab_top1(tok, res.sources["cf"]) == vocab_top1_answer(oprompt.answer))
            if not ok:
                continue
            kept += 1
            words = [gen._attrs(t)[1] for t in tup]
            ids = [four_variant_ids(tok, w) for w in words]
            probs = torch.softmax(res.row_logits.float(), -1)
            mass = torch.stack([probs[:, i].sum(-1) for i in ids], -1).cpu().numpy()
            ordinal = words[2]  # the clean colour at the slot the cf answer occupies
            for l, pr in zip(layers, mass):
                pred = words[int(pr.argmax())]
                winner = ("clean" if pred == words[0] else "ordinal" if pred == ordinal
                          else "counterfactual" if pred == words[3] else "other")
                out.append({"item": sid, "partner": other.id, "relation": direction,
                            "layer": l, "answer": words[0], "ordinal_answer": ordinal,
                            "cf_answer": words[3], "pred": pred, "winner": winner,
                            "p_answer": float(pr[0]), "p_ordinal": float(pr[2]),
                            "p_cf_answer": float(pr[3]), "p_middle": float(pr[1]),
                            "p_other": float(pr[4]), "colors": ",".join(words)})
            bar.update(len(layers))
        found[direction] = {"kept": kept, "attempts": attempts}
    bar.close()
    short = {d: v for d, v in found.items() if v["kept"] < want}
    if not out:
        raise InterventionError(f"E2 (paper): no pair was answered right on both runs in "
                                f"{cap} draws per direction; the model does not solve the "
                                "task (see --recipe robust, which keeps every pair)")
    table = pd.DataFrame(out)
    agg = table.groupby("layer").agg(p_answer=("p_answer", "mean"),
                                     p_ordinal=("p_ordinal", "mean"),
                                     p_cf_answer=("p_cf_answer", "mean")).reset_index()
    wins = table.pivot_table(index="layer", columns="winner", values="item", aggfunc="count",
                             fill_value=0)
    summary = {"experiment": "E2", "recipe": recipe, "n_items": int(table["item"].nunique()),
               "pairs_per_direction": found, "wanted_per_direction": want,
               "n_directions_short": len(short), "directions_short": short,
               "pool": [gen._attrs(t)[1] for t in pool],
               "by_layer": agg.to_dict("records"),
               "winners": {int(l): {k: int(v) for k, v in r.items()} for l, r in wins.iterrows()},
               "forwards": counter.forwards, "rows": counter.rows,
               "naive_forwards": counter.naive_forwards,
               "config": {**_cfg(config), "recipe": recipe}, "recipe_definition": describe(recipe)}
    return table, summary


def run_e2(adapter, ds, config: PatchConfig, *, progress: bool = True):
    """E2: copy the final token's residual at layer ``l`` from the counterfactual run.

    Per layer the winner among the clean answer, the ``ordinal`` colour (the clean image's colour
    at the slot the counterfactual answer occupies: ordering information) and the counterfactual
    answer colour (attribute information).
    """
    recipe = resolve(config.recipe, ds)
    if recipe == "paper" and config.partner == "opposite":
        return run_e2_paper(adapter, ds, config, progress=progress)
    layers = parse_layers(config.layers, n_resid_sites(adapter))
    items = base_items(ds, limit=config.limit)
    pool = base_items(ds)
    ic = Interchange()
    counter = ForwardCounter()
    out = []
    bar = _bar(len(items) * len(layers), "E2 last token", progress)
    skipped = []
    for stim in items:
        prompt = pick_prompt(stim, config.prompt)
        try:
            other = find_partner(ds, stim, pool, config.prompt, config.partner)
        except InterventionError:
            if config.partner != "opposite":
                raise
            skipped.append(stim.id)  # no opposite-direction stimulus on this axis
            bar.update(len(layers))
            continue
        oprompt = pick_prompt(other, config.prompt)
        p = prepare(adapter, ds, stim, prompt)
        cf = prepare(adapter, ds, other, oprompt)
        rows = [[Edit(site=f"lm.resid.{l}", intervention=ic, tokens=[p.layout.last], source="cf",
                      source_tokens=[cf.layout.last])] for l in layers]
        res = sweep(adapter, p.inputs, rows, sources={"cf": SourceRun(inputs=cf.inputs)},
                    batch_size=config.batch_size, progress=bar)
        counter.add(res.counter)
        colors, ocolors = slot_colors(stim), slot_colors(other)
        cf_slot = ocolors.index(oprompt.answer)
        ordinal = colors[cf_slot]
        opts = list(dict.fromkeys(colors + ocolors))
        ids = option_ids(adapter.tokenizer, opts)
        probs = option_probs(res.row_logits, ids, normalize=True)
        for l, pr in zip(layers, probs):
            pred = opts[int(pr.argmax())]
            winner = ("clean" if pred == prompt.answer else "ordinal" if pred == ordinal
                      else "counterfactual" if pred == oprompt.answer else "other")
            if pred == prompt.answer and pred == ordinal:
                winner = "clean=ordinal"
            out.append({"item": stim.id, "partner": other.id, "relation": stim.relation,
                        "layer": l, "answer": prompt.answer, "ordinal_answer": ordinal,
                        "cf_answer": oprompt.answer, "pred": pred, "winner": winner,
                        "p_answer": float(pr[opts.index(prompt.answer)]),
                        "p_ordinal": float(pr[opts.index(ordinal)]),
                        "p_cf_answer": float(pr[opts.index(oprompt.answer)])})
    bar.close()
    if not out:
        raise InterventionError(f"E2 found no counterfactual partner for any of {len(items)} "
                                "items (no stimulus asks the opposite direction on the same "
                                "axis); generate more stimuli or use --partner swap")
    table = pd.DataFrame(out)
    agg = table.groupby("layer").agg(p_answer=("p_answer", "mean"),
                                     p_ordinal=("p_ordinal", "mean"),
                                     p_cf_answer=("p_cf_answer", "mean")).reset_index()
    wins = table.pivot_table(index="layer", columns="winner", values="item", aggfunc="count",
                             fill_value=0)
    summary = {"experiment": "E2", "n_items": len(items) - len(skipped),
               "skipped_no_partner": skipped, "by_layer": agg.to_dict("records"),
               "winners": {int(l): {k: int(v) for k, v in r.items()} for l, r in wins.iterrows()},
               "forwards": counter.forwards, "rows": counter.rows,
               "naive_forwards": counter.naive_forwards,
               "recipe": recipe, "config": {**_cfg(config), "recipe": recipe},
               "recipe_definition": describe(recipe)}
    return table, summary


def run_patch(adapter, ds, config: PatchConfig, *, progress: bool = True,
              regions: list | None = None, patch_regions=None):
    """Dispatch to :func:`run_e2`, :func:`run_e4` or :func:`run_e6` by ``config.experiment``
    (``regions`` collects E4/E6's token pairs; E2 patches no image token; ``patch_regions``:
    E4 patches only these regions, see :func:`run_e4`)."""
    if config.experiment == "e2":
        return run_e2(adapter, ds, config, progress=progress)
    if config.experiment == "e4":
        return run_e4(adapter, ds, config, progress=progress, regions=regions,
                      patch_regions=patch_regions)
    return run_e6(adapter, ds, config, progress=progress, regions=regions)

