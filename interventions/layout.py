"""Where things are in one prepared input: image-token grid, per-token roles, token selectors and
region-to-region token maps (criss-cross, isolated-entity references).

A :class:`TokenLayout` is built from the per-token labels the adapters compute (the store's role
vocabulary: ``object``/``strip``/``distractor``/``background`` for image tokens with the target's
ordinal slot, ``last`` for the final prompt token) or, as a fallback, from the stimulus mask
mapped onto the token grid (:func:`layout_from_mask`). Selectors resolve against it:

====================  =====================================================================
``object``            all target-entity tokens; ``object:1`` only the entity in slot 1
``strip``             the row/column band of a target, object tokens included (``strip:k``); the
                      store's ``strip`` role: the rows/columns the object's tokens span
``band``              the paper's strips: the grid tiled along the axis at the midpoints between
                      neighbouring targets (strip width = size + spacing), objects included
``image``             every image token
``background``        image tokens outside every entity
``last``              the final prompt token
``pos:3,4,9``         explicit sequence positions
====================  =====================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InterventionError

SELECTOR_KINDS = ("object", "strip", "band", "image", "background", "distractor", "last", "pos")


@dataclass(frozen=True, kw_only=True)
class TokenLayout:
    """Token geometry and roles of one prepared input.

    Image-token index ``k`` (row-major over ``grid``) sits at sequence position
    ``image_positions[k]``.
    """

    seq_len: int
    image_positions: np.ndarray
    """Sequence positions of the image tokens, row-major over the grid."""
    grid: tuple[int, int]
    """(rows, cols) of the LM image-token grid."""
    role: np.ndarray
    """Per image token: ``object``, ``strip``, ``distractor`` or ``background``."""
    ordinal: np.ndarray
    """Per image token: the target slot of its object / strip (-1 for none)."""
    axis: str = "horizontal"
    """Axis the targets are laid out along (decides what a strip is)."""
    band: np.ndarray | None = None
    """Per image token: the slot of the paper-style tiled strip it lies in (-1: none); None =
    same as ``strip``."""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.grid[0] * self.grid[1]
        if len(self.image_positions) != n:
            raise InterventionError(f"layout has {len(self.image_positions)} image tokens but a "
                                    f"{self.grid[0]}x{self.grid[1]} grid; the adapter's grid and "
                                    "the input's image-token count disagree")
        if len(self.role) != n or len(self.ordinal) != n:
            raise InterventionError("layout role/ordinal arrays must have one entry per image token")

    @property
    def last(self) -> int:
        return self.seq_len - 1

    @property
    def n_image(self) -> int:
        return len(self.image_positions)

    def ordinals(self) -> list[int]:
        return sorted({int(o) for o, r in zip(self.ordinal, self.role) if r == "object"})

    def cells(self, selector: str) -> np.ndarray:
        """Image-token indices (row-major grid cells) that ``selector`` picks, sorted."""
        kind, _, arg = selector.partition(":")
        if kind not in SELECTOR_KINDS:
            raise InterventionError(f"unknown token selector {selector!r}; use one of "
                                    f"{', '.join(SELECTOR_KINDS)} (object:1 = slot 1 only)")
        if kind in ("last", "pos"):
            raise InterventionError(f"selector {selector!r} picks text positions, not image cells")
        k = np.arange(self.n_image)
        if kind == "image":
            return k
        if kind == "band" and self.band is not None:
            sel = self.band >= 0
            if arg:
                return k[sel & (self.band == self._ordinal_arg(selector, arg))]
            return k[sel]
        if kind in ("strip", "band"):
            # the band of a target: its own tokens and the background in its row/column band
            sel = np.isin(self.role, ("object", "strip"))
        else:
            sel = self.role == kind
        if arg:
            sel &= self.ordinal == self._ordinal_arg(selector, arg)
        return k[sel]

    @staticmethod
    def _ordinal_arg(selector: str, arg: str) -> int:
        try:
            return int(arg)
        except ValueError:
            raise InterventionError(f"selector {selector!r}: the ordinal after ':' must be an "
                                    "integer (0 = leftmost / topmost)") from None

    def positions(self, selector: str) -> np.ndarray:
        """Sequence positions that ``selector`` picks."""
        kind, _, arg = selector.partition(":")
        if kind == "last":
            return np.array([self.last])
        if kind == "pos":
            try:
                pos = np.array([int(x) for x in arg.split(",") if x.strip()])
            except ValueError:
                raise InterventionError(f"selector {selector!r}: give positions as pos:3,4,9") \
                    from None
            if len(pos) == 0 or pos.min() < -self.seq_len or pos.max() >= self.seq_len:
                raise InterventionError(f"selector {selector!r}: positions must lie in "
                                        f"[0, {self.seq_len}) for this {self.seq_len}-token input")
            return pos % self.seq_len
        return self.image_positions[self.cells(selector)]

    def rc(self, cells: np.ndarray) -> np.ndarray:
        """(row, col) of grid cells, ``N x 2``."""
        cells = np.asarray(cells)
        return np.stack([cells // self.grid[1], cells % self.grid[1]], 1)

    def anchor(self, ordinal: int) -> np.ndarray:
        """(row, col) of the top-left object token of the target in slot ``ordinal``."""
        cells = self.cells(f"object:{ordinal}")
        if len(cells) == 0:
            raise InterventionError(f"no object tokens for slot {ordinal} in this layout (the "
                                    "entity is too small for the token grid or absent)")
        return self.rc(cells).min(0)


def map_region(base: TokenLayout, base_sel: str, base_anchor: np.ndarray,
               src: TokenLayout, src_sel: str, src_anchor: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pair the tokens of two regions by translation between their anchors.

    Base cell ``(r, c)`` in ``base_sel`` is paired with source cell
    ``(r, c) + (src_anchor - base_anchor)`` when that cell lies in ``src_sel``. Regions of equal
    shape pair completely; unequal ones (a strip clipped by the canvas edge) pair on their overlap.

    Returns
    -------
    (base_cells, src_cells)
        Aligned image-token indices.
    """
    if tuple(base.grid) != tuple(src.grid):
        raise InterventionError(f"cannot map tokens between a {base.grid} and a {src.grid} token "
                                "grid; resize stimuli to one size (e.g. 448x448 for Qwen2-VL)")
    bc = base.cells(base_sel)
    sc = set(src.cells(src_sel).tolist())
    d = np.asarray(src_anchor) - np.asarray(base_anchor)
    rows, cols = src.grid
    out_b, out_s = [], []
    for cell, (r, c) in zip(bc, base.rc(bc)):
        r2, c2 = r + d[0], c + d[1]
        if 0 <= r2 < rows and 0 <= c2 < cols and (r2 * cols + c2) in sc:
            out_b.append(int(cell))
            out_s.append(int(r2 * cols + c2))
    return np.array(out_b, dtype=int), np.array(out_s, dtype=int)


def crisscross_map(base: TokenLayout, src: TokenLayout, region: str, *, first: int = 0,
                   last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token map of the criss-cross swap: base's first-slot region <- source's last-slot region
    and base's last-slot region <- source's first-slot region.

    Returns aligned sequence positions ``(base_positions, source_positions)``.
    """
    if region not in ("object", "strip", "band"):
        raise InterventionError(f"unknown region {region!r}; use 'object', 'strip' or 'band'")
    if last is None:
        ords = base.ordinals()
        if len(ords) < 2:
            raise InterventionError("criss-cross needs at least two target entities in the base")
        last = ords[-1]
    b1, s1 = map_region(base, f"{region}:{first}", base.anchor(first),
                        src, f"{region}:{last}", src.anchor(last))
    b2, s2 = map_region(base, f"{region}:{last}", base.anchor(last),
                        src, f"{region}:{first}", src.anchor(first))
    bc, sc = np.concatenate([b1, b2]), np.concatenate([s1, s2])
    if len(bc) == 0:
        raise InterventionError(f"criss-cross over {region!r} maps no tokens: the regions do not "
                                "overlap after translation; check the twin's layout")
    return base.image_positions[bc], src.image_positions[sc]


def cell_boxes(grid: tuple[int, int], width: int, height: int) -> np.ndarray:
    """Pixel box ``[x0, y0, x1, y1]`` of every grid cell (row-major), on the original image."""
    rows, cols = grid
    xs = np.linspace(0, width, cols + 1)
    ys = np.linspace(0, height, rows + 1)
    out = [(xs[j], ys[i], xs[j + 1], ys[i + 1]) for i in range(rows) for j in range(cols)]
    return np.array(out)


def roles_from_mask(mask: np.ndarray, stimulus, grid: tuple[int, int], *,
                    cover: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell role and ordinal with the paper's tiled strips (used for the ``band`` region;
    the store's own roles come from :func:`vlms.roles.image_roles`).

    A cell is ``object`` (of the target in slot k) when at least ``cover`` of its pixels belong to
    that target, ``distractor`` likewise for distractors; remaining cells are ``strip`` when they
    fall in a target's band along the stimulus axis (bands split at midpoints between neighbouring
    targets), else ``background``.
    """
    rows, cols = grid
    h, w = mask.shape
    ent = {e.mask_id: e for e in stimulus.entities}
    role = np.full(rows * cols, "background", dtype=object)
    ordinal = np.full(rows * cols, -1, dtype=int)
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    for i in range(rows):
        for j in range(cols):
            cell = mask[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            ids, counts = np.unique(cell, return_counts=True)
            for mid, cnt in zip(ids, counts):
                if mid == 0 or mid not in ent or cnt < cover * cell.size:
                    continue
                e = ent[mid]
                k = i * cols + j
                role[k] = "object" if e.role == "target" else "distractor"
                ordinal[k] = -1 if e.ordinal is None else int(e.ordinal)
    targets = [t for t in stimulus.entities if t.role == "target" and t.ordinal is not None
               and t.centroid is not None]
    targets.sort(key=lambda t: t.ordinal)
    if targets and stimulus.axis in ("horizontal", "vertical"):
        along = 0 if stimulus.axis == "horizontal" else 1  # centroid x or y
        n_cells, size = (cols, w) if along == 0 else (rows, h)
        centres = [t.centroid[along] for t in targets]
        cuts = [(a + b) / 2 for a, b in zip(centres, centres[1:])]
        for k in range(rows * cols):
            if role[k] != "background":
                continue
            idx = (k % cols) if along == 0 else (k // cols)
            centre = (idx + 0.5) * size / n_cells
            slot = int(np.searchsorted(cuts, centre))
            role[k] = "strip"
            ordinal[k] = int(targets[slot].ordinal)
    return role.astype(str), ordinal
