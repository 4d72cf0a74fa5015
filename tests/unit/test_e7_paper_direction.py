"""E7 under the paper recipe: a rank-2 direction per axis (both columns of the authors' 2-class
probe) survives export, loads per axis in ``amplify`` and is applied with the paper's formula
``h + alpha * sum_k (h . w_k / ||w_k||^2) w_k`` (checked against a hand computation)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interventions.amplification import _dirs_for, load_directions
from interventions.hooks import Amplify, pairs
from probes.directions import axis_directions, save_direction
from probes.testing import PlantedStore


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    store = PlantedStore(n_scenes=40, n_targets=2, grid=6, hidden=16, noise=1.0,
                         axes=("horizontal", "vertical"), seed=3)
    items = sorted(store.labels()["sample_id"])
    dirs = axis_directions(store, model="tiny", site="projector", layer=0, recipe="paper",
                           items=items)
    root = tmp_path_factory.mktemp("dirs")
    paths = [save_direction(d, root / axis) for axis, d in dirs.items()]
    return dirs, paths


def test_amplify_loads_each_axis_rank_two_direction(exported):
    dirs, paths = exported
    w = load_directions(paths, SimpleNamespace(name="tiny", d_lm=16))
    assert set(w) == {"horizontal", "vertical"}
    for axis, d in dirs.items():
        assert w[axis].shape == (2, 16)
        np.testing.assert_allclose(w[axis], d.weights.astype(np.float32))
        # run_e7 picks the item's own axis
        np.testing.assert_array_equal(_dirs_for(w, axis), w[axis])
    assert not np.allclose(w["horizontal"], w["vertical"])


def test_rank_two_amplification_equals_the_formula_by_hand(exported):
    dirs, paths = exported
    w = load_directions(paths, SimpleNamespace(name="tiny", d_lm=16))["vertical"]
    h = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    alpha = 4.0
    out = Amplify(w, alpha)(h, None, pairs([0, 1], [1, 3])).numpy().astype(np.float64)
    hn, wn = h.numpy().astype(np.float64), w.astype(np.float64)
    w0, w1 = wn
    for b, t in ((0, 1), (0, 3), (1, 1), (1, 3)):  # pairs(): rows x tokens
        x = hn[b, t]
        want = x + alpha * ((x @ w0) / (w0 @ w0) * w0 + (x @ w1) / (w1 @ w1) * w1)
        np.testing.assert_allclose(out[b, t], want, rtol=1e-5, atol=1e-5)
    keep = np.ones((2, 5), bool)
    keep[:, [1, 3]] = False
    np.testing.assert_array_equal(out[keep], hn[keep])  # other tokens untouched
