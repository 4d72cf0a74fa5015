"""Batched linear probes in torch: every fold, the control task and the refit of many layers of
one site and role fitted as one batched multinomial logistic regression.

The scikit-learn probe (:func:`probes.fit.make_probe`) fits one ``StandardScaler`` +
``LogisticRegression`` per (layer, role, fold, task); at the paper's width (3584) and row counts
(tens of thousands of object tokens) that is hours per site. Here the models that share rows are
fitted together:

- rows of one (site, role) are the same tokens at every layer, so the labels, the grouped splits
  and the control labels are computed once per role; the ``G`` layers of a block are a
  ``(G, n, d)`` tensor (``layers_per_block``; default 1, so memory is bounded by one layer's rows,
  read from the store one layer at a time);
- per layer, the ``m`` models (k folds x {task, control}, plus the all-rows refit when directions
  are exported) are one weight tensor ``(G, d, m*K)``: a fold's model sees its training rows
  through a 0/1 row weight, so one GEMM ``X @ W`` gives every model's logits and one more its
  gradient;
- each model's standardisation (mean and scale of its training rows, as ``StandardScaler``) is
  folded into its weights, so ``X`` is never copied per fold.

The objective of each model is scikit-learn's ``LogisticRegression`` (lbfgs, multinomial, L2 on
the coefficients but not the intercept) divided by its number of training rows:
``mean CE + ||W||^2 / (2 C n_train)``; the sum over models is minimised with
``torch.optim.LBFGS`` (strong Wolfe line search); models are independent, so the sum's minimiser
is each model's minimiser. A fitted model is handed back as a scikit-learn ``Pipeline`` with the
same ``predict`` / ``decision_function`` (:func:`to_pipeline`), so directions and probe maps work
unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class BatchedFit:
    """Fitted batched models: ``coef (G, m, d, K)`` and ``intercept (G, m, K)`` in standardised
    space, ``mean`` / ``scale (G, m, d)`` of each model's training rows, ``n_iter`` L-BFGS steps."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    n_iter: int

    def decision(self, X, g: int, j: int) -> np.ndarray:
        """Logits ``(n, K)`` of model ``j`` of layer ``g`` on raw rows ``X``."""
        Z = (np.asarray(X, np.float64) - self.mean[g, j]) / self.scale[g, j]
        return Z @ self.coef[g, j] + self.intercept[g, j]


def fit_batched(X, Y: np.ndarray, train: np.ndarray, *, n_classes: int, C: float = 1.0,
                max_iter: int = 100, tol: float = 1e-4, device: str | None = None,
                init: BatchedFit | None = None) -> tuple[BatchedFit, np.ndarray]:
    """Fit ``m`` multinomial logistic regressions per layer on shared rows, and predict all rows.

    Parameters
    ----------
    X : array or torch tensor, shape (G, n, d) or (n, d)
        Rows of ``G`` layers (float32).
    Y : int array, shape (m, n)
        Class code of each row for each model (task labels, control labels ...), in ``0..K-1``.
    train : bool array, shape (m, n)
        Rows each model trains on.
    n_classes : int
        ``K``.
    C : float
        Inverse L2 strength, as scikit-learn's ``C``.
    max_iter : int
        L-BFGS iterations.
    tol : float
        Stop when the largest gradient entry of the (per-row normalised) objective is below this
        (scikit-learn's lbfgs ``tol`` on its per-row loss is 1e-4).
    device : str, optional
        torch device (default: ``X``'s, else CPU).
    init : BatchedFit, optional
        Start from these standardised-space weights (e.g. the previous layer's fit of the same
        models: neighbouring layers' probes are close, so a sweep converges in fewer steps); its
        last layer seeds every layer of this fit.

    Returns
    -------
    fit : BatchedFit
    pred : int array, shape (G, m, n)
        Each model's predicted class for every row (train rows included).
    """
    import torch

    X = torch.as_tensor(X)
    if device is not None:
        X = X.to(device)
    if X.ndim == 2:
        X = X[None]
    X = X.float()
    G, n, d = X.shape
    Y = np.asarray(Y, np.int64)
    train = np.asarray(train, bool)
    m, K = Y.shape[0], int(n_classes)
    if Y.shape != (m, n) or train.shape != (m, n):
        raise ValueError(f"Y {Y.shape} and train {train.shape} must both be (models, rows) = ({m}, {n})")
    dev = X.device
    Wt = torch.as_tensor(train, dtype=torch.float32, device=dev)          # (m, n)
    n_tr = Wt.sum(1).clamp_min(1.0)                                        # (m,)
    # StandardScaler of each model's training rows (population std, zero-variance -> 1)
    mean = torch.einsum("mn,gnd->gmd", Wt, X) / n_tr[None, :, None]        # (G, m, d)
    sq = torch.einsum("mn,gnd->gmd", Wt, X * X) / n_tr[None, :, None]
    var = (sq - mean * mean).clamp_min(0.0)
    scale = var.sqrt()
    scale = torch.where(scale > 1e-7 * (mean.abs() + 1.0), scale, torch.ones_like(scale))
    onehot = torch.zeros(m, n, K, device=dev)
    onehot.scatter_(2, torch.as_tensor(Y, device=dev)[..., None], 1.0)
    rw = (Wt / n_tr[:, None])                                              # row weight, sums to 1
    lam = 1.0 / (2.0 * C * n_tr)                                           # (m,)

    coef = torch.zeros(G, m, d, K, device=dev)
    bias = torch.zeros(G, m, K, device=dev)
    if init is not None and init.coef.shape[1:] == (m, d, K):
        coef[:] = torch.as_tensor(init.coef[-1], dtype=torch.float32, device=dev)
        bias[:] = torch.as_tensor(init.intercept[-1], dtype=torch.float32, device=dev)
    coef.requires_grad_(True)
    bias.requires_grad_(True)
    inv = 1.0 / scale                                                      # (G, m, d)

    def logits():
        A = coef * inv[..., None]                                          # (G, m, d, K)
        b = bias - torch.einsum("gmd,gmdk->gmk", mean * inv, coef)         # (G, m, K)
        Z = torch.bmm(X, A.permute(0, 2, 1, 3).reshape(G, d, m * K))       # (G, n, m*K)
        return Z.view(G, n, m, K) + b[:, None]

    opt = torch.optim.LBFGS([coef, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=tol, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        Z = logits()                                                       # (G, n, m, K)
        ce = torch.logsumexp(Z, -1) - (Z * onehot.permute(1, 0, 2)[None]).sum(-1)  # (G, n, m)
        loss = (ce * rw.T[None]).sum() + (lam[None, :, None, None] * coef * coef).sum()
        loss.backward()
        return loss

    opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    with torch.no_grad():
        pred = logits().argmax(-1).permute(0, 2, 1).cpu().numpy()          # (G, m, n)
    fit = BatchedFit(coef=coef.detach().double().cpu().numpy(),
                     intercept=bias.detach().double().cpu().numpy(),
                     mean=mean.double().cpu().numpy(), scale=scale.double().cpu().numpy(),
                     n_iter=n_iter)
    return fit, pred


def to_pipeline(fit: BatchedFit, g: int, j: int, classes: np.ndarray, C: float = 1.0):
    """Model ``j`` of layer ``g`` as a fitted scikit-learn ``Pipeline(StandardScaler,
    LogisticRegression)`` with the same decisions (two classes: scikit-learn's single coefficient
    row, ``w1 - w0``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    d = fit.coef.shape[2]
    sc = StandardScaler()
    sc.mean_ = fit.mean[g, j].copy()
    sc.scale_ = fit.scale[g, j].copy()
    sc.var_ = sc.scale_ ** 2
    sc.n_features_in_ = d
    sc.n_samples_seen_ = 1
    lr = LogisticRegression(C=C)
    W, b = fit.coef[g, j].T, fit.intercept[g, j]                           # (K, d), (K,)
    if len(classes) == 2:
        W, b = (W[1] - W[0])[None], np.array([b[1] - b[0]])
    lr.coef_, lr.intercept_ = W.copy(), b.copy()
    lr.classes_ = np.arange(len(classes))
    lr.n_features_in_ = d
    lr.n_iter_ = np.array([fit.n_iter])
    return Pipeline([("scale", sc), ("logreg", lr)])


def fit_probes_batched(datas, config=None, *, baselines: tuple[str, ...] = ("position",),
                       refit: bool = True, max_iter: int = 100, device: str | None = None,
                       state: dict | None = None):
    """:func:`probes.fit.fit_probe` for several layers of one (site, role) at once.

    ``datas`` are :class:`~probes.dataset.ProbeData` of the same rows (same tokens, labels and
    groups) at ``G`` layers. Splits, control labels and the position baseline (scikit-learn, a few
    dozen one-hot features) are computed once; the k folds x {task, control} (+ the all-rows
    refit when ``refit``) of every layer are one :func:`fit_batched` call. Returns one
    :class:`~probes.fit.ProbeResult` per layer, scored exactly as :func:`~probes.fit.fit_probe`
    scores (same splits, control labels, intervals); ``result.pipeline`` is the refit (the first
    fold's probe when ``refit`` is False), ``meta['engine'] = 'torch'``. ``state`` (a dict kept
    across calls on the same rows, e.g. consecutive layers of a sweep) carries the last fit as the
    next call's starting point.
    """
    import warnings

    from .config import ProbeConfig
    from .fit import (ProbeResult, _interval, _majority_rate, control_labels, cross_val_predict,
                      default_token_type, make_splits, position_features, split_groups)

    config = config or ProbeConfig()
    first = datas[0]
    for dt in datas[1:]:
        if len(dt) != len(first) or not np.array_equal(dt.y, first.y) \
                or not np.array_equal(dt.groups, first.groups):
            raise ValueError("fit_probes_batched needs the same rows at every layer "
                             f"({len(first)} vs {len(dt)} rows); fit the layers separately")
    _, y, _, frame = first
    n, K = len(y), len(first.classes)
    groups = split_groups(frame, config.group_by)
    splits = make_splits(groups, config)
    tt = config.token_type or default_token_type(frame)
    yc, control_note = None, None
    if config.control and not tt:
        warnings.warn("control task skipped: the rows have none of color/row/col to define a "
                      "token type (pooled entities?); pass ProbeConfig(token_type=...) "
                      "(--token-type) to run it.", UserWarning, stacklevel=2)
        control_note = "no token-type columns"
    elif config.control:
        yc = control_labels(frame, y, tt, config.random_state)
        if len(np.unique(yc)) < 2:
            warnings.warn(f"control task skipped: token type {tt} gives a single control label; "
                          "pass a finer token_type (--token-type).", UserWarning, stacklevel=2)
            yc, control_note = None, "single control label"
    Ys, masks, kinds = [], [], []
    for f, (tr, _) in enumerate(splits):
        for name, lab in (("task", y), ("control", yc)):
            if lab is None:
                continue
            m = np.zeros(n, bool)
            m[tr] = True
            Ys.append(lab), masks.append(m), kinds.append((name, f))
    if refit:
        Ys.append(y), masks.append(np.ones(n, bool)), kinds.append(("refit", -1))
    X = np.stack([np.asarray(dt.X, np.float32) for dt in datas])
    fit, pred = fit_batched(X, np.stack(Ys), np.stack(masks), n_classes=K, C=config.C,
                            max_iter=max_iter, device=device,
                            init=None if state is None else state.get("init"))
    if state is not None:
        state["init"] = fit
    del X
    pos_acc = None
    if "position" in baselines and "row" in frame and "col" in frame:
        ppred, _ = cross_val_predict(position_features(frame), y, splits, config)
        tested0 = ppred >= 0
        pos_acc = float((ppred[tested0] == y[tested0]).mean())
    out = []
    for g, dt in enumerate(datas):
        oof = {"task": np.full(n, -1, np.int64), "control": np.full(n, -1, np.int64)}
        for j, (name, f) in enumerate(kinds):
            if name != "refit":
                te = splits[f][1]
                oof[name][te] = pred[g, j, te]
        p = oof["task"]
        tested = p >= 0
        correct = p[tested] == y[tested]
        j_first = kinds.index(("task", 0))
        j_refit = kinds.index(("refit", -1)) if refit else j_first
        res = ProbeResult(
            accuracy=float(correct.mean()), ci=_interval(correct, groups[tested], config),
            n_test=int(tested.sum()), n_groups=int(len(np.unique(groups))), classes=dt.classes,
            chance=_majority_rate(y, splits, tested),
            fold_accuracy=[float((p[te] == y[te]).mean()) for _, te in splits], pred=p,
            pipeline=to_pipeline(fit, g, j_refit, np.asarray(dt.classes), config.C),
            heldout_pipeline=to_pipeline(fit, g, j_first, np.asarray(dt.classes), config.C),
            heldout_scenes=tuple(sorted(set(dt.groups[splits[0][1]]))), config=config,
            meta={**dt.meta, "engine": "torch", "n_iter": fit.n_iter})
        if control_note:
            res.meta["control_skipped"] = control_note
        if yc is not None:
            res.meta["token_type"] = list(tt)
            cp = oof["control"]
            cc = cp[tested] == yc[tested]
            res.control_accuracy = float(cc.mean())
            res.control_chance = _majority_rate(yc, splits, tested)
            res.control_ci = _interval(cc, groups[tested], config)
        if pos_acc is not None:
            res.baselines["position"] = pos_acc
        out.append(res)
    return out
