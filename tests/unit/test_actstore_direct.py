"""The direct shard reader (``actstore._direct``) against zarr's own reads, byte for byte.

The direct path reads local, uncompressed shard files itself; every other store (compressed
shards, object stores) goes through zarr. Both must hand back the same bytes: the oracle is the
whole array read through zarr and indexed with numpy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actstore import SiteSpec, StoreWriter, open_store
from actstore import _direct
from actstore import schema as _S
from actstore.testing import DEFAULT_PROVENANCE, make_store, synthetic_samples


def _oracle(full: np.ndarray, layer_pos: int, samples, tokens) -> np.ndarray:
    """``full[samples[i], layer_pos, tokens[i, k]]``, NaN where ``tokens`` < 0 (numpy only)."""
    s = np.asarray(samples, np.int64)[:, None]
    out = full[s, layer_pos, np.maximum(tokens, 0)]
    out[np.asarray(tokens) < 0] = np.nan
    return out


def _same_bytes(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()  # NaN payloads included


@st.composite
def stores(draw):
    batch = draw(st.integers(1, 5))
    inner = draw(st.sampled_from([d for d in range(1, batch + 1) if batch % d == 0]))
    n = draw(st.integers(1, 13))
    dtype = draw(st.sampled_from(["float16", "float32"]))
    order = draw(st.sampled_from(["batches", "single samples, shuffled", "partial"]))
    seed = draw(st.integers(0, 2**16))
    return n, batch, inner, dtype, order, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=stores(), data=st.data())
def test_direct_gather_equals_zarr_bytes(tmp_path_factory, case, data):
    """Any store layout (whole shards, shards written one sample at a time out of order, shards
    never written), any sample list (shuffled, repeated, several shards interleaved) and any
    token list (padding -1 included): the direct gather equals zarr's bytes."""
    n, batch, inner, dtype, order, seed = case
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("direct") / "s.zarr"
    T, H, layers = 5, 3, (0, 2)
    spec = SiteSpec(name="lm.resid", layers=layers, n_tokens=T, hidden=H, dtype=dtype)
    w = StoreWriter.open_or_create(path, model="m", provenance={**DEFAULT_PROVENANCE, "dtype": dtype},
                                   samples=synthetic_samples(n), sites=[spec], batch_size=batch,
                                   inner_samples=inner)
    acts = rng.standard_normal((n, len(layers), T, H)).astype(dtype)
    role = rng.integers(1, 4, (n, T)).astype("int8")
    if order == "batches":
        groups = [list(b) for b in w.batches()]
    elif order == "single samples, shuffled":
        groups = [[int(i)] for i in rng.permutation(n)]
    else:  # some samples never written: their shard / inner chunk is missing (fill value)
        groups = [[int(i)] for i in rng.permutation(n)[: max(1, n // 2)]]
    for idx in groups:
        w.write(np.array(idx), {"lm.resid": acts[idx]}, {"lm.resid": {"role": role[idx]}})
    w.close()
    s = open_store(path)
    arr = s.group()["lm.resid"]["acts"]
    lay = _direct.layout(arr, s.root.store)
    assert lay is not None
    full = arr[...]
    m = data.draw(st.integers(1, 3 * n))
    samples = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), np.int64)
    K = data.draw(st.integers(1, 2 * T))
    tokens = rng.integers(-1, T, (m, K)).astype(np.int16)
    for li in range(len(layers)):
        _same_bytes(_direct.gather(lay, li, samples, tokens), _oracle(full, li, samples, tokens))
        # the same rows in store order (the reader's usual case: no sort)
        srt = np.sort(samples)
        _same_bytes(_direct.gather(lay, li, srt, tokens), _oracle(full, li, srt, tokens))
    # through the public API: the direct and the zarr path give the same bytes for every role
    z = open_store(path, direct=False)
    for r in ("object", "strip", "distractor"):
        a = s.select(site="lm.resid", role=r, include_pending=True).values
        b = z.select(site="lm.resid", role=r, include_pending=True).values
        _same_bytes(a, b)


def test_direct_gather_reads_ahead_without_leaking_files(tmp_path, monkeypatch):
    """Many shards with a tiny read-ahead window and with none: same bytes, and every shard file
    it opened is closed again (also when a gather fails part-way)."""
    import os

    t = make_store(tmp_path / "s", n_samples=40, batch_size=2)
    s = open_store(t.path)
    arr = s.group()["lm.resid"]["acts"]
    lay = _direct.layout(arr, s.root.store)
    full = arr[...]
    rng = np.random.default_rng(0)
    samples = rng.permutation(40)
    tokens = rng.integers(-1, arr.shape[2], (40, 7)).astype(np.int16)
    want = _oracle(full, 1, samples, tokens)
    opened, closed = [], []
    real_open, real_close = os.open, os.close
    monkeypatch.setattr(_direct.os, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    monkeypatch.setattr(_direct.os, "close", lambda fd: closed.append(fd) or real_close(fd))
    for ahead in (0, 1, 3 * lay.shard[0] * lay.shard[2] * lay.shard[3] * 4, None):
        monkeypatch.setattr(_direct, "READ_AHEAD_BYTES", ahead if ahead is not None else 2**30)
        _same_bytes(_direct.gather(lay, 1, samples, tokens), want)
    assert len(opened) == len(closed) > 0
    # a truncated shard file fails with a clear error, and no descriptor stays open
    victim = os.path.join(lay.directory, "c", "7", "1", "0", "0")
    with open(victim, "r+b") as f:
        f.truncate(8)
    opened.clear(), closed.clear()
    with pytest.raises(OSError, match="truncated"):
        _direct.gather(lay, 1, samples, tokens)
    assert sorted(opened) == sorted(closed)



def test_direct_gather_while_a_profiler_holds_frames(tmp_path):
    """A sampling profiler (a dask worker runs one) that holds frame objects keeps their locals
    alive after the call returns; an array over a shard's map among them used to make the
    gather fail with ``BufferError: cannot close exported pointers exist``. Here a profile
    hook keeps every Python frame of the gather alive: same bytes, no error."""
    import sys

    t = make_store(tmp_path / "s", n_samples=12, batch_size=4)
    s = open_store(t.path)
    arr = s.group()["lm.resid"]["acts"]
    lay = _direct.layout(arr, s.root.store)
    full = arr[...]
    samples = np.arange(12)
    tokens = np.random.default_rng(1).integers(0, arr.shape[2], (12, 5)).astype(np.int16)
    held = []
    sys.setprofile(lambda frame, event, arg: held.append(frame))
    try:
        got = _direct.gather(lay, 0, samples, tokens)
    finally:
        sys.setprofile(None)
    assert held  # the hook did see the gather's frames
    _same_bytes(got, _oracle(full, 0, samples, tokens))
    del held, got


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_compressed_shards_fall_back_to_zarr_with_the_same_bytes(tmp_path, codec):
    """A store whose activations are compressed (written by another tool, or rewritten) is not
    read directly; the query goes through zarr and returns the same bytes as the uncompressed
    store read directly."""
    t = make_store(tmp_path / "plain", n_samples=10, batch_size=4, planted=2.0)
    make_store(tmp_path / "packed", n_samples=10, batch_size=4, planted=2.0)
    g = zarr.open_group(tmp_path / "packed" / "tiny" / "lm.resid", mode="a")
    old = g["acts"]
    vals, attrs = old[...], dict(old.attrs)
    comp = zarr.codecs.ZstdCodec() if codec == "zstd" else zarr.codecs.GzipCodec()
    new = g.create_array("acts", shape=old.shape, dtype=old.dtype, chunks=(1, 1, *old.shape[2:]),
                         shards=old.shards, compressors=[comp], fill_value=np.nan,
                         dimension_names=old.metadata.dimension_names, overwrite=True)
    new[...] = vals
    new.attrs.update(attrs)
    plain, packed = open_store(t.path), open_store(tmp_path / "packed")
    assert _direct.layout(packed.group()["lm.resid"]["acts"], packed.root.store) is None
    assert _direct.layout(plain.group()["lm.resid"]["acts"], plain.root.store) is not None
    for kw in (dict(site="lm.resid.1", role="object"), dict(site="lm.resid", role="strip"),
               dict(site="lm.resid.2", role="last", where={"split": "train"})):
        _same_bytes(packed.select(**kw).values, plain.select(**kw).values)
    np.testing.assert_array_equal(packed.pooled(site="lm.resid.2").values,
                                  plain.pooled(site="lm.resid.2").values)


def test_object_store_falls_back_to_zarr_with_the_same_bytes(tmp_path):
    """An fsspec store (here ``memory://``) is never read directly; same bytes as local direct."""
    make_store("memory://actstore-direct/s", n_samples=9, batch_size=4, planted=1.0)
    make_store(tmp_path / "local", n_samples=9, batch_size=4, planted=1.0)
    mem, loc = open_store("memory://actstore-direct/s"), open_store(tmp_path / "local")
    assert _direct.layout(mem.group()["lm.resid"]["acts"], mem.root.store) is None
    for kw in (dict(site="lm.resid.0", role="object"), dict(site="projector", role="background")):
        _same_bytes(mem.select(**kw).values, loc.select(**kw).values)


# ---------------------------------------------------------------------- token labels, done flags

@pytest.mark.parametrize("codec", ["none", "zstd", "gzip", "blosc"])
@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "bool", "float64"])
def test_direct_chunk_reads_equal_zarr_bytes(tmp_path, codec, dtype):
    """Rows [a, b) of an array chunked along its first axis, read from its chunk files, equal
    zarr's bytes: chunks never written and chunks equal to the fill value (no file), a cut last
    chunk, one-row and whole-array ranges; codecs the reader does not know (blosc) are left to
    zarr (``chunked`` is None)."""
    rng = np.random.default_rng(0)
    comp = {"none": None, "zstd": zarr.codecs.ZstdCodec(level=3),
            "gzip": zarr.codecs.GzipCodec(), "blosc": zarr.codecs.BloscCodec()}[codec]
    for shape, chunks in (((23, 7), (5, 7)), ((23,), (4,))):
        fill = {"bool": False, "float64": np.nan}.get(dtype, -1)
        arr = zarr.create_array(zarr.storage.LocalStore(tmp_path / f"{len(shape)}d"), shape=shape,
                                chunks=chunks, dtype=dtype, fill_value=fill,
                                compressors=[comp] if comp is not None else None)
        full = (rng.integers(-100, 100, shape) if dtype != "bool" else
                rng.integers(0, 2, shape)).astype(dtype)
        full[:chunks[0]] = fill                     # chunk 0 all fill: zarr writes no file
        arr[:] = full
        arr[2 * chunks[0]:3 * chunks[0]] = fill     # an existing chunk rewritten to the fill
        full[2 * chunks[0]:3 * chunks[0]] = fill
        lay = _direct.chunked(arr, arr.store)
        if codec == "blosc":
            assert lay is None
            continue
        assert lay is not None
        for a, b in ((0, shape[0]), (0, 1), (3, 17), (shape[0] - 1, shape[0]), (5, 5),
                     (chunks[0], 2 * chunks[0] + 1)):
            got, want = _direct.read_rows(lay, a, b), arr[a:b]
            _same_bytes(got, np.asarray(want))
    # chunks never written at all: an array with only one chunk set
    sparse = zarr.create_array(zarr.storage.LocalStore(tmp_path / "sparse"), shape=(20, 3),
                               chunks=(4, 3), dtype="int16", fill_value=-1,
                               compressors=[comp] if comp is not None else None)
    sparse[8:12] = np.arange(12, dtype="int16").reshape(4, 3)
    if codec != "blosc":
        _same_bytes(_direct.read_rows(_direct.chunked(sparse, sparse.store), 0, 20), sparse[:])


def test_direct_chunk_reads_on_helper_threads_equal_zarr_bytes(tmp_path):
    """A range of many chunk files is read by helper threads, each filling its own rows: the
    same bytes as zarr, for ranges cut anywhere."""
    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path / "a"), shape=(1003, 3),
                            chunks=(4, 3), dtype="int16", fill_value=-1)
    full = np.random.default_rng(0).integers(-9, 9, (1003, 3)).astype("int16")
    full[400:480] = -1  # twenty chunks without a file
    arr[:] = full
    lay = _direct.chunked(arr, arr.store)
    assert (1003 // 4) // 32 >= 2  # more than one helper thread's worth of chunks
    for a, b in ((0, 1003), (1, 1002), (397, 1003), (0, 4 * 64 + 1)):
        _same_bytes(_direct.read_rows(lay, a, b), arr[a:b])


def test_direct_chunk_read_of_a_truncated_file_fails_clearly(tmp_path):
    """A chunk file that does not decode to a whole chunk is an error naming the file."""
    import os

    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path / "a"), shape=(8, 4), chunks=(4, 4),
                            dtype="int32", fill_value=0, compressors=None)
    arr[:] = np.arange(32, dtype="int32").reshape(8, 4)
    lay = _direct.chunked(arr, arr.store)
    victim = os.path.join(lay.directory, "c", "1", "0")
    with open(victim, "r+b") as f:
        f.truncate(10)
    _same_bytes(_direct.read_rows(lay, 0, 4), arr[0:4])  # other chunks unaffected
    with pytest.raises(OSError, match=r"c/1/0.*truncated"):
        _direct.read_rows(lay, 2, 6)


def _role_index_oracle(role, labels, code):
    """The role index by hand: a Python loop over samples and tokens (no numpy tricks)."""
    N, T = role.shape
    where = [[t for t in range(T) if role[i, t] == code] for i in range(N)]
    K = max([len(w) for w in where] + [0])
    idx = np.full((N, K), -1, np.int64)
    lab = {k: np.full((N, K), _S.TOKEN_LABELS[k][1], _S.TOKEN_LABELS[k][0]) for k in labels}
    for i, w in enumerate(where):
        for k, t in enumerate(w):
            idx[i, k] = t
            for name in labels:
                lab[name][i, k] = labels[name][i, t]
    return np.array([len(w) for w in where]), idx, lab


@pytest.mark.parametrize("how", ["whole store", "killed part-way", "shard 1 of 3 only",
                                 "single samples, shuffled, half"])
def test_role_index_from_direct_label_reads_equals_zarr(tmp_path, how):
    """The role index (token positions and labels of every role) built from the label chunk
    files equals one built by hand from the labels zarr reads, and every query's coords and
    values equal the zarr-only reader's, on complete, killed (resumable), one-shard-of-several
    and sample-by-sample partial stores; unwritten samples read as the labels' fill values and
    are only returned with include_pending."""
    n = 23
    kw = {"whole store": {}, "killed part-way": {"stop_after": 3},
          "shard 1 of 3 only": {"shard": (1, 3)}}.get(how)
    if kw is not None:
        t = make_store(tmp_path / "s", n_samples=n, batch_size=4, planted=1.0, **kw)
    else:  # samples written one at a time, out of order, half of them (label chunks rewritten)
        t = make_store(tmp_path / "s", n_samples=n, batch_size=4, planted=1.0, stop_after=0)
        w = StoreWriter.open_or_create(t.path, model=t.model, provenance=DEFAULT_PROVENANCE,
                                       samples=t.samples, sites=t.sites,
                                       params={"object_coverage": 0.5}, batch_size=4)
        rng = np.random.default_rng(1)
        for i in rng.permutation(n)[: n // 2]:
            idx = np.array([i])
            w.write(idx, {f: t.acts[f][idx] for f in t.acts},
                    {f: {k: v[idx] for k, v in t.tokens[f].items()} for f in t.tokens})
        w.close()
    d, z = open_store(t.path), open_store(t.path, direct=False)
    g = d.group()
    fg = g["lm.resid"]
    assert _direct.chunked(fg["role"], d.root.store) is not None
    done = z.labels()["done"].to_numpy()
    assert 0 < done.sum() <= n and (how == "whole store") == bool(done.all())
    _same_bytes(d.labels()["done"].to_numpy(), done)
    pd.testing.assert_frame_equal(d.labels(), z.labels())
    zl = {name: fg[name][:] for name in _S.TOKEN_LABELS}  # through zarr
    for name in _S.TOKEN_LABELS:
        _same_bytes(d._read(fg[name]), zl[name])
        _same_bytes(d._read(fg[name], 5, 14), zl[name][5:14])
    for code in range(len(_S.ROLE_NAMES)):
        counts, idx, lab = d._role_index(g, "lm.resid", code)
        c0, i0, l0 = _role_index_oracle(zl["role"], zl, code)
        np.testing.assert_array_equal(counts, c0)
        np.testing.assert_array_equal(idx, i0)
        for name in _S.TOKEN_LABELS:
            _same_bytes(lab[name], l0[name])
    for kw in (dict(site="lm.resid.1", role="object"), dict(site="lm.resid.0", role="last"),
               dict(site="projector", role="strip", where={"split": "train"}),
               dict(site="lm.resid.2", role="object", include_pending=True)):
        a, b = d.select(**kw), z.select(**kw)
        _same_bytes(a.values, b.values)
        assert set(a.coords) == set(b.coords)
        for c in a.coords:
            np.testing.assert_array_equal(a[c].values, b[c].values)
    if not done.all():
        x = d.select(site="lm.resid.0", role="object", include_pending=True)
        pend = ~done
        assert x.sizes["sample"] == n and bool(x["pad"].values[pend].all())  # no labels yet
    assert d.summary()["models"] == z.summary()["models"]
