"""probes.batched: the torch engine (all folds, control task and refit of several layers as one
batched logistic regression) against the scikit-learn probe on planted data, and its sweep API."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from probes import dataset
from probes.batched import fit_batched, fit_probes_batched, to_pipeline
from probes.config import ProbeConfig, SweepConfig
from probes.errors import ConfigError
from probes.fit import fit_probe
from probes.sweep import sweep
from probes.testing import PlantedStore

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted():
    # a weak signal, so accuracies sit well inside (chance, 1) and a wrong fit would show
    return PlantedStore(n_scenes=24, grid=6, hidden=16, noise=1.0, layers=3,
                        strength={"object": 1.2, "strip": 0.6}, seed=3)


@pytest.mark.parametrize("role", ["object", "strip"])
def test_same_accuracy_as_sklearn_on_planted_data(planted, role):
    datas = [dataset(planted, model="tiny", site="projector", layer=l, role=role)
             for l in range(3)]
    torch_res = fit_probes_batched(datas, ProbeConfig())
    for d, tr in zip(datas, torch_res):
        sk = fit_probe(d, ProbeConfig())
        assert abs(tr.accuracy - sk.accuracy) <= 0.01
        assert abs(tr.control_accuracy - sk.control_accuracy) <= 0.01
        assert tr.baselines["position"] == sk.baselines["position"]
        assert tr.chance == sk.chance and tr.n_test == sk.n_test
        # the refit probes decide alike on the rows
        assert (tr.pipeline.predict(d.X) == sk.pipeline.predict(d.X)).mean() >= 0.98
    # the signal grows with depth (PlantedStore's gain), so the probes must see it
    assert torch_res[2].accuracy > torch_res[0].accuracy + 0.05


def test_batched_models_equal_separate_fits():
    """Models sharing rows in one batch are independent: each equals its own fit."""
    rng = np.random.default_rng(0)
    n, d = 300, 10
    X = rng.normal(size=(2, n, d)).astype(np.float32)
    Y = rng.integers(0, 3, size=(3, n))
    X[0, :, 0] += Y[0]
    X[1, :, 1] -= Y[1]
    train = rng.random((3, n)) < 0.7
    fit, pred = fit_batched(X, Y, train, n_classes=3, max_iter=500, tol=1e-7)
    for j in range(3):
        one, p1 = fit_batched(X, Y[j:j + 1], train[j:j + 1], n_classes=3, max_iter=500, tol=1e-7)
        np.testing.assert_allclose(fit.coef[:, j], one.coef[:, 0], atol=2e-3)
        assert (pred[:, j] == p1[:, 0]).mean() >= 0.99
    # the standardisation is each model's own training rows (StandardScaler: population std)
    np.testing.assert_allclose(fit.mean[1, 2], X[1][train[2]].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fit.scale[1, 2], X[1][train[2]].std(0), rtol=1e-4)


def test_minimises_sklearns_objective():
    """At the optimum the gradient of 0.5||W||^2 + C * sum CE vanishes (hand-written gradient)."""
    rng = np.random.default_rng(1)
    n, d, K, C = 200, 5, 3, 0.5
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, K, n)
    X[:, 0] += y
    fit, _ = fit_batched(X, y[None], np.ones((1, n), bool), n_classes=K, C=C, max_iter=1000,
                         tol=1e-9)
    Z = (X - fit.mean[0, 0]) / fit.scale[0, 0]
    logits = Z @ fit.coef[0, 0] + fit.intercept[0, 0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = p - np.eye(K)[y]
    grad_w = fit.coef[0, 0] + C * Z.T @ r
    assert np.abs(grad_w).max() < 1e-3 * n * C
    assert np.abs(r.sum(0)).max() < 1e-3 * n


@pytest.mark.parametrize("k", [2, 3])
def test_pipeline_reproduces_the_batched_decisions(k):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 6)).astype(np.float32) * 3 + 1
    y = rng.integers(0, k, 120)
    X[:, 2] += y
    fit, pred = fit_batched(X, y[None], np.ones((1, 120), bool), n_classes=k)
    pipe = to_pipeline(fit, 0, 0, np.arange(k))
    np.testing.assert_array_equal(pipe.predict(X), pred[0, 0])
    logits = fit.decision(X, 0, 0)
    want = logits if k > 2 else logits[:, 1] - logits[:, 0]
    np.testing.assert_allclose(pipe.decision_function(X), want, rtol=1e-6, atol=1e-6)


def test_sweep_engine_torch_matches_sklearn_serial_and_on_a_cluster(planted):
    cfg = SweepConfig(model="tiny", site="projector", layers=(0, 1, 2), roles=("object", "strip"),
                      scheduler="serial")
    pc = ProbeConfig(n_splits=3)
    sk = sweep(planted, cfg, pc, progress=False)
    tt = sweep(planted, dataclasses.replace(cfg, engine="torch", layers_per_block=2), pc,
               progress=False)
    assert list(zip(sk["layer"], sk["role"])) == list(zip(tt["layer"], tt["role"]))
    assert np.abs(sk["accuracy"] - tt["accuracy"]).max() <= 0.01
    assert np.abs(sk["control_accuracy"] - tt["control_accuracy"]).max() <= 0.01
    assert tt["error"].isna().all()
    local = sweep(planted, dataclasses.replace(cfg, engine="torch", scheduler="local",
                                               processes=False, n_workers=2), pc, progress=False)
    assert np.abs(local["accuracy"] - tt["accuracy"]).max() <= 0.01


def test_bad_engine_is_a_clear_error():
    with pytest.raises(ConfigError, match="'engine' parameter of SweepConfig"):
        SweepConfig(model="m", engine="jax")


def _objective(X, y, mean, scale, coef, intercept, C):
    """scikit-learn's lbfgs objective per row, in float64 from the fitted weights (hand-written)."""
    Z = (np.asarray(X, np.float64) - mean) / scale
    L = Z @ coef + intercept
    L = L - L.max(1, keepdims=True)
    logp = L - np.log(np.exp(L).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + (coef ** 2).sum() / (2 * C * len(y))


@pytest.mark.parametrize("C", [1.0, 0.1])
def test_reaches_sklearns_objective_and_decisions(C):
    """Each batched model (own rows, own labels) stops where scikit-learn's lbfgs stops: the
    objective within 1e-5 of scikit-learn's and the same predictions on >= 99% of rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    n, d, K, m = 900, 60, 3, 4
    X = (rng.normal(size=(n, d)) * rng.uniform(0.2, 5, d) + rng.normal(size=d) * 3).astype(np.float32)
    Y = rng.integers(0, K, size=(m, n))
    X[:, :3] += 0.8 * Y[0][:, None]              # model 0 has signal; the others fit noise
    X[:, 3:5] -= 0.5 * Y[1][:, None]
    train = rng.random((m, n)) < 0.8
    fit, pred = fit_batched(X, Y, train, n_classes=K, C=C)
    assert fit.converged.all()
    for j in range(m):
        tr = train[j]
        sc = StandardScaler().fit(X[tr])
        lr = LogisticRegression(C=C, max_iter=1000).fit(sc.transform(X[tr]), Y[j][tr])
        ours = _objective(X[tr], Y[j][tr], fit.mean[0, j], fit.scale[0, j], fit.coef[0, j],
                          fit.intercept[0, j], C)
        theirs = _objective(X[tr], Y[j][tr], sc.mean_, sc.scale_, lr.coef_.T, lr.intercept_, C)
        assert abs(ours - theirs) <= 1e-5, (j, ours, theirs)
        assert abs(fit.loss[0, j] - ours) <= 1e-5     # the loss it reports is the objective
        assert (pred[0, j] == lr.predict(sc.transform(X))).mean() >= 0.99


def test_cold_start_sweep_fits_each_layer_from_zero(planted):
    """warm_start=False (the default): every layer's fit equals a fresh fit of that layer alone;
    warm_start=True starts from the previous layer and so takes other steps."""
    cfg = SweepConfig(model="tiny", site="projector", layers=(0, 1, 2), roles=("object",),
                      scheduler="serial", engine="torch")
    assert cfg.warm_start is False
    cold = sweep(planted, cfg, ProbeConfig(n_splits=3), progress=False)
    for layer in (1, 2):
        one = sweep(planted, dataclasses.replace(cfg, layers=(layer,)), ProbeConfig(n_splits=3),
                    progress=False)
        r = cold.set_index("layer").loc[layer]
        assert r["accuracy"] == one["accuracy"].iloc[0]
        assert r["control_accuracy"] == one["control_accuracy"].iloc[0]
        assert r["n_iter"] == one["n_iter"].iloc[0]
    warm = sweep(planted, dataclasses.replace(cfg, warm_start=True), ProbeConfig(n_splits=3),
                 progress=False)
    assert list(warm["n_iter"])[1:] != list(cold["n_iter"])[1:]
    with pytest.raises(ConfigError, match="warm_start"):
        SweepConfig(model="m", warm_start="no")
