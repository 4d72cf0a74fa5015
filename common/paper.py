"""Facts of the paper's stimuli that several packages need, declared once (imports nothing of ours).

``GEOMETRY``: the flat-stimulus grids of the paper's presets (Qwen2-VL 12x12 tokens of 28 px,
objects 2x2 tokens, spacing 2; Gemma-3 16x16 of 56 px, 3x3, spacing 3; Pixtral 15x15 of 16 px,
2x2, spacing 2).
:func:`is_paper_config` tells whether a dataset's resolved generator config (its ``config.json``)
was made like the paper's presets, which decides the default recipe (``paper`` vs ``robust``).
:func:`layout_block`: an entity's layout cells (the ``size x size`` token block it was drawn in),
the paper recipe's region of a flat-stimulus entity, from its pixel box alone (interventions'
regions and the probes' E3 / E7 rows both use it).
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["GEOMETRY", "is_paper_config", "layout_block"]

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


def layout_block(box, size, image_wh: tuple[int, int], grid: tuple[int, int]) -> list[int]:
    """Row-major token indices of the ``size x size`` layout block a flat-stimulus entity was
    drawn in, found from its pixel ``box`` ``(x0, y0, x1, y1)`` (the flat generator draws every
    entity inside its block: squares fill it, shapes sit inside with a margin under one token, so
    the block's top-left cell is the one holding the box's top-left corner).

    ``image_wh`` is the image's ``(width, height)`` in pixels, ``grid`` the model's
    ``(rows, cols)`` token grid. Whatever the drawn shape covers, the block is the entity's
    region in the authors' code (a star that covers no token fully still owns its 2x2 cells).

    Raises
    ------
    ValueError
        The image does not split into the grid, or the box does not fit one block (the message
        says which).
    """
    rows, cols = (int(g) for g in grid)
    width, height = (int(v) for v in image_wh)
    if rows < 1 or cols < 1 or width % cols or height % rows:
        raise ValueError(f"a {width}x{height} image does not split into a {rows}x{cols} token "
                         "grid")
    px, py = width // cols, height // rows
    size = int(round(float(size)))
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, r0 = int(x0 // px), int(y0 // py)
    if size < 1 or x1 > (c0 + size) * px or y1 > (r0 + size) * py or c0 + size > cols \
            or r0 + size > rows or c0 < 0 or r0 < 0:
        raise ValueError(f"box {[x0, y0, x1, y1]} does not fit one {size}x{size} block of the "
                         f"{rows}x{cols} token grid")
    return sorted(r * cols + c for r in range(r0, r0 + size) for c in range(c0, c0 + size))
