"""Named generate configs: the paper's flat stimuli per model, and a default 3D scene set.

``spatialbind generate --preset NAME`` resolves NAME here. Flat presets without ``--n`` give the
paper's full enumeration (120 ordered triples x 4 directions = 480 base stimuli, each with its
swap / criss-cross / isolated twins, plus one blank canvas; Objects: P(8,3) x 4 = 1344).
"""
from __future__ import annotations

import copy
from typing import Any

from .config import GenerateConfig
from .errors import unknown
from common.paper import GEOMETRY as PAPER_GEOMETRY

#: Paper Table 4 geometry (PAPER-NOTES 1.3), declared in common.paper. Pixtral: the authors'
#: code's 15x15 tokens of 16 px (240 px), not Table 4's 16x16 of 15 px: Pixtral-12B cuts 16-px
#: patches, so a 16x16 canvas of 15-px cells (240 px) is re-tokenised by the model into 15x15
#: tokens of 16 px and the paper's cells would not line up with the model's tokens; the authors'
#: repo uses 15x15 of 16 px and calls the Table 4 entry inconsistent.
GEOMETRY: dict[str, dict[str, int]] = {k: dict(v) for k, v in PAPER_GEOMETRY.items()}

#: The authors' E4 strip widths (left, middle, right) per model, in tokens (PROTOCOLS.md; the
#: ``band`` region of ``spatialbind patch`` tiles at midpoints instead).
STRIP_WIDTHS: dict[str, tuple[int, int, int]] = {
    "qwen2-vl": (4, 4, 4), "gemma-3": (5, 6, 5), "pixtral": (5, 5, 5)}

#: Palette substitutions per model: Pixtral sees Orange (255,165,0) in place of Brown.
PALETTE_SWAPS: dict[str, dict[str, str]] = {"pixtral": {"brown": "orange"}}


def _flat(task: str, model: str) -> dict[str, Any]:
    flat: dict[str, Any] = {"task": task, "grid": dict(GEOMETRY[model])}
    swaps = PALETTE_SWAPS.get(model, {})
    if swaps and task == "squares":
        from .config import PAPER_COLORS

        flat["colors"] = [swaps.get(c, c) for c in PAPER_COLORS]
    elif swaps and task == "shapes":
        from .config import PAPER_SHAPES

        flat["shape_colors"] = {s: swaps[c] for s, c in PAPER_SHAPES if c in swaps}
    return {"generator": "flat", "seed": 0, "n": None, "flat": flat}


def _grid(k: int, model: str) -> dict[str, Any]:
    return {"generator": "flat", "seed": 0, "n": 120, "twins": [],
            "splits": {"by": "scene", "train": 0.75, "val": 0.0, "test": 0.25},
            "flat": {"task": "shapes", "layout": "grid", "grid_k": k,
                     "prompts": ["completion"], "grid": dict(GEOMETRY[model])}}


def _stitched(size: int, tokenizer: str) -> dict[str, Any]:
    return {"generator": "whatsup_stitched", "seed": 0, "n": None, "twins": ["crisscross"],
            "whatsup_stitched": {"size": size, "tokenizer": tokenizer}}


PRESETS: dict[str, dict[str, Any]] = {
    "squares-qwen2-vl": _flat("squares", "qwen2-vl"),
    "squares-gemma-3": _flat("squares", "gemma-3"),
    "shapes-qwen2-vl": _flat("shapes", "qwen2-vl"),
    "shapes-gemma-3": _flat("shapes", "gemma-3"),
    # Pixtral-12B: the authors' 15x15 tokens of 16 px (240 px), Orange for Brown
    "squares-pixtral": _flat("squares", "pixtral"),
    "shapes-pixtral": _flat("shapes", "pixtral"),
    # Objects (paper Table 1): the shipped 8 sprites (scenegen/data/objects), P(8,3) x 4 = 1344
    "objects-qwen2-vl": _flat("objects", "qwen2-vl"),
    "objects-gemma-3": _flat("objects", "gemma-3"),
    # Grid probes (paper App. C.6): random 2x2 (2 classes) and 3x3 (3 classes) grids of the
    # paper's shapes, 120 grids each (the authors use 90: 75/25 by image)
    "grid2-qwen2-vl": _grid(2, "qwen2-vl"),
    "grid3-qwen2-vl": _grid(3, "qwen2-vl"),
    "grid2-gemma-3": _grid(2, "gemma-3"),
    "grid3-gemma-3": _grid(3, "gemma-3"),
    # Stitched What'sUp (paper Table 1): needs --whatsup ROOT; side objects are filtered with the
    # model's tokenizer (--tokenizer overrides the hub id below, e.g. with a local directory)
    "whatsup-stitched-qwen2-vl": _stitched(336, "Qwen/Qwen2-VL-7B-Instruct"),
    "whatsup-stitched-gemma-3": _stitched(896, "google/gemma-3-4b-it"),
    "whatsup-stitched-pixtral": _stitched(512, "mistral-community/pixtral-12b"),
    # The 3D generator's own defaults (scenegen/scene3d.py); n=None = its default (100 scenes).
    "scene3d": {"generator": "scene3d", "seed": 0, "n": None, "scene3d": {}},
}


def preset_names() -> list[str]:
    """Names accepted by :func:`preset`."""
    return sorted(PRESETS)


def preset(name: str) -> dict[str, Any]:
    """The config dict of preset ``name`` (a copy; safe to modify).

    Raises
    ------
    ConfigError
        Unknown name, with the closest known one suggested.
    """
    if name not in PRESETS:
        raise unknown("preset", name, PRESETS, where="--preset")
    return copy.deepcopy(PRESETS[name])


def preset_config(name: str, **overrides) -> GenerateConfig:
    """:class:`GenerateConfig` of preset ``name`` with top-level ``overrides`` (e.g. n, seed)."""
    d = preset(name)
    d.update({k: v for k, v in overrides.items()})
    return GenerateConfig.from_dict(d)
