"""Named generate configs: the paper's flat stimuli per model, and a default 3D scene set.

``spatialbind generate --preset NAME`` resolves NAME here. Flat presets without ``--n`` give the
paper's full enumeration (120 ordered triples x 4 directions = 480 base stimuli, each with its
swap / criss-cross / isolated twins, plus one blank canvas).
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


PRESETS: dict[str, dict[str, Any]] = {
    "squares-qwen2-vl": _flat("squares", "qwen2-vl"),
    "squares-gemma-3": _flat("squares", "gemma-3"),
    "shapes-qwen2-vl": _flat("shapes", "qwen2-vl"),
    "shapes-gemma-3": _flat("shapes", "gemma-3"),
    # Pixtral-12B: the authors' 15x15 tokens of 16 px (240 px), Orange for Brown
    "squares-pixtral": _flat("squares", "pixtral"),
    "shapes-pixtral": _flat("shapes", "pixtral"),
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
