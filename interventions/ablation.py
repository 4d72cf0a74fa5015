"""E5: ablate the vision encoder's ordering information at the LM input, and the edits E6 reuses.

At ``lm.resid.0`` (the projector output as the LM receives it) every image token is replaced:

- each entity's tokens <- the same entity's tokens from its ``isolated`` twin (the entity alone,
  centred), paired by the entity's relative cell offsets (translation between the two object
  anchors), which keeps identity and erases position;
- every other image token (the full grid, background and strips) <- the same cell of the
  dataset's ``blank`` canvas (the authors' notebook used a 12x12 range and under-ablated Gemma).

If ordering came only from the vision tokens, accuracy would drop to chance (1/3).

A model that still understands the question never names the reference itself ("the square left
of the red square" is not red), so with no ordering left it picks between the *other* options:
its forced-choice accuracy sits at 1/(options - 1) = 1/2, not 1/3. The summary therefore also
reports how often the ablated run names the reference and, on the items where it does not, the
forced-choice accuracy against that chance with a two-sided binomial test
(:func:`reference_diagnostics`), so "no ordering left" and "some ordering left" can be told apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import InterventionError
from .hooks import Ablate, run
from .recipes import RECIPES, describe, get as get_recipe, resolve
from .regions import RegionError, ablation_pairs, pairs_frame
from .stimuli import (Prepared, base_items, blank_of, isolated_twins, option_ids, pick_prompt,
                      prepare, slot_colors)
from .sweeps import Edit, ForwardCounter, SourceRun, option_probs, sweep

SITE = "lm.resid.0"


@dataclass(frozen=True, kw_only=True, slots=True)
class AblateConfig:
    """Options of E5 (``spatialbind ablate``)."""

    prompt: str = "completion"
    """Prompt kind asked (scenegen prompt kinds: completion, choice, yesno)."""
    limit: int | None = None
    """Use the first N base stimuli (None: all)."""
    batch_size: int = 8
    """Rows per batched forward."""
    recipe: str | None = None
    """``paper`` or ``robust`` (interventions/RECIPES.md); None: ``paper`` for the paper's
    presets, else ``robust``."""

    def __post_init__(self):
        if self.recipe is not None and self.recipe not in RECIPES:
            raise InterventionError(f"The 'recipe' parameter of AblateConfig must be one of "
                                    f"{RECIPES}. Got {self.recipe!r} instead.")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise InterventionError(f"The 'limit' parameter of AblateConfig must be an int >= 1 "
                                    f"or None. Got {self.limit!r} instead.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InterventionError(f"The 'batch_size' parameter of AblateConfig must be an int "
                                    f">= 1. Got {self.batch_size!r} instead.")


@dataclass
class References:
    """Reference runs of one stimulus: its isolated twins (by base ``mask_id``) and the blank."""

    iso: dict[int, Prepared]
    blank: Prepared
    blank_acts: dict[str, torch.Tensor]

    @property
    def by_id(self) -> dict[str, Prepared]:
        return {r.stim.id: r for r in self.iso.values()}


def blank_acts(adapter, ds, prompt, stim=None, *, cache: dict | None = None
               ) -> tuple[Prepared, dict[str, torch.Tensor]]:
    """Prepare the blank image of ``stim`` (see :func:`~interventions.stimuli.blank_of`) and run
    it once; ``cache`` (blank id -> result) shares a dataset-wide canvas between items."""
    blank = blank_of(ds, stim)
    if cache is not None and blank.id in cache:
        return cache[blank.id]
    b = prepare(adapter, ds, blank, prompt)
    out = b, run(adapter, b.inputs, capture=[SITE], last_only=True).acts
    if cache is not None:
        cache[blank.id] = out
    return out


def references(adapter, ds, stim, prompt, blank: tuple[Prepared, dict]) -> References:
    """Prepared isolated twins of ``stim`` (asked the same prompt) plus the shared blank."""
    iso = {mid: prepare(adapter, ds, t, prompt) for mid, t in isolated_twins(ds, stim).items()}
    return References(iso=iso, blank=blank[0], blank_acts=blank[1])


def ablation_edits(p: Prepared, refs: References, pairs, *, ablate: Ablate | None = None
                   ) -> tuple[list[Edit], dict[str, SourceRun]]:
    """Edits that ablate ordering at the LM input of ``p`` following ``pairs`` (the
    ``isolated`` / ``blank`` :class:`~interventions.regions.Pairs` of
    :func:`interventions.regions.ablation_pairs`), and the sources they read."""
    ablate = ablate or Ablate()
    lay = p.layout
    by_id = refs.by_id
    edits, sources = [], {}
    for pr in pairs:
        if pr.source_kind == "isolated":
            ref = by_id[pr.source_id]
            name = f"iso:{pr.source_id}"
            sources[name] = SourceRun(inputs=ref.inputs)
            src_lay = ref.layout
        elif pr.source_kind == "blank":
            if tuple(refs.blank.layout.grid) != tuple(lay.grid):
                raise InterventionError(f"the blank canvas has a {refs.blank.layout.grid} token "
                                        f"grid but {p.stim.id} has {lay.grid}; use one image size")
            name = "blank"
            sources[name] = SourceRun(acts=refs.blank_acts)
            src_lay = refs.blank.layout
        else:
            continue
        if len(pr.clean) == 0:
            continue
        edits.append(Edit(site=SITE, intervention=ablate,
                          tokens=lay.image_positions[pr.clean].tolist(), source=name,
                          source_tokens=src_lay.image_positions[pr.source].tolist()))
    return edits, sources


def vocab_top1(tokenizer, logits: torch.Tensor) -> str:
    """The top-1 token over the whole vocabulary, decoded and normalised to lower-case
    alphanumerics (the paper's E1 / E5 / E6 answer check)."""
    import re

    tok = int(torch.as_tensor(logits).float().argmax(-1))
    return re.sub(r"[^0-9a-z]", "", tokenizer.decode([tok]).lower())


def run_e5(adapter, ds, config: AblateConfig = AblateConfig(), *, progress: bool = True,
           regions: list | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """E5: accuracy with the vision ordering ablated at the LM input, vs chance 1/3.

    The recipe decides the regions (``paper``: layout cells; ``robust``: mask coverage, see
    :mod:`interventions.regions`) and the score (``paper``: the top-1 token over the whole
    vocabulary must be the answer; ``robust``: argmax over the answer options).

    Parameters
    ----------
    regions
        When a list, each item's ``regions.parquet`` rows (a DataFrame) are appended to it.

    Returns
    -------
    (table, summary)
        One row per stimulus (baseline and ablated prediction and probabilities); the summary
        holds accuracies, chance, forward counts, the recipe and the items that could not run.
    """
    from tqdm.auto import tqdm

    recipe = resolve(config.recipe, ds)
    rcp = get_recipe(recipe)
    items = base_items(ds, limit=config.limit)
    counter = ForwardCounter()
    blanks: dict = {}
    rows, skipped = [], []
    for stim in tqdm(items, desc="E5 ablate", disable=not progress, dynamic_ncols=True):
        prompt = pick_prompt(stim, config.prompt)
        p = prepare(adapter, ds, stim, prompt)
        try:
            pairs = ablation_pairs(ds, stim, p.layout.grid, recipe)
        except RegionError as e:
            skipped.append({"item": stim.id, "reason": str(e)})
            continue
        n_blank = len(blanks)
        blank = blank_acts(adapter, ds, prompt, stim, cache=blanks)
        counter.forwards += len(blanks) - n_blank
        refs = references(adapter, ds, stim, prompt, blank)
        edits, sources = ablation_edits(p, refs, pairs)
        res = sweep(adapter, p.inputs, [edits], sources=sources, batch_size=config.batch_size)
        counter.add(res.counter)
        if regions is not None:
            regions.append(pairs_frame(stim.id, pairs))
        opts = list(prompt.options) or slot_colors(stim)
        ids = option_ids(adapter.tokenizer, opts)
        pb = option_probs(res.base_logits, ids, normalize=True)
        pa = option_probs(res.row_logits[0], ids, normalize=True)
        ans = opts.index(prompt.answer)
        ref = reference_option(stim, prompt, opts)
        top_b = vocab_top1(adapter.tokenizer, res.base_logits)
        top_a = vocab_top1(adapter.tokenizer, res.row_logits[0])
        truth = vocab_top1_answer(prompt.answer)
        if rcp.e5_metric == "vocab_top1":
            base_ok, abl_ok = top_b == truth, top_a == truth
        else:
            base_ok, abl_ok = bool(pb.argmax() == ans), bool(pa.argmax() == ans)
        rows.append({"item": stim.id, "relation": stim.relation, "axis": stim.axis,
                     "task": stim.task, "answer": prompt.answer,
                     "base_pred": opts[int(pb.argmax())], "ablated_pred": opts[int(pa.argmax())],
                     "base_top1": top_b, "ablated_top1": top_a,
                     "base_p_answer": float(pb[ans]), "ablated_p_answer": float(pa[ans]),
                     "base_correct": bool(base_ok), "ablated_correct": bool(abl_ok),
                     "n_options": len(opts), "reference": ref})
    if not rows:
        why = skipped[0]["reason"] if skipped else "no items"
        raise InterventionError(f"E5: no item could run under recipe {recipe!r}; first "
                                f"reason: {why}")
    table = pd.DataFrame(rows)
    summary = {
        "experiment": "E5", "recipe": recipe, "metric": rcp.e5_metric,
        "n_items": len(table),
        "base_accuracy": float(table["base_correct"].mean()),
        "ablated_accuracy": float(table["ablated_correct"].mean()),
        "chance": float((1.0 / table["n_options"]).mean()),
        "by_relation": table.groupby("relation")["ablated_correct"].mean().to_dict(),
        "excluding_reference": reference_diagnostics(table),
        "forwards": counter.forwards, "naive_forwards": counter.naive_forwards,
        "n_skipped": len(skipped), "skipped": skipped,
        "config": {**asdict(config), "recipe": recipe}, "recipe_definition": describe(recipe),
    }
    return table, summary


def reference_option(stim, prompt, options) -> str | None:
    """The option that names the prompt's reference entity (``red`` in "... left of the red
    square is"), or None when the prompt has no reference span or it names no target."""
    span = (prompt.spans or {}).get("reference")
    if not span:
        return None
    text = prompt.text[span[0]:span[1]].strip().lower()
    labels = slot_colors(stim)
    for ent, label in zip(stim.targets, labels):
        names = {str(n).lower() for n in (ent.name, f"{ent.color} {ent.kind}") if n}
        if text in names and label in options:
            return label
    return None


def reference_diagnostics(table: pd.DataFrame) -> dict[str, Any]:
    """How the ablated forced choice (``ablated_pred``, argmax over the options) splits between
    the reference and the other options.

    Returns ``n`` (items whose reference is known), ``reference_rate`` (share of them whose
    ablated choice is the reference), and over the ``n_other`` items whose choice is not the
    reference: ``accuracy`` (choice = answer), ``chance`` (mean 1/(options - 1)) and
    ``p_value`` (two-sided exact binomial test of the accuracy against that chance). All None
    when no item has a known reference.
    """
    from scipy.stats import binomtest

    out: dict[str, Any] = {"n": 0, "reference_rate": None, "n_other": 0, "accuracy": None,
                           "chance": None, "p_value": None}
    if "reference" not in table:
        return out
    known = table[table["reference"].notna()]
    if known.empty:
        return out
    picks_ref = known["ablated_pred"] == known["reference"]
    other = known[~picks_ref]
    out.update(n=int(len(known)), reference_rate=float(picks_ref.mean()), n_other=int(len(other)))
    if len(other):
        k = int((other["ablated_pred"] == other["answer"]).sum())
        chance = float((1.0 / (other["n_options"] - 1).clip(lower=1)).mean())
        out.update(accuracy=k / len(other), chance=chance,
                   p_value=float(binomtest(k, len(other), chance).pvalue))
    return out


def vocab_top1_answer(answer: str) -> str:
    """An answer normalised the way :func:`vocab_top1` normalises predictions."""
    import re

    return re.sub(r"[^0-9a-z]", "", str(answer).lower())

