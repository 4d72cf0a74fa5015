"""End to end: ``spatialbind generate`` (flat squares, Qwen geometry) -> ``spatialbind extract``
-> the store, queried through actstore; object tokens land on the cells of the masks' boxes."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from cli import spatialbind


def test_generate_extract_query(tmp_path):
    data, store = tmp_path / "ds", tmp_path / "s.zarr"
    r = CliRunner().invoke(spatialbind, ["generate", "--preset", "squares-qwen2-vl", "--n", "2",
                                         "--out", str(data)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(spatialbind, ["extract", "--model", "tiny-qwen2-vl", "--data",
                                         str(data), "--store", str(store), "--sites",
                                         "projector,lm.resid.2", "--batch-size", "4",
                                         "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "store estimate:" in r.output and "MiB" in r.output

    from actstore import open_store
    from scenegen import read_dataset

    ds = read_dataset(data)
    s = open_store(str(store))
    labels = s.labels("tiny-qwen2-vl")
    assert len(labels) == len(ds.stimuli) and labels["done"].all()
    x = s.select(model="tiny-qwen2-vl", site="projector", role="object")
    for stim in ds.base():
        i = int(np.nonzero(labels["sample_id"].to_numpy() == stim.id)[0][0])
        sel = x.sel(sample=i)
        real = ~sel["pad"].values
        rows, cols = sel["row"].values[real], sel["col"].values[real]
        ents = sel["entity"].values[real]
        for e in stim.targets:
            x0, y0, x1, y1 = e.box  # 336 px canvas, 28-px tokens, grid-aligned squares
            want = {(r_, c_) for r_ in range(y0 // 28, y1 // 28) for c_ in range(x0 // 28, x1 // 28)}
            got = {(int(r_), int(c_)) for r_, c_, m in zip(rows, cols, ents) if m == e.mask_id}
            assert got == want, (stim.id, e.mask_id)
        assert not np.isnan(sel.values[real].astype(np.float32)).any()
