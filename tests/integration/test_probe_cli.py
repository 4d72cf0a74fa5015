"""``spatialbind probe`` end to end on a store written by actstore's writer, and its bad input."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import spatialbind
from probes.directions import load_direction

actstore_testing = pytest.importorskip("actstore.testing")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.zarr"
    actstore_testing.make_store(path, n_samples=24, planted=3.0, grid=4, seed=2)
    return str(path)


def run(*args):
    return CliRunner().invoke(spatialbind, list(args), catch_exceptions=False)


@pytest.mark.parametrize("scheduler", ["serial", "local"])
def test_probe_writes_table_plots_maps_directions(store, tmp_path, scheduler):
    out, dirs = tmp_path / "out", tmp_path / "dirs"
    r = run("probe", "--store", store, "--model", "tiny", "--site", "lm.resid",
            "--layers", "0-2", "--roles", "object,distractor", "--where", "axis=horizontal",
            "--group-by", "target0_color",
            "--n-splits", "3", "--scheduler", scheduler, "--export-directions", str(dirs),
            "--map-samples", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "3/6 cells probed" in r.output
    table = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(table, pd.read_csv(out / "results.csv"), check_dtype=False)
    assert list(table["layer"]) == [0, 0, 1, 1, 2, 2]
    obj = table[table["role"] == "object"]
    assert (obj["accuracy"] > 0.8).all() and obj["selectivity"].notna().all()
    assert (obj["n_groups"] == 3).all()  # one group per colour: no colour straddles a split
    assert "position_accuracy" in table and table.loc[table["role"] == "distractor", "error"].notna().all()
    for f in ("accuracy_heatmap.png", "accuracy_lines.png", "selectivity_heatmap.png",
              "maps/layer000.png", "maps/layer002.png", "maps/summary.csv", "config.json"):
        assert (out / f).is_file(), f
    summ = pd.read_csv(out / "maps" / "summary.csv")
    assert set(summ["region"]) == {"object", "strip", "background"} and len(summ) == 9
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["probe"]["group_by"] == ["target0_color"] and cfg["sweep"]["layers"] == [0, 1, 2]
    assert cfg["where"] == {"axis": ["horizontal"]}
    index = json.loads((dirs / "index.json").read_text())
    assert [e["layer"] for e in index] == [0, 1, 2]
    d = load_direction(dirs / index[1]["path"], expect_model="tiny", expect_site="lm.resid",
                       expect_width=8, expect_layer=1)
    assert d.cv_accuracy == pytest.approx(float(obj[obj["layer"] == 1]["accuracy"].iloc[0]))


@pytest.mark.parametrize("args, message", [
    (["--layers", "7"], "layer(s) [7] not in the store"),
    (["--layers", "x"], "cannot read 'x'"),
    (["--model", "qwen"], "qwen"),
    (["--roles", "object", "--label", "ordnal"], "Did you mean 'ordinal'"),
    (["--roles", "objects"], "unknown role 'objects'. Did you mean 'object'"),
    (["--group-by", "colour"], "--group-by: unknown label column 'colour'"),
    (["--roles", "background"], "every (layer, role) cell failed"),
    (["--where", "axis"], "not key=value"),
])
def test_bad_input_is_one_line_and_writes_nothing(store, tmp_path, args, message):
    out = tmp_path / "out"
    base = ["probe", "--store", store, "--model", "tiny", "--site", "lm.resid",
            "--scheduler", "serial", "--out", str(out)]
    # later options override earlier ones (click keeps the last value)
    r = CliRunner().invoke(spatialbind, base + args)
    assert r.exit_code == 1, r.output
    err = r.output.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1], r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_init_weight_baseline_store(store, tmp_path):
    init = tmp_path / "init.zarr"  # same layout, no planted signal: what random weights give
    actstore_testing.make_store(init, n_samples=24, planted=None, grid=4, seed=2)
    out = tmp_path / "out"
    r = run("probe", "--store", store, "--model", "tiny", "--site", "projector", "--roles",
            "object", "--n-splits", "3", "--no-control", "--scheduler", "serial",
            "--map-samples", "0", "--baseline-store", str(init), "--out", str(out))
    assert r.exit_code == 0, r.output
    t = pd.read_parquet(out / "results.parquet")
    assert len(t) == 1 and t["control_accuracy"].isna().all()
    assert t["accuracy"].iloc[0] > 0.85 and t["init_accuracy"].iloc[0] < 0.75
    assert t["ci_low"].iloc[0] > t["init_ci_high"].iloc[0]
    assert t["data_hash"].iloc[0] != t["init_data_hash"].iloc[0]
    assert not (out / "maps").exists()
    bad = CliRunner().invoke(spatialbind, ["probe", "--store", store, "--model", "tiny",
                                           "--baseline-store", str(tmp_path / "nope.zarr"),
                                           "--scheduler", "serial", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert not (tmp_path / "o2").exists()


def test_probe_paper_recipe_one_probe_per_orientation(store, tmp_path):
    out = tmp_path / "paper"
    r = run("probe", "--store", store, "--model", "tiny", "--site", "lm.resid", "--layers", "0",
            "--roles", "object", "--scheduler", "serial", "--map-samples", "0",
            "--recipe", "paper", "--out", str(out), "--export-directions", str(tmp_path / "d"))
    assert r.exit_code == 0, r.output
    assert "(paper recipe)" in r.output
    tagged = 0
    for axis in ("horizontal", "vertical"):  # each orientation's directions carry their axis
        index = tmp_path / "d" / axis / "index.json"
        if index.is_file():
            for e in json.loads(index.read_text()):
                assert load_direction(tmp_path / "d" / axis / e["path"]).extra["axis"] == axis
                tagged += 1
    assert tagged >= 1
    table = pd.read_parquet(out / "results.parquet")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "paper"
    assert cfg["probe"]["classifier"] == "torch_linear" and cfg["probe"]["epochs"] == 200
    assert cfg["probe"]["split"] == "group_shuffle" and not cfg["probe"]["control"]
    assert set(table["orientation"]) <= {"horizontal", "vertical"} and len(table) == 2
    ok = table[table["error"].isna()]
    assert len(ok) >= 1 and (ok["accuracy"] > 0.8).all()  # planted signal, the authors' probe


def test_probe_paper_recipe_writes_maps_per_orientation(store, tmp_path):
    """One probe per orientation under ``paper``, so one map set each: maps/<axis>/layerNNN.png,
    and the summary says which orientation's probe (trained on that axis's base images only)
    made each row; the images mapped are held-out base images of that axis."""
    from PIL import Image

    out = tmp_path / "paper_maps"
    r = run("probe", "--store", store, "--model", "tiny", "--site", "lm.resid", "--layers", "0",
            "--roles", "object", "--scheduler", "serial", "--map-samples", "2",
            "--recipe", "paper", "--out", str(out))
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out / "results.parquet")
    fitted = set(table.loc[table["error"].isna(), "orientation"])  # a tiny store: maybe one
    assert fitted
    summ = pd.read_csv(out / "maps" / "summary.csv")
    assert set(summ["orientation"]) == fitted
    for axis in ("horizontal", "vertical"):
        png = out / "maps" / axis / "layer000.png"
        assert png.is_file() == (axis in fitted)
        if axis in fitted:
            assert Image.open(png).size[0] > 100
    samples = actstore_testing.synthetic_samples(24, seed=2).set_index("sample_id")
    for _, row in summ.iterrows():
        ids = row["samples"].split(";")
        assert len(ids) == 2
        for sid in ids:  # that orientation's base images
            assert samples.loc[sid, "axis"] == row["orientation"]
            assert pd.isna(samples.loc[sid, "counterfactual_of"])
    assert not (out / "maps" / "layer000.png").exists()


def test_probe_paper_side_exports_e7_rank_two_directions_from_golden_items(store, tmp_path):
    from probes.dataset import open_store

    ids = sorted(map(str, open_store(store).labels("tiny")["sample_id"]))
    golden = ids[::2] + ids[1:6:2]  # a stand-in "answered right" set: not every item
    (tmp_path / "golden.txt").write_text("\n".join(golden) + "\n")
    d = tmp_path / "d"
    r = run("probe", "--store", store, "--model", "tiny", "--site", "projector", "--layers", "0",
            "--roles", "object", "--label", "side", "--scheduler", "serial", "--map-samples", "0",
            "--recipe", "paper", "--golden", str(tmp_path / "golden.txt"),
            "--out", str(tmp_path / "out"), "--export-directions", str(d))
    assert r.exit_code == 0, r.output
    for axis in ("horizontal", "vertical"):
        (entry,) = json.loads((d / axis / "index.json").read_text())
        e = load_direction(d / axis / entry["path"], expect_model="tiny", expect_site="projector")
        assert e.weights.shape == (2, 8) and entry["rank"] == 2
        x = e.extra
        assert (x["recipe"], x["rank"], x["axis"], x["golden_only"]) == ("paper", 2, axis, True)
        tr, te = set(x["split"]["train_items"]), set(x["split"]["test_items"])
        assert te and not tr & te and (tr | te) <= set(golden)
        assert e.probe_config["classifier"] == "torch_linear" and e.pool == "entity"


def test_probe_paper_recipe_on_a_local_cluster_equals_serial(store, tmp_path):
    """--recipe paper with --scheduler local:2 (the spelling of extract / patch / amplify):
    the same cells, scores and exported directions as a serial run."""
    import numpy as np

    tables, dirs = {}, {}
    for sch in ("serial", "local:2"):
        tag = sch.replace(":", "_")
        out, d = tmp_path / tag, tmp_path / f"dirs_{tag}"
        r = run("probe", "--store", store, "--model", "tiny", "--site", "lm.resid",
                "--layers", "0-1", "--roles", "object", "--scheduler", sch, "--map-samples", "0",
                "--recipe", "paper", "--out", str(out), "--export-directions", str(d),
                "--no-progress")
        assert r.exit_code == 0, r.output
        assert json.loads((out / "config.json").read_text())["recipe"] == "paper"
        tables[sch] = pd.read_parquet(out / "results.parquet").drop(columns=["seconds"])
        dirs[sch] = {p.relative_to(d): load_direction(p.parent).weights
                     for p in sorted(d.glob("*/*/direction.json"))}
    assert tables["serial"]["accuracy"].notna().any()
    pd.testing.assert_frame_equal(tables["serial"], tables["local:2"])
    assert dirs["serial"] and dirs["serial"].keys() == dirs["local:2"].keys()
    for k, w in dirs["serial"].items():
        np.testing.assert_allclose(w, dirs["local:2"][k], rtol=1e-5, atol=1e-6)
