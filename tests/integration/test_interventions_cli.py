"""``spatialbind patch`` / ``ablate`` / ``amplify`` end to end (CliRunner on the click group), with
the bad-input contract: one line, exit 1, nothing already written lost."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli import spatialbind

MODEL = "tiny-qwen2-vl"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    from scenegen.generate import generate
    from scenegen.presets import preset_config

    out = tmp_path_factory.mktemp("cli") / "squares"
    generate(preset_config("squares-qwen2-vl", n=4), out, progress=False)
    return str(out)


def _invoke(*args):
    return CliRunner().invoke(spatialbind, list(args), catch_exceptions=False)


def _direction(path, *, model=MODEL, site="projector", width=128, axis=None):
    from probes.directions import Direction, save_direction

    w = np.random.default_rng(0).standard_normal((1, width))
    d = Direction(weights=w, bias=np.zeros(1), components=("right_vs_left",),
                  classes=("left", "right"), model=model, site=site, layer=0,
                  extra={"axis": axis} if axis else {})
    return str(save_direction(d, path))


def test_patch_e4_writes_table_summary_and_heatmap(data, tmp_path):
    out = tmp_path / "e4"
    r = _invoke("patch", "--model", MODEL, "--data", data, "--out", str(out), "--experiment",
                "e4", "--layers", "0,2", "--limit", "1", "--quiet", "--recipe", "robust")
    assert r.exit_code == 0, r.output
    t = pd.read_parquet(out / "e4.parquet")
    assert sorted(set(t["layer"])) == [0, 2] and set(t["region"]) == {"object", "strip"}
    s = json.loads((out / "summary.json").read_text())
    assert s["forwards"] < s["naive_forwards"]
    assert (out / "e4_heatmap.png").stat().st_size > 1000
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == MODEL and cfg["config"]["layers"] == "0,2"
    assert "torch" in cfg["versions"]
    # the paper recipe (the default here) keeps only pairs answered right on both runs: the
    # random tiny model has none, and the command says so in one line
    r = CliRunner().invoke(spatialbind, ["patch", "--model", MODEL, "--data", data, "--out",
                                         str(tmp_path / "p"), "--experiment", "e4", "--layers",
                                         "0", "--limit", "1", "--max-attempts", "2", "--quiet"])
    assert r.exit_code == 1 and "answered right on both runs" in r.output
    assert r.output.strip().count("\n") == 0


def test_ablate_writes_accuracy_vs_chance(data, tmp_path):
    out = tmp_path / "e5"
    r = _invoke("ablate", "--model", MODEL, "--data", data, "--out", str(out), "--limit", "2",
                "--quiet")
    assert r.exit_code == 0, r.output
    assert "chance 0.333" in r.output
    assert len(pd.read_csv(out / "e5.csv")) == 2 and (out / "e5_accuracy.png").exists()


def test_amplify_with_probe_direction(data, tmp_path):
    d = _direction(tmp_path / "dir")
    out = tmp_path / "e7"
    r = _invoke("amplify", "--model", MODEL, "--data", data, "--out", str(out), "--alphas",
                "0:10:5", "--direction", d, "--limit", "2", "--quiet", "--recipe", "robust")
    assert r.exit_code == 0, r.output
    assert "held-out alpha" in r.output and "paper's Probe*" in r.output
    # the cross-fitted selection is printed with its fold alphas (2 items of 2 triples: K = 2)
    cf = [l for l in r.output.splitlines() if "probe | cross-fitted alpha (K-fold)" in l]
    assert len(cf) == 1 and "fold alphas=[" in cf[0] and "random changes" in cf[0], r.output
    s = json.loads((out / "summary.json").read_text())
    row = next(x for x in s["selections"] if x["selection"] == "cross-fitted alpha (K-fold)")
    assert row["cv_folds"] == 2 and "K reduced from 4 to 2" in row["note"]
    # on a paper preset the default recipe reports the authors' selections
    r = _invoke("amplify", "--model", MODEL, "--data", data, "--out", str(tmp_path / "p"),
                "--alphas", "0:10:5", "--direction", d, "--limit", "2", "--quiet")
    assert r.exit_code == 0, r.output
    assert "Probe (the authors' best global alpha" in r.output and "(paper recipe)" in r.output
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["recipe"] == "paper" and s["selections_robust"]
    t = pd.read_parquet(out / "e7.parquet")
    assert sorted(set(t["alpha"])) == [0.0, 5.0, 10.0] and set(t["control"]) == {"probe",
                                                                                  "random"}
    assert (out / "e7_dose_response.png").exists()


@pytest.mark.parametrize("kw,needle", [
    ({"model": "tiny-gemma-3"}, "model"),
    ({"site": "lm.resid.5"}, "site"),
    ({"width": 64}, "width"),
])
def test_amplify_refuses_foreign_direction(data, tmp_path, kw, needle):
    d = _direction(tmp_path / "dir", **kw)
    out = tmp_path / "e7"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    r = CliRunner().invoke(spatialbind, ["amplify", "--model", MODEL, "--data", data, "--out",
                                         str(out), "--direction", d, "--quiet"])
    assert r.exit_code == 1
    lines = [l for l in r.output.strip().splitlines() if l.startswith("Error")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.output
    assert (out / "keep.txt").read_text() == "earlier results"
    assert not (out / "e7.parquet").exists()


def test_empty_alpha_range_and_bad_layers_are_one_line_errors(data, tmp_path):
    r = CliRunner().invoke(spatialbind, ["amplify", "--model", MODEL, "--data", data, "--out",
                                         str(tmp_path / "x"), "--alphas", "5:1:1",
                                         "--direction", "mean-diff"])
    assert r.exit_code == 1 and "empty range" in r.output
    assert not (tmp_path / "x").exists()  # refused before anything was created
    r = CliRunner().invoke(spatialbind, ["amplify", "--model", MODEL, "--data", data, "--out",
                                         str(tmp_path / "x"), "--cv-folds", "1",
                                         "--direction", "mean-diff"])
    assert r.exit_code == 1 and "'cv_folds' parameter of AmplifyConfig must be an int >= 2" \
        in r.output
    assert len([l for l in r.output.splitlines() if l.startswith("Error")]) == 1
    assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(spatialbind, ["patch", "--model", MODEL, "--data", data, "--out",
                                         str(tmp_path / "y"), "--layers", "0,99", "--quiet"])
    assert r.exit_code == 1 and "out of range" in r.output
    r = CliRunner().invoke(spatialbind, ["patch", "--model", MODEL, "--data", data, "--out",
                                         str(tmp_path / "z"), "--regions", "object,stripe"])
    assert r.exit_code == 1 and "regions" in r.output


@pytest.mark.parametrize("recipe", ["paper", "robust"])
def test_patch_and_ablate_write_regions_and_record_the_recipe(data, tmp_path, recipe,
                                                               monkeypatch):
    from scenegen import read_dataset

    import interventions.patching as patching
    from interventions.regions import regions_table

    # paper E4 keeps pairs answered right on both runs: make the tiny model always right
    monkeypatch.setattr(patching, "vocab_top1", lambda tok, logits: "x")
    monkeypatch.setattr(patching, "vocab_top1_answer", lambda a: "x")

    ds = read_dataset(data)
    for cmd, exp in (("patch", "e4"), ("ablate", "e5")):
        out = tmp_path / exp
        args = [cmd, "--model", MODEL, "--data", data, "--out", str(out), "--limit", "2",
                "--recipe", recipe, "--quiet"]
        if cmd == "patch":  # the dataset's items (the authors' pairs: test_authors_pairs.py)
            args += ["--experiment", "e4", "--layers", "0", "--pairs", "dataset"]
        r = _invoke(*args)
        assert r.exit_code == 0, r.output
        assert f"{recipe} recipe" in r.output
        assert json.loads((out / "config.json").read_text())["recipe"] == recipe
        s = json.loads((out / "summary.json").read_text())
        assert s["recipe"] == recipe and s["n_skipped"] == 0
        got = pd.read_parquet(out / "regions.parquet")
        assert list(got.columns) == ["id", "region", "clean_token", "source_token", "source"]
        want, _ = regions_table(ds, (12, 12), exp, recipe, limit=2)
        key = list(got.columns)
        assert got.sort_values(key).reset_index(drop=True).equals(
            want.sort_values(key).reset_index(drop=True))


def test_recipe_defaults_to_paper_on_a_paper_preset(data, tmp_path):
    r = _invoke("ablate", "--model", MODEL, "--data", data, "--out", str(tmp_path / "e5"),
                "--limit", "1", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e5" / "summary.json").read_text())["recipe"] == "paper"


def test_amplify_cli_applies_each_axis_its_own_direction(data, tmp_path):
    """Two planted directions tagged horizontal and vertical. Through the CLI, each item's
    margins equal a run that applies only its own axis's direction to every item, and differ
    from a run with the other axis's direction."""
    from probes.directions import Direction, save_direction
    from scenegen import read_dataset
    from vlms.registry import load_adapter

    from interventions.amplification import AmplifyConfig, run_e7

    rng = np.random.default_rng(0)
    ws = {"horizontal": rng.standard_normal((1, 128)), "vertical": rng.standard_normal((1, 128))}
    dirs = []
    for axis, weights in ws.items():
        d = Direction(weights=weights, bias=np.zeros(1), components=("right_vs_left",),
                      classes=("left", "right"), model=MODEL, site="projector", layer=0,
                      extra={"axis": axis})
        dirs.append(str(save_direction(d, tmp_path / axis)))
    out = tmp_path / "e7"
    r = _invoke("amplify", "--model", MODEL, "--data", data, "--out", str(out), "--alphas",
                "0,50", "--direction", dirs[0], "--direction", dirs[1], "--quiet",
                "--recipe", "robust")
    assert r.exit_code == 0, r.output
    got = pd.read_parquet(out / "e7.parquet")
    got = got[(got["control"] == "probe") & (got["alpha"] == 50)].set_index("item")
    assert set(got["axis"]) == {"horizontal", "vertical"}
    ad, ds = load_adapter(MODEL), read_dataset(data)
    cfg = AmplifyConfig(alphas=(0, 50))
    only = {}
    for axis, w in ws.items():
        t, _ = run_e7(ad, ds, w.astype(np.float32), cfg, progress=False)
        only[axis] = t[(t["control"] == "probe") & (t["alpha"] == 50)].set_index("item")
    for item, row in got.iterrows():
        own, other = row["axis"], ({"horizontal", "vertical"} - {row["axis"]}).pop()
        assert row["margin"] == pytest.approx(only[own].loc[item, "margin"], abs=1e-5)
        assert abs(row["margin"] - only[other].loc[item, "margin"]) > 1e-5
