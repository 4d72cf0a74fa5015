"""Extraction into the store on both tiny models: stored arrays vs the model's own outputs,
idempotent reruns, refusals and bad input (one line, nothing stored lost)."""
from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

import vlms
from cli import spatialbind
from tests.helpers_vlms import write_squares
from vlms.extract import ExtractConfig, run_extract
from vlms.roles import image_roles

N = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds") / "squares"
    write_squares(d, n=N)
    return d


FAMILIES = ["tiny-qwen2-vl", "tiny-gemma-3", "tiny-pixtral", "tiny-llava", "tiny-qwen2.5-vl"]


def pooled_by_hand(ad, v: np.ndarray, grid) -> np.ndarray:
    """Vision-block rows -> token grid, from each family's published patch order."""
    rows, cols = grid
    if ad.family == "qwen2-vl":  # 2x2 merge blocks, row-major over the merged grid
        return v.reshape(rows * cols, 4, -1).mean(1)
    if ad.family == "qwen2.5-vl":  # merge units in window order: the model's own window index
        import torch
        from transformers.vision_utils import get_vision_window_index

        idx, _ = get_vision_window_index(torch.tensor([[1, 2 * rows, 2 * cols]]), 2, 112, 14)
        units = v.reshape(rows * cols, 4, -1).mean(1)
        out = np.empty_like(units)
        out[idx.numpy()] = units
        return out
    if ad.family == "gemma-3":  # 64x64 row-major patches, 4x4 average
        return v.reshape(16, 4, 16, 4, -1).mean((1, 3)).reshape(256, -1)
    return v  # pixtral, llava: one patch per token, row-major


@pytest.fixture(scope="module", params=FAMILIES)
def extracted(request, data, tmp_path_factory):
    torch.set_num_threads(1)
    ad = vlms.build_tiny(request.param)
    store = tmp_path_factory.mktemp("st") / "s.zarr"
    cfg = ExtractConfig(model=request.param, data=str(data), store=str(store),
                        sites=("projector", "lm.resid", "vision.blocks.1"), batch_size=2,
                        store_dtype="float32")
    res = run_extract(cfg, progress=False, adapter=ad)
    assert res == {"written": N, "done": N, "total": N}
    return ad, cfg, store


def _group(store, model, fam):
    return zarr.open_group(str(store), mode="r")[model][fam]


def test_stored_arrays_equal_model_outputs(extracted, data):
    from scenegen import read_dataset

    ad, cfg, store = extracted
    ds = read_dataset(data)
    lm = _group(store, cfg.model, "lm.resid")
    pj = _group(store, cfg.model, "projector")
    vb = _group(store, cfg.model, "vision.blocks")
    assert list(lm["layer"][:]) == list(range(ad.n_lm_layers + 1))
    for i, stim in enumerate(ds.stimuli):
        p = stim.prompts[0]
        b = ad.prepare([ds.image(stim)], [p])
        out, acts = ad.capture(b, ["vision.blocks.1"], output_hidden_states=True)
        n = b.seq_len
        assert int(lm["n_tokens"][i]) == n
        for li in range(ad.n_lm_layers):  # batched (padded) run vs single item: 1e-4
            np.testing.assert_allclose(lm["acts"][i, li, :n], out.hidden_states[li][0].numpy(),
                                       rtol=1e-4, atol=1e-4)
        assert (lm["role"][i, n:] == 0).all()
        pos = np.asarray(b.image_positions[0])
        np.testing.assert_allclose(pj["acts"][i, 0], out.hidden_states[0][0, pos].numpy(),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(pj["position"][i], pos)
        # pooling oracle by hand: token k = mean of its patches
        v = acts["vision.blocks.1"][0].numpy()
        pooled = pooled_by_hand(ad, v, b.grids[0])
        np.testing.assert_allclose(vb["acts"][i, 0], pooled, rtol=1e-4, atol=1e-4)
        # labels: image roles from the mask, text roles in the LM family
        ir = image_roles(stim, ds.mask(stim), b.grids[0], object_fraction=0.5)
        from actstore import ROLE_CODES

        np.testing.assert_array_equal(pj["role"][i], [ROLE_CODES[r] for r in ir.role])
        np.testing.assert_array_equal(lm["role"][i, pos], pj["role"][i])
        np.testing.assert_array_equal(pj["ordinal"][i], ir.slot)
        rows, cols = b.grids[0]
        np.testing.assert_array_equal(pj["row"][i] * cols + pj["col"][i], np.arange(rows * cols))
        assert lm["role"][i, n - 1] == ROLE_CODES["last"]
        assert (lm["role"][i, :n] == ROLE_CODES["relation"]).sum() >= 1


def test_rerun_on_finished_store_writes_nothing(extracted):
    ad, cfg, store = extracted
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    res = run_extract(cfg, progress=False, adapter=ad)
    assert res["written"] == 0 and res["done"] == N
    after = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert before == after


def test_store_of_another_model_or_sites_is_refused(extracted):
    from actstore import StoreError

    ad, cfg, store = extracted
    other = vlms.build_tiny(ad.name, seed=1)
    import dataclasses

    with pytest.raises(StoreError, match="revision"):
        run_extract(dataclasses.replace(cfg, seed=1), progress=False, adapter=other)
    with pytest.raises(StoreError, match="other sites"):
        run_extract(dataclasses.replace(cfg, sites=("projector",)), progress=False, adapter=ad)


def _cli(args):
    return CliRunner().invoke(spatialbind, args)


def test_cli_bad_site_layer_and_shard(data, tmp_path):
    base = ["extract", "--model", "tiny-qwen2-vl", "--data", str(data), "--store",
            str(tmp_path / "s.zarr"), "--no-progress"]
    for extra, msg in ((["--sites", "lm.resid.9"], "lm.resid.0 .. lm.resid.2"),
                       (["--sites", "projektor"], "Did you mean 'projector'"),
                       (["--sites", "vision.blocks", "--layers", "0-5"], "vision.blocks.0 .. "),
                       (["--shard", "2/2"], "0 <= i < n")):
        res = _cli(base + extra)
        assert res.exit_code == 1, res.output
        assert msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "s.zarr").exists()


def test_cli_missing_image_keeps_done_batches(data, tmp_path):
    import shutil

    d = tmp_path / "ds"
    shutil.copytree(data, d)
    (d / "images" / "sq0003.png").unlink()
    store = tmp_path / "s.zarr"
    args = ["extract", "--model", "tiny-qwen2-vl", "--data", str(d), "--store", str(store),
            "--sites", "projector", "--batch-size", "2", "--no-progress"]
    res = _cli(args)
    assert res.exit_code == 1
    assert "sq0003.png" in res.output and "missing" in res.output
    done = zarr.open_group(str(store), mode="r")["tiny-qwen2-vl"]["samples"]["done"][:]
    assert list(done) == [True, True, False, False]
    (d / "images" / "sq0003.png").write_bytes(b"not a png")
    res = _cli(args)
    assert res.exit_code == 1 and "corrupt" in res.output and "sq0003.png" in res.output
    shutil.copy(data / "images" / "sq0003.png", d / "images" / "sq0003.png")
    res = _cli(args)
    assert res.exit_code == 0, res.output
    assert "wrote 2 samples (4/4 done)" in res.output


def test_cli_disk_full_is_one_line_and_resumable(data, tmp_path, monkeypatch):
    from actstore import writer

    store = tmp_path / "s.zarr"
    args = ["extract", "--model", "tiny-gemma-3", "--data", str(data), "--store", str(store),
            "--sites", "projector,lm.resid.1", "--batch-size", "2", "--no-progress"]
    real = writer.StoreWriter._start  # writes one family's part of a batch
    calls = {"n": 0}

    def full(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # the second batch (two families per batch) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(writer.StoreWriter, "_start", full)
    res = _cli(args)
    assert res.exit_code == 1
    err = [l for l in res.output.splitlines() if l.startswith("Error")]
    assert len(err) == 1 and "disk full" in err[0], res.output
    g = zarr.open_group(str(store), mode="r")["tiny-gemma-3"]
    assert list(g["samples"]["done"][:]) == [True, True, False, False]
    first = g["projector"]["acts"][:2]
    monkeypatch.setattr(writer.StoreWriter, "_start", real)
    res = _cli(args)
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(g["projector"]["acts"][:2], first)
    assert list(g["samples"]["done"][:]) == [True] * 4


def test_write_options_leave_the_store_byte_identical(data, tmp_path):
    """The direct shard writer with two batch writes in flight (the default) and zarr's writer
    with one (the write path before it) give the same store, file by file, for the same input;
    float16 (the stored dtype that takes the device-side cast) over an odd number of batches."""
    import hashlib

    torch.set_num_threads(1)
    ad = vlms.build_tiny("tiny-qwen2-vl")
    trees = {}
    for name, opts in (("default", None), ("zarr", {"direct": False, "in_flight": 1}),
                       ("direct-1", {"io_threads": 1, "in_flight": 3})):
        store = tmp_path / f"{name}.zarr"
        cfg = ExtractConfig(model="tiny-qwen2-vl", data=str(data), store=str(store),
                            sites=("projector", "lm.resid"), batch_size=3, store_dtype="float16")
        seen = []
        res = run_extract(cfg, progress=False, adapter=ad, write_options=opts,
                          on_batch=seen.append)
        assert res["written"] == N and seen == [3, 1]  # reported in order, once per batch
        trees[name] = {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(store.rglob("*")) if p.is_file()}
    assert any("/acts/c/" in k for k in trees["zarr"])
    assert trees["default"] == trees["zarr"] == trees["direct-1"]
    with pytest.raises(vlms.errors.ExtractError, match="write_options"):
        run_extract(cfg, progress=False, adapter=ad, write_options={"in_flight": 0})
