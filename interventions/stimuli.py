"""Glue between a scenegen dataset, a ``vlms`` adapter and the intervention engine: prepare one
stimulus (inputs + :class:`~interventions.layout.TokenLayout`), find its partners, and turn answer
words into token ids.

Experiments take an *adapter* (``vlms.load_adapter(name)``) and a dataset
(``scenegen.read_dataset(dir)``); everything model-specific goes through the adapter's
``prepare`` and site map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InterventionError
from .layout import TokenLayout, roles_from_mask


def image_roles(stim, mask, grid):
    """Image-token roles from ``vlms.roles`` (imported lazily: torch-free until needed)."""
    from vlms.roles import image_roles as _roles

    return _roles(stim, mask, grid)


@dataclass
class Prepared:
    """One stimulus ready to run: model inputs, token layout, the prompt asked and its answer."""

    stim: Any
    prompt: Any
    inputs: dict[str, Any]
    layout: TokenLayout

    @property
    def answer(self) -> str:
        return self.prompt.answer


def load_model(name: str, *, dtype: str | None = None, device: str | None = None):
    """Load a ``vlms`` adapter by name, hub id or directory (trust_remote_code is never used)."""
    from vlms.registry import load_adapter

    return load_adapter(name, dtype=dtype, device=device)


def pick_prompt(stim, kind: str = "completion"):
    """The stimulus's first prompt of ``kind``."""
    for p in stim.prompts:
        if p.kind == kind:
            return p
    kinds = sorted({p.kind for p in stim.prompts})
    raise InterventionError(f"stimulus {stim.id} has no {kind!r} prompt (it has {kinds}); "
                            "pick another --prompt kind or regenerate with that prompt kind")


def prepare(adapter, ds, stim, prompt, *, image: np.ndarray | None = None) -> Prepared:
    """Inputs and token layout of ``stim`` asked ``prompt`` (``image`` overrides the pixels)."""
    img = ds.image(stim) if image is None else image
    batch = adapter.prepare([img], [prompt])
    grid = tuple(batch.grids[0])
    mask = ds.mask(stim)
    roles = image_roles(stim, mask, grid)  # the store's role vocabulary
    _, band = roles_from_mask(mask, stim, grid)  # the paper's tiled strips
    layout = TokenLayout(seq_len=batch.seq_len, image_positions=np.asarray(batch.image_positions[0]),
                         grid=grid, role=np.asarray(roles.role), ordinal=np.asarray(roles.slot),
                         axis=stim.axis or "horizontal", band=band)
    return Prepared(stim=stim, prompt=prompt, inputs=batch.inputs, layout=layout)


def twin(ds, stim, kind: str):
    """The twin of ``stim`` of ``kind`` (``swap``, ``crisscross``); error if the dataset has none."""
    found = ds.twins(stim.id, kind)
    if not found:
        raise InterventionError(f"stimulus {stim.id} has no {kind!r} twin in {ds.root}; "
                                f"regenerate the dataset with twins including {kind!r}")
    return found[0]


def isolated_twins(ds, stim) -> dict[int, Any]:
    """``mask_id -> isolated twin`` of every target entity of ``stim`` (distractors need none)."""
    out = {t.isolates: t for t in ds.twins(stim.id, "isolated") if t.isolates is not None}
    missing = [e.mask_id for e in stim.entities if e.role == "target" and e.mask_id not in out]
    if missing:
        raise InterventionError(f"stimulus {stim.id} lacks isolated twins for entities "
                                f"{missing}; regenerate the dataset with the 'isolated' twin kind")
    return out


def blank_of(ds, stim=None):
    """The blank image for ``stim``: its own ``blank`` twin (3D scenes: the empty scene) if it
    has one, else the dataset's blank canvas (the flat generator's ``blank`` extra)."""
    if stim is not None:
        own = ds.twins(stim.id, "blank")
        if own:
            return own[0]
    for s in ds.stimuli:
        if s.counterfactual_kind == "blank":
            return s
    raise InterventionError(f"{ds.root} has no blank canvas; regenerate with the 'blank' twin "
                            "kind (scenegen adds it as a dataset extra)")


def base_items(ds, *, limit: int | None = None, split: str | None = None,
               axis: str | None = None) -> list:
    """Base stimuli (not twins, not the blank), optionally one split / axis, first ``limit``."""
    items = [s for s in ds.base() if s.counterfactual_kind is None and s.entities]
    if split is not None:
        items = [s for s in items if s.split == split]
    if axis is not None:
        items = [s for s in items if s.axis == axis]
    if not items:
        raise InterventionError(f"{ds.root} has no base stimuli"
                                + (f" in split {split!r}" if split else "")
                                + (f" on axis {axis!r}" if axis else ""))
    return items[:limit] if limit else items


def option_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """First token id of each spelling of each word (the variants of
    :func:`vlms.scoring.option_token_ids`: case and leading space, as the evaluation scores them),
    minus ids shared by two words (:func:`vlms.scoring.distinct_option_ids`: they cannot tell
    the words apart and would tie them).

    Raises
    ------
    InterventionError
        When a word keeps no first token of its own (its logits cannot score it).
    """
    from vlms.scoring import distinct_option_ids

    out = distinct_option_ids(tokenizer, words)
    for w, ids in zip(words, out):
        if not ids:
            raise InterventionError(f"option {w!r} shares every first token with another of "
                                    f"{list(words)}; final-position logits cannot tell them "
                                    "apart: use other option words (e.g. other colours)")
    return out


#: Tasks whose answer is the object's name, not its colour (Objects, stitched What'sUp).
NAME_ANSWER_TASKS = ("objects", "whatsup-stitched")


def slot_colors(stim) -> list[str]:
    """Answer words of the targets in slot order (0 = leftmost / topmost): their colours, or
    their names for tasks that ask for the object (:data:`NAME_ANSWER_TASKS`)."""
    if getattr(stim, "task", None) in NAME_ANSWER_TASKS:
        return [e.name or e.kind for e in stim.targets]
    return [e.color for e in stim.targets]
