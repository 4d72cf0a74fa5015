"""The writer's direct shard files are byte for byte the files zarr writes for the same input.

Each case writes the same batches twice, once with ``direct=False`` (every write through zarr's
sharding codec, the reference) and once with the direct shard writer, and compares every file of
the two stores (names and SHA-256): float16 and float32, shard sizes that are and are not powers
of two, inner chunks of one and of several samples, a last shard cut by the end of the array
(inner chunk cut in the middle too), samples that are all NaN (the fill value: zarr leaves them
out of the shard), a shard whose samples are all NaN (no file) and a rewrite over a stale shard.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from actstore import SiteSpec, StoreWriter, open_store
from actstore._shardwrite import _ShardFiles
from actstore.testing import DEFAULT_PROVENANCE, assert_stores_equal, make_store, synthetic_samples


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _sites(dtype):
    return [SiteSpec(name="projector", n_tokens=16, hidden=8, dtype=dtype),
            SiteSpec(name="lm.resid", layers=(0, 1, 2), n_tokens=24, hidden=8, dtype=dtype)]


def _write(path, truth, *, direct, n, batch, inner, dtype, idx_batches=None):
    w = StoreWriter.open_or_create(path, model="tiny", provenance=DEFAULT_PROVENANCE,
                                   samples=synthetic_samples(n), sites=_sites(dtype),
                                   params={"object_coverage": 0.5}, batch_size=batch,
                                   inner_samples=inner, direct=direct, io_threads=3)
    assert all((w._direct[f] is not None) == direct for f in w.specs)
    for idx in (idx_batches or list(w.batches())):
        w.write(idx, {f: truth.acts[f][idx] for f in truth.acts},
                {f: {k: v[idx] for k, v in truth.tokens[f].items()} for f in truth.tokens})
    w.close()
    return w


@pytest.mark.parametrize("dtype,n,batch,inner", [
    ("float16", 10, 4, 1),   # last shard holds 2 of 4 samples
    ("float32", 7, 3, 1),    # shard size not a power of two
    ("float16", 9, 4, 2),    # inner chunks of 2; the last one cut by the end of the array
    ("float16", 12, 6, 3),
])
def test_direct_shards_are_zarrs_bytes(tmp_path, dtype, n, batch, inner):
    truth = make_store(tmp_path / "truth", n_samples=n, batch_size=batch, sites=_sites(dtype),
                       inner_samples=inner, direct=False)
    for f in truth.acts:  # samples equal to the fill value (NaN): zarr stores no chunk for them
        truth.acts[f][1] = np.nan
        truth.acts[f][n - 1, 0] = np.nan
    truth.acts["lm.resid"][batch:2 * batch, 1] = np.nan  # a whole shard of fill: no file at all
    _write(tmp_path / "zarr", truth, direct=False, n=n, batch=batch, inner=inner, dtype=dtype)
    _write(tmp_path / "direct", truth, direct=True, n=n, batch=batch, inner=inner, dtype=dtype)
    ref = _tree(tmp_path / "zarr")
    assert any("/acts/c/" in k for k in ref) and not any(k.endswith(".partial") for k in ref)
    assert "tiny/lm.resid/acts/c/1/1/0/0" not in ref  # the all-NaN shard, as zarr leaves it
    assert _tree(tmp_path / "direct") == ref
    got = open_store(tmp_path / "direct").select(site="lm.resid").values
    np.testing.assert_array_equal(got, truth.acts["lm.resid"])


def test_rewrite_over_a_stale_shard_equals_zarrs(tmp_path):
    """A killed run can leave a shard whose data are written but not marked done (or half
    garbage written by something else); the rewrite replaces it as zarr's would."""
    truth = make_store(tmp_path / "truth", n_samples=8, batch_size=4, sites=_sites("float16"),
                       direct=False)
    acts = {f: truth.acts[f].copy() for f in truth.acts}
    acts["projector"][5] = np.nan  # this sample's chunk goes away in the rewrite
    again = SimpleNamespace(acts=acts, tokens=truth.tokens)
    for name, direct in (("zarr", False), ("direct", True)):
        w = _write(tmp_path / name, truth, direct=direct, n=8, batch=4, inner=1,
                   dtype="float16", idx_batches=[np.arange(4)])
        stale = w.group["projector"]["acts"]
        stale[4:7] = np.full((3, 1, 16, 8), 7.0, "float16")  # data of samples not marked done
        _write(tmp_path / name, again, direct=direct, n=8, batch=4, inner=1, dtype="float16",
               idx_batches=[np.arange(4, 8)])
    assert _tree(tmp_path / "direct") == _tree(tmp_path / "zarr")
    assert_stores_equal(tmp_path / "direct", tmp_path / "zarr")


def test_shard_files_appear_whole(tmp_path, monkeypatch):
    """A reader never sees half a shard: the bytes go to ``<shard>.<uuid>.partial`` beside the
    shard, which is renamed over it once complete (as zarr's LocalStore writes); meanwhile the
    shard's path holds the previous complete file."""
    import actstore._shardwrite as sw

    truth = make_store(tmp_path / "s", n_samples=4, batch_size=4, direct=False)
    before = _tree(tmp_path / "s")
    written, seen = [], []
    real = sw._writev_all

    def watched(fd, bufs):
        written.append(os.readlink(f"/proc/self/fd/{fd}"))
        target = written[-1].rsplit(".", 2)[0]
        seen.append((target, hashlib.sha256(Path(target).read_bytes()).hexdigest()))
        real(fd, bufs)

    monkeypatch.setattr(sw, "_writev_all", watched)
    w = StoreWriter.open_or_create(tmp_path / "s", model="tiny", provenance=DEFAULT_PROVENANCE,
                                   samples=synthetic_samples(4), sites=truth.sites,
                                   params={"object_coverage": 0.5}, batch_size=4, io_threads=1)
    for f in truth.acts:  # rewrite the whole (done) batch in place
        w._put(f, np.arange(4), *w._prepare(f, np.arange(4), truth.acts, truth.tokens))
    root = str((tmp_path / "s").resolve())
    assert len(written) == 4 and all(p.endswith(".partial") for p in written)
    assert all(before[str(Path(t).relative_to(root))] == h for t, h in seen)  # old, whole
    assert _tree(tmp_path / "s") == before  # renamed into place; no .partial left


def test_direct_writer_is_used_only_where_it_is_exact(tmp_path):
    """Compressed or differently chunked arrays, remote stores and a non-NaN fill go through
    zarr; the store's own activations arrays are written directly."""
    import zarr

    g = zarr.open_group(tmp_path / "z", mode="w", zarr_format=3)
    ok = g.create_array("ok", shape=(6, 2, 5, 4), dtype="float16", chunks=(1, 1, 5, 4),
                        shards=(3, 1, 5, 4), compressors=None, fill_value=np.nan)
    assert _ShardFiles.of(ok) is not None
    zstd = g.create_array("zstd", shape=(6, 2, 5, 4), dtype="float16", chunks=(1, 1, 5, 4),
                          shards=(3, 1, 5, 4), fill_value=np.nan)
    zero = g.create_array("zero", shape=(6, 2, 5, 4), dtype="float16", chunks=(1, 1, 5, 4),
                          shards=(3, 1, 5, 4), compressors=None, fill_value=0.0)
    plain = g.create_array("plain", shape=(6, 2, 5, 4), dtype="float16", chunks=(3, 1, 5, 4),
                           compressors=None, fill_value=np.nan)
    split = g.create_array("split", shape=(6, 2, 5, 4), dtype="float16", chunks=(1, 1, 5, 2),
                           shards=(3, 1, 5, 4), compressors=None, fill_value=np.nan)
    mem = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3).create_array(
        "m", shape=(6, 2, 5, 4), dtype="float16", chunks=(1, 1, 5, 4), shards=(3, 1, 5, 4),
        compressors=None, fill_value=np.nan)
    for a in (zstd, zero, plain, split, mem):
        assert _ShardFiles.of(a) is None, a.path


def test_writes_of_one_batch_run_on_several_threads(tmp_path, monkeypatch):
    """With io_threads > 1 the shard files of one batch are written concurrently."""
    import actstore._shardwrite as sw

    truth = make_store(tmp_path / "truth", n_samples=4, batch_size=4, direct=False)
    names, inside, most = set(), [0], [0]
    lock = threading.Lock()
    real = sw._atomic_writev
    gate = threading.Barrier(2, timeout=10)

    def traced(path, bufs):
        with lock:
            names.add(threading.current_thread().name)
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            gate.wait()  # two writers must be inside at once, or this times out
        except threading.BrokenBarrierError:
            pass
        real(path, bufs)
        with lock:
            inside[0] -= 1

    monkeypatch.setattr(sw, "_atomic_writev", traced)
    w = StoreWriter.open_or_create(tmp_path / "s", model="tiny", provenance=DEFAULT_PROVENANCE,
                                   samples=synthetic_samples(4), sites=truth.sites,
                                   params={"object_coverage": 0.5}, batch_size=4, io_threads=2)
    w.write(np.arange(4), truth.acts, truth.tokens)
    w.close()
    assert most[0] == 2 and len(names) == 2
    assert _tree(tmp_path / "s") == _tree(tmp_path / "truth")
