"""A writer's role-index piece is built from the labels it wrote (actstore._index.HeldLabels),
not by reading them back from the store at close(): the piece equals, file for file, the one
the old path (read every covered sample's labels from the store) writes, for a plain store,
sharded writers, a killed writer resumed (the samples an earlier process wrote are read from
the store, and only those), unaligned writes, held labels spilled to disk, and `--reindex`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from actstore import StoreWriter, reindex
from actstore import _index
from actstore.testing import DEFAULT_PROVENANCE, assert_valid, default_sites, make_store, synthetic_samples

N, B = 20, 4  # 5 batches
LABELS = ("role", "ordinal", "entity", "row", "col", "position")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 6 covered samples: blocks straddle write batches (in use: 8192); pieces vouch
    for `done` chunk files written a moment ago (in use: 2 s old), so `done_stat` is compared too."""
    monkeypatch.setattr(_index, "BLOCK", 6)
    monkeypatch.setattr(_index, "RACY_NS", 0)


def _pieces(path) -> list[str]:
    d = Path(path) / "tiny" / _index.GROUP
    return sorted(p.name for p in d.iterdir() if p.name.startswith("piece-"))


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _reread(path, name, tmp_path) -> Path:
    """The piece ``name`` written again by the old path (every label read from the store), with
    the same ``covered`` and ``done_stat``, in a copy of the store; returns its directory."""
    copy = tmp_path / f"reread-{name}"
    shutil.copytree(path, copy)
    g = zarr.open_group(copy / "tiny", mode="r+")
    p = g[_index.GROUP][name]
    covered = np.asarray(p["covered"][:])
    sig = np.asarray(p[_index.DONE_STAT][:]) if _index.DONE_STAT in p else None
    del g[_index.GROUP][name]
    assert _index.write_piece(g, covered, done_stat=sig) == name
    return copy / "tiny" / _index.GROUP / name


def _assert_piece_as_reread(path, name, tmp_path):
    new = Path(path) / "tiny" / _index.GROUP / name
    old = _reread(path, name, tmp_path)
    a, b = _files(new), _files(old)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k] == b[k], k  # byte for byte: chunks (zstd) and metadata (attrs, crcs)


class _LabelReads:
    """Rows of token-label arrays read from the store (through ``_index.read_rows``, which the
    piece builder uses for them) and label arrays opened (their zarr.json read)."""

    def __init__(self, m):
        self.rows: list[tuple[str, int, int]] = []
        self.opened: list[str] = []
        read = _index.read_rows

        def counting(arr, store, a, b, cache=None, out=None):
            if arr.path.rsplit("/", 1)[-1] in LABELS and "/role_index/" not in f"/{arr.path}":
                self.rows.append((arr.path, a, b))
            return read(arr, store, a, b, cache, out)

        get = zarr.storage.LocalStore.get

        async def counting_get(store, key, *a, **k):
            parts = key.split("/")
            if len(parts) == 4 and parts[2] in LABELS and parts[3] == "zarr.json":
                self.opened.append(key)
            return await get(store, key, *a, **k)

        m.setattr(_index, "read_rows", counting)
        m.setattr(zarr.storage.LocalStore, "get", counting_get)

    def samples(self) -> set[int]:
        return {s for _, a, b in self.rows for s in range(a, b)}


def _writer(path, **kw):
    return StoreWriter.open_or_create(path, model="tiny", provenance=DEFAULT_PROVENANCE,
                                      samples=synthetic_samples(N), sites=default_sites(),
                                      params={"object_coverage": 0.5}, batch_size=B, **kw)


def _write(w, truth, idx):
    idx = np.asarray(idx)
    w.write(idx, {f: truth.acts[f][idx] for f in truth.acts},
            {f: {k: v[idx] for k, v in truth.tokens[f].items()} for f in truth.tokens})


def test_plain_store_piece_reads_no_labels_and_equals_the_reread_one(tmp_path, monkeypatch):
    truth = make_store(tmp_path / "ref", n_samples=N, batch_size=B)
    w = _writer(tmp_path / "s")
    for idx in w.batches():
        _write(w, truth, idx)
    with monkeypatch.context() as m:
        reads = _LabelReads(m)
        w.close()
    assert reads.rows == [] and reads.opened == []  # the old path read every label of every sample
    (name,) = _pieces(tmp_path / "s")
    _assert_piece_as_reread(tmp_path / "s", name, tmp_path)
    assert _pieces(tmp_path / "ref") == [name]
    assert_valid(tmp_path / "s")  # validate compares the piece with the token labels


def test_sharded_writers_pieces_equal_the_reread_ones(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        reads = _LabelReads(m)
        make_store(tmp_path / "s", n_samples=N, batch_size=B, shard=(0, 2))
        make_store(tmp_path / "s", n_samples=N, batch_size=B, shard=(1, 2))
    assert reads.rows == []
    names = _pieces(tmp_path / "s")
    assert len(names) == 2
    for name in names:
        _assert_piece_as_reread(tmp_path / "s", name, tmp_path)
    assert_valid(tmp_path / "s")


def test_killed_writer_resumed_reads_only_what_the_earlier_process_wrote(tmp_path, monkeypatch):
    truth = make_store(tmp_path / "ref", n_samples=N, batch_size=B)
    killed = _writer(tmp_path / "s")
    for b, idx in enumerate(killed.batches()):
        if b == 2:
            break
        _write(killed, truth, idx)  # samples 0..7, then killed: no close(), no piece
    del killed
    w = _writer(tmp_path / "s")  # a new process: it does not hold samples 0..7
    for idx in w.batches():
        _write(w, truth, idx)
    with monkeypatch.context() as m:
        reads = _LabelReads(m)
        w.close()
    assert reads.samples() == set(range(8))  # read from the store: only the earlier process's
    (name,) = _pieces(tmp_path / "s")
    assert _pieces(tmp_path / "ref") == [name]  # the piece a clean run writes
    _assert_piece_as_reread(tmp_path / "s", name, tmp_path)
    assert_valid(tmp_path / "s")


def test_unaligned_writes_rewrites_and_labels_spilled_to_disk(tmp_path, monkeypatch):
    truth = make_store(tmp_path / "ref", n_samples=N, batch_size=B)
    w = _writer(tmp_path / "s")
    w._held = _index.HeldLabels({s.name: s.n_tokens for s in default_sites()}, max_memory=64)
    _write(w, truth, [1, 3, 6])            # scattered samples: written one by one
    _write(w, truth, [0, 2])
    done = zarr.open_array(tmp_path / "s" / "tiny" / "samples" / "done", mode="r+")
    done[3] = False                        # cleared: written again below (the later add counts)
    _write(w, truth, [3, 4, 5, 7])
    for idx in w.batches():
        _write(w, truth, idx)
    assert w._held._file._rolled            # held labels went to the temporary file
    with monkeypatch.context() as m:
        reads = _LabelReads(m)
        w.close()
    assert reads.rows == []
    (name,) = _pieces(tmp_path / "s")
    assert _pieces(tmp_path / "ref") == [name]
    _assert_piece_as_reread(tmp_path / "s", name, tmp_path)
    assert_valid(tmp_path / "s")


def test_held_labels_are_exactly_what_was_written():
    """HeldLabels against the arrays given to it (an oracle outside the store)."""
    rng = np.random.default_rng(1)
    T = 7
    held = _index.HeldLabels({"f": T}, max_memory=100)
    truth = {k: np.zeros((30, T), dt) for k, (dt, _) in _index.S.TOKEN_LABELS.items()}
    for idx in (np.arange(0, 5), np.array([7, 9, 12]), np.arange(5, 7), np.array([9])):
        lab = {k: rng.integers(-5, 9, (len(idx), T)).astype(dt)
               for k, (dt, _) in _index.S.TOKEN_LABELS.items()}
        held.add(idx, {"f": lab})
        for k in lab:
            truth[k][idx] = lab[k]  # sample 9 written twice: the second one counts
    rows = np.array([0, 3, 5, 6, 7, 9, 12])
    assert held.has(np.arange(30), 30).tolist() == [i in {0, 1, 2, 3, 4, 5, 6, 7, 9, 12}
                                                    for i in range(30)]
    out = {k: np.full((9, T), 99, dt) for k, (dt, _) in _index.S.TOKEN_LABELS.items()}
    at = np.array([0, 1, 2, 4, 5, 6, 8])
    held.fill("f", rows, 30, out, at)
    for k in out:
        np.testing.assert_array_equal(out[k][at], truth[k][rows])
        assert (out[k][[3, 7]] == 99).all()
    held.close()


def test_reindex_writes_the_piece_the_writer_wrote(tmp_path):
    """`--reindex` (the old path: labels read from the store) of a store one writer filled gives
    a piece of the same name and the same entries, file for file; only `done_stat` (which names
    the copy's own files) differs."""
    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    (name,) = _pieces(tmp_path / "s")
    shutil.copytree(tmp_path / "s", tmp_path / "c")
    del zarr.open_group(tmp_path / "c" / "tiny", mode="r+")[_index.GROUP][name]
    assert reindex(tmp_path / "c")["tiny"]["written"]
    assert _pieces(tmp_path / "c") == [name]
    a = _files(tmp_path / "s" / "tiny" / _index.GROUP / name)
    b = _files(tmp_path / "c" / "tiny" / _index.GROUP / name)
    assert sorted(a) == sorted(b)
    for k in a:
        if k.startswith(_index.DONE_STAT):
            continue
        if k == "zarr.json":
            ja, jb = json.loads(a[k]), json.loads(b[k])
            for j in (ja, jb):
                j["attributes"].pop("done_stat_crc", None)
            assert ja == jb
        else:
            assert a[k] == b[k], k


def test_piece_of_one_block_made_at_once_equals_the_block_by_block_one(tmp_path, monkeypatch):
    """A piece of at most BLOCK samples is made in one `create_hierarchy` with every array at
    its final size (fewer requests on an object store); it equals, file for file, the piece
    the block-by-block path writes (arrays grown by resize), which rewrites a piece of that
    name found damaged."""
    monkeypatch.setattr(_index, "BLOCK", 8192)
    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    (name,) = _pieces(tmp_path / "s")
    shutil.copytree(tmp_path / "s", tmp_path / "c")
    g = zarr.open_group(tmp_path / "c" / "tiny", mode="r+")
    p = g[_index.GROUP][name]
    covered, sig = np.asarray(p["covered"][:]), np.asarray(p[_index.DONE_STAT][:])
    del g[_index.GROUP][name]
    g[_index.GROUP].create_group(name)  # a piece of that name, not complete: the block path
    assert _index.write_piece(g, covered, done_stat=sig, force=True) == name
    a = _files(tmp_path / "s" / "tiny" / _index.GROUP / name)
    b = _files(tmp_path / "c" / "tiny" / _index.GROUP / name)
    assert sorted(a) == sorted(b) and len(a) > 5
    for k in a:
        assert a[k] == b[k], k
