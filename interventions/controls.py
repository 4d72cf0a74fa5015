"""E7 sanity controls, as the authors run them on COCO (``coco_amplification/src/common.py::
run_axis_controls``): two baseline checks (no amplification) that the two-option question is
really answered from the image.

- ``shuffled images``: each sampled item is asked its own question about *another* item's image
  (drawn among all items). A model that reads the image should fall to about chance; one that
  answers from the words alone keeps its accuracy.
- ``swapped objects``: each sampled item is asked with subject and reference exchanged ("Is the
  B left or right of the A?"). A model that reads the image should give the *opposite* answer.

Protocol (the authors'): per axis, up to ``n_per_axis`` items (60) sampled without replacement,
the question asked in the ``lr`` option order only, the prediction is the top-1 next token over
the whole vocabulary (stripped, lower-cased); an answer outside the axis's two words is
*invalid* and left out of the rate. The authors draw unseeded; here draws come from
``numpy.random.default_rng([seed, axis])``. Beside the authors' top-1 scoring the table also has
the two-option argmax (:mod:`interventions.amplification`'s scorer), which has no invalid answers.

Writes ``controls.parquet`` / ``controls.csv`` (one row per item and control) and
``controls.json`` (per axis and overall: n, valid, correct / opposite and their rates).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import InterventionError

AXES = ("horizontal", "vertical")
PAIRS = {"horizontal": ("left", "right"), "vertical": ("above", "below")}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
CONTROLS = ("shuffled images", "swapped objects")


@dataclass(frozen=True, kw_only=True, slots=True)
class ControlsConfig:
    """Options of the sanity controls (``spatialbind amplify --controls``)."""

    n_per_axis: int = 60
    """Items sampled per axis (the authors' 60)."""
    seed: int = 0
    template: str = "auto"
    """Two-option wording (see :func:`interventions.questions.resolve_template`)."""
    limit: int | None = None

    def __post_init__(self):
        if isinstance(self.n_per_axis, bool) or not isinstance(self.n_per_axis, int) \
                or self.n_per_axis < 1:
            raise InterventionError(f"--controls-n must be an int >= 1; got {self.n_per_axis!r}")


@dataclass
class _Item:
    index: int
    id: str
    axis: str
    truth: str
    subj: str
    ref: str | None
    image: Any


def control_items(data: str, config: ControlsConfig) -> list[_Item]:
    """Items of ``data`` (a dataset dir or ``whatsup:ROOT:COCO_QA_two_obj``) that the two-option
    question can ask: relation left/right/above/below with subject and reference names."""
    from .questions import _names, load_items

    out = []
    for i, it in enumerate(load_items(data, limit=config.limit)):
        st = it.stimulus
        subj, ref = _names(st)
        if st.relation not in OPPOSITE or not subj or not ref:
            continue
        axis = "horizontal" if st.relation in ("left", "right") else "vertical"
        out.append(_Item(i, st.id, axis, st.relation, subj, ref, it.load_image))
    if len(out) < 2:
        raise InterventionError(f"sanity controls need at least 2 two-object items with a "
                                f"left/right/above/below relation in {data}; found {len(out)}")
    return out


def _top1(adapter, image, text: str, options: tuple[str, str]) -> tuple[str, str]:
    """(top-1 next token over the vocabulary, stripped and lower-cased; two-option argmax)."""
    import torch

    from .stimuli import option_ids
    from .sweeps import option_scores

    batch = adapter.prepare([image], [text])
    with torch.no_grad():
        logits = adapter.model(**batch.inputs).logits[:, -1].float()
    tok = adapter.tokenizer.decode([int(logits[0].argmax())]).strip().lower()
    scores = option_scores(logits, option_ids(adapter.tokenizer, list(options)))
    return tok, options[int(np.asarray(scores)[0].argmax())]


def run_controls(adapter, items: Sequence[_Item], config: ControlsConfig = ControlsConfig(), *,
                 model_name: str = "", progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Run both controls; return the per-item table and the summary (see module docstring)."""
    from tqdm.auto import tqdm

    from .questions import resolve_template, two_option_text

    tpl = resolve_template(config.template, model_name or getattr(adapter, "name", ""))
    rows = []
    for ai, axis in enumerate(AXES):
        pool = [it for it in items if it.axis == axis]
        if not pool:
            continue
        rng = np.random.default_rng([config.seed, ai])
        n = min(config.n_per_axis, len(pool))
        picked = [pool[int(j)] for j in rng.choice(len(pool), n, replace=False)]
        a, b = PAIRS[axis]
        for it in tqdm(picked, desc=f"E7 controls {axis}", disable=not progress,
                       dynamic_ncols=True):
            others = [o for o in items if o.id != it.id]
            other = others[int(rng.integers(len(others)))]
            for control, img, subj, ref, want, src in (
                    ("shuffled images", other.image, it.subj, it.ref, it.truth, other.id),
                    ("swapped objects", it.image, it.ref, it.subj, OPPOSITE[it.truth], it.id)):
                text = two_option_text(subj, ref, a, b, tpl)
                top1, two = _top1(adapter, img(), text, (a, b))
                valid = top1 in (a, b)
                rows.append({"item": it.id, "axis": axis, "control": control,
                             "image_of": src, "prompt": text, "truth": it.truth,
                             "expected": want, "top1": top1, "valid": valid,
                             "hit": valid and top1 == want, "two_option": two,
                             "two_option_hit": two == want})
    table = pd.DataFrame(rows)
    return table, summarize_controls(table, config)


def summarize_controls(table: pd.DataFrame, config: ControlsConfig) -> dict[str, Any]:
    """Per control and axis (and overall): the authors' ``hit/valid`` (shuffled: answered the
    truth; swapped: answered the opposite) and the two-option rate."""
    out: dict[str, Any] = {"experiment": "E7 sanity controls", "n_per_axis": config.n_per_axis,
                           "seed": config.seed, "rows": []}
    expect = {"shuffled images": "near chance (0.5) if the answer comes from the image",
              "swapped objects": "near 1 (the answer flips) if the answer comes from the image"}
    for control in CONTROLS:
        for axis in (*AXES, "all"):
            t = table[table["control"] == control]
            if axis != "all":
                t = t[t["axis"] == axis]
            if not len(t):
                continue
            valid, hit = int(t["valid"].sum()), int(t["hit"].sum())
            out["rows"].append({
                "control": control, "axis": axis, "n": int(len(t)), "valid": valid,
                "hit": hit, "rate": hit / valid if valid else None,
                "two_option_rate": float(t["two_option_hit"].mean()),
                "measures": "answered the truth" if control == "shuffled images"
                else "answered the opposite", "expected": expect[control]})
    return out


def controls_to_dir(adapter, data: str, out: str | Path, config: ControlsConfig, *,
                    progress: bool = True) -> dict[str, Any]:
    """Run the controls on ``data`` and write ``controls.{parquet,csv,json}`` under ``out``."""
    import json

    items = control_items(data, config)
    table, summary = run_controls(adapter, items, config, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "controls.parquet", index=False)
    table.to_csv(out / "controls.csv", index=False)
    (out / "controls.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def control_lines(summary: dict | None) -> list[str]:
    """One printed line per control (all axes), for the CLI beside the probe / random rows."""
    if not summary:
        return []
    out = []
    for r in summary["rows"]:
        if r["axis"] != "all":
            continue
        rate = "n/a" if r["rate"] is None else f"{r['rate']:.3f}"
        out.append(f"control | {r['control']}: {r['measures']} {r['hit']}/{r['valid']} valid "
                   f"({rate}; {r['n']} asked, two-option {r['two_option_rate']:.3f}); "
                   f"expected {r['expected']}")
    return out
