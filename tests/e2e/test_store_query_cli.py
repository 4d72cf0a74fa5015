"""``spatialbind query``: summary, exports in each format (contents checked), one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from actstore import ROLE_CODES
from actstore.testing import make_store
from cli import spatialbind


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "store.zarr"
    return make_store(path, n_samples=10, batch_size=4, stop_after=2)  # 8 of 10 done


def run(*args):
    return CliRunner().invoke(spatialbind, ["query", *map(str, args)])


def test_summary(store):
    r = run(store.path)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "model tiny" in out and "samples 8/10 done" in out
    assert "site lm.resid" in out and "layers [0, 1, 2]" in out and "site projector" in out
    n_obj = int((store.tokens["projector"]["role"][:8] == ROLE_CODES["object"]).sum())
    assert f"object {n_obj}," in out.split("site projector")[1]
    assert "KiB on disk" in out
    j = json.loads(run(store.path, "--json").output)
    assert j["models"]["tiny"]["sites"]["lm.resid"]["layers"] == [0, 1, 2]


def test_export_parquet_tokens(store, tmp_path):
    out = tmp_path / "x.parquet"
    r = run(store.path, "--site", "lm.resid.1", "--role", "object", "--where", "axis=horizontal",
            "--export", "parquet", "--out", out)
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    role = store.tokens["lm.resid"]["role"]
    keep = [i for i in range(8) if store.samples["axis"][i] == "horizontal"]
    assert len(df) == sum(int((role[i] == ROLE_CODES["object"]).sum()) for i in keep)
    assert set(df["sample"]) == set(keep) and (df["axis"] == "horizontal").all()
    for (i, pos), grp in df.groupby(["sample", "position"]):
        t = int(np.flatnonzero(store.tokens["lm.resid"]["position"][i] == pos)[0])
        np.testing.assert_array_equal(grp[[f"h{k}" for k in range(8)]].to_numpy()[0],
                                      store.acts["lm.resid"][i, 1, t])
    assert {"sample_id", "scene_id", "entity", "ordinal", "row", "col", "role"} <= set(df.columns)


def test_export_parquet_pooled(store, tmp_path):
    out = tmp_path / "p.parquet"
    r = run(store.path, "--site", "projector", "--pool", "entity", "--export", "parquet", "--out", out)
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    row = df.iloc[0]
    tok = store.tokens["projector"]
    m = (tok["role"][row["sample"]] == ROLE_CODES["object"]) & (tok["entity"][row["sample"]] == row["mask_id"])
    np.testing.assert_allclose(row[[f"h{k}" for k in range(8)]].to_numpy(float),
                               store.acts["projector"][row["sample"], 0][m].mean(0), rtol=1e-5)
    assert len(df) == 16  # 8 done samples x 2 objects


def test_export_npy_and_netcdf(store, tmp_path):
    r = run(store.path, "--site", "lm.resid", "--layer", "2", "--role", "last",
            "--export", "npy", "--out", tmp_path / "a.npy")
    assert r.exit_code == 0, r.output
    a = np.load(tmp_path / "a.npy")
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["dims"] == ["sample", "token", "hidden"] and a.shape == (8, 1, 8)
    last = [int(np.flatnonzero(store.tokens["lm.resid"]["role"][i] == ROLE_CODES["last"])[0]) for i in range(8)]
    np.testing.assert_array_equal(a[:, 0], store.acts["lm.resid"][np.arange(8), 2, last])
    assert side["coords"]["sample_id"]["values"] == list(store.samples["sample_id"][:8])
    r = run(store.path, "--site", "projector", "--role", "object", "--export", "netcdf",
            "--out", tmp_path / "a.nc")
    assert r.exit_code == 0, r.output
    ds = xr.open_dataset(tmp_path / "a.nc", engine="scipy")
    v = ds[list(ds.data_vars)[0]]
    assert v.dims == ("sample", "token", "hidden")
    tok = store.tokens["projector"]
    for i in range(8):
        m = tok["role"][i] == ROLE_CODES["object"]
        np.testing.assert_array_equal(v.values[i][v["pad"].values[i] == 0], store.acts["projector"][i, 0][m])
    assert list(v["sample_id"].values) == list(store.samples["sample_id"][:8])


def test_errors_are_one_line(store, tmp_path):
    r = run(store.path, "--site", "lm.resi", "--role", "object")
    assert r.exit_code == 1 and "Did you mean 'lm.resid'" in r.output and r.output.count("\n") == 1
    r = run(store.path, "--site", "projector", "--export", "npy")
    assert r.exit_code == 1 and "needs --out" in r.output
    r = run(store.path, "--site", "projector", "--where", "axis")
    assert r.exit_code == 1 and "KEY=VALUE" in r.output
    r = run(tmp_path / "nothing")
    assert r.exit_code == 1 and "no activation store" in r.output
    r = run(store.path, "--site", "projector", "--role", "objekt")
    assert r.exit_code == 1 and "Did you mean 'object'" in r.output
