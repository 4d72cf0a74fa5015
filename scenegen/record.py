"""The one stimulus record shared by every generator and importer.

A :class:`Stimulus` is what a line of ``metadata.jsonl`` (and a row of ``manifest.parquet``) holds:
labels only. Pixels live beside it on disk (``images/``, ``masks/``, ``depth/``); in memory a
generator returns a :class:`Rendered`, i.e. the record plus its arrays.

Conventions
-----------
- Boxes are ``[x0, y0, x1, y1]`` in image pixels, half-open (``x1``/``y1`` exclusive).
- Centroids are ``[x, y]`` in pixels (mean of the mask's pixel centres, ``x + 0.5``).
- ``mask_id`` 0 is background; entities are numbered from 1 in the instance mask.
- ``ordinal`` is the target's slot along ``axis``: 0 = leftmost / topmost / nearest to the camera.
  Distractors have ``ordinal`` None.
- Prompt ``spans`` are character offsets ``[start, end)`` into ``text`` for the text roles
  (``subject``, ``reference``, ``relation``), so any tokenizer can map them to tokens.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

AXES = ("horizontal", "vertical", "depth")
RELATIONS = {
    "left": "horizontal", "right": "horizontal",
    "above": "vertical", "below": "vertical",
    "front": "depth", "behind": "depth",
}
COUNTERFACTUAL_KINDS = ("swap", "crisscross", "isolated", "blank")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class Entity:
    """One object in a stimulus."""

    mask_id: int
    """Pixel value of this entity in the instance mask (>= 1)."""
    role: Literal["target", "distractor"]
    ordinal: int | None
    """Slot along the stimulus axis (0 = leftmost / topmost / nearest); None for distractors."""
    kind: str
    """Shape name: ``square``, ``circle``, ``cube``, ``sphere`` ... ."""
    color: str
    rgb: tuple[int, int, int]
    box: tuple[int, int, int, int]
    """``[x0, y0, x1, y1]`` pixel box of the visible mask, half-open."""
    centroid: tuple[float, float] | None
    """``[x, y]`` mean pixel centre of the visible mask (None when fully hidden)."""
    area: int
    """Visible mask pixels."""
    material: str | None = None
    size: float | None = None
    """Generator units: tokens per side for ``flat``, world units for ``scene3d``."""
    position_3d: tuple[float, float, float] | None = None
    """World position (x right, y up, z towards the camera) for 3D scenes."""
    name: str | None = None
    """Words used for this entity in prompts (e.g. ``red square``)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """One question about a stimulus, with its answer."""

    kind: Literal["completion", "yesno", "choice"]
    text: str
    answer: str
    options: tuple[str, ...] = ()
    """Candidate answers (colours, 'yes'/'no', or captions for multiple choice)."""
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Character spans of text roles in ``text``: subject, reference, relation."""
    system: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True, kw_only=True)
class Stimulus:
    """Labels of one image: everything except the pixels."""

    id: str
    file_name: str
    mask_file_name: str
    width: int
    height: int
    generator: str
    """``flat``, ``scene3d`` or an importer name such as ``whatsup``."""
    task: str
    """``squares``, ``shapes``, ``scene3d``, ``whatsup`` ... ."""
    relation: str | None
    axis: str | None
    entities: tuple[Entity, ...]
    prompts: tuple[Prompt, ...] = ()
    depth_file_name: str | None = None
    counterfactual_of: str | None = None
    """Id of the base stimulus this one is a twin of; None for base stimuli."""
    counterfactual_kind: str | None = None
    """``swap``, ``crisscross``, ``isolated`` (single entity) or ``blank``."""
    isolates: int | None = None
    """For ``isolated`` twins: the base entity's ``mask_id`` shown alone here."""
    scene_id: str = ""
    """Id shared by a base stimulus and all its twins (for grouped splits)."""
    index: int = 0
    """Position in the generation order (stable across worker counts)."""
    split: str = "train"
    factors: dict[str, Any] = field(default_factory=dict)
    """Scene factors: layout, background, colour set, camera jitter, grid ... ."""
    degradation: dict[str, Any] | None = None
    """``{"kind": ..., "strength": ...}`` when a degradation was applied."""

    @property
    def targets(self) -> list[Entity]:
        return sorted((e for e in self.entities if e.role == "target"), key=lambda e: e.ordinal)

    def to_dict(self) -> dict[str, Any]:
        d = _plain(dataclasses.asdict(self))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Stimulus":
        d = dict(d)
        d["entities"] = tuple(Entity(**_tuplify(e, Entity)) for e in d.get("entities") or ())
        d["prompts"] = tuple(Prompt(**_tuplify(p, Prompt)) for p in d.get("prompts") or ())
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        for k in extra:  # columns added by other tools (e.g. datasets' 'image') are ignored
            d.pop(k)
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class Rendered:
    """A stimulus with its pixels, as a generator returns it."""

    stimulus: Stimulus
    image: np.ndarray
    """``(H, W, 3)`` uint8 RGB."""
    mask: np.ndarray
    """``(H, W)`` uint8 (or uint16) instance ids, 0 = background."""
    depth: np.ndarray | None = None
    """``(H, W)`` float32 metres from the camera; 0 where nothing was hit."""


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _tuplify(d: dict, cls) -> dict:
    out = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if k not in names:
            continue
        if isinstance(v, list):
            v = tuple(v)
        if k == "spans" and isinstance(v, dict):
            v = {kk: tuple(vv) for kk, vv in v.items() if vv is not None}
        out[k] = v
    return out


def entity_from_mask(mask: np.ndarray, mask_id: int, **attrs) -> Entity:
    """Build an :class:`Entity` whose box, centroid and area are measured on ``mask``."""
    ys, xs = np.nonzero(mask == mask_id)
    if len(xs) == 0:
        box, centroid, area = (0, 0, 0, 0), None, 0
    else:
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        centroid = (float(xs.mean() + 0.5), float(ys.mean() + 0.5))
        area = int(len(xs))
    return Entity(mask_id=mask_id, box=box, centroid=centroid, area=area, **attrs)


def prompt_spans(text: str, parts: dict[str, str], order) -> dict[str, tuple[int, int]]:
    """Character spans ``[start, end)`` of ``parts[role]`` in ``text``, found left to right in
    ``order`` (so a word that occurs twice is matched at the occurrence its role refers to)."""
    spans, pos = {}, 0
    for role in order:
        i = text.index(parts[role], pos)
        spans[role] = (i, i + len(parts[role]))
        pos = i + len(parts[role])
    return spans


def dumps(stim: Stimulus) -> str:
    """One ``metadata.jsonl`` line (stable key order, so outputs are byte-identical)."""
    return json.dumps(stim.to_dict(), sort_keys=False, separators=(",", ":"), allow_nan=False)
