"""Writer: resume after a kill equals a clean run, idempotence, refusals, disk full, shard split."""
from __future__ import annotations

import errno

import numpy as np
import pandas as pd
import pytest
import zarr

from actstore import SiteSpec, StoreError, StoreWriter, open_store
from actstore.testing import (DEFAULT_PROVENANCE, assert_stores_equal, assert_valid, default_sites,
                              make_store, synthetic_samples)


def _writer(path, **over):
    kw = dict(model="tiny", provenance=DEFAULT_PROVENANCE, samples=synthetic_samples(12),
              sites=default_sites(), params={"object_coverage": 0.5}, batch_size=4)
    kw.update(over)
    return StoreWriter.open_or_create(path, **kw)


def _batch(truth, idx):
    return ({f: truth.acts[f][idx] for f in truth.acts},
            {f: {k: v[idx] for k, v in truth.tokens[f].items()} for f in truth.tokens})


def test_resume_after_kill_equals_clean_run(tmp_path):
    clean = make_store(tmp_path / "clean", n_samples=12, planted=2.0)
    # killed run: batch 0 done; batch 1 data written but the process died before its done flag;
    # batch 2 half-written garbage, not done
    killed = make_store(tmp_path / "killed", n_samples=12, planted=2.0, stop_after=1)
    w = _writer(tmp_path / "killed")
    a, t = _batch(clean, np.arange(4, 8))
    for f in a:
        w._put(f, np.arange(4, 8), *w._prepare(f, np.arange(4, 8), a, t))
    w.group["lm.resid"]["acts"][8:10] = np.full((2, 3, 24, 8), 7.0, "float32")
    np.testing.assert_array_equal(w.pending(), np.arange(4, 12))
    np.testing.assert_array_equal(killed.written, np.arange(4))
    # resume with the same call: only pending batches are written
    resumed = make_store(tmp_path / "killed", n_samples=12, planted=2.0)
    np.testing.assert_array_equal(resumed.written, np.arange(4, 12))
    assert_stores_equal(tmp_path / "killed", tmp_path / "clean")
    assert_valid(tmp_path / "killed")


def test_rerun_over_finished_store_writes_nothing(tmp_path):
    truth = make_store(tmp_path / "s", n_samples=8)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*") if p.is_file()}
    again = make_store(tmp_path / "s", n_samples=8)
    assert len(again.written) == 0
    w = _writer(tmp_path / "s", samples=synthetic_samples(8))
    assert len(w.pending()) == 0
    assert w.write(np.arange(4), *_batch(truth, np.arange(4))) == 0
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert before == after


def test_partial_batches_and_shard_assignment(tmp_path):
    truth = make_store(tmp_path / "ref", n_samples=12, inner_samples=1)
    w = _writer(tmp_path / "s", inner_samples=1)  # 1-sample inner chunks land out of order
    p0, p1 = w.pending(shard=(0, 2)), w.pending(shard=(1, 2))
    np.testing.assert_array_equal(p0, [0, 1, 2, 3, 8, 9, 10, 11])
    np.testing.assert_array_equal(p1, [4, 5, 6, 7])
    assert [list(b) for b in w.batches(shard=(1, 2))] == [[4, 5, 6, 7]]
    # unaligned writes (single samples, a half batch) are correct too
    for idx in ([5], [0, 2], [1, 3, 4, 6, 7], list(range(8, 12))):
        w.write(idx, *_batch(truth, np.array(idx)))
        # direct reads of shards written out of order / partly equal zarr's reads at every step
        d, z = (open_store(tmp_path / "s", direct=f).select(site="lm.resid.1", role="object",
                                                            include_pending=True).values
                for f in (True, False))
        np.testing.assert_array_equal(d, z)
    assert_stores_equal(tmp_path / "s", tmp_path / "ref")
    with pytest.raises(StoreError, match="shard must be"):
        w.pending(shard=(2, 2))


@pytest.mark.parametrize("change,match", [
    (dict(provenance={**DEFAULT_PROVENANCE, "model_id": "other/model"}), "model_id='synthetic/tiny'"),
    (dict(provenance={**DEFAULT_PROVENANCE, "revision": "1"}), "revision"),
    (dict(provenance={**DEFAULT_PROVENANCE, "data_hash": "zzz"}), "data_hash"),
    (dict(provenance={**DEFAULT_PROVENANCE, "dtype": "bfloat16"}), "dtype"),
    (dict(sites=default_sites(dtype="float16")), "sites/layers/shapes/dtype"),
    (dict(sites=default_sites(layers=(0, 1))), "lm.resid"),
    (dict(params={"object_coverage": 0.25}), "params"),
    (dict(samples=synthetic_samples(12).iloc[::-1]), "ids/order differ"),
])
def test_reopen_for_something_else_is_refused(tmp_path, change, match):
    make_store(tmp_path / "s", n_samples=12)
    with pytest.raises(StoreError, match=match) as e:
        _writer(tmp_path / "s", **change)
    msg = str(e.value)
    assert "\n" not in msg and ("delete" in msg or "another --store" in msg)
    assert open_store(tmp_path / "s").labels()["done"].all()  # nothing lost


def test_wrong_schema_version_is_refused(tmp_path):
    make_store(tmp_path / "s", n_samples=4)
    zarr.open_group(tmp_path / "s", mode="a").attrs["schema_version"] = 999
    with pytest.raises(StoreError, match="schema version 999"):
        _writer(tmp_path / "s", samples=synthetic_samples(4))
    with pytest.raises(StoreError, match="schema version 999"):
        open_store(tmp_path / "s")
    zarr.open_group(tmp_path / "x", mode="w").create_group("foo")
    with pytest.raises(StoreError, match="not an activation store"):
        _writer(tmp_path / "x")


def test_two_models_share_one_store(tmp_path):
    make_store(tmp_path / "s", n_samples=4, model="Qwen/Qwen2-VL-7B")
    make_store(tmp_path / "s", n_samples=6, model="gemma-3-4b",
               provenance={**DEFAULT_PROVENANCE, "model_id": "google/gemma-3-4b-it"})
    s = open_store(tmp_path / "s")
    assert s.models == ["Qwen/Qwen2-VL-7B", "gemma-3-4b"]
    assert (tmp_path / "s" / "Qwen--Qwen2-VL-7B").is_dir()
    assert s.select(model="gemma-3-4b", site="projector").sizes["sample"] == 6
    with pytest.raises(StoreError, match="choose one with model="):
        s.select(site="projector")


def test_bad_write_input_is_one_clear_line(tmp_path):
    truth = make_store(tmp_path / "ref", n_samples=12)
    w = _writer(tmp_path / "s")
    a, t = _batch(truth, np.arange(4))
    with pytest.raises(StoreError, match="missing site family 'projector'"):
        w.write(np.arange(4), {"lm.resid": a["lm.resid"]}, t)
    with pytest.raises(StoreError, match=r"expected \(4, 3, T<=24, 8\)"):
        w.write(np.arange(4), {**a, "lm.resid": a["lm.resid"][:, :2]}, t)
    bad_role = {**t, "projector": {**t["projector"], "role": t["projector"]["role"] + 20}}
    with pytest.raises(StoreError, match="codes outside"):
        w.write(np.arange(4), a, bad_role)
    with pytest.raises(StoreError, match="out of range"):
        w.write([10, 12], a, t)
    with pytest.raises(StoreError, match="sorted, distinct"):
        w.write([3, 1], a, t)
    with pytest.raises(StoreError, match="duplicate sample_id"):
        _writer(tmp_path / "t", samples=pd.DataFrame({"sample_id": ["a", "a"]}))
    with pytest.raises(StoreError, match="provenance is missing"):
        _writer(tmp_path / "t", provenance={"model_id": "x"})
    assert len(w.pending()) == 12  # nothing was marked done by the failed calls


def test_shorter_batches_are_padded(tmp_path):
    truth = make_store(tmp_path / "ref", n_samples=12)
    w = _writer(tmp_path / "s")
    a, t = _batch(truth, np.arange(4))
    a["lm.resid"] = a["lm.resid"][:, :, :20]
    t["lm.resid"] = {k: v[:, :20] for k, v in t["lm.resid"].items()}
    w.write(np.arange(4), a, t)
    x = open_store(tmp_path / "s").select(site="lm.resid.0")
    assert x.sizes["token"] == 24
    np.testing.assert_array_equal(x.values[:, :20], truth.acts["lm.resid"][:4, 0, :20])
    np.testing.assert_array_equal(x.values[:, 20:], 0)
    assert x["pad"].values[:, 20:].all()


@pytest.mark.parametrize("direct", [True, False])
def test_disk_full_is_one_line_and_keeps_done_samples(tmp_path, monkeypatch, direct):
    import actstore._shardwrite as sw

    truth = make_store(tmp_path / "s", n_samples=12, stop_after=1)
    w = _writer(tmp_path / "s", direct=direct)
    real, real_writev = zarr.Array.__setitem__, sw._writev_all

    def full(self, key, value):
        if self.path.endswith("acts"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    def full_writev(fd, bufs):
        real_writev(fd, bufs[:1])  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    monkeypatch.setattr(sw, "_writev_all", full_writev)
    with pytest.raises(StoreError, match="disk full while writing samples 4..7") as e:
        w.write(np.arange(4, 8), *_batch(truth, np.arange(4, 8)))
    assert "\n" not in str(e.value) and "rerun the same command" in str(e.value)
    assert not list((tmp_path / "s").rglob("*.partial"))  # no half file left behind
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    monkeypatch.setattr(sw, "_writev_all", real_writev)
    s = open_store(tmp_path / "s")
    assert list(s.labels()["done"]) == [True] * 4 + [False] * 8
    np.testing.assert_array_equal(s.select(site="lm.resid").values, truth.acts["lm.resid"][:4])
    make_store(tmp_path / "s", n_samples=12)  # rerun after freeing space completes the store
    make_store(tmp_path / "clean", n_samples=12)
    assert_stores_equal(tmp_path / "s", tmp_path / "clean")


def test_full_temporary_disk_names_it_and_keeps_the_batch(tmp_path, monkeypatch):
    """The writer holds each batch's labels in a spooled temporary file (actstore._index.
    HeldLabels); a full temporary disk is named as such, not as the store's, and the batch it
    happened on stays written and done, so a rerun resumes and completes the store."""
    import tempfile

    from actstore._index import HeldLabels

    truth = make_store(tmp_path / "s", n_samples=12, stop_after=1)
    w = _writer(tmp_path / "s")
    real = HeldLabels.add

    def full(self, idx, labels):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(HeldLabels, "add", full)
    with pytest.raises(StoreError, match="disk full in the temporary directory") as e:
        w.write(np.arange(4, 8), *_batch(truth, np.arange(4, 8)))
    msg = str(e.value)
    assert "\n" not in msg and tempfile.gettempdir() in msg and "TMPDIR" in msg
    assert "samples 4..7" in msg and "rerun the same command" in msg
    monkeypatch.setattr(HeldLabels, "add", real)
    s = open_store(tmp_path / "s")
    assert list(s.labels()["done"]) == [True] * 8 + [False] * 4
    make_store(tmp_path / "s", n_samples=12)
    make_store(tmp_path / "clean", n_samples=12)
    assert_stores_equal(tmp_path / "s", tmp_path / "clean")


def test_interrupted_creation_is_rebuilt(tmp_path):
    make_store(tmp_path / "s", n_samples=4, stop_after=0)
    g = zarr.open_group(tmp_path / "s", mode="a")["tiny"]
    g.attrs["complete"] = False  # as if the creating process died
    with pytest.raises(StoreError, match="being created"):  # half-made: not "0 models"
        open_store(tmp_path / "s")
    w = _writer(tmp_path / "s", samples=synthetic_samples(4), wait_s=0)
    assert len(w.pending()) == 4 and w.group.attrs["complete"] is True


def test_bfloat16_like_torch_tensors_are_cast(tmp_path):
    torch = pytest.importorskip("torch")
    truth = make_store(tmp_path / "ref", n_samples=4,
                       sites=[SiteSpec(name="projector", n_tokens=16, hidden=8, dtype="float16")])
    w = StoreWriter.open_or_create(tmp_path / "s", model="tiny", provenance=DEFAULT_PROVENANCE,
                                   samples=synthetic_samples(4), params={"object_coverage": 0.5},
                                   sites=[SiteSpec(name="projector", n_tokens=16, hidden=8)], batch_size=4)
    bf = torch.from_numpy(truth.acts["projector"].astype("float32")).to(torch.bfloat16)
    w.write(np.arange(4), {"projector": bf}, {"projector": truth.tokens["projector"]})
    got = open_store(tmp_path / "s").select(site="projector").values
    np.testing.assert_array_equal(got, bf.float().numpy().astype("float16")[:, 0])


def test_a_store_being_created_by_another_process_is_not_called_foreign(tmp_path):
    # zarr writes zarr.json as zarr.<uuid>.partial and renames it: a second writer that lists the
    # folder in between must not refuse it as "not an activation store" (seen under load)
    from actstore.writer import check_target

    d = tmp_path / "store"
    d.mkdir()
    (d / "zarr.87f6a7f709ff4bfdb82308a351751a30.partial").write_text("{")
    check_target(d)  # no error: being created
    (d / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        check_target(d)


@pytest.mark.parametrize("direct", [True, False])
def test_batches_read_no_array_metadata_and_each_done_chunk_once(tmp_path, monkeypatch, direct):
    """Opening a zarr array reads its zarr.json (on an object store a HEAD and a GET): the
    writer opens every array once, so writing batches reads no metadata, and it reads a batch's
    `done` chunk once (the check for samples already done), not a second time to set the flags."""
    truth = make_store(tmp_path / "clean", n_samples=12)
    w = _writer(tmp_path / "s", direct=direct)
    reads = []
    get = zarr.storage.LocalStore.get

    async def counting_get(self, key, *a, **k):
        reads.append(key)
        return await get(self, key, *a, **k)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    batches = list(w.batches())  # reads every done chunk once, to find what is pending
    del reads[:]
    for idx in batches:
        w.write(idx, *_batch(truth, idx))
    monkeypatch.undo()
    w.close()
    assert [k for k in reads if k.endswith("zarr.json")] == []
    assert sorted(k for k in reads if "/samples/done/" in k) == \
        [f"tiny/samples/done/c/{b}" for b in range(3)]
    assert_stores_equal(tmp_path / "s", tmp_path / "clean")
