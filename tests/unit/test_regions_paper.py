"""The ``paper`` recipe's E4/E5 token pairs equal the authors' for all 480 items of the paper's
Squares and Shapes presets at Qwen2-VL and Gemma-3 geometry.

The oracle below is written from the published facts only, not from our code:
- geometry (paper Table 4 / the authors' GEOMETRY.md): Qwen2-VL 12x12 tokens, objects 2x2,
  spacing 2; Gemma-3 16x16, 3x3, spacing 3;
- the authors' centred three-entity layout: cross = (N - S) // 2, first slot along the axis at
  (N - (3S + 2sp)) // 2, slot k at first + k (S + sp); an object region is its S x S block,
  row-major;
- the authors' fixed strips (criss_cross_patching/src/regions.py): Qwen (4, 4, 4), Gemma
  (5, 6, 5), tiled from column / row 0; clean A+B takes the counterfactual's B+A in index order
  (so Gemma's strip pairs are shifted by 11 columns / rows, Qwen's by 8);
- the Table 5 ablation (behavioral_analysis_wo_ve_oi/src/hook.py): each entity slot <- the
  middle-slot block of the entity's isolated reference, in index order; every other token <-
  the same token of the all-white image.
"""
import numpy as np
import pandas as pd
import pytest

from interventions.regions import regions_table
from scenegen.dataset import Dataset
from scenegen.generate import build_generator
from scenegen.presets import preset_config

FACTS = {  # model: (N, S, spacing, strip widths, strip shift)
    "qwen2-vl": (12, 2, 2, (4, 4, 4), 8),
    "gemma-3": (16, 3, 3, (5, 6, 5), 11),
}


def _dataset(name):
    cfg = preset_config(name)
    gen = build_generator(cfg)
    stims = [r.stimulus for i in range(len(gen)) for r in gen.unit(i)]
    stims += [r.stimulus for r in gen.extras()]
    return Dataset(root=f"<memory:{name}>", stimuli=stims, config=cfg.to_dict(), config_hash="")


def _block(N, r0, c0, S):
    return [(r0 + i) * N + (c0 + j) for i in range(S) for j in range(S)]


def _slots(N, S, sp, axis):
    cross = (N - S) // 2
    first = (N - (3 * S + 2 * sp)) // 2
    out = []
    for k in range(3):
        along = first + k * (S + sp)
        out.append(_block(N, cross, along, S) if axis == "horizontal" else _block(N, along, cross, S))
    return out


def _strips(N, widths, axis):
    edges = np.cumsum((0,) + widths)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        if axis == "horizontal":
            out.append([r * N + c for r in range(N) for c in range(a, b)])
        else:
            out.append([r * N + c for r in range(a, b) for c in range(N)])
    return out


def _authors_e4(N, S, sp, widths, axis):
    slots = _slots(N, S, sp, axis)
    strips = _strips(N, widths, axis)
    rows = []
    for region, (A, B) in (("object", (slots[0], slots[2])), ("strip", (strips[0], strips[2]))):
        for c, s in zip(A + B, B + A):
            rows.append((region, c, s, "counterfactual"))
    return rows


def _authors_e5(N, S, sp, axis):
    slots = _slots(N, S, sp, axis)
    middle = _slots(N, S, sp, "horizontal")[1]  # the isolated reference's middle slot
    rows = []
    for slot in slots:
        rows += [("object", c, s, "isolated") for c, s in zip(slot, middle)]
    occupied = set().union(*map(set, slots))
    rows += [("background", k, k, "blank") for k in range(N * N) if k not in occupied]
    return rows


def _rows(df):
    return sorted(df[["region", "clean_token", "source_token", "source"]]
                  .itertuples(index=False, name=None))


@pytest.mark.parametrize("task", ["squares", "shapes"])
@pytest.mark.parametrize("model", ["qwen2-vl", "gemma-3"])
def test_paper_regions_equal_the_authors_for_every_item(task, model):
    N, S, sp, widths, shift = FACTS[model]
    ds = _dataset(f"{task}-{model}")
    base = [s for s in ds.base() if s.entities]
    assert len(base) == 480
    e4, skipped4 = regions_table(ds, (N, N), "e4", "paper")
    e5, skipped5 = regions_table(ds, (N, N), "e5", "paper")
    assert skipped4 == [] and skipped5 == []  # no Shapes item skipped (the Qwen star included)
    assert list(e4.columns) == ["id", "region", "clean_token", "source_token", "source"]
    assert e4["id"].nunique() == 480 and e5["id"].nunique() == 480
    g4, g5 = dict(tuple(e4.groupby("id"))), dict(tuple(e5.groupby("id")))
    for stim in base:
        assert _rows(g4[stim.id]) == sorted(_authors_e4(N, S, sp, widths, stim.axis)), stim.id
        assert _rows(g5[stim.id]) == sorted(_authors_e5(N, S, sp, stim.axis)), stim.id
    # the published shift of the strip pairs (Gemma 11, Qwen 8), in index order
    strip = e4[(e4["region"] == "strip") & (e4["id"] == base[0].id)]
    step = N if base[0].axis == "vertical" else 1
    half = len(strip) // 2
    assert ((strip["source_token"].to_numpy()[:half] - strip["clean_token"].to_numpy()[:half])
            == shift * step).all()


def test_strip_widths_follow_the_authors_table():
    from interventions.regions import strip_widths

    # the authors' _STRIP_LAYOUT: qwen2vl (4, 4, 4), gemma3 (5, 6, 5), pixtral (5, 5, 5)
    assert strip_widths(12, 2, 2) == (4, 4, 4)
    assert strip_widths(16, 3, 3) == (5, 6, 5)
    assert strip_widths(15, 2, 2) == (5, 5, 5)
