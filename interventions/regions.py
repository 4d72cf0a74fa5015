"""Which image tokens an experiment patches, and from where: the token pairs of E4, E5 and E6,
computed from stimulus records and a token grid alone (no model), so anyone can check them.

A :class:`Pairs` says "clean image-token ``clean[i]`` takes the source's image-token
``source[i]``" for one named region; tokens are image-token indices, row-major over the model's
``rows x cols`` grid. :func:`experiment_pairs` gives every pair one item of an experiment uses
under a recipe, and :func:`regions_table` the ``regions.parquet`` table each patching / ablation
experiment folder holds (columns ``id``, ``region``, ``clean_token``, ``source_token``,
``source``).

Recipes (see RECIPES.md):

- ``paper`` (the authors' code): an entity of a flat stimulus is its layout cells
  (``size x size`` tokens at its slot, whatever the drawn shape covers); E4's ``strip`` is the
  grid tiled into three fixed strips along the axis (:func:`strip_widths`); clean regions A+B
  (first, last slot) take the source's B+A, paired in index order (row-major within each region).
  E5: each entity's cells <- its isolated twin's cells in index order (the twin shows the entity
  alone at the middle slot), every other cell <- the same cell of the blank canvas.
- ``robust`` (spatialbind's own): entities are the tokens their mask covers for at least half;
  ``strip`` is the rows/columns the object's own tokens span; regions pair by translation between
  object anchors (``band`` = strips tiled at midpoints between neighbouring targets).

Stimuli without layout cells (3D scenes, imported photos) use ``coverage`` in both recipes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InterventionError
from .layout import TokenLayout, crisscross_map, map_region, roles_from_mask

#: ``regions.parquet`` columns, in order.
COLUMNS = ("id", "region", "clean_token", "source_token", "source")
#: values of the ``source`` column
SOURCES = ("counterfactual", "isolated", "blank")


class RegionError(InterventionError):
    """This item has no well-defined region under the recipe (counted and listed, not fatal)."""


@dataclass(frozen=True)
class Pairs:
    """One region's token pairs: clean image-token ``clean[i]`` <- ``source[i]`` of the source
    image ``source_id`` (a ``source`` kind of :data:`SOURCES`)."""

    region: str
    clean: np.ndarray
    source: np.ndarray
    source_kind: str
    source_id: str
    run: str = "clean"
    """Whose tokens ``clean`` indexes: ``clean`` or ``counterfactual`` (E6 also ablates the
    counterfactual run)."""


# --------------------------------------------------------------------------- geometry
def strip_widths(num_tokens: int, size: int, spacing: int) -> tuple[int, int, int]:
    """The authors' (first, middle, last) strip widths for an ``num_tokens`` grid: the outer
    strips are ``(N - (size + spacing)) // 2`` wide and equal (their swap pairs tokens 1:1), the
    middle strip takes the rest. Gives Qwen2-VL (12; 2, 2) -> (4, 4, 4), Gemma-3 (16; 3, 3) ->
    (5, 6, 5), Pixtral (15; 2, 2) -> (5, 5, 5), the authors' table."""
    outer = (num_tokens - (size + spacing)) // 2
    if outer < 1:
        raise RegionError(f"a {num_tokens}-token grid has no room for three strips of objects "
                          f"of {size} tokens spaced {spacing}")
    return outer, num_tokens - 2 * outer, outer


def tiled_strips(grid: tuple[int, int], axis: str, widths: tuple[int, int, int]
                 ) -> list[np.ndarray]:
    """Row-major cells of the three strips (first, middle, last) tiled along ``axis``."""
    rows, cols = grid
    n_along = cols if axis == "horizontal" else rows
    if sum(widths) != n_along:
        raise RegionError(f"strip widths {widths} do not tile {n_along} tokens")
    k = np.arange(rows * cols)
    along = k % cols if axis == "horizontal" else k // cols
    edges = np.cumsum((0,) + tuple(widths))
    return [k[(along >= a) & (along < b)] for a, b in zip(edges[:-1], edges[1:])]


def _flat_geometry(stim) -> dict | None:
    f = stim.factors or {}
    if stim.generator != "flat" or "grid" not in f:
        return None
    return f


def layout_cells(stim, entity, grid: tuple[int, int]) -> np.ndarray:
    """Row-major cells of ``entity``'s ``size x size`` layout block in a flat stimulus.

    The block is found from the entity's pixel box (the flat generator draws every entity inside
    its block: squares fill it, shapes sit inside with a margin under one token), so twins that
    move the entity (swap, isolated) need no extra metadata.

    Raises
    ------
    RegionError
        Not a flat stimulus, or its token cells do not coincide with the model's grid.
    """
    if _flat_geometry(stim) is None or entity.size is None:
        raise RegionError(f"{stim.id} has no layout cells (not a flat stimulus)")
    rows, cols = grid
    if stim.width % cols or stim.height % rows:
        raise RegionError(f"{stim.id}: a {stim.width}x{stim.height} image does not split into "
                          f"the model's {rows}x{cols} token grid")
    ng = int((stim.factors.get("grid") or {}).get("num_tokens", cols))
    if (ng, ng) != (rows, cols):
        raise RegionError(f"{stim.id} was generated on a {ng}x{ng} token grid but the model "
                          f"has {rows}x{cols}; generate with the model's preset")
    if entity.centroid is None:
        raise RegionError(f"{stim.id}: entity {entity.mask_id} is not visible")
    from common.paper import layout_block

    try:
        return np.asarray(layout_block(entity.box, entity.size, (stim.width, stim.height),
                                       (rows, cols)), dtype=int)
    except ValueError as e:
        raise RegionError(f"{stim.id}: entity {entity.mask_id}: {e}") from None


def mask_layout(ds, stim, grid: tuple[int, int], *, mask: np.ndarray | None = None
                ) -> TokenLayout:
    """The coverage layout of ``stim`` on ``grid`` with ``image_positions`` = image-token
    indices (what :func:`interventions.stimuli.prepare` builds, without a model)."""
    from vlms.roles import image_roles

    mask = ds.mask(stim) if mask is None else mask
    roles = image_roles(stim, mask, grid)
    _, band = roles_from_mask(mask, stim, grid)
    n = grid[0] * grid[1]
    return TokenLayout(seq_len=n, image_positions=np.arange(n), grid=tuple(grid),
                       role=np.asarray(roles.role), ordinal=np.asarray(roles.slot),
                       axis=stim.axis or "horizontal", band=band)


def cell_layout(layout: TokenLayout) -> TokenLayout:
    """``layout`` with ``image_positions`` = image-token indices (so maps return cells)."""
    n = layout.n_image
    return dataclasses.replace(layout, image_positions=np.arange(n), seq_len=max(n, 1))


def uses_layout(stim, recipe: str) -> bool:
    """Whether ``stim``'s regions are layout cells under ``recipe`` (else mask coverage)."""
    return recipe == "paper" and _flat_geometry(stim) is not None


# --------------------------------------------------------------------------- per experiment
def _target(stim, ordinal):
    for e in stim.targets:
        if e.ordinal == ordinal:
            return e
    raise RegionError(f"{stim.id} has no target in slot {ordinal}")


def crisscross_pairs(ds, stim, cf, grid, recipe: str, region: str, *, layouts=None
                     ) -> Pairs:
    """E4/E6 criss-cross: clean's first-slot region A and last-slot region B take the
    counterfactual's B and A."""
    ords = sorted(e.ordinal for e in stim.targets)
    if len(ords) < 2:
        raise RegionError(f"criss-cross needs two targets; {stim.id} has {len(ords)}")
    first, last = ords[0], ords[-1]
    if uses_layout(stim, recipe) and uses_layout(cf, recipe):
        if region == "object":
            a = layout_cells(stim, _target(stim, first), grid)
            b = layout_cells(stim, _target(stim, last), grid)
            sa = layout_cells(cf, _target(cf, first), grid)
            sb = layout_cells(cf, _target(cf, last), grid)
        elif region == "strip":
            lay = (stim.factors or {}).get("layout") or {}
            if lay.get("mode", "centred") != "centred":
                raise RegionError(f"{stim.id}: the paper's fixed strips are defined for the "
                                  "centred layout only (this one is random)")
            w = strip_widths(grid[1] if stim.axis == "horizontal" else grid[0],
                             int(lay["size"]), int(lay["spacing"]))
            strips = tiled_strips(grid, stim.axis, w)
            a, b = strips[0], strips[-1]
            sa, sb = a, b
        else:
            raise RegionError(f"region {region!r} is not part of the paper recipe (object, "
                              "strip); run it with --recipe robust")
        if len(a) != len(sb) or len(b) != len(sa):
            raise RegionError(f"{stim.id}: regions A and B differ in size ({len(a)} vs "
                              f"{len(b)} tokens); index-order pairing needs equal regions")
        clean = np.concatenate([a, b])
        src = np.concatenate([sb, sa])
    else:
        base_l, cf_l = (cell_layout(layouts[0]), cell_layout(layouts[1])) \
            if layouts is not None else (mask_layout(ds, stim, grid), mask_layout(ds, cf, grid))
        try:
            clean, src = crisscross_map(base_l, cf_l, region)
        except InterventionError as e:
            raise RegionError(str(e)) from None
    return Pairs(region=region, clean=np.asarray(clean, int), source=np.asarray(src, int),
                 source_kind="counterfactual", source_id=cf.id)


def _key(e) -> tuple:
    return (e.kind, e.color, tuple(e.rgb))


def ablation_pairs(ds, shown, grid, recipe: str, *, base=None, region_prefix: str = "",
                   run: str = "clean", layout: TokenLayout | None = None) -> list[Pairs]:
    """E5's ablation of ``shown``: each target's tokens <- its isolated twin's (twins of
    ``base``, default ``shown``; entities matched by kind, colour and rgb), every other token <-
    the same token of the blank canvas."""
    from .stimuli import blank_of, isolated_twins

    base = base or shown
    iso = isolated_twins(ds, base)
    by_key = {_key(e): e.mask_id for e in base.entities}
    n = grid[0] * grid[1]
    out, filled = [], []
    paper = uses_layout(shown, recipe)
    lay = None if paper else (layout if layout is not None else mask_layout(ds, shown, grid))
    for e in shown.targets:
        mid = by_key.get(_key(e))
        if mid is None or mid not in iso:
            raise RegionError(f"no isolated twin shows entity {e.name or e.color!r} of "
                              f"{shown.id}; regenerate with isolated twins")
        twin = iso[mid]
        if paper and uses_layout(twin, recipe):
            te = next(t for t in twin.entities if t.mask_id == mid)
            bc = layout_cells(shown, e, grid)
            sc = layout_cells(twin, te, grid)
            if len(bc) != len(sc):
                raise RegionError(f"{shown.id}: entity {e.mask_id} has {len(bc)} cells but its "
                                  f"isolated twin {len(sc)}")
        else:
            if lay is None:
                lay = mask_layout(ds, shown, grid)
            tl = mask_layout(ds, twin, grid)
            if len(lay.cells(f"object:{e.ordinal}")) == 0 or len(tl.cells("object")) == 0:
                continue  # too small to own a token: its cells take the blank's
            bc, sc = map_region(lay, f"object:{e.ordinal}", lay.anchor(e.ordinal),
                                tl, "object", tl.rc(tl.cells("object")).min(0))
            if len(bc) == 0:
                continue
        out.append(Pairs(region=f"{region_prefix}object", clean=np.asarray(bc, int),
                         source=np.asarray(sc, int), source_kind="isolated", source_id=twin.id,
                         run=run))
        filled.append(np.asarray(bc, int))
    done = np.unique(np.concatenate(filled)) if filled else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(n), done)
    blank = blank_of(ds, base)
    out.append(Pairs(region=f"{region_prefix}background", clean=rest, source=rest,
                     source_kind="blank", source_id=blank.id, run=run))
    return out


def experiment_pairs(ds, stim, grid, experiment: str, recipe: str,
                     regions: tuple[str, ...] = ("object", "strip")) -> list[Pairs]:
    """Every token pair item ``stim`` uses in ``experiment`` (``e4``, ``e5``, ``e6``).

    Raises
    ------
    RegionError
        The item cannot run under this recipe (the reason says why).
    """
    from .stimuli import twin

    if experiment == "e4":
        cf = twin(ds, stim, "crisscross")
        lays = None if uses_layout(stim, recipe) else (mask_layout(ds, stim, grid),
                                                      mask_layout(ds, cf, grid))
        return [crisscross_pairs(ds, stim, cf, grid, recipe, r, layouts=lays) for r in regions]
    if experiment == "e5":
        return ablation_pairs(ds, stim, grid, recipe)
    if experiment == "e6":
        cf = twin(ds, stim, "crisscross")
        out = [crisscross_pairs(ds, stim, cf, grid, recipe, "object")]
        out += ablation_pairs(ds, stim, grid, recipe, region_prefix="ablation:")
        out += ablation_pairs(ds, cf, grid, recipe, base=stim, region_prefix="cf-ablation:",
                              run="counterfactual")
        return out
    raise InterventionError(f"experiment {experiment!r} patches no image-token regions; "
                            "regions exist for e4, e5, e6")


def pairs_frame(stim_id: str, pairs: list[Pairs]) -> pd.DataFrame:
    """``regions.parquet`` rows of one item."""
    return _frame([stim_id], [pairs])


def _frame(ids: list[str], all_pairs: list[list[Pairs]]) -> pd.DataFrame:
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for sid, pairs in zip(ids, all_pairs):
        for p in pairs:
            n = len(p.clean)
            cols["id"].append(np.full(n, sid, dtype=object))
            cols["region"].append(np.full(n, p.region, dtype=object))
            cols["clean_token"].append(np.asarray(p.clean, np.int64))
            cols["source_token"].append(np.asarray(p.source, np.int64))
            cols["source"].append(np.full(n, p.source_kind, dtype=object))
    if not cols["id"]:
        return empty_frame()
    return pd.DataFrame({c: np.concatenate(v) for c, v in cols.items()})


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({"id": pd.Series(dtype=str), "region": pd.Series(dtype=str),
                         "clean_token": pd.Series(dtype="int64"),
                         "source_token": pd.Series(dtype="int64"),
                         "source": pd.Series(dtype=str)})


def regions_table(ds, grid: tuple[int, int], experiment: str, recipe: str, *,
                  regions: tuple[str, ...] = ("object", "strip"), limit: int | None = None
                  ) -> tuple[pd.DataFrame, list[dict]]:
    """``regions.parquet`` of ``experiment`` over the dataset's base items, without a model.

    Returns
    -------
    (table, skipped)
        ``skipped``: ``{"item", "reason"}`` of every item that cannot run under the recipe.
    """
    from .stimuli import base_items

    ids, all_pairs, skipped = [], [], []
    for stim in base_items(ds, limit=limit):
        try:
            all_pairs.append(experiment_pairs(ds, stim, grid, experiment, recipe, regions))
            ids.append(stim.id)
        except RegionError as e:
            skipped.append({"item": stim.id, "reason": str(e)})
    return _frame(ids, all_pairs), skipped
