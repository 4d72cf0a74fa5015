"""Grid probes (paper App. C.6): random k x k grids from the flat generator, whose ordinal labels
are the column (horizontal) or row (vertical), probed at the projector through the CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli import spatialbind
from scenegen.generate import build_generator, resolve
from scenegen.presets import preset_config

# the authors' GridGeom (probing/src/grids.py): cell = entity_size, gap = spacing, centred
GEOM = {"qwen2-vl": (12, 28, 2, 2), "gemma-3": (16, 56, 3, 3)}


@pytest.mark.parametrize("k,model", [(2, "qwen2-vl"), (3, "qwen2-vl"), (2, "gemma-3"),
                                     (3, "gemma-3")])
def test_grid_geometry_and_labels(k, model):
    gen = build_generator(resolve(preset_config(f"grid{k}-{model}")))
    assert len(gen) == 120
    n, px, s, sp = GEOM[model]
    first = (n - (k * s + (k - 1) * sp)) // 2
    offs = [first + i * (s + sp) for i in range(k)]
    axes = set()
    splits = [gen.unit(i)[0].stimulus.split for i in range(len(gen))]
    assert splits.count("test") == 30 and splits.count("train") == 90
    for i in range(0, 120, 7):
        (r,) = gen.unit(i)
        st = r.stimulus
        axes.add(st.axis)
        assert len(st.entities) == k * k and st.counterfactual_kind is None
        cells = st.factors["layout"]["cells"]
        assert cells == [[offs[c], offs[rr], offs[c] + s, offs[rr] + s]
                         for rr in range(k) for c in range(k)]
        along = 0 if st.axis == "horizontal" else 1
        for e in st.entities:
            ys, xs = np.nonzero(r.mask == e.mask_id)
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
            # ordinal from the centroid alone: which of the k bands along the axis it falls in
            pos = (cx, cy)[along] / px
            band = [j for j in range(k) if offs[j] <= pos < offs[j] + s]
            assert band == [e.ordinal], (st.id, e)
    assert axes == {"horizontal", "vertical"}


def test_grid_probe_through_cli(tmp_path):
    run = lambda *a: CliRunner().invoke(spatialbind, list(a), catch_exceptions=False)  # noqa
    r = run("generate", "--preset", "grid3-qwen2-vl", "--n", "8", "--out", str(tmp_path / "d"),
            "--no-progress")
    assert r.exit_code == 0, r.output
    r = run("extract", "--model", "tiny-qwen2-vl", "--data", str(tmp_path / "d"), "--store",
            str(tmp_path / "s"), "--sites", "projector")
    assert r.exit_code == 0, r.output
    r = run("probe", "--store", str(tmp_path / "s"), "--model", "tiny-qwen2-vl", "--site",
            "projector", "--roles", "object", "--scheduler", "serial", "--n-splits", "2",
            "--map-samples", "0", "--no-control", "--out", str(tmp_path / "p"))
    assert r.exit_code == 0, r.output
    t = pd.read_parquet(tmp_path / "p" / "results.parquet")
    assert list(t["n_classes"]) == [3] and list(t["n_groups"]) == [8]
