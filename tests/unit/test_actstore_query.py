"""Write -> read is identity; role queries and pooled means against numpy oracles."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actstore import ROLE_CODES, ROLE_NAMES, SiteSpec, StoreError, StoreWriter, open_store
from actstore.testing import assert_valid, make_store

PROV = {"model_id": "m/x", "revision": "r1", "adapter": "a", "dtype": "float32", "data_hash": "h"}


@st.composite
def store_cases(draw):
    n = draw(st.integers(1, 9))
    batch = draw(st.integers(1, 4))
    T = draw(st.integers(1, 6))
    H = draw(st.integers(1, 4))
    layers = tuple(draw(st.lists(st.integers(0, 30), min_size=1, max_size=3, unique=True)))
    dtype = draw(st.sampled_from(["float16", "float32"]))
    seed = draw(st.integers(0, 2**16))
    return n, batch, T, H, layers, dtype, seed


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=store_cases())
def test_write_read_round_trip_is_identity(tmp_path_factory, case):
    n, batch, T, H, layers, dtype, seed = case
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("rt") / "s.zarr"
    spec = SiteSpec(name="lm.resid", layers=layers, n_tokens=T, hidden=H, dtype=dtype)
    samples = pd.DataFrame({"sample_id": [f"id{i}" for i in range(n)],
                            "axis": rng.choice(["horizontal", "vertical"], n),
                            "score": rng.standard_normal(n)})
    w = StoreWriter.open_or_create(path, model="org/m", provenance=PROV, samples=samples,
                                   sites=[spec], batch_size=batch)
    acts = rng.standard_normal((n, len(layers), T, H)).astype(dtype)
    role = rng.integers(0, len(ROLE_NAMES), (n, T)).astype("int8")
    ent = rng.integers(0, 5, (n, T)).astype("int16")
    pos = np.tile(np.arange(T, dtype="int32"), (n, 1))
    for idx in w.batches():
        w.write(idx, {"lm.resid": acts[idx]},
                {"lm.resid": {"role": role[idx], "entity": ent[idx], "position": pos[idx]}})
    assert len(w.pending()) == 0
    s = open_store(path)
    assert s.models == ["org/m"] and s.layers("org/m", "lm.resid") == list(layers)
    x = s.select(model="org/m", site="lm.resid")  # all layers, all token slots
    assert x.dims == ("sample", "layer", "token", "hidden") and x.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(x.values, acts)
    np.testing.assert_array_equal(x["role"].values, role)
    np.testing.assert_array_equal(x["entity"].values, ent)
    np.testing.assert_array_equal(x["position"].values, pos)
    np.testing.assert_array_equal(x["ordinal"].values, -1)  # defaulted label
    np.testing.assert_array_equal(x["pad"].values, role == 0)
    for li, lay in enumerate(layers):
        np.testing.assert_array_equal(s.select(site=f"lm.resid.{lay}").values, acts[:, li])
    df = s.labels()
    assert list(df["sample_id"]) == list(samples["sample_id"])
    assert list(df["axis"]) == list(samples["axis"])
    np.testing.assert_array_equal(df["score"].to_numpy(), samples["score"].to_numpy())
    assert df["done"].all()
    assert_valid(path)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "s.zarr"
    return make_store(path, n_samples=11, batch_size=4, planted=4.0)


@pytest.mark.parametrize("role", ["object", "strip", "distractor", "background", "last", "subject", "pad"])
@pytest.mark.parametrize("site,li", [("lm.resid.2", 2), ("projector", 0)])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "zarr"])
def test_role_query_returns_exactly_the_stored_role_tokens(synth, role, site, li, direct):
    s = open_store(synth.path, direct=direct)
    fam = site.rsplit(".", 1)[0] if site[-1].isdigit() else site
    x = s.select(site=site, role=role)
    assert x.dims == ("sample", "token", "hidden")
    vals, pad = x.values, x["pad"].values
    code = ROLE_CODES[role]
    truth_role = synth.tokens[fam]["role"]
    counts = (truth_role == code).sum(1)
    assert x.sizes["token"] == counts.max()
    for i in range(len(synth.samples)):  # oracle: numpy boolean indexing on the materialised arrays
        m = truth_role[i] == code
        expect = synth.acts[fam][i, li][m]
        np.testing.assert_array_equal(vals[i][~pad[i]], expect)
        assert np.isnan(vals[i][pad[i]]).all()
        assert (pad[i].sum()) == counts.max() - counts[i]
        np.testing.assert_array_equal(x["entity"].values[i][~pad[i]], synth.tokens[fam]["entity"][i][m])
        np.testing.assert_array_equal(x["ordinal"].values[i][~pad[i]], synth.tokens[fam]["ordinal"][i][m])
        np.testing.assert_array_equal(x["position"].values[i][~pad[i]], synth.tokens[fam]["position"][i][m])
        assert (x["role"].values[i][~pad[i]] == code).all()


def test_role_query_uses_integer_indices_not_boolean_masks(synth, monkeypatch):
    seen = []
    orig = xr.DataArray.isel

    def spy(self, indexers=None, **kw):
        for k, v in {**(indexers or {}), **kw}.items():
            seen.append((k, np.asarray(getattr(v, "values", v)).dtype if not isinstance(v, (int, slice)) else type(v)))
        return orig(self, indexers, **kw)

    monkeypatch.setattr(xr.DataArray, "isel", spy)
    x = open_store(synth.path, direct=False).select(site="lm.resid.1", role="object",
                                                    where={"axis": "vertical"})
    assert ("token", np.dtype("int64")) in seen and ("sample", np.dtype("int64")) in seen
    assert not any(getattr(t, "kind", "") == "b" for _, t in seen), seen
    assert not x.data.dask.layers == {}  # lazily dask-backed until asked
    # the direct path gets the same integer indices (-1 = padding) and nothing boolean
    from actstore import _direct

    calls = []
    real = _direct.gather
    monkeypatch.setattr(_direct, "gather", lambda lay, li, s_, t_: calls.append((s_, t_)) or real(lay, li, s_, t_))
    y = open_store(synth.path).select(site="lm.resid.1", role="object", where={"axis": "vertical"})
    np.testing.assert_array_equal(y.values, x.values)
    assert calls and all(s_.dtype.kind == "i" and t_.dtype.kind == "i" for s_, t_ in calls)


def test_direct_and_zarr_paths_agree_on_every_query(synth, tmp_path):
    a, b = open_store(synth.path), open_store(synth.path, direct=False)
    for kw in (dict(site="lm.resid", role="strip"), dict(site="projector", role="object"),
               dict(site="lm.resid.0", role="last", where={"split": "train"})):
        xa, xb = a.select(**kw), b.select(**kw)
        xr.testing.assert_identical(xa.compute(), xb.compute())
        assert xa.dtype == xb.dtype == np.float32 and xa.chunks is not None
    for by in ("entity", "sample"):
        xr.testing.assert_allclose(a.pooled(site="lm.resid.2", by=by), b.pooled(site="lm.resid.2", by=by))
    # a half-written store: pending samples read as NaN through both paths
    part = make_store(tmp_path / "half", n_samples=11, batch_size=4, stop_after=1)
    ha, hb = open_store(part.path), open_store(part.path, direct=False)
    va = ha.select(site="lm.resid.1", role="object", include_pending=True).values
    vb = hb.select(site="lm.resid.1", role="object", include_pending=True).values
    np.testing.assert_array_equal(va, vb)
    assert np.isnan(va[4:]).all() and not np.isnan(va[:4][~ha.select(site="lm.resid.1", role="object")["pad"].values]).any()
    assert ha.select(site="lm.resid.1", role="object").sizes["sample"] == 4


def test_select_where_layers_and_labels(synth):
    s = open_store(synth.path)
    x = s.select(site="lm.resid", role="object", where={"axis": "horizontal", "split": ["train", "val", "test"]})
    want = np.flatnonzero(synth.samples["axis"] == "horizontal")
    np.testing.assert_array_equal(x["sample"].values, want)
    assert list(x["sample_id"].values) == list(synth.samples["sample_id"].iloc[want])
    assert x.dims == ("sample", "layer", "token", "hidden")
    np.testing.assert_array_equal(x["layer"].values, [0, 1, 2])
    one = s.select(site="lm.resid", layer=1, role="object", where={"axis": "horizontal"})
    xr.testing.assert_equal(x.sel(layer=1).drop_vars("layer"), one.drop_vars("layer"))
    assert one.attrs["site"] == "lm.resid.1" and one.attrs["model_id"] == "synthetic/tiny"
    assert s.select(site="lm.resid.0", where={"n_objects": 2}).sizes["sample"] == 11
    assert s.select(site="lm.resid.0", where={"n_objects": 3}).sizes["sample"] == 0
    with pytest.raises(StoreError, match="Did you mean 'axis'"):
        s.select(site="lm.resid.0", where={"axes": "horizontal"})
    with pytest.raises(StoreError, match="unknown layer 7"):
        s.select(site="lm.resid.7")
    with pytest.raises(StoreError, match="Did you mean 'projector'"):
        s.select(site="projektor")


def test_pooled_means_equal_hand_computation(synth):
    s = open_store(synth.path)
    p = s.pooled(site="lm.resid", layer=2, role="object", by="entity")
    assert p.dims == ("item", "hidden") and p.dtype == np.float32
    tok, acts = synth.tokens["lm.resid"], synth.acts["lm.resid"][:, 2].astype("float64")
    rows = []
    for i in range(len(synth.samples)):
        for e in sorted(set(tok["entity"][i][tok["role"][i] == ROLE_CODES["object"]])):
            m = (tok["role"][i] == ROLE_CODES["object"]) & (tok["entity"][i] == e)
            rows.append((i, e, tok["ordinal"][i][m][0], m.sum(), acts[i][m].mean(0)))
    assert p.sizes["item"] == len(rows)
    for k, (i, e, o, c, mean) in enumerate(rows):
        assert (p["sample"].values[k], p["mask_id"].values[k], p["ordinal"].values[k],
                p["n_pooled"].values[k]) == (i, e, o, c)
        np.testing.assert_allclose(p.values[k], mean, rtol=1e-5, atol=1e-5)
        assert p["sample_id"].values[k] == synth.samples["sample_id"][i]
        assert p["scene_id"].values[k] == synth.samples["scene_id"][i]
    # planted signal: the ordinal-0 and ordinal-1 means separate along the planted directions
    d = synth.directions
    proj = p.values @ (d[0] - d[1])
    assert proj[p["ordinal"].values == 0].mean() > proj[p["ordinal"].values == 1].mean() + 3


def test_pooled_by_sample_and_errors(synth):
    s = open_store(synth.path)
    p = s.pooled(site="projector", role="background", by="sample")
    tok, acts = synth.tokens["projector"], synth.acts["projector"][:, 0]
    for k, i in enumerate(p["sample"].values):
        m = tok["role"][i] == ROLE_CODES["background"]
        np.testing.assert_allclose(p.values[k], acts[i][m].mean(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(StoreError, match="needs one layer"):
        s.pooled(site="lm.resid", role="object")
    with pytest.raises(StoreError, match="by must be"):
        s.pooled(site="projector", by="token")


@pytest.mark.parametrize("where", [None, {"split": "train"}])
def test_whole_selection_values_equal_streamed_blocks_and_zarr(synth, monkeypatch, where):
    """``.values`` of a direct role query gathers the whole selection at once; it must equal the
    dask blocks computed one by one (the streaming path, here forced into several small blocks)
    and the zarr path, and the labels must equal a numpy oracle over the stored role array."""
    import actstore.reader as R

    monkeypatch.setattr(R, "TARGET_CHUNK_BYTES", 1)  # one sample per dask block
    a, z = open_store(synth.path), open_store(synth.path, direct=False)
    x = a.select(site="lm.resid.1", role="object", where=where)
    assert x.data.numblocks[0] == x.sizes["sample"] > 1
    whole = x.values
    streamed = np.concatenate([np.asarray(b.compute()) for b in x.data.blocks])
    np.testing.assert_array_equal(whole, streamed)
    np.testing.assert_array_equal(whole, z.select(site="lm.resid.1", role="object",
                                                  where=where).values)
    # oracle: the k-th object token of each selected sample, from the stored role labels
    g = a.group()
    role = np.asarray(g["lm.resid"]["role"][:])[x["sample"].values]
    for i, s in enumerate(role):
        toks = np.flatnonzero(s == ROLE_CODES["object"])
        assert (~x["pad"].values[i]).sum() == len(toks)
        assert x["role"].values[i, :len(toks)].tolist() == [ROLE_CODES["object"]] * len(toks)
        assert (x["position"].values[i, :len(toks)] ==
                np.asarray(g["lm.resid"]["position"][:])[x["sample"].values[i], toks]).all()
    # every sample: the query hands out views of the cached index, which cannot be written
    # (a filtered query hands out copies)
    if where is None:
        with pytest.raises(ValueError):
            x["entity"].values[0, 0] = 5


def test_role_query_label_coords_are_built_when_first_read(tmp_path, monkeypatch):
    """A role query's token-label coords (role, ordinal, entity, row, col, position) are built
    when first read, not by ``select``: a query that reads only values builds no label table.
    Each coord, read, equals the ground truth (the labels given to the writer) at the token
    index the query gathered; copies and pickles carry the same values; reading them from
    several threads at once gives the same tables."""
    import copy
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    from actstore.reader import Store

    truth = make_store(tmp_path / "s", n_samples=12, batch_size=4)
    built = []
    table = Store._role_table

    def counting(self, g, fam, code, name):
        built.append(name)
        return table(self, g, fam, code, name)

    monkeypatch.setattr(Store, "_role_table", counting)
    s = open_store(tmp_path / "s")
    lab = truth.tokens["lm.resid"]
    for where in (None, {"split": "train"}):
        mark = len(built)
        x = s.select(site="lm.resid.1", role="object", where=where)
        vals = x.values
        assert built[mark:] == []  # values and pad need no label table
        smp = x["sample"].values
        pad = x["pad"].values
        for name in ("entity", "position", "ordinal", "row", "col", "role"):
            got = x[name].values
            assert got.dtype == lab[name].dtype and got.shape == pad.shape
            for i, si in enumerate(smp):  # the k-th object token of sample si, by hand
                toks = np.flatnonzero(lab["role"][si] == ROLE_CODES["object"])
                assert list(got[i, :len(toks)]) == list(lab[name][si, toks]), (name, si)
                assert not pad[i, :len(toks)].any() and pad[i, len(toks):].all()
                np.testing.assert_array_equal(vals[i, :len(toks)],
                                              truth.acts["lm.resid"][si, 1][toks])
    assert sorted(set(built)) == sorted(["entity", "position", "ordinal", "row", "col", "role"])
    s2 = open_store(tmp_path / "s")
    x = s2.select(site="lm.resid.1", role="object")
    ref = open_store(tmp_path / "s", index=False).select(site="lm.resid.1", role="object")
    # a selection itself does not pickle (its gather is a local function); its coords do
    for c in ("entity", "role", "position"):
        v = pickle.loads(pickle.dumps(x[c].variable))
        assert v.dtype == ref[c].dtype and np.array_equal(v.values, ref[c].values), c
    for y in (copy.deepcopy(x), x.copy(deep=True), x):
        assert y.equals(ref) and list(y.coords) == list(ref.coords)
        for c in y.coords:
            assert y[c].dtype == ref[c].dtype, c
    s3 = open_store(tmp_path / "s")
    x = s3.select(site="lm.resid.1", role="object")
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: x[c].values, ["entity", "entity", "row", "position"] * 3))
    for g, c in zip(got, ["entity", "entity", "row", "position"] * 3):
        np.testing.assert_array_equal(g, ref[c].values)
