"""probes on a real actstore store (written by actstore's writer) and the dask sweep."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from probes import dataset
from probes.config import ProbeConfig, SweepConfig
from probes.directions import direction_from_result, load_direction
from probes.fit import fit_probe
from probes.sweep import sweep
from probes.testing import PlantedStore

actstore_testing = pytest.importorskip("actstore.testing")


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    syn = actstore_testing.make_store(path, n_samples=32, planted=3.0, grid=4, seed=5)
    return path, syn


def test_dataset_rows_are_the_stored_activations(real):
    path, syn = real
    d = dataset(path, model="tiny", site="lm.resid", layer=1, role="object")
    role, ordn = syn.tokens["lm.resid"]["role"], syn.tokens["lm.resid"]["ordinal"]
    s_idx, t_idx = np.nonzero(role == 1)  # actstore's object code
    assert len(d) == len(s_idx)
    # rows come sample by sample, tokens in order: compare with the writer's ground truth
    np.testing.assert_array_equal(d.X, syn.acts["lm.resid"][s_idx, 1, t_idx])
    np.testing.assert_array_equal(np.asarray(d.classes)[d.y], ordn[s_idx, t_idx])
    assert (d.groups == syn.samples["scene_id"].to_numpy()[s_idx]).all()
    assert set(d.frame["role"]) == {"object"}


def test_planted_signal_in_a_real_store(real):
    path, syn = real
    res = fit_probe(dataset(path, model="tiny", site="projector", layer=0, role="object"))
    assert res.accuracy > 0.9 and res.selectivity > 0.3
    ent = dataset(path, model="tiny", site="projector", layer=0, pool="entity", label="side")
    d = direction_from_result(fit_probe(ent, ProbeConfig(control=False), baselines=()))
    planted = syn.directions[1] - syn.directions[0]
    assert float(d.unit()[0] @ planted / np.linalg.norm(planted)) > 0.85
    assert d.model == "tiny" and d.site == "projector" and d.width == 8


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_dask_sweep_equals_serial_sweep_in_memory_store():
    store = PlantedStore(n_scenes=12, grid=5, hidden=8, seed=7)
    cfg = SweepConfig(model="tiny", layers=(0, 2), roles=("object", "strip", "background"),
                      scheduler="serial")
    pc = ProbeConfig(n_splits=3)
    serial = sweep(store, cfg, pc, progress=False)
    local = sweep(store, dataclasses.replace(cfg, scheduler="local", processes=False), pc,
                  progress=False)
    _same(serial, local)
    assert list(zip(serial["layer"], serial["role"])) == [
        (0, "object"), (0, "strip"), (0, "background"), (2, "object"), (2, "strip"),
        (2, "background")]
    bg = serial[serial["role"] == "background"]
    assert bg["accuracy"].isna().all() and bg["error"].str.contains("no samples").all()
    ok = serial.dropna(subset=["accuracy"])
    assert (ok["accuracy"] > ok["chance"]).all()
    assert ok.set_index(["role", "layer"]).loc[("object", 2), "accuracy"] > 0.6


def test_dask_sweep_on_a_store_path_with_worker_processes_and_export(real, tmp_path):
    path, _ = real
    cfg = SweepConfig(model="tiny", site="lm.resid", layers=(0, 1, 2), roles=("object",),
                      scheduler="serial")
    pc = ProbeConfig(n_splits=3, control=False)
    serial = sweep(path, cfg, pc, progress=False)
    local = sweep(str(path), dataclasses.replace(cfg, scheduler="local", n_workers=2), pc,
                  export_dir=tmp_path / "dirs", progress=False)
    _same(serial, local)
    for layer in (0, 1, 2):
        d = load_direction(tmp_path / "dirs" / f"lm.resid__object__layer{layer:03d}",
                           expect_model="tiny", expect_site="lm.resid", expect_width=8,
                           expect_layer=layer)
        assert d.site == f"lm.resid.{layer}"  # the store vocabulary's full site name
        load_direction(tmp_path / "dirs" / f"lm.resid__object__layer{layer:03d}",
                       expect_site=f"lm.resid.{layer}")
        with pytest.raises(ValueError, match="trained on site"):
            load_direction(tmp_path / "dirs" / f"lm.resid__object__layer{layer:03d}",
                           expect_site=f"lm.resid.{layer + 1}")
        row = serial[serial["layer"] == layer].iloc[0]
        assert d.cv_accuracy == row["accuracy"] and d.data_hash == row["data_hash"]


def test_text_role_numeric_where_and_a_skipped_control(real):
    path, syn = real
    d = dataset(path, model="tiny", site="lm.resid", layer=2, role="last", label="relation",
                where={"n_objects": "2", "axis": ["horizontal"]})
    horiz = np.flatnonzero(syn.samples["axis"].to_numpy() == "horizontal")
    assert len(d) == len(horiz) and set(d.classes) <= {"left", "right"}
    role = syn.tokens["lm.resid"]["role"]
    last = np.array([np.flatnonzero(role[i] == 8)[0] for i in horiz])  # actstore's 'last' code
    np.testing.assert_array_equal(d.X, syn.acts["lm.resid"][horiz, 2, last])
    with pytest.warns(UserWarning, match="control task skipped"):
        res = fit_probe(d, ProbeConfig(n_splits=3))  # text tokens: row/col all -1, one type
    assert res.control_accuracy is None and res.selectivity is None
    assert res.baselines["position"] == pytest.approx(res.chance)  # position says nothing here
