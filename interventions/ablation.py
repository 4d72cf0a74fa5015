"""E5: ablate the vision encoder's ordering information at the LM input, and the edits E6 reuses.

At ``lm.resid.0`` (the projector output as the LM receives it) every image token is replaced:

- each entity's tokens <- the same entity's tokens from its ``isolated`` twin (the entity alone,
  centred), paired by the entity's relative cell offsets (translation between the two object
  anchors), which keeps identity and erases position;
- every other image token (the full grid, background and strips) <- the same cell of the
  dataset's ``blank`` canvas (the authors' notebook used a 12x12 range and under-ablated Gemma).

If ordering came only from the vision tokens, accuracy would drop to chance (1/3).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import InterventionError
from .hooks import Ablate, run
from .layout import map_region
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

    def __post_init__(self):
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


def _entity_key(e) -> tuple:
    return (e.kind, e.color, tuple(e.rgb))


def ablation_edits(p: Prepared, refs: References, *, base_stim=None, tag: str = "",
                   ablate: Ablate | None = None) -> tuple[list[Edit], dict[str, SourceRun],
                                                          np.ndarray]:
    """Edits that ablate ordering at the LM input of ``p``, and the sources they read.

    ``base_stim`` is the stimulus whose isolated twins ``refs`` holds, when ``p`` is another
    stimulus showing the same entities (E6's criss-cross partner): entities are matched by
    (kind, colour, rgb).

    Returns
    -------
    (edits, sources, entity_cells)
        ``entity_cells`` are the image-token indices of ``p`` filled from isolated twins.
    """
    ablate = ablate or Ablate()
    base_stim = base_stim or p.stim
    by_key = {_entity_key(e): e.mask_id for e in base_stim.entities}
    edits, sources = [], {}
    lay = p.layout
    filled = []
    for e in p.stim.entities:
        if e.role != "target" or e.ordinal is None:
            continue
        mid = by_key.get(_entity_key(e))
        if mid is None or mid not in refs.iso:
            raise InterventionError(f"no isolated twin shows entity {e.name or e.color!r} of "
                                    f"stimulus {p.stim.id}; regenerate with isolated twins")
        ref = refs.iso[mid]
        if len(lay.cells(f"object:{e.ordinal}")) == 0 or len(ref.layout.cells("object")) == 0:
            continue  # too small to own a token here or there: its cells take the blank's
        bc, sc = map_region(lay, f"object:{e.ordinal}", lay.anchor(e.ordinal),
                            ref.layout, "object", ref.layout.rc(ref.layout.cells("object")).min(0))
        if len(bc) == 0:
            continue
        name = f"iso{tag}:{mid}"
        sources[name] = SourceRun(inputs=ref.inputs)
        edits.append(Edit(site=SITE, intervention=ablate, tokens=lay.image_positions[bc].tolist(),
                          source=name, source_tokens=ref.layout.image_positions[sc].tolist()))
        filled.append(bc)
    filled_cells = np.unique(np.concatenate(filled)) if filled else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(lay.n_image), filled_cells)
    if tuple(refs.blank.layout.grid) != tuple(lay.grid):
        raise InterventionError(f"the blank canvas has a {refs.blank.layout.grid} token grid but "
                                f"{p.stim.id} has {lay.grid}; use one image size")
    sources["blank"] = SourceRun(acts=refs.blank_acts)
    edits.append(Edit(site=SITE, intervention=ablate, tokens=lay.image_positions[rest].tolist(),
                      source="blank",
                      source_tokens=refs.blank.layout.image_positions[rest].tolist()))
    return edits, sources, filled_cells


def run_e5(adapter, ds, config: AblateConfig = AblateConfig(), *, progress: bool = True
           ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """E5: accuracy with the vision ordering ablated at the LM input, vs chance 1/3.

    Returns
    -------
    (table, summary)
        One row per stimulus (baseline and ablated prediction and probabilities); the summary
        holds accuracies, chance and forward counts.
    """
    from tqdm.auto import tqdm

    items = base_items(ds, limit=config.limit)
    counter = ForwardCounter()
    blanks: dict = {}
    rows = []
    for stim in tqdm(items, desc="E5 ablate", disable=not progress, dynamic_ncols=True):
        prompt = pick_prompt(stim, config.prompt)
        n_blank = len(blanks)
        blank = blank_acts(adapter, ds, prompt, stim, cache=blanks)
        counter.forwards += len(blanks) - n_blank
        p = prepare(adapter, ds, stim, prompt)
        refs = references(adapter, ds, stim, prompt, blank)
        edits, sources, _ = ablation_edits(p, refs)
        res = sweep(adapter, p.inputs, [edits], sources=sources, batch_size=config.batch_size)
        counter.add(res.counter)
        opts = list(prompt.options) or slot_colors(stim)
        ids = option_ids(adapter.tokenizer, opts)
        pb = option_probs(res.base_logits, ids, normalize=True)
        pa = option_probs(res.row_logits[0], ids, normalize=True)
        ans = opts.index(prompt.answer)
        rows.append({"item": stim.id, "relation": stim.relation, "axis": stim.axis,
                     "task": stim.task, "answer": prompt.answer,
                     "base_pred": opts[int(pb.argmax())], "ablated_pred": opts[int(pa.argmax())],
                     "base_p_answer": float(pb[ans]), "ablated_p_answer": float(pa[ans]),
                     "base_correct": bool(pb.argmax() == ans),
                     "ablated_correct": bool(pa.argmax() == ans), "n_options": len(opts)})
    table = pd.DataFrame(rows)
    summary = {
        "experiment": "E5", "n_items": len(table),
        "base_accuracy": float(table["base_correct"].mean()),
        "ablated_accuracy": float(table["ablated_correct"].mean()),
        "chance": float((1.0 / table["n_options"]).mean()),
        "by_relation": table.groupby("relation")["ablated_correct"].mean().to_dict(),
        "forwards": counter.forwards, "naive_forwards": counter.naive_forwards,
        "config": asdict(config),
    }
    return table, summary


def ablate_to_dir(model: str, data: str, out: str, config: AblateConfig, *,
                  progress: bool = True) -> dict:
    """``spatialbind ablate``: run E5 and write table, summary, config and plot into ``out``."""
    from scenegen import read_dataset

    from . import plots
    from .results import check_out, write_results
    from .stimuli import load_model

    out_dir = check_out(out)  # made when the results are written
    ds = read_dataset(data)
    adapter = load_model(model)
    table, summary = run_e5(adapter, ds, config, progress=progress)
    write_results(out_dir, "e5", table, summary, config=asdict(config), model=model, data=data)
    plots.ablation_plot(summary, out_dir / "e5_accuracy.png")
    return summary
