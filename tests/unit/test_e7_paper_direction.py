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


def test_paper_amplify_is_the_authors_hook_arithmetic_without_orthogonalising():
    """``Amplify(exact=True)`` (the paper recipe) is the authors' pre-hook as published
    (coco_amplification/src/qwen.py and gemma.py, predict_with_amp): W cast to the hidden
    states' dtype, coeff = (h W) / (sum_d W**2 + 1e-8), h + alpha * coeff W^T, in that dtype.
    Their two columns are summed as they are, not orthogonalised first: with non-orthogonal
    columns the edit is not (1 + alpha) x the projection on their span."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 16, generator=g)
    w[1] = 0.8 * w[0] + 0.6 * w[1]  # strongly non-orthogonal columns
    alpha = 3.0
    for dtype in (torch.float32, torch.bfloat16):
        h = torch.randn(1, 6, 16, generator=g).to(dtype)
        out = Amplify(w, alpha, exact=True)(h.clone(), None, pairs([0], [2, 4]))
        W = w.T.to(dtype)  # the authors' (D, 2) layout
        x = h[:, [2, 4], :]
        coeff = torch.einsum("btd,dk->btk", x, W) / ((W ** 2).sum(dim=0) + 1e-8)
        want = x + alpha * torch.einsum("btk,dk->btd", coeff, W)
        assert out.dtype == dtype
        torch.testing.assert_close(out[:, [2, 4], :], want)  # dtype-aware tolerances
        torch.testing.assert_close(out[:, [0, 1, 3, 5], :], h[:, [0, 1, 3, 5], :],
                                   rtol=0, atol=0)
    # no orthogonalisation: the span projection scaled by (1 + alpha) is something else
    h = torch.randn(1, 3, 16, generator=g)
    out = Amplify(w, alpha, exact=True)(h.clone(), None, pairs([0], [1]))[0, 1].double()
    q, _ = torch.linalg.qr(w.T.double())
    x = h[0, 1].double()
    span = x + alpha * (q @ (q.T @ x))
    assert not torch.allclose(out, span, atol=1e-3)
