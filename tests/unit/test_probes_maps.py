"""probes.maps / probes.plots: probe-map values equal the sklearn pipeline applied by hand, region
targets, the strip finding on planted data, and the PNGs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from probes import dataset
from probes.config import ProbeConfig
from probes.errors import DataError
from probes.fit import fit_probe
from probes.maps import heldout_probe_map, map_summary, probe_map
from probes.plots import plot_accuracy_heatmap, plot_accuracy_lines, plot_probe_maps
from probes.testing import PlantedStore


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def store():
    return PlantedStore(n_scenes=16, grid=6, hidden=12, noise=0.6, seed=3,
                        axes=("horizontal", "vertical"))


@pytest.fixture(scope="module")
def trained(store):
    data = dataset(store, model="tiny", site="projector", layer=2, role="object")
    return data, fit_probe(data, ProbeConfig(control=False), baselines=())


def test_map_values_are_the_pipeline_applied_to_each_token(store, trained):
    data, res = trained
    ids = ["s003", "s004_swap"]
    pm = probe_map(res.pipeline, store, model="tiny", site="projector", layer=2, sample_ids=ids,
                   classes=data.classes)
    assert pm.probs.dims == ("sample", "row", "col", "class") and pm.probs.shape == (2, 6, 6, 3)
    full = store.select(model="tiny", site="projector", layer=2, role=None)
    for i, sid in enumerate(ids):
        s = list(full["sample_id"].values).index(sid)
        for t in (0, 7, 20, 35):  # token t sits at (t // 6, t % 6)
            r, c = int(full["row"].values[s, t]), int(full["col"].values[s, t])
            by_hand = res.pipeline.predict_proba(full.values[s, t][None])[0]
            np.testing.assert_allclose(pm.probs.values[i, r, c], by_hand, rtol=1e-6)  # float32 predict_proba
    np.testing.assert_allclose(pm.probs.sum("class").values, 1.0, atol=1e-6)


def test_region_targets_follow_the_band_or_the_nearest_target(store, trained):
    data, res = trained
    pm = probe_map(res.pipeline, store, model="tiny", site="projector", layer=2,
                   sample_ids=["s000", "s001"], classes=data.classes)
    t = pm.tokens
    truth = store._tokens.set_index(["sample_id", "token"])
    for sid, part in t.groupby("sample_id"):
        axis = store.labels().set_index("sample_id").loc[sid, "axis"]
        along = "col" if axis == "horizontal" else "row"
        obj = part[part["region"] == "object"]
        pos = obj.groupby("ordinal")[along].mean()  # target positions along the axis
        for _, r in part.iterrows():
            tok = truth.loc[(sid, r["row"] * store.grid + r["col"])]
            if r["region"] in ("object", "strip"):
                assert r["target_class"] == tok["band_ordinal"]
            else:
                assert r["target_class"] == int((pos - r[along]).abs().idxmin())
        assert set(part["region"]) == {"object", "strip", "background"}
    assert ((t["p_target"] >= 0) & (t["p_target"] <= 1)).all()


def test_heldout_map_shows_the_strip_finding(store):
    pm = heldout_probe_map(store, model="tiny", site="projector", layer=2, n_samples=4,
                           config=ProbeConfig(n_splits=4))
    summ = map_summary(pm).set_index("region")
    assert list(summ.index) == ["object", "strip", "background"]
    assert summ.loc["object", "mean_p_target"] > 0.65
    assert summ.loc["strip", "mean_p_target"] > 0.5 > 1 / 3  # signal spreads over the band
    assert summ.loc["background", "mean_p_target"] < summ.loc["strip", "mean_p_target"]
    assert summ.loc["object", "n_tokens"] == 4 * 3 and (summ["chance"] == 1 / 3).all()
    # the mapped samples were never seen by the probe that drew the map
    data = dataset(store, model="tiny", site="projector", layer=2, role="object")
    mapped = set(pm.probs["sample_id"].values)
    assert len(mapped) == 4 and mapped <= set(data.frame["sample_id"])


def test_maps_need_an_ordinal_or_side_probe(store, trained):
    with pytest.raises(DataError, match="ordinal or side"):
        probe_map(trained[1].pipeline, store, model="tiny", site="projector", layer=2,
                  sample_ids=["s000"], classes=trained[0].classes, label="relation")


def test_plots_are_written(tmp_path, store, trained):
    data, res = trained
    pm = probe_map(res.pipeline, store, model="tiny", site="projector", layer=2,
                   sample_ids=["s000", "s001", "s002"], classes=data.classes)
    png = plot_probe_maps(pm, tmp_path / "maps" / "m.png")
    table = pd.DataFrame({"model": "tiny", "site": "projector", "label": "ordinal",
                          "layer": [0, 0, 1, 1], "role": ["object", "strip"] * 2,
                          "accuracy": [0.5, np.nan, 0.9, 0.7], "ci_low": [0.4, np.nan, 0.8, 0.6],
                          "ci_high": [0.6, np.nan, 1.0, 0.8], "chance": 1 / 3,
                          "control_accuracy": [0.3, np.nan, 0.35, 0.3],
                          "selectivity": [0.2, np.nan, 0.55, 0.4],
                          "position_accuracy": [0.5, np.nan, 0.5, 0.4]})
    paths = [png, plot_accuracy_heatmap(table, tmp_path / "h.png"),
             plot_accuracy_lines(table, tmp_path / "l.png"),
             plot_accuracy_heatmap(table, tmp_path / "s.png", value="selectivity")]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
