"""probes.fit / probes.dataset / probes.config: planted accuracy, grouped splits, control tasks,
baselines, confidence intervals (hand-computed), data building and config validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from probes import dataset
from probes.config import ProbeConfig, SweepConfig
from probes.dataset import from_arrays
from probes.errors import ConfigError, DataError, ProbeError
from probes.fit import (bootstrap_interval, control_labels, fit_probe, make_splits,
                        position_features, split_groups, wilson_interval)
from probes.testing import PlantedStore


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def strong():
    return PlantedStore(n_scenes=20, grid=5, hidden=12, noise=0.5,
                        strength={"object": 4.0, "strip": 2.0}, seed=1)


# ----------------------------------------------------------------------------- accuracy
def test_planted_ordinal_is_decoded_and_background_stays_at_chance(strong):
    res = fit_probe(dataset(strong, model="tiny", site="projector", layer=2, role="object"))
    assert res.accuracy >= 0.95
    assert res.ci[0] <= res.accuracy <= res.ci[1]
    assert res.n_test == len(res.pred) and (res.pred >= 0).all()  # k-fold tests every row once
    assert res.chance == pytest.approx(1 / 3, abs=0.05)
    assert res.selectivity > 0.4
    # layer 0 carries a third of the signal: it must score lower than layer 2
    low = fit_probe(dataset(strong, model="tiny", site="projector", layer=0, role="object"),
                    ProbeConfig(control=False))
    assert low.accuracy < res.accuracy


def test_strip_tokens_get_their_bands_ordinal_and_carry_the_signal(strong):
    d = dataset(strong, model="tiny", site="projector", layer=2, role="strip")
    # the store gives strip tokens ordinal -1 (as actstore does); dataset fills in the band's target
    truth = strong._tokens.set_index(["sample_id", "token"])["band_ordinal"]
    token = d.frame["row"] * strong.grid + d.frame["col"]
    expect = truth.loc[list(zip(d.frame["sample_id"], token))].to_numpy()
    np.testing.assert_array_equal(np.asarray(d.classes)[d.y], expect)
    assert fit_probe(d, ProbeConfig(control=False)).accuracy > 0.8


def test_control_task_scores_near_chance_on_noise_features():
    rng = np.random.default_rng(0)
    n_scenes, per = 40, 9
    frame = pd.DataFrame({"scene_id": np.repeat([f"sc{i}" for i in range(n_scenes)], per),
                          "sample_id": np.repeat([f"s{i}" for i in range(n_scenes)], per),
                          "row": np.tile(np.repeat([0, 1, 2], 3), n_scenes),
                          "col": np.tile([0, 1, 2], 3 * n_scenes)})
    frame["ordinal"] = frame["col"]  # label = column: the task is learnable from the features
    X = rng.normal(size=(len(frame), 6)) + np.eye(6)[frame["col"] * 2] * 3.0
    data = from_arrays(X, frame, label="ordinal")
    res = fit_probe(data, ProbeConfig(token_type=("row", "col", "sample_id")))
    assert res.accuracy > 0.95
    # control labels are random per (row, col, sample): unseen samples -> nothing to generalise
    lo, hi = wilson_interval(int(round(res.control_accuracy * res.n_test)), res.n_test, 0.99)
    assert lo <= 1 / 3 + 0.02 and res.control_accuracy < 0.45
    assert res.selectivity > 0.5
    assert 1 / 3 - 0.05 <= res.control_chance <= 1.0
    assert res.to_row()["control_chance"] == res.control_chance


def test_control_chance_is_the_majority_rate_of_the_control_labels():
    # two token types (row 0 / row 1) alternating over 60 one-token scenes; seed 5 gives them the
    # control labels 1 and 0. A fold's training majority is the row with fewer *test* rows, so
    # the majority predictor is right on exactly min(n0, n1) test rows of each fold.
    frame = pd.DataFrame({"scene_id": [f"sc{i}" for i in range(60)], "row": [0, 1] * 30,
                          "col": 0, "ordinal": [0, 1, 2] * 20})
    cfg = ProbeConfig(token_type=("row",), n_splits=3, random_state=5)
    yc = control_labels(frame, frame["ordinal"].to_numpy(), ("row",), 5)
    assert list(yc[:2]) == [1, 0]
    X = np.random.default_rng(1).normal(size=(60, 4))
    res = fit_probe(from_arrays(X, frame), cfg, baselines=())
    by_hand = 0
    for _, te in make_splits(split_groups(frame), cfg):
        n1 = int(frame["row"].iloc[te].sum())
        by_hand += min(len(te) - n1, n1)
    assert res.control_chance == pytest.approx(by_hand / 60) and res.control_chance < 0.5


def test_control_labels_are_consistent_per_token_type_and_follow_the_label_distribution():
    frame = pd.DataFrame({"color": list("rgbrgbrgbr") * 30, "row": [0, 1] * 150})
    y = np.array([0] * 200 + [1] * 100)
    yc = control_labels(frame, y, ("color", "row"), random_state=3)
    for _, idx in frame.groupby(["color", "row"]).groups.items():
        assert len(set(yc[idx])) == 1
    assert set(yc) <= set(y)
    with pytest.raises(DataError, match="token-type column"):
        control_labels(frame, y, ("shape",))


def test_position_only_baseline_reads_grid_cells(strong):
    d = dataset(strong, model="tiny", site="projector", layer=2, role="object")
    P = position_features(d.frame)
    assert P.shape == (len(d), d.frame["row"].nunique() + d.frame["col"].nunique())
    assert (P.sum(1) == 2).all()
    res = fit_probe(d, ProbeConfig(control=False))
    assert 0.0 < res.baselines["position"] < res.accuracy
    # when the label *is* the column, position alone is perfect
    d2 = from_arrays(d.X, d.frame.assign(colabel=d.frame["col"]), label="colabel")
    assert fit_probe(d2, ProbeConfig(control=False)).baselines["position"] == 1.0


# ----------------------------------------------------------------------------- splits
@pytest.mark.parametrize("split", ["group_kfold", "group_shuffle"])
def test_grouped_splits_never_share_a_scene_or_a_factor_value(strong, split):
    d = dataset(strong, model="tiny", site="projector", layer=1, role="object")
    assert d.frame.groupby("scene_id")["sample_id"].nunique().max() == 2  # base + twin
    cfg = ProbeConfig(split=split, n_splits=3, group_by=("layout",))
    groups = split_groups(d.frame, cfg.group_by)
    for tr, te in make_splits(groups, cfg):
        for col in ("scene_id", "layout"):
            assert not set(d.frame[col].iloc[tr]) & set(d.frame[col].iloc[te])
        assert len(tr) and len(te)


def test_split_groups_join_scenes_transitively_through_factors():
    frame = pd.DataFrame({"scene_id": ["a", "a", "b", "c", "d"],
                          "bg": ["white", "white", "gray", "gray", "white"]})
    assert len(set(split_groups(frame))) == 4
    g = split_groups(frame, ("bg",))
    assert g[0] == g[1] == g[4] and g[2] == g[3] and g[0] != g[2]
    with pytest.raises(DataError, match="group-by"):
        split_groups(frame, ("colour_set",))


def test_too_few_groups_for_the_folds_is_a_clear_error():
    frame = pd.DataFrame({"scene_id": ["a", "b", "c"] * 4, "ordinal": [0, 1] * 6})
    data = from_arrays(np.random.default_rng(0).normal(size=(12, 3)), frame)
    with pytest.raises(DataError, match="only 3 independent groups for 5 folds"):
        fit_probe(data)


# ----------------------------------------------------------------------------- intervals
def test_wilson_interval_matches_a_hand_computation():
    # 8 of 10, 95%: z = 1.959964; centre = (0.8 + z²/20) / (1 + z²/10) = 0.71671...
    lo, hi = wilson_interval(8, 10, 0.95)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * np.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # textbook value
    assert wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_interval_resamples_whole_groups():
    # two groups, one all right (3 rows), one all wrong (1 row): a resample is {AA, AB, BA, BB},
    # accuracy 1, 3/4, 3/4, 0 -> the 95% percentile band is exactly [0, 1]
    correct = np.array([1, 1, 1, 0], bool)
    groups = np.array(["A", "A", "A", "B"])
    assert bootstrap_interval(correct, groups, n_boot=2000) == (0.0, 1.0)
    lo, hi = bootstrap_interval(correct, groups, level=0.4, n_boot=4000)
    assert lo == hi == 0.75  # the middle 40% of the mass is the 3/4 outcome
    assert bootstrap_interval(np.ones(6, bool), np.arange(6)) == (1.0, 1.0)


def test_bootstrap_ci_is_used_when_configured(strong):
    d = dataset(strong, model="tiny", site="projector", layer=0, role="object")
    w = fit_probe(d, ProbeConfig(control=False))
    b = fit_probe(d, ProbeConfig(control=False, ci="bootstrap", n_bootstrap=200))
    assert w.accuracy == b.accuracy and w.ci != b.ci and b.ci[0] <= b.accuracy <= b.ci[1]


# ----------------------------------------------------------------------------- data building
def test_dataset_returns_aligned_x_y_groups_frame(strong):
    X, y, groups, frame = dataset(strong, model="tiny", site="projector", layer=2, role="object")
    assert X.dtype == np.float32 and X.shape == (len(y), strong.hidden) and not np.isnan(X).any()
    assert (groups == frame["scene_id"]).all() and (frame["role"] == "object").all()
    assert len(y) == 2 * 20 * 3  # 20 scenes x (base + twin) x 3 object tokens
    # row i of X is exactly the store's activation of that token
    da = strong.select(model="tiny", site="projector", layer=2, role="object")
    s = list(da["sample_id"].values).index(frame["sample_id"][7])
    k = np.nonzero((da["row"].values[s] == frame["row"][7]) & (da["col"].values[s] == frame["col"][7]))
    np.testing.assert_array_equal(X[7], da.values[s, k[0][0]])


def test_dataset_filters_items_where_and_derives_side(strong):
    keep = ["s000", "s001", "s002_swap", "s003", "s004", "s005", "s006"]
    d = dataset(strong, model="tiny", site="projector", layer=2, pool="entity", label="side",
                items=keep)
    assert set(d.frame["sample_id"]) == set(keep)
    assert d.classes == (0, 1) and len(d) == 2 * len(keep)  # middle slot dropped
    np.testing.assert_array_equal(d.y, (d.frame["ordinal"] == 2).astype(int))
    d2 = dataset(strong, model="tiny", site="projector", layer=2,
                 items=lambda f: f["counterfactual_kind"].isna())
    assert not d2.frame["sample_id"].str.endswith("_swap").any()
    with pytest.raises(DataError, match="label column 'ordnal' not found.*Did you mean 'ordinal'"):
        dataset(strong, model="tiny", site="projector", layer=2, label="ordnal")
    with pytest.raises(DataError, match="one class only"):
        dataset(strong, model="tiny", site="projector", layer=2, label="axis")
    with pytest.raises(DataError, match="no samples"):
        dataset(strong, model="tiny", site="projector", layer=2, role="background")


def test_errors_are_value_errors_and_configs_validate():
    assert issubclass(DataError, ProbeError) and issubclass(ProbeError, ValueError)
    with pytest.raises(ConfigError, match="The 'C' parameter of ProbeConfig must be a float > 0. Got 0"):
        ProbeConfig(C=0)
    with pytest.raises(ConfigError, match="unknown ProbeConfig key 'n_split'.*Did you mean 'n_splits'"):
        ProbeConfig.from_dict({"n_split": 3})
    with pytest.raises(ConfigError, match="'pool' parameter of SweepConfig"):
        SweepConfig(model="m", pool="sample")
    c = ProbeConfig(group_by=("layout",), n_splits=3)
    assert ProbeConfig.from_dict(c.to_dict()) == c
    with pytest.raises(Exception):
        c.C = 2.0  # frozen


def test_cli_parsers():
    from probes.commands import _where, parse_layers

    assert parse_layers("0,4,8") == (0, 4, 8) and parse_layers("2-4,2") == (2, 3, 4)
    assert parse_layers(None, [0, 1]) == (0, 1) and parse_layers("all", [3]) == (3,)
    with pytest.raises(ConfigError, match=r"layer\(s\) \[9\] not in the store"):
        parse_layers("9", [0, 1])
    assert _where(("axis=horizontal", "counterfactual_kind=,swap", "axis=vertical")) == {
        "axis": ["horizontal", "vertical"], "counterfactual_kind": ["", "swap"]}
    with pytest.raises(ConfigError, match="not key=value"):
        _where(("axis",))


@settings(max_examples=40, deadline=None)
@given(scenes=st.lists(st.integers(0, 7), min_size=8, max_size=40),
       factor=st.lists(st.sampled_from("abc"), min_size=40, max_size=40),
       split=st.sampled_from(["group_kfold", "group_shuffle"]), seed=st.integers(0, 99))
def test_property_no_scene_or_factor_value_straddles_a_split(scenes, factor, split, seed):
    frame = pd.DataFrame({"scene_id": [f"s{s}" for s in scenes], "bg": factor[:len(scenes)]})
    for group_by in ((), ("bg",)):
        groups = split_groups(frame, group_by)
        cfg = ProbeConfig(split=split, n_splits=2, group_by=group_by, random_state=seed)
        try:
            splits = make_splits(groups, cfg)
        except DataError:
            assert len(set(groups)) < 2
            continue
        for tr, te in splits:
            assert len(tr) + len(te) == len(frame) and not set(tr) & set(te)
            for col in ("scene_id", *group_by):
                assert not set(frame[col].iloc[tr]) & set(frame[col].iloc[te])


def _write_metadata(path, store):
    import json

    lab = store.labels()
    tok = store._tokens[store._tokens["role"] == "object"]
    with open(path / "metadata.jsonl", "w") as f:
        for sid in lab["sample_id"]:
            t = tok[tok["sample_id"] == sid].drop_duplicates("entity")
            ents = [{"mask_id": int(e), "role": "target", "color": c, "kind": "square"}
                    for e, c in zip(t["entity"], t["color"])]
            rec = {"id": sid, "entities": ents,
                   "factors": {"background": "white" if sid < "s010" else "gray",
                               "layout": {"cells": [1, 2]}}}
            f.write(json.dumps(rec) + "\n")


def test_scene_factors_and_entity_colours_from_the_dataset(strong, tmp_path):
    from probes.dataset import scene_labels

    _write_metadata(tmp_path, strong)
    samples, ents = scene_labels(tmp_path)
    assert set(samples.columns) == {"sample_id", "image_hash", "background", "layout", "color_set"}
    assert samples["layout"].iloc[0] == '{"cells":[1,2]}'
    d = dataset(strong, model="tiny", site="projector", layer=2, data=tmp_path)
    truth = strong._tokens.set_index(["sample_id", "row", "col"])["color"]
    assert (d.frame["color"].to_numpy() == truth.loc[list(zip(
        d.frame["sample_id"], d.frame["row"], d.frame["col"]))].to_numpy()).all()
    # colour set of the targets, identical for a scene and its swap twin
    assert (d.frame.groupby("scene_id")["color_set"].nunique() == 1).all()
    res = fit_probe(d, ProbeConfig(group_by=("background",), n_splits=2))
    assert res.n_groups == 2 and res.meta["token_type"] == ["color", "row", "col"]
    pooled = dataset(strong, model="tiny", site="projector", layer=2, pool="entity",
                     label="side", data=tmp_path)
    assert pooled.frame["color"].notna().all()  # joined by mask_id for pooled items
    (tmp_path / "metadata.jsonl").write_text('{"id": "s000"}\nnot json\n')
    with pytest.raises(DataError, match="line 2: not a stimulus record"):
        scene_labels(tmp_path)
    with pytest.raises(DataError, match="no metadata.jsonl"):
        scene_labels(tmp_path / "nowhere")
