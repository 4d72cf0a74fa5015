"""``--scheduler local:2`` intervention sweeps (E4 layer x region grid, E6 layers, E7 alphas) equal
serial runs: same rows in the same order, same predictions, probabilities equal to float tolerance."""
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

    out = tmp_path_factory.mktemp("cl") / "squares"
    generate(preset_config("squares-qwen2-vl", n=4), out, progress=False)
    return str(out)


def _run(*args):
    r = CliRunner().invoke(spatialbind, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def _same(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for c in a.columns:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=c)
        else:
            assert a[c].tolist() == b[c].tolist(), c


@pytest.fixture(scope="module")
def organism_data(tmp_path_factory):
    """The shipped organisms' geometry (8x8 tokens): they answer the paper's pairs right, so the
    paper recipe's correctness filters keep pairs without planting verdicts in the workers."""
    from scenegen.config import GenerateConfig
    from scenegen.generate import generate

    out = tmp_path_factory.mktemp("clo") / "squares"
    generate(GenerateConfig.from_dict({
        "generator": "flat", "seed": 0, "n": 2,
        "flat": {"task": "squares", "grid": {"num_tokens": 8, "token_px": 28, "size": 1,
                                             "spacing": 2}}}), out, progress=False)
    return str(out)


@pytest.mark.parametrize("name,organism", [
    ("e4", "organism-qwen2-vl-vision"),
    pytest.param("e6", "organism-qwen2-vl-lm", marks=pytest.mark.slow)])
def test_paper_sweeps_on_a_local_cluster_equal_serial_runs(organism_data, tmp_path, name,
                                                            organism):
    """The paper recipe on a cluster: the authors' pairs (drawn, checked and kept in every
    chunk alike), the table, the summary's recipe fields and regions.parquet equal a serial run."""
    # E4: one layer x two regions = two chunks; E6: two layers = two chunks
    args = ["patch", "--experiment", name, "--layers", "0" if name == "e4" else "0,1",
            "--limit", "1",
            "--max-attempts", "3", "--model", organism, "--data", organism_data, "--quiet",
            "--recipe", "paper"]
    serial, dist = tmp_path / "s", tmp_path / "d"
    _run(*args, "--out", str(serial))
    _run(*args, "--out", str(dist), "--scheduler", "local:2")
    _same(pd.read_parquet(serial / f"{name}.parquet"), pd.read_parquet(dist / f"{name}.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(serial / "regions.parquet"),
                                  pd.read_parquet(dist / "regions.parquet"))
    ss = json.loads((serial / "summary.json").read_text())
    sd = json.loads((dist / "summary.json").read_text())
    assert ss["pairs_source"] == sd["pairs_source"] == "authors" and ss["n_items"] >= 1
    for k in ("pairs", "pairs_per_direction", "pool", "recipe", "n_items", "flip_layers",
              "n_skipped", "dropped_wrong", "dropped_ablated_wrong", "n_dropped_ablated_wrong"):
        assert ss.get(k) == sd.get(k), k
    _same(pd.DataFrame(ss["by_layer"]), pd.DataFrame(sd["by_layer"]))


@pytest.mark.parametrize("name", ["e4", pytest.param("e6", marks=pytest.mark.slow),
                                  pytest.param("e7", marks=pytest.mark.slow)])
def test_sweeps_on_a_local_cluster_equal_serial_runs(data, tmp_path, name):
    from probes.directions import Direction, save_direction

    runs = {"e4": ["patch", "--experiment", "e4", "--layers", "0,2", "--limit", "2"],
            "e6": ["patch", "--experiment", "e6", "--layers", "0,1", "--limit", "1"]}
    d = Direction(weights=np.random.default_rng(0).standard_normal((1, 128)), bias=np.zeros(1),
                  components=("right_vs_left",), classes=("left", "right"), model=MODEL,
                  site="projector", layer=0)
    dpath = str(save_direction(d, tmp_path / "dir"))
    runs["e7"] = ["amplify", "--alphas", "0:10:5", "--direction", dpath, "--limit", "2"]
    # E7 runs the paper recipe (the authors' selections are recomputed from the merged table)
    recipe = "paper" if name == "e7" else "robust"
    for name, args in [(name, runs[name])]:
        serial, dist = tmp_path / f"{name}_s", tmp_path / f"{name}_d"
        common = ["--model", MODEL, "--data", data, "--quiet", "--recipe", recipe]
        _run(*args, *common, "--out", str(serial))
        _run(*args, *common, "--out", str(dist), "--scheduler", "local:2")
        ts, td = pd.read_parquet(serial / f"{name}.parquet"), pd.read_parquet(dist / f"{name}.parquet")
        _same(ts, td)
        ss = json.loads((serial / "summary.json").read_text())
        sd = json.loads((dist / "summary.json").read_text())
        if name == "e7":
            assert ss["recipe"] == sd["recipe"] == "paper"
            assert ss["selections"] == sd["selections"]
            assert ss["selections_robust"] == sd["selections_robust"]
            assert ss["paper"] == sd["paper"]
            assert ss["dose_response"] == sd["dose_response"]
        else:
            _same(pd.DataFrame(ss["by_layer"]), pd.DataFrame(sd["by_layer"]))
            assert ss["flip_layers"] == sd["flip_layers"] and ss["n_items"] == sd["n_items"]
