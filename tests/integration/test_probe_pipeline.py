"""generate -> extract (tiny Qwen2-VL) -> probe, through the CLI, and the E7 direction handed to
interventions. Slow (a minute or more on a busy 2-core box): run with ``-m slow``."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import spatialbind

pytestmark = pytest.mark.slow


def _ok(args):
    r = CliRunner().invoke(spatialbind, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def test_generate_extract_probe_and_load_direction(tmp_path):
    import probes

    ds, st, out = tmp_path / "ds", str(tmp_path / "st.zarr"), tmp_path / "out"
    _ok(["generate", "--preset", "squares-qwen2-vl", "--n", "8", "--out", str(ds), "--no-progress"])
    _ok(["extract", "--model", "tiny-qwen2-vl", "--data", str(ds), "--store", st,
         "--sites", "projector"])
    _ok(["probe", "--store", st, "--model", "tiny-qwen2-vl", "--roles", "object,strip",
         "--where", "counterfactual_kind=,swap", "--data", str(ds), "--group-by", "color_set",
         "--n-splits", "2", "--scheduler", "serial", "--recipe", "robust",
         "--map-samples", "2", "--export-directions", str(tmp_path / "dirs"), "--out", str(out)])
    t = pd.read_parquet(out / "results.parquet")
    assert list(t["role"]) == ["object", "strip"] and t["error"].isna().all()
    assert (t["n_classes"] == 3).all() and (t["n"] > 0).all()
    # base + swap rows only: isolated twins (ordinal -1) and criss-cross twins are filtered out
    data = probes.dataset(st, model="tiny-qwen2-vl", site="projector", layer=0,
                          where={"counterfactual_kind": ["", "swap"]})
    assert len(data) == t["n"].iloc[0]
    assert set(data.frame["counterfactual_kind"]) <= {"", "swap"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["probe"]["group_by"] == ["color_set"] and cfg["data"] == str(ds)
    summ = pd.read_csv(out / "maps" / "summary.csv")
    assert set(summ["region"]) == {"object", "strip", "background"}
    index = json.loads((tmp_path / "dirs" / "index.json").read_text())
    d = probes.load_direction(tmp_path / "dirs" / index[0]["path"], expect_model="tiny-qwen2-vl",
                              expect_site="projector")
    from types import SimpleNamespace

    from interventions.amplification import load_directions

    w = load_directions([tmp_path / "dirs" / index[0]["path"]],
                        SimpleNamespace(name="tiny-qwen2-vl", d_lm=d.width))
    assert w.shape == (3, d.width)  # one component per ordinal class
