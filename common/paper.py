"""Facts of the paper's stimuli that several packages need, declared once (imports nothing of ours).

``GEOMETRY``: the flat-stimulus grids of the paper's presets (Qwen2-VL 12x12 tokens of 28 px,
objects 2x2 tokens, spacing 2; Gemma-3 16x16 of 56 px, 3x3, spacing 3; Pixtral 15x15 of 16 px,
2x2, spacing 2).
:func:`is_paper_config` tells whether a dataset's resolved generator config (its ``config.json``)
was made like the paper's presets, which decides the default recipe (``paper`` vs ``robust``).
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["GEOMETRY", "is_paper_config"]

GEOMETRY: dict[str, dict[str, int]] = {
    "qwen2-vl": {"num_tokens": 12, "token_px": 28, "size": 2, "spacing": 2},
    "gemma-3": {"num_tokens": 16, "token_px": 56, "size": 3, "spacing": 3},
    # the authors' code's Pixtral grid (15x15 tokens of 16 px = 240 px; see scenegen/presets.py)
    "pixtral": {"num_tokens": 15, "token_px": 16, "size": 2, "spacing": 2},
}


def is_paper_config(cfg: Mapping[str, Any] | None, geometries=None) -> bool:
    """True when ``cfg`` (a dataset's resolved config) is the flat generator with the centred
    layout at one of the paper's geometries (``geometries``, default :data:`GEOMETRY`)."""
    cfg = cfg or {}
    if cfg.get("generator") != "flat":
        return False
    flat = cfg.get("flat") or {}
    if flat.get("layout", "centred") != "centred":
        return False
    grid = {k: (flat.get("grid") or {}).get(k) for k in ("num_tokens", "token_px", "size",
                                                          "spacing")}
    return any(grid == g for g in (geometries or GEOMETRY).values())
