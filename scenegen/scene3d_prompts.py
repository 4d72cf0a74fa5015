"""Prompts and answers of ``scene3d`` stimuli (the flat generator's templates, with "object").

A *query* is chosen once per unit on the base scene (:func:`choose_query`): the relation, the
reference target (by name, e.g. ``red cube``), the subject of the yes/no question and the two
options of the choice question. :func:`answer_prompts` turns it into :class:`Prompt` records for
any item of the unit, answering from that item's own geometry, so a swap or criss-cross twin
keeps the base's text and gets its own answers. With 2 targets a twin may move the reference to
the end of the row; its prompts then ask the opposite relation (the only one with an answer).

Templates (``{prep}``: ``to the left of``, ``to the right of``, ``above``, ``below``,
``in front of``, ``behind``):

- completion: ``The color of the object {prep} the {reference} is `` -> a colour;
- yesno: ``Is the {subject} {prep} the {reference}? Answer yes or no.``;
- choice: ``What is the color of the object {prep} the {reference}: {a} or {b}? Answer with one
  word.``
"""
from __future__ import annotations

from typing import Any, Sequence

from . import geometry as geo
from .record import Prompt, prompt_spans

PROMPT_KINDS = ("completion", "yesno", "choice")
SYSTEM = "You are a helpful assistant. You respond in one token."
PREPOSITION = {"left": "to the left of", "right": "to the right of", "above": "above",
               "below": "below", "front": "in front of", "behind": "behind"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above",
            "front": "behind", "behind": "front"}
PAIRS = {"horizontal": ("left", "right"), "vertical": ("above", "below"),
         "depth": ("front", "behind")}



def _neighbour(slots: Sequence, ref: int, relation: str) -> int | None:
    """Index in ``slots`` of the target adjacent to ``slots[ref]`` in ``relation``'s direction."""
    k = ref - 1 if relation in ("left", "above", "front") else ref + 1
    return k if 0 <= k < len(slots) else None


def choose_query(scene, rng, kinds: Sequence[str]) -> dict[str, Any]:
    """Draw the unit's question from the base ``scene`` (targets in slot order)."""
    ts = sorted(scene.targets, key=lambda t: t.slot)
    first, second = PAIRS[scene.axis]
    relation = first if rng.integers(2) == 0 else second
    n = len(ts)
    ref = 1 if n == 3 else (1 if relation == first else 0)
    ans = _neighbour(ts, ref, relation)
    other = (2 - ans) if n == 3 else ref
    truth = bool(rng.integers(2))
    answer_first = bool(rng.integers(2))
    return {
        "kinds": tuple(kinds), "relation": relation, "reference": ts[ref].name,
        # yes/no: the true neighbour asked with the relation, or with the opposite one
        "yesno_subject": ts[ans].name,
        "yesno_relation": relation if truth else OPPOSITE[relation],
        "choice": (ts[ans].color, ts[other].color) if answer_first
        else (ts[other].color, ts[ans].color),
    }


def answer_prompts(query: dict[str, Any], targets, boxes: dict[int, geo.CamBox], axis: str,
                   ) -> tuple[tuple[Prompt, ...], str]:
    """Prompts of ``query`` answered on one item; returns ``(prompts, relation asked)``.

    Parameters
    ----------
    query
        From :func:`choose_query` on the base scene.
    targets
        The item's targets (``Placed3D``), with names.
    boxes
        Camera box of each target by ``mask_id``.
    axis
        The unit's axis.
    """
    ords = geo.ordinals([boxes[t.mask_id] for t in targets], axis)
    slots = [t for _, t in sorted(zip(ords, targets), key=lambda p: p[0])]
    by_name = {t.name: i for i, t in enumerate(slots)}
    ref = by_name[query["reference"]]
    relation = query["relation"]
    ans = _neighbour(slots, ref, relation)
    if ans is None:  # the reference moved to the end of the row: ask the other way
        relation = OPPOSITE[relation]
        ans = _neighbour(slots, ref, relation)
    prep, ref_name = PREPOSITION[relation], query["reference"]
    answer = slots[ans].color
    out = []
    for kind in query["kinds"]:
        if kind == "completion":
            text = f"The color of the object {prep} the {ref_name} is "
            out.append(Prompt(kind="completion", text=text, answer=answer,
                              options=tuple(t.color for t in slots), system=SYSTEM,
                              spans=prompt_spans(text, {"subject": "object", "relation": prep,
                                                  "reference": ref_name},
                                           ("subject", "relation", "reference"))))
        elif kind == "yesno":
            subj = query["yesno_subject"]
            yrel = query["yesno_relation"]
            if relation != query["relation"]:
                yrel = OPPOSITE[yrel]
            yprep = PREPOSITION[yrel]
            s_t = slots[by_name[subj]]
            holds = geo.relation_holds(yrel, boxes[s_t.mask_id], boxes[slots[ref].mask_id])
            text = f"Is the {subj} {yprep} the {ref_name}? Answer yes or no."
            out.append(Prompt(kind="yesno", text=text, answer="yes" if holds else "no",
                              options=("yes", "no"), system=SYSTEM,
                              spans=prompt_spans(text, {"subject": subj, "relation": yprep,
                                                  "reference": ref_name},
                                           ("subject", "relation", "reference"))))
        elif kind == "choice":
            a, b = query["choice"]
            text = (f"What is the color of the object {prep} the {ref_name}: {a} or {b}? "
                    "Answer with one word.")
            out.append(Prompt(kind="choice", text=text, answer=answer, options=(a, b),
                              system=SYSTEM,
                              spans=prompt_spans(text, {"subject": "object", "relation": prep,
                                                  "reference": ref_name},
                                           ("subject", "relation", "reference"))))
    return tuple(out), relation
