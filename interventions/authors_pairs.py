"""The authors' E4 / E6 pairs: random triples drawn from their candidate pool, rendered at the
dataset's geometry, kept only when the model answers them right.

The authors do not run E4 (criss-cross patching) and E6 (criss-cross under the ordering
ablation) on a fixed item set. Their ``build_cf_pairs.py`` scripts
(``criss_cross_patching/build_cf_pairs.py`` for E4, ``criss_cross_wo_ve_oi/build_cf_pairs.py``
for E6, GitHub ``Nix07/spatial-variable-binding`` at 4b1f70d8) draw candidates from a pool and
keep those the model answers right:

- one ``random.Random(seed)`` (seed 0) for the whole run; directions in the order left, right,
  above, below; per direction draw ``rng.sample(pool, 3)`` until ``target`` (50) candidates
  are kept or ``max_attempts`` (2000) draws were made; a triple already drawn for this direction
  is skipped (it still counts as an attempt);
- a triple ``(t0, t1, t2)`` is a (clean, counterfactual) pair: the clean image shows
  ``(t0, t1, t2)`` in slot order for left/above and ``(t2, t1, t0)`` for right/below (so the
  answer is always ``t0``), the counterfactual shows the clean image reversed along the axis
  (answer ``t2``), both asked the same question (``criss_cross_patching/src/data.py``,
  ``build_vl_prompts``);
- the pool (``candidate_pool``): Squares, the colour names of ``COLOR_RGB`` minus White (Red,
  Green, Blue, Black, Brown, Gray, Orange) whose Capitalised spelling the tokenizer keeps as one
  token; Shapes, the six fixed (shape, colour) entities (no token check); Objects, the object
  names that are one token in lower and Capitalised form;
- E4 keeps a candidate when the top-1 token is the answer on both runs (``passes_filter``); E6
  when the *ablated* runs are both right (``_ablated_passes``).

Because the rng is shared across directions, which triples a direction gets depends on how many
draws the earlier directions needed, i.e. on the model: the pairs cannot be a fixed preset. The
published ``cf_pairs/squares.json`` of both scripts show it: Qwen2-VL-7B's E4 pairs are the first
distinct draws of ``random.Random(0).sample`` over the six colours (Orange is two tokens for its
tokenizer) except where the model was wrong, and its E6 directions hold 50, 26, 6 and 13 pairs.

This module draws the candidates (:func:`collect`), builds the pool (:func:`authors_pool`) and
renders the pairs with the dataset's own flat generator (:class:`AuthorsData`, an in-memory
dataset with the clean image, its criss-cross twin, isolated twins and the blank canvas).
"""
from __future__ import annotations

import copy
import dataclasses
import random
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InterventionError

#: The authors' Squares pool before the token check: ``COLOR_RGB`` minus White, in its order.
AUTHORS_SQUARES = ("red", "green", "blue", "black", "brown", "gray", "orange")
#: Directions in the order the authors' builders walk them.
AUTHORS_DIRECTIONS = ("left", "right", "above", "below")
#: ``--target`` and ``--max-attempts-per-direction`` of the authors' builders.
AUTHORS_TARGET = 50
AUTHORS_MAX_ATTEMPTS = 2000
AUTHORS_SEED = 0


def clean_order(triple: Sequence, direction: str) -> tuple:
    """The clean image's slot order (first = leftmost / topmost) of a candidate: ``triple`` for
    left/above, reversed for right/below, so the answer is always ``triple[0]``."""
    t = tuple(triple)
    return t if direction in ("left", "above") else t[::-1]


def collect(pool: Sequence, directions: Sequence[str],
            keep: Callable[[str, int, tuple], bool], *, target: int = AUTHORS_TARGET,
            max_attempts: int = AUTHORS_MAX_ATTEMPTS, seed: int = AUTHORS_SEED
            ) -> dict[str, dict[str, Any]]:
    """Draw the authors' candidates and keep those ``keep(direction, attempt, triple)`` accepts.

    Returns ``{direction: {"kept": [triple, ...], "attempts": n}}``; ``attempt`` counts draws
    within the direction from 1, repeats included (the authors' ``attempts``).
    """
    if len(pool) < 3:
        raise InterventionError(f"the authors' pairs need at least 3 candidates in the pool; "
                                f"it holds {list(pool)}")
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    for d in directions:
        seen: set = set()
        kept: list[tuple] = []
        attempts = 0
        while len(kept) < target and attempts < max_attempts:
            attempts += 1
            cand = tuple(rng.sample(list(pool), 3))
            if cand in seen:
                continue
            seen.add(cand)
            if keep(d, attempts, cand):
                kept.append(cand)
        out[d] = {"kept": kept, "attempts": attempts}
    return out


def _one_token(tokenizer, word: str) -> bool:
    return len(tokenizer.tokenize(word)) == 1


def authors_pool(task: str, items: Sequence[str], tokenizer) -> list[str]:
    """The authors' candidate pool (``candidate_pool``) as our item names: Squares, the seven
    colours whose Capitalised name is one token; Shapes, ``items`` (the six fixed entities);
    Objects, ``items`` that are one token in lower and Capitalised form."""
    if task == "squares":
        return [c for c in AUTHORS_SQUARES if _one_token(tokenizer, c.capitalize())]
    if task == "shapes":
        return list(items)
    return [n for n in items if _one_token(tokenizer, n) and _one_token(tokenizer, n.capitalize())]


def authors_name(task: str, item: str, color: str = ""):
    """An entity as the authors' ``cf_pairs`` JSON writes it: ``"Red"`` (Squares),
    ``["Square", "Red"]`` (Shapes), the object name (Objects)."""
    if task == "squares":
        return item.capitalize()
    if task == "shapes":
        return [item.capitalize(), color.capitalize()]
    return item


class AuthorsData:
    """An in-memory dataset holding the authors' candidate pairs, rendered by the dataset's own
    flat generator (same geometry, palette and prompts) with the authors' pool as its items.

    It has what the experiments read from a dataset (``config``, ``root``, ``stimuli``,
    ``base``, ``twins``, ``image``, ``mask``); :meth:`render` adds one candidate (the clean image,
    its criss-cross twin and, for E6, its isolated twins), :meth:`forget` drops it again.
    """

    def __init__(self, ds, tokenizer, *, isolated: bool = False):
        from scenegen.config import GenerateConfig
        from scenegen.flat import FlatGenerator

        cfg = copy.deepcopy(getattr(ds, "config", None) or {})
        if cfg.get("generator") != "flat":
            raise InterventionError("the authors' E4/E6 pairs are rendered with the flat "
                                    "generator; give a flat dataset (spatialbind generate "
                                    "--preset squares-qwen2-vl ...) or pass pairs='dataset'")
        flat = cfg["flat"]
        self.task = flat.get("task", "squares")
        if self.task == "squares":
            flat["colors"] = list(AUTHORS_SQUARES)
        flat["layout"] = "centred"
        flat["jitter"] = 0
        flat.pop("triples", None)  # the authors draw from their whole pool, whatever the dataset
        twins = ("crisscross", "isolated", "blank") if isolated else ("crisscross",)
        g = GenerateConfig.from_dict({**cfg, "n": None, "twins": [], "degradations": []})
        self.gen = FlatGenerator(g.flat, seed=g.seed, twins=twins)
        self.pool = authors_pool(self.task, self.gen.items, tokenizer)
        self.config = getattr(ds, "config", None)
        self.root = f"the authors' pairs at the geometry of {getattr(ds, 'root', 'the dataset')}"
        self._index = {key: i for i, key in enumerate(self.gen.enumeration)}
        self._rendered: dict[str, Any] = {}
        self._twins: dict[str, list] = {}
        self.stimuli: list = []
        if isolated:
            for r in self.gen.extras():  # the blank canvas
                self._add(r)
        dirs = tuple(self.gen.config.directions)
        self.directions = tuple(d for d in AUTHORS_DIRECTIONS if d in dirs)

    def name(self, item: str):
        """``item`` as the authors' JSON writes it."""
        return authors_name(self.task, item, self.gen._attrs(item)[1])

    def _add(self, r) -> None:
        s = r.stimulus
        self._rendered[s.id] = r
        self.stimuli.append(s)
        if s.counterfactual_of is not None:
            self._twins.setdefault(s.counterfactual_of, []).append(s)

    def render(self, direction: str, attempt: int, triple: Sequence[str]):
        """Add candidate ``triple`` drawn at ``attempt`` for ``direction``; returns the clean
        stimulus (id ``authors-<direction>-<attempt>``; its twins ``...-cc``, ``...-iso<k>``)."""
        slots = clean_order(triple, direction)
        key = (slots, direction)
        if key not in self._index:
            raise InterventionError(f"the generator cannot render {list(slots)} asked "
                                    f"{direction!r}")
        sid = f"authors-{direction}-{attempt:04d}"
        old = None
        for r in self.gen.unit(self._index[key]):
            s = r.stimulus
            old = old or s.scene_id
            new_id = sid + s.id[len(old):]
            s = dataclasses.replace(
                s, id=new_id, file_name=f"images/{new_id}.png",
                mask_file_name=f"masks/{new_id}.png", scene_id=sid,
                counterfactual_of=None if s.counterfactual_of is None else sid,
                index=attempt, factors={**s.factors, "authors_triple": list(triple),
                                        "authors_attempt": attempt})
            self._add(dataclasses.replace(r, stimulus=s))
        return self._rendered[sid].stimulus

    def forget(self, stim) -> None:
        """Drop a candidate and its twins (keeps memory flat over thousands of draws)."""
        gone = {stim.id, *(t.id for t in self._twins.pop(stim.id, []))}
        for i in gone:
            self._rendered.pop(i, None)
        self.stimuli = [s for s in self.stimuli if s.id not in gone]

    # -- the dataset methods the experiments use
    def base(self) -> list:
        return [s for s in self.stimuli
                if s.counterfactual_of is None and s.counterfactual_kind is None]

    def twins(self, stim_id: str, kind: str | None = None) -> list:
        return [s for s in self._twins.get(stim_id, [])
                if kind is None or s.counterfactual_kind == kind]

    def image(self, stim) -> np.ndarray:
        sid = stim if isinstance(stim, str) else stim.id
        return self._rendered[sid].image

    def pil_image(self, stim):
        from PIL import Image

        return Image.fromarray(self.image(stim))

    def mask(self, stim) -> np.ndarray:
        sid = stim if isinstance(stim, str) else stim.id
        return np.asarray(self._rendered[sid].mask).astype(np.int32)


__all__ = ["AUTHORS_DIRECTIONS", "AUTHORS_MAX_ATTEMPTS", "AUTHORS_SEED", "AUTHORS_SQUARES",
           "AUTHORS_TARGET", "AuthorsData", "authors_name", "authors_pool", "clean_order",
           "collect"]
