"""The persisted role index (actstore/_index.py): pieces written by each writer give exactly the
role index built from the token labels, under sharding, kill/resume, samples done later, old
stores and damaged pieces."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from actstore import ROLE_NAMES, StoreWriter, open_store, reindex, validate
from actstore import _index
from actstore.errors import SchemaError
from actstore.testing import DEFAULT_PROVENANCE, assert_valid, default_sites, make_store, synthetic_samples

N, B = 20, 4  # 5 batches


def _indexes(path, index: bool):
    s = open_store(path, index=index)
    g = s.group()
    return {(fam, c): s._role_index(g, fam, c) for fam in s.sites() for c in range(len(ROLE_NAMES))}


def _assert_same(path):
    """The index through the pieces equals the one built from the labels alone, element for
    element (values, dtypes, shapes), for every family and role; no piece is refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", _index.IndexWarning)
        got = _indexes(path, True)
    ref = _indexes(path, False)
    for key, (c, i, lab) in got.items():
        rc, ri, rlab = ref[key]
        assert c.dtype == rc.dtype and np.array_equal(c, rc), key
        assert i.dtype == ri.dtype and i.shape == ri.shape and i.tobytes() == ri.tobytes(), key
        assert set(lab) == set(rlab)
        for k in lab:
            assert lab[k].dtype == rlab[k].dtype and lab[k].tobytes() == rlab[k].tobytes(), (key, k)


def _taken(path, fam="lm.resid", role="object"):
    """Which samples the pieces give (the rest is read from the labels)."""
    s = open_store(path)
    g = s.group()
    done = s.labels()["done"].to_numpy()
    T = g[fam]["role"].shape[1]
    taken, _ = _index.load(g, fam, ROLE_NAMES.index(role), T, done, s.root.store, {})
    return taken


def _pieces(path) -> list[str]:
    return sorted(p for p in os.listdir(Path(path) / "tiny" / _index.GROUP) if p.startswith("piece-"))


def _writer(path):
    return StoreWriter.open_or_create(path, model="tiny", provenance=DEFAULT_PROVENANCE,
                                      samples=synthetic_samples(N), sites=default_sites(),
                                      params={"object_coverage": 0.5}, batch_size=B)


def _write(w, truth, idx):
    idx = np.asarray(idx)
    w.write(idx, {f: truth.acts[f][idx] for f in truth.acts},
            {f: {k: v[idx] for k, v in truth.tokens[f].items()} for f in truth.tokens})


def test_normal_store_index_comes_from_one_piece_and_equals_the_labels(tmp_path):
    truth = make_store(tmp_path / "s", n_samples=N, batch_size=B)
    assert len(_pieces(tmp_path / "s")) == 1
    _assert_same(tmp_path / "s")
    assert _taken(tmp_path / "s").all()
    # an independent oracle: the k-th object token of sample 3 from the ground truth
    s = open_store(tmp_path / "s")
    counts, idx, lab = s._role_index(s.group(), "lm.resid", ROLE_NAMES.index("object"))
    want = np.flatnonzero(truth.tokens["lm.resid"]["role"][3] == ROLE_NAMES.index("object"))
    assert counts[3] == len(want) and list(idx[3, :len(want)]) == list(want)
    assert list(lab["entity"][3, :len(want)]) == list(truth.tokens["lm.resid"]["entity"][3, want])
    assert_valid(tmp_path / "s")


def test_piece_of_many_blocks_equals_the_labels_and_the_ground_truth(tmp_path, monkeypatch):
    """A piece of several blocks (``BLOCK`` samples each: 8192 in use, 3 here, so 7 blocks of
    a 20-sample store), each block's slice read into its place in the reader's arrays, the five
    label fields views of one shared buffer: the index equals the labels' element for element,
    every label table equals the writer's ground truth token by token, and a role query (values
    and every coord) equals a reader's without the index."""
    monkeypatch.setattr(_index, "BLOCK", 3)
    path = tmp_path / "s"
    truth = make_store(path, n_samples=N, batch_size=B)
    (name,) = _pieces(path)
    assert len(zarr.open_group(path / "tiny" / _index.GROUP / name / "lm.resid",
                               mode="r").attrs["blocks"]) == -(-N // 3)
    _assert_same(path)
    s = open_store(path)
    code = ROLE_NAMES.index("object")
    counts, idx, lab = s._role_index(s.group(), "lm.resid", code)
    tok = truth.tokens["lm.resid"]
    for i in range(N):  # the oracle: the writer's own token labels of sample i
        want = np.flatnonzero(tok["role"][i] == code)
        assert counts[i] == len(want) and list(idx[i, :len(want)]) == list(want)
        assert (idx[i, len(want):] == -1).all()
        for k in ("ordinal", "entity", "row", "col", "position"):
            assert list(lab[k][i, :len(want)]) == list(tok[k][i, want]), (i, k)
    x = s.select(site="lm.resid.1", role="object")
    ref = open_store(path, index=False).select(site="lm.resid.1", role="object")
    assert x.values.tobytes() == ref.values.tobytes()
    for c in ref.coords:
        assert x[c].dtype == ref[c].dtype and x[c].values.tobytes() == ref[c].values.tobytes(), c


def test_sharded_writers_write_one_piece_each_with_disjoint_files(tmp_path):
    make_store(tmp_path / "s", n_samples=N, batch_size=B, shard=(0, 2))
    one = set(_pieces(tmp_path / "s"))
    make_store(tmp_path / "s", n_samples=N, batch_size=B, shard=(1, 2))
    both = set(_pieces(tmp_path / "s"))
    assert len(one) == 1 and len(both) == 2
    g = zarr.open_group(tmp_path / "s" / "tiny" / _index.GROUP, mode="r")
    cov = {k: g[k]["covered"][:] for k in both}
    b0, b1 = (np.arange(N) // B) % 2 == 0, (np.arange(N) // B) % 2 == 1
    assert sorted(map(tuple, cov.values())) == sorted([tuple(np.flatnonzero(b0)),
                                                       tuple(np.flatnonzero(b1))])
    _assert_same(tmp_path / "s")
    assert _taken(tmp_path / "s").all()
    assert_valid(tmp_path / "s")


def test_killed_writer_without_a_piece_then_resumed_covers_everything(tmp_path):
    truth = make_store(tmp_path / "ref", n_samples=N, batch_size=B)
    w = _writer(tmp_path / "s")
    for b, idx in enumerate(w.batches()):
        if b == 2:
            break
        _write(w, truth, idx)
    # killed: close() never ran, so no piece; a reader builds those samples from the labels
    assert _pieces(tmp_path / "s") == []
    _assert_same(tmp_path / "s")
    assert not _taken(tmp_path / "s").any()
    make_store(tmp_path / "s", n_samples=N, batch_size=B)  # resume: the rest, then one piece
    assert _pieces(tmp_path / "s") == _pieces(tmp_path / "ref")  # same samples, same name
    _assert_same(tmp_path / "s")
    assert _taken(tmp_path / "s").all()
    assert_valid(tmp_path / "s")


def test_stopped_then_resumed_overlapping_pieces(tmp_path):
    make_store(tmp_path / "s", n_samples=N, batch_size=B, stop_after=2)
    assert len(_pieces(tmp_path / "s")) == 1
    assert _taken(tmp_path / "s").sum() == 2 * B
    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    assert len(_pieces(tmp_path / "s")) == 2  # the first 8 samples are in both
    _assert_same(tmp_path / "s")
    assert _taken(tmp_path / "s").all()


def test_samples_done_after_the_piece_and_a_piece_half_written(tmp_path):
    truth = make_store(tmp_path / "s", n_samples=N, batch_size=B, stop_after=2)
    w = _writer(tmp_path / "s")
    _write(w, truth, np.arange(8, 12))  # done after the piece, no close(): no piece of its own
    _write(w, truth, [13, 15])          # a partial batch
    taken = _taken(tmp_path / "s")
    assert taken[:8].all() and not taken[8:].any()
    _assert_same(tmp_path / "s")
    s = open_store(tmp_path / "s")
    x = s.select(site="lm.resid.1", role="object")
    assert list(x["sample"].values) == [*range(12), 13, 15]
    np.testing.assert_array_equal(x.values[-1, :int((~x["pad"].values[-1]).sum())],
                                  truth.acts["lm.resid"][15, 1][truth.tokens["lm.resid"]["role"][15]
                                                                == ROLE_NAMES.index("object")])
    # a writer killed while writing its piece leaves it without `complete`: ignored
    name = w.write_index()
    g = zarr.open_group(tmp_path / "s" / "tiny" / _index.GROUP / name, mode="r+")
    g.attrs["complete"] = False
    assert _taken(tmp_path / "s")[8:12].sum() == 0
    _assert_same(tmp_path / "s")


def test_done_flag_cleared_after_the_piece_is_not_taken_from_it(tmp_path):
    truth = make_store(tmp_path / "s", n_samples=N, batch_size=B)
    done = zarr.open_array(tmp_path / "s" / "tiny" / "samples" / "done", mode="r+")
    done[5] = False  # e.g. to re-extract it
    lab = zarr.open_array(tmp_path / "s" / "tiny" / "lm.resid" / "role", mode="r+")
    row = np.asarray(lab[5]).copy()
    row[row == ROLE_NAMES.index("object")] = ROLE_NAMES.index("background")
    lab[5] = row  # its labels change while it is not done
    taken = _taken(tmp_path / "s")
    assert not taken[5] and taken[np.arange(N) != 5].all()
    _assert_same(tmp_path / "s")
    s = open_store(tmp_path / "s")
    c, _, _ = s._role_index(s.group(), "lm.resid", ROLE_NAMES.index("object"))
    assert c[5] == 0 and c[4] == (truth.tokens["lm.resid"]["role"][4] == 1).sum()


def test_old_store_without_index_works_and_reindex_adds_it(tmp_path):
    make_store(tmp_path / "ref", n_samples=N, batch_size=B)
    truth = make_store(tmp_path / "s", n_samples=N, batch_size=B, stop_after=3)
    shutil.rmtree(tmp_path / "s" / "tiny" / _index.GROUP)  # the layout before the index
    _assert_same(tmp_path / "s")
    assert not _taken(tmp_path / "s").any()
    w = _writer(tmp_path / "s")  # a writer of today on an old store writes no piece
    for idx in w.batches():
        _write(w, truth, idx)
    w.close()
    assert not (tmp_path / "s" / "tiny" / _index.GROUP).exists()
    assert_valid(tmp_path / "s")
    from click.testing import CliRunner

    from cli import spatialbind

    r = CliRunner().invoke(spatialbind, ["query", str(tmp_path / "s")])
    assert "role index: not persisted" in r.output and "--reindex" in r.output
    r = CliRunner().invoke(spatialbind, ["query", str(tmp_path / "s"), "--reindex"])
    assert r.exit_code == 0, r.output
    assert f"role index of {N}/{N} done samples written; 0 earlier" in r.output
    assert _pieces(tmp_path / "s") == _pieces(tmp_path / "ref")
    _assert_same(tmp_path / "s")
    assert _taken(tmp_path / "s").all()
    r = CliRunner().invoke(spatialbind, ["query", str(tmp_path / "s")])
    assert f"role index: persisted for {N}/{N} done samples (1 piece)" in r.output
    # reindex again: nothing to write; after a sharded run it merges the pieces into one
    assert reindex(tmp_path / "s")["tiny"]["written"] is False
    make_store(tmp_path / "sh", n_samples=N, batch_size=B, shard=(0, 2))
    make_store(tmp_path / "sh", n_samples=N, batch_size=B, shard=(1, 2))
    res = reindex(tmp_path / "sh")["tiny"]
    assert res["written"] and len(res["removed"]) == 2 and len(_pieces(tmp_path / "sh")) == 1
    _assert_same(tmp_path / "sh")
    assert_valid(tmp_path / "sh")


def _piece_array(path, fam, field):
    name = _pieces(path)[0]
    return Path(path) / "tiny" / _index.GROUP / name / fam / field


@pytest.mark.parametrize("damage", ["truncate", "values", "missing", "covered", "metadata"])
def test_damaged_piece_is_detected_and_never_gives_wrong_rows(tmp_path, damage):
    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    ref = _indexes(tmp_path / "s", False)
    arr = _piece_array(tmp_path / "s", "lm.resid", "token")
    chunk = arr / "c" / "0"
    if damage == "truncate":
        data = chunk.read_bytes()
        chunk.write_bytes(data[:len(data) // 2])
    elif damage == "values":  # well-formed, wrong numbers: only the checksum can tell
        a = zarr.open_array(arr, mode="r+")
        v = np.asarray(a[:])
        a[:] = np.roll(v, 1)
    elif damage == "missing":
        chunk.unlink()
    elif damage == "metadata":  # the piece's own zarr.json cut short
        meta = arr.parent.parent / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:30])
    else:
        a = zarr.open_array(_piece_array(tmp_path / "s", "lm.resid", "x").parent.parent
                            / "covered", mode="r+")
        v = np.asarray(a[:])
        a[:] = v[::-1]
    with pytest.warns(_index.IndexWarning, match="role index piece .* is not used"):
        got = _indexes(tmp_path / "s", True)
    for key, (c, i, lab) in got.items():
        assert np.array_equal(c, ref[key][0]) and i.tobytes() == ref[key][1].tobytes(), key
        assert all(lab[k].tobytes() == ref[key][2][k].tobytes() for k in lab), key
    with pytest.raises(SchemaError, match="role_index/piece-.*reindex"):
        validate(tmp_path / "s", check_values=False)
    reindex(tmp_path / "s")  # the fix the message gives
    _assert_same(tmp_path / "s")
    assert_valid(tmp_path / "s")


def test_reindex_of_a_missing_path_or_other_folder_is_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from cli import spatialbind

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for target in (tmp_path / "missing.zarr", tmp_path / "other"):
        r = CliRunner().invoke(spatialbind, ["query", str(target), "--reindex"])
        assert r.exit_code != 0 and "no activation store at" in r.output
    assert not (tmp_path / "missing.zarr").exists()
    assert os.listdir(tmp_path / "other") == ["notes.txt"]


# ---------------------------------------------------------------- done flags vouched by pieces

def _reads_of_done(monkeypatch):
    """Record the ``done`` rows read from their chunk files (``_direct.read_rows`` on ``done``)."""
    from actstore import _direct

    seen = []
    real = _direct.read_rows

    def spy(lay, a, b, out=None):
        if lay.directory.endswith(os.path.join("samples", "done")):
            seen.append((a, b))
        return real(lay, a, b, out)
    monkeypatch.setattr(_direct, "read_rows", spy)
    return seen


def _old_sample_arrays(s):
    """The per-sample arrays as the reader built them before: from the labels() DataFrame."""
    import pandas as pd

    df = s.labels()
    out = {}
    for c in df.columns:
        if c == "done":
            continue
        v = df[c].to_numpy()
        if v.dtype == object and pd.api.types.infer_dtype(v, skipna=False) in ("string", "empty"):
            v = v.astype(str)
        out[c] = v
    return out


def _assert_reader_equal(path):
    """What a fresh reader gives (done flags, per-sample arrays, role index, a role query) equals
    the stored flags read through zarr, the labels() DataFrame and the index from the labels."""
    stored = np.asarray(zarr.open_array(Path(path) / "tiny" / "samples" / "done", mode="r")[:])
    s = open_store(path)
    g = s.group()
    got = s._done(g)
    assert got.dtype == np.bool_ and got.tobytes() == stored.astype(bool).tobytes()
    assert np.array_equal(s.labels()["done"].to_numpy(), stored)
    old = _old_sample_arrays(open_store(path))
    new = s._sample_arrays(g)
    assert list(new) == list(old)
    for c in old:
        assert new[c].dtype == old[c].dtype and np.array_equal(new[c], old[c]), c
    _assert_same(path)
    x = s.select(site="lm.resid.1", role="object")
    ref = open_store(path, index=False).select(site="lm.resid.1", role="object")
    assert list(x["sample"].values) == list(np.flatnonzero(stored))
    assert x.equals(ref) and list(x.coords) == list(ref.coords)
    for c in x.coords:
        assert x[c].dtype == ref[c].dtype, c


def _done_stat(path) -> list[np.ndarray]:
    root = Path(path) / "tiny" / _index.GROUP
    return [np.asarray(zarr.open_array(root / p / _index.DONE_STAT, mode="r")[:])
            for p in _pieces(path) if (root / p / _index.DONE_STAT).exists()]


@pytest.fixture
def vouch_now(monkeypatch):
    """Let pieces vouch for done chunk files written a moment ago (in use, a file must be
    ``RACY_NS`` = 2 s old; a test store is written in milliseconds)."""
    monkeypatch.setattr(_index, "RACY_NS", 0)


def test_done_flags_come_from_the_piece_and_equal_the_stored_ones(tmp_path, vouch_now, monkeypatch):
    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    (sig,) = _done_stat(tmp_path / "s")
    assert sig[:, 0].tolist() == list(range(N // B))  # every batch's done chunk file
    seen = _reads_of_done(monkeypatch)
    _assert_reader_equal(tmp_path / "s")
    s = open_store(tmp_path / "s")
    seen.clear()
    assert s._done(s.group()).all() and seen == []  # one stat per chunk, no chunk file read
    assert_valid(tmp_path / "s")


def test_done_flags_are_read_from_files_written_just_before_the_piece(tmp_path, monkeypatch):
    make_store(tmp_path / "s", n_samples=N, batch_size=B)  # RACY_NS: all files too new
    assert [len(v) for v in _done_stat(tmp_path / "s")] in ([], [0])
    seen = _reads_of_done(monkeypatch)
    s = open_store(tmp_path / "s")
    assert s._done(s.group()).all() and seen == [(0, N)]
    _assert_reader_equal(tmp_path / "s")


def test_done_flags_sharded_resumed_and_done_later(tmp_path, vouch_now, monkeypatch):
    make_store(tmp_path / "sh", n_samples=N, batch_size=B, shard=(0, 2))
    _assert_reader_equal(tmp_path / "sh")  # shard 1 not written: its flags read, all False
    make_store(tmp_path / "sh", n_samples=N, batch_size=B, shard=(1, 2))
    sigs = _done_stat(tmp_path / "sh")
    assert sorted(sorted(v[:, 0].tolist()) for v in sigs) == [[0, 2, 4], [1, 3]]
    _assert_reader_equal(tmp_path / "sh")
    # killed after 2 batches, a batch and a half done later without a piece, then resumed
    truth = make_store(tmp_path / "s", n_samples=N, batch_size=B, stop_after=2)
    w = _writer(tmp_path / "s")
    _write(w, truth, np.arange(8, 12))
    _write(w, truth, [13, 15])
    seen = _reads_of_done(monkeypatch)
    _assert_reader_equal(tmp_path / "s")
    s = open_store(tmp_path / "s")
    seen.clear()
    s._done(s.group())
    assert seen == [(8, N)]  # the piece vouches for batches 0-1 only
    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    _assert_reader_equal(tmp_path / "s")
    assert_valid(tmp_path / "s")


@pytest.mark.parametrize("how", ["zarr", "in place"])
def test_done_flag_cleared_after_the_piece_is_read_from_its_file(tmp_path, vouch_now, monkeypatch, how):
    import time

    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    f = tmp_path / "s" / "tiny" / "samples" / "done" / "c" / "1"
    if how == "zarr":
        done = zarr.open_array(tmp_path / "s" / "tiny" / "samples" / "done", mode="r+")
        done[5] = False
    else:  # same inode, same size: only the times tell (past the file system's timestamp tick)
        time.sleep(0.05)
        ino = f.stat().st_ino
        with open(f, "r+b") as fh:
            fh.seek(1)
            fh.write(b"\x00")
        assert f.stat().st_ino == ino
    seen = _reads_of_done(monkeypatch)
    s = open_store(tmp_path / "s")
    got = s._done(s.group())
    assert seen == [(4, 8)] and not got[5] and got[np.arange(N) != 5].all()
    _assert_reader_equal(tmp_path / "s")
    assert_valid(tmp_path / "s")


def test_done_flags_of_an_old_store_and_after_reindex(tmp_path, vouch_now, monkeypatch):
    make_store(tmp_path / "s", n_samples=N, batch_size=B, stop_after=3)
    shutil.rmtree(tmp_path / "s" / "tiny" / _index.GROUP)  # the layout before the index
    seen = _reads_of_done(monkeypatch)
    _assert_reader_equal(tmp_path / "s")
    reindex(tmp_path / "s")
    (sig,) = _done_stat(tmp_path / "s")
    assert sig[:, 0].tolist() == [0, 1, 2]  # chunks 3-4 have no file (nothing done there)
    s = open_store(tmp_path / "s")
    seen.clear()
    assert s._done(s.group()).sum() == 3 * B and seen == [(12, N)]
    _assert_reader_equal(tmp_path / "s")


def test_done_stat_damaged_or_wrong_is_not_used_and_validate_reports_it(tmp_path, vouch_now):
    make_store(tmp_path / "s", n_samples=N, batch_size=B)
    (name,) = _pieces(tmp_path / "s")
    a = zarr.open_array(tmp_path / "s" / "tiny" / _index.GROUP / name / _index.DONE_STAT, mode="r+")
    v = np.asarray(a[:])
    v[0, 0] = 1  # well-formed, wrong: only the checksum can tell
    a[:] = v
    with pytest.warns(_index.IndexWarning, match="done_stat is not used"):
        s = open_store(tmp_path / "s")
        assert s._done(s.group()).all()
    with pytest.raises(SchemaError, match="done_stat: damaged"):
        validate(tmp_path / "s", check_values=False)
    reindex(tmp_path / "s")
    _assert_reader_equal(tmp_path / "s")
    assert_valid(tmp_path / "s")
    # a piece vouching (files unchanged) for flags other than the stored ones: validate says so
    g = zarr.open_group(tmp_path / "s" / "tiny", mode="r+")
    cov = np.arange(1, N)  # sample 0 is done, but this piece says it is not
    _index.write_piece(g, cov, done_stat=_index.done_stat(g, np.ones(N, bool)))
    with pytest.raises(SchemaError, match="vouches for the done flags of 1 chunk"):
        validate(tmp_path / "s", check_values=False)


@pytest.mark.parametrize("cats,codes", [
    (["a", "bbb", "cc"], [0, 2, 2, 0]),          # the widest category unused
    (["a", "bbb", "cc"], [1, 0]),
    (["", "x"], [0, 0]),                          # only the empty string in use
    ([""], [0, 0, 0]),
    (["a", "bb"], []),                            # no samples
    ([], [0, 0]),                                 # no categories: every value ""
    (["é", "日本語"], [1, 0, 1]),
])
def test_string_columns_without_pandas_equal_the_dataframe_path(cats, codes):
    import pandas as pd

    from actstore import schema as S
    from actstore.reader import _string_dtype, _strings

    codes = np.asarray(codes, np.int32)
    v = pd.DataFrame({"c": S.decode_strings(codes, cats)})["c"].to_numpy()  # the old path
    if v.dtype == object and pd.api.types.infer_dtype(v, skipna=False) in ("string", "empty"):
        v = v.astype(str)
    got = _strings(codes, cats)
    assert got.dtype == v.dtype and got.tolist() == v.tolist()
    assert _string_dtype(codes, cats) == v.dtype  # what a lazy sample coord declares up front
