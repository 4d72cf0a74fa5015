"""E3 and E7 under the ``paper`` recipe take an entity's tokens from its layout cells, never from
a mask-coverage cut: on Shapes, a star or triangle covers few (the Qwen star: no) tokens by at
least half, yet the authors' region is its whole ``size x size`` block.

The store here is written through the real writer with the roles extraction computes (mask
coverage, ``vlms.roles.image_roles``) and activations that name their own token: hidden unit
``t`` is 1 on image token ``t`` and the last unit holds the sample's index. So every probe row
says exactly which (sample, tokens) it was made of. The oracle cells are written from the
published facts only (paper Table 4 / the authors' GEOMETRY.md and layout code, as in
test_regions_paper.py): Qwen2-VL 12x12 tokens, objects 2x2, spacing 2, centred layout, slot k of
a base item at ``first + k (S + sp)`` along its axis, ``cross = (N - S) // 2`` across it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

N, S, SP = 12, 2, 2  # Qwen2-VL: 12x12 tokens, objects 2x2, spacing 2


def _oracle_cells(axis: str, slot: int) -> set[int]:
    cross = (N - S) // 2
    along = (N - (3 * S + 2 * SP)) // 2 + slot * (S + SP)
    r0, c0 = (cross, along) if axis == "horizontal" else (along, cross)
    return {(r0 + i) * N + (c0 + j) for i in range(S) for j in range(S)}


@pytest.fixture(scope="module")
def shapes_store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("layout"), n=16)


def write_store(root, *, n: int, preset: str = "shapes-qwen2-vl"):
    """A dataset of ``n`` base items (with twins) and its store of token-naming activations."""
    from actstore import ROLE_CODES, SiteSpec, StoreWriter
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.extract import samples_frame
    from vlms.roles import image_roles

    data = root / "shapes"
    generate(preset_config(preset, n=n), data, progress=False)
    ds = read_dataset(data)
    stims = [s for s in ds.stimuli if s.entities]
    samples = samples_frame(stims, [None] * len(stims))
    n_tok, hidden = N * N, N * N + 1
    spec = SiteSpec(name="projector", n_tokens=n_tok, hidden=hidden, dtype="float32")
    w = StoreWriter.open_or_create(
        root / "store.zarr", model="m", samples=samples, sites=[spec], batch_size=8,
        provenance={"model_id": "m", "revision": "0", "adapter": "synthetic",
                    "dtype": "float32", "data_hash": "x", "extract": {"data": str(data)}})
    acts = np.zeros((len(stims), 1, n_tok, hidden), np.float32)
    acts[:, 0, np.arange(n_tok), np.arange(n_tok)] = 1.0
    acts[:, 0, :, -1] = np.arange(len(stims))[:, None]
    lab = {k: np.zeros((len(stims), n_tok), dt) for k, dt in
           (("role", np.int8), ("entity", np.int16), ("ordinal", np.int8))}
    rc = np.divmod(np.arange(n_tok), N)
    covered = {}
    for i, s in enumerate(stims):
        r = image_roles(s, ds.mask(s), (N, N))
        lab["role"][i] = [ROLE_CODES[x] for x in r.role]
        lab["entity"][i], lab["ordinal"][i] = r.entity, r.slot
        covered[s.id] = {int(e): set(np.nonzero((r.role == "object") & (r.entity == e))[0])
                         for e in np.unique(r.entity[r.role == "object"])}
    for idx in w.batches():
        w.write(idx, {"projector": acts[idx]},
                {"projector": {**{k: v[idx] for k, v in lab.items()},
                               "row": np.tile(rc[0], (len(idx), 1)).astype(np.int16),
                               "col": np.tile(rc[1], (len(idx), 1)).astype(np.int16)}})
    w.close()
    return root / "store.zarr", data, ds, stims, covered


def _base(stims):
    return [s for s in stims if not s.counterfactual_of]


def test_coverage_misses_cells_of_thin_shapes(shapes_store):
    """The premise: on these items the store's ``object`` role (coverage) is not the layout
    block, so a coverage-based probe would not be the authors'."""
    _, _, _, stims, covered = shapes_store
    short = [(s.id, e.kind) for s in _base(stims) for e in s.targets
             if len(covered[s.id].get(e.mask_id, ())) < S * S]
    kinds = {k for _, k in short}
    assert short and kinds & {"star", "triangle"}, kinds
    assert any(e.mask_id not in covered[s.id] for s in _base(stims) for e in s.targets
               if e.kind == "star")  # the Qwen star owns no token at all


@pytest.mark.parametrize("pool", ["token", "entity"])
def test_layout_rows_are_the_layout_cells_of_every_base_entity(shapes_store, pool):
    from probes.dataset import dataset

    store, data, _, stims, _ = shapes_store
    d = dataset(str(store), model="m", site="projector", layer=0, role="object",
                label="ordinal", pool=pool, where={"counterfactual_of": [""]}, data=str(data),
                region="layout")
    base = _base(stims)
    f = d.frame
    assert d.meta["region"] == "layout" and d.meta["layout"]["n_skipped_entities"] == 0
    assert d.meta["layout"]["n_role_fallback"] == 0
    assert set(f["sample_id"]) == {s.id for s in base}
    by_index = {i: s for i, s in enumerate(stims)}
    got: dict[tuple[str, int], set[int]] = {}
    for x, o in zip(d.X, f["ordinal"]):
        s = by_index[int(round(x[-1]))]
        toks = set(np.nonzero(x[:-1] > 0)[0].tolist())
        if pool == "entity":  # the mean over the block: 1/4 on each of its 4 cells
            np.testing.assert_allclose(x[:-1][sorted(toks)], 1.0 / (S * S), rtol=1e-6)
        got.setdefault((s.id, int(o)), set()).update(toks)
    for s in base:
        for e in s.targets:
            assert got[(s.id, e.ordinal)] == _oracle_cells(s.axis, e.ordinal), (s.id, e.kind)
    n_rows = len(base) * 3 * (S * S if pool == "token" else 1)
    assert len(f) == n_rows  # every entity of every item, the star included


def test_role_rows_differ_from_layout_rows_on_shapes(shapes_store):
    """The default (``role``) keeps the coverage cut: fewer rows, not the layout cells."""
    from probes.dataset import dataset

    store, data, _, stims, _ = shapes_store
    kw = dict(model="m", site="projector", layer=0, role="object", label="ordinal",
              where={"counterfactual_of": [""]}, data=str(data))
    lay = dataset(str(store), region="layout", **kw)
    cov = dataset(str(store), **kw)
    assert len(cov) < len(lay)


def test_paper_side_direction_pools_the_layout_cells(shapes_store):
    """E7's paper direction pools each entity's layout block: its side rows are the two outer
    entities of every item of the axis (the star included), labelled 0 = first, 1 = last slot."""
    from probes.dataset import dataset

    store, data, _, stims, _ = shapes_store
    d = dataset(str(store), model="m", site="projector", layer=0, role="object", label="side",
                pool="entity", where={"axis": "horizontal"}, data=str(data), region="layout")
    base_h = [s for s in stims if s.axis == "horizontal" and s.counterfactual_kind != "isolated"]
    assert len(d) == 2 * len(base_h)
    for x, side in zip(d.X, d.frame["side"]):  # twins too: an entity's ordinal is its slot
        toks = set(np.nonzero(x[:-1] > 0)[0].tolist())
        assert toks == _oracle_cells("horizontal", 0 if side == 0 else 2)


def test_coverage_side_labels_only_outer_slots(shapes_store):
    """``side`` on the coverage path (``robust``): 1 is the sample's last slot (``n_targets - 1``),
    not the highest slot that owns a token. Where the star in slot 2 owns no token, the middle
    entity (slot 1) must stay unlabelled rather than take the star's side."""
    from probes.dataset import dataset

    store, _, _, stims, covered = shapes_store
    d = dataset(str(store), model="m", site="projector", layer=0, role="object", label="side",
                pool="entity")
    by_id = {s.id: s for s in stims}
    n_slots = {s.id: len(s.targets) for s in stims}
    assert {n for s, n in zip(stims, n_slots.values()) if s.counterfactual_kind != "isolated"} == {3}
    # the case under test occurs: some sample's last-slot entity owns no object token
    last_missing = [s.id for s in stims if s.counterfactual_kind != "isolated" and not any(
        e.ordinal == 2 and e.mask_id in covered[s.id] for e in s.entities)]
    assert last_missing
    for sid, side, o in zip(d.frame["sample_id"], d.frame["side"], d.frame["ordinal"]):
        assert (side, o) in ((0, 0), (1, n_slots[sid] - 1)), (sid, side, o)
    got_last = set(d.frame.loc[d.frame["side"] == 1, "sample_id"])
    assert not got_last & set(last_missing)
    assert {sid for sid in d.frame["sample_id"]} <= set(by_id)


def test_layout_needs_the_dataset(shapes_store):
    from probes.dataset import dataset
    from probes.errors import DataError

    store, *_ = shapes_store
    with pytest.raises(DataError, match="layout cells from the dataset"):
        dataset(str(store), model="m", site="projector", layer=0, region="layout")


def test_paper_axis_directions_default_to_layout_cells(shapes_store):
    """``axis_directions(recipe='paper', data=...)`` pools layout cells by default: every training
    item gives its two outer entities (2 rows), the star included; ``extra['region']`` says so."""
    import warnings

    from probes.directions import axis_directions

    store, data, _, stims, covered = shapes_store
    ids = [s.id for s in _base(stims)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dirs = axis_directions(str(store), model="m", site="projector", layer=0, items=ids,
                               data=str(data), recipe="paper")
    for axis, d in dirs.items():
        train = d.extra["split"]["train_items"]
        assert d.extra["region"] == "layout" and d.n_samples == 2 * len(train), axis
        assert set(train) <= set(ids)


def test_layout_refuses_a_dataset_the_store_was_not_extracted_from(shapes_store, tmp_path):
    from probes.dataset import dataset
    from probes.errors import DataError
    from scenegen.generate import generate
    from scenegen.presets import preset_config

    store, *_ = shapes_store
    other = tmp_path / "squares"
    generate(preset_config("squares-qwen2-vl", n=2, twins=[]), other, progress=False)
    with pytest.raises(DataError, match="is not in the dataset"):
        dataset(str(store), model="m", site="projector", layer=0, data=str(other),
                region="layout")


def test_sweep_rows_count_layout_fallbacks(shapes_store):
    from probes.commands import paper_probe_config
    from probes.config import SweepConfig
    from probes.sweep import sweep

    store, data, *_ = shapes_store
    t = sweep(str(store), SweepConfig(model="m", roles=("object",), scheduler="serial",
                                      region="layout", baselines=()),
              paper_probe_config(0), where={"axis": ["vertical"], "counterfactual_of": [""]},
              data=str(data), progress=False)
    assert t["error"].isna().all(), t["error"].tolist()
    assert (t["region"] == "layout").all() and (t["n_role_fallback"] == 0).all()
    assert (t["n_skipped_entities"] == 0).all()
