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
  are exported) are one ``(m*K, d)`` weight block: a fold's model sees its training rows
  through a 0/1 row weight, so one GEMM ``W X^T`` gives every model's logits and one more,
  ``R^T X``, every gradient;
- each model's standardisation (mean and scale of its training rows, as ``StandardScaler``) is
  folded into its weights, so ``X`` is never copied per fold.

The objective of each model is scikit-learn's ``LogisticRegression`` (lbfgs, multinomial, L2 on
the coefficients but not the intercept) divided by its number of training rows:
``mean CE + ||W||^2 / (2 C n_train)``. Each model is minimised by its own L-BFGS (history 10,
backtracking Armijo line search, stop when its largest gradient entry is <= ``tol`` = 1e-4, as
scikit-learn's lbfgs ``gtol``), but all models take their steps in the same passes over the rows,
so a layer costs about (iterations + backtracks) GEMM pairs for all its models together. A
fitted model is handed back as a scikit-learn ``Pipeline`` with the
same ``predict`` / ``decision_function`` (:func:`to_pipeline`), so directions and probe maps work
unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class BatchedFit:
    """Fitted batched models: ``coef (G, m, d, K)`` and ``intercept (G, m, K)`` in standardised
    space, ``mean`` / ``scale (G, m, d)`` of each model's training rows; ``n_iter`` the most
    L-BFGS iterations any model took, ``n_eval`` the passes over the rows (each one GEMM pair
    for every model still running), ``converged (G, m)`` whether each model reached ``tol``."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    n_iter: int
    n_eval: int = 0
    converged: np.ndarray | None = None
    loss: np.ndarray | None = None
    """``(G, m)`` objective reached: mean cross-entropy + ``||W||^2 / (2 C n_train)``."""

    def decision(self, X, g: int, j: int) -> np.ndarray:
        """Logits ``(n, K)`` of model ``j`` of layer ``g`` on raw rows ``X``."""
        Z = (np.asarray(X, np.float64) - self.mean[g, j]) / self.scale[g, j]
        return Z @ self.coef[g, j] + self.intercept[g, j]


def fit_batched(X, Y: np.ndarray, train: np.ndarray, *, n_classes: int, C: float = 1.0,
                max_iter: int = 100, tol: float = 1e-4, device: str | None = None,
                init: BatchedFit | None = None, history: int = 10) -> tuple[BatchedFit, np.ndarray]:
    """Fit ``m`` multinomial logistic regressions per layer on shared rows, and predict all rows.

    Parameters
    ----------
    X : array or torch tensor, shape (G, n, d) or (n, d)
        Rows of ``G`` layers (float32; used in place when already float32 and C-contiguous).
    Y : int array, shape (m, n)
        Class code of each row for each model (task labels, control labels ...), in ``0..K-1``.
    train : bool array, shape (m, n)
        Rows each model trains on.
    n_classes : int
        ``K``.
    C : float
        Inverse L2 strength, as scikit-learn's ``C``.
    max_iter : int
        L-BFGS iterations per model (scikit-learn's ``max_iter``).
    tol : float
        A model stops when the largest entry of its gradient (of the per-row normalised
        objective, as scikit-learn's lbfgs ``gtol``) is at most this.
    device : str, optional
        torch device (default: ``X``'s, else CPU).
    init : BatchedFit, optional
        Start from these standardised-space weights (e.g. the previous layer's fit of the same
        models: neighbouring layers' probes are close, so a sweep converges in fewer steps); its
        last layer seeds every layer of this fit.
    history : int
        L-BFGS memory (scikit-learn / scipy: 10).

    Returns
    -------
    fit : BatchedFit
    pred : int array, shape (G, m, n)
        Each model's predicted class for every row (train rows included).

    Notes
    -----
    Every model is its own L-BFGS (own curvature history, own backtracking Armijo line search,
    own stopping test), but all models take their step in the same pass over ``X``: per pass,
    the logits of every running model are one GEMM ``W^T X^T`` (``W`` of all models as one
    ``(m K, d)`` block) and their gradients one GEMM ``R^T X``. Models that stop leave the
    block, so later passes are narrower. The objective is convex, so Armijo backtracking keeps
    the curvature pairs positive (a pair with ``s.y <= 0`` is skipped).
    """
    import warnings

    import torch

    with warnings.catch_warnings():  # a read-only array (a memory map) is fine: X is never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        X = torch.as_tensor(X)
    if device is not None:
        X = X.to(device)
    if X.ndim == 2:
        X = X[None]
    X = X.float().contiguous()
    G, n, d = X.shape
    Y = np.asarray(Y, np.int64)
    train = np.asarray(train, bool)
    m, K = Y.shape[0], int(n_classes)
    if Y.shape != (m, n) or train.shape != (m, n):
        raise ValueError(f"Y {Y.shape} and train {train.shape} must both be (models, rows) = ({m}, {n})")
    dev = X.device
    Wt = torch.as_tensor(train, dtype=torch.float32, device=dev)          # (m, n)
    n_tr = Wt.sum(1).clamp_min(1.0)                                        # (m,)
    # StandardScaler of each model's training rows (population std, zero-variance -> 1);
    # sums of squares in row blocks, so no (n, d) temporary
    mean = torch.empty(G, m, d, device=dev)
    sq = torch.zeros(G, m, d, device=dev)
    for g in range(G):
        torch.matmul(Wt, X[g], out=mean[g])
        for a in range(0, n, 4096):
            xb = X[g, a:a + 4096]
            sq[g] += Wt[:, a:a + 4096] @ (xb * xb)
    mean /= n_tr[None, :, None]
    sq /= n_tr[None, :, None]
    var = (sq - mean * mean).clamp_min(0.0)
    del sq
    scale = var.sqrt()
    scale = torch.where(scale > 1e-7 * (mean.abs() + 1.0), scale, torch.ones_like(scale))
    inv = 1.0 / scale                                                      # (G, m, d)
    B = G * m
    P = (d + 1) * K
    Yt = torch.as_tensor(Y, device=dev)                                   # (m, n)
    onehot = torch.zeros(m, K, n, device=dev)
    onehot.scatter_(1, Yt[:, None, :], 1.0)
    rw = Wt / n_tr[:, None]                                                # (m, n), sums to 1
    lam = (1.0 / (2.0 * C * n_tr)).double()                                # (m,)
    lam_b = lam.repeat(G).float()                                          # (B,)

    # theta[b] = [coef (d, K); bias (1, K)] of model b = (g, j), in standardised space
    theta = torch.zeros(B, d + 1, K, device=dev)
    if init is not None and init.coef.shape[1:] == (m, d, K):
        theta[:, :d] = torch.as_tensor(init.coef[-1], dtype=torch.float32, device=dev).repeat(G, 1, 1)
        theta[:, d] = torch.as_tensor(init.intercept[-1], dtype=torch.float32, device=dev).repeat(G, 1)
    inv_b, mi_b = inv.reshape(B, d), (mean * inv).reshape(B, d)
    g_of = torch.arange(B, device=dev) // m
    j_of = torch.arange(B, device=dev) % m

    def evaluate(th: torch.Tensor, act: torch.Tensor):
        """Objective and gradient of models ``act`` at ``th[act]``: one GEMM pair per layer."""
        a = len(act)
        f = torch.zeros(a, dtype=torch.float64, device=dev)
        grad = torch.empty(a, d + 1, K, device=dev)
        for g in range(G):
            sel = torch.nonzero(g_of[act] == g).flatten()
            if not len(sel):
                continue
            b = act[sel]
            j = j_of[b]
            coef = th[b, :d]                                               # (s, d, K)
            A = (coef * inv_b[b][..., None]).transpose(1, 2).reshape(-1, d)  # (s K, d)
            bias = th[b, d] - torch.einsum("sd,sdk->sk", mi_b[b], coef)    # (s, K)
            Z = (A @ X[g].T).view(len(b), K, n) + bias[..., None]          # (s, K, n)
            lse = torch.logsumexp(Z, 1)                                    # (s, n)
            oh = onehot[j]
            ce = lse - (Z * oh).sum(1)
            w = rw[j]
            f[sel] = (ce.double() * w.double()).sum(1) + lam[j] * (coef.double() ** 2).sum((1, 2))
            R = (torch.exp(Z - lse[:, None]) - oh) * w[:, None]            # (s, K, n)
            gb = R.sum(2)                                                  # (s, K)
            gA = (R.reshape(-1, n) @ X[g]).view(len(b), K, d).transpose(1, 2)  # (s, d, K)
            grad[sel, :d] = gA * inv_b[b][..., None] - mi_b[b][..., None] * gb[:, None] \
                + 2.0 * lam_b[b][:, None, None] * coef
            grad[sel, d] = gb
        return f, grad

    all_b = torch.arange(B, device=dev)
    f, grad = evaluate(theta, all_b)
    S = torch.zeros(history, B, P, device=dev)
    Yh = torch.zeros(history, B, P, device=dev)
    rho = torch.zeros(history, B, device=dev)
    n_hist = torch.zeros(B, dtype=torch.long, device=dev)
    head = torch.zeros(B, dtype=torch.long, device=dev)                    # next slot to write
    gamma = torch.ones(B, device=dev)
    it = torch.zeros(B, dtype=torch.long, device=dev)
    gmax = grad.abs().flatten(1).amax(1)
    done = gmax <= tol
    converged = done.clone()
    n_eval = 1

    def direction(b):
        """L-BFGS two-loop recursion for models ``b`` (each with its own history)."""
        q = -grad[b].flatten(1)                                            # (s, P)
        ar = torch.arange(len(b), device=dev)
        alphas = []
        for k in range(history):                                           # newest first
            slot = (head[b] - 1 - k) % history
            valid = (k < n_hist[b]).float()
            s_k, y_k = S[slot, b], Yh[slot, b]
            al = rho[slot, b] * (s_k * q).sum(1) * valid
            q = q - al[:, None] * y_k
            alphas.append((slot, valid, al))
        q = q * gamma[b][:, None]
        for slot, valid, al in reversed(alphas):
            be = rho[slot, b] * (Yh[slot, b] * q).sum(1) * valid
            q = q + S[slot, b] * (al - be)[:, None]
        del ar
        return q.view(len(b), d + 1, K)

    act = torch.nonzero(~done).flatten()
    p = torch.zeros_like(theta)
    t = torch.zeros(B, device=dev)
    if len(act):
        p[act] = direction(act)
        gn = grad[act].abs().flatten(1).sum(1)
        t[act] = torch.clamp(1.0 / gn, max=1.0)                            # first step: |step|_1 <= 1
    gp = (grad * p).flatten(1).sum(1).double()
    n_back = torch.zeros(B, dtype=torch.long, device=dev)
    while len(act) and n_eval < 2 * max_iter + 20:
        trial = theta[act] + t[act][:, None, None] * p[act]
        full = theta.clone()
        full[act] = trial
        f_t, g_t = evaluate(full, act)
        n_eval += 1
        ok = f_t <= f[act] + 1e-4 * t[act].double() * gp[act]
        acc, rej = act[ok], act[~ok]
        if len(acc):
            s_new = (trial[ok] - theta[acc]).flatten(1)
            y_new = (g_t[ok] - grad[acc]).flatten(1)
            sy = (s_new * y_new).sum(1)
            yy = (y_new * y_new).sum(1)
            good = sy > 1e-10 * (s_new * s_new).sum(1).sqrt() * yy.sqrt()
            bg = acc[good]
            slot = head[bg]
            S[slot, bg] = s_new[good]
            Yh[slot, bg] = y_new[good]
            rho[slot, bg] = 1.0 / sy[good]
            gamma[bg] = sy[good] / yy[good]
            head[bg] = (head[bg] + 1) % history
            n_hist[bg] = torch.clamp(n_hist[bg] + 1, max=history)
            theta[acc] = trial[ok]
            f[acc], grad[acc] = f_t[ok], g_t[ok]
            it[acc] += 1
            n_back[acc] = 0
            gm = grad[acc].abs().flatten(1).amax(1)
            conv = gm <= tol
            converged[acc[conv]] = True
            done[acc[conv | (it[acc] >= max_iter)]] = True
        if len(rej):                                                       # backtrack (quadratic fit)
            tr = t[rej].double()
            curv = f_t[~ok] - f[rej] - tr * gp[rej]
            tq = (-gp[rej] * tr * tr / (2.0 * curv.clamp_min(1e-300))).float()
            t[rej] = torch.minimum(torch.maximum(tq, 0.1 * t[rej]), 0.5 * t[rej])
            n_back[rej] += 1
            done[rej[n_back[rej] > 30]] = True                             # line search failed: stop
        nxt = acc[~done[acc]] if len(acc) else acc
        if len(nxt):
            p[nxt] = direction(nxt)
            t[nxt] = 1.0
            gp[nxt] = (grad[nxt] * p[nxt]).flatten(1).sum(1).double()
            bad = gp[nxt] >= 0                                             # not a descent direction
            if bad.any():
                rb = nxt[bad]
                n_hist[rb] = 0
                p[rb] = -grad[rb]
                t[rb] = torch.clamp(1.0 / grad[rb].abs().flatten(1).sum(1), max=1.0)
                gp[rb] = (grad[rb] * p[rb]).flatten(1).sum(1).double()
        act = torch.nonzero(~done).flatten()
    # predictions of the final models on every row
    pred = np.empty((G, m, n), np.int64)
    coef = theta[:, :d].view(G, m, d, K)
    bias = theta[:, d].view(G, m, K)
    with torch.no_grad():
        for g in range(G):
            A = (coef[g] * inv[g][..., None]).transpose(1, 2).reshape(m * K, d)
            b = bias[g] - torch.einsum("md,mdk->mk", mean[g] * inv[g], coef[g])
            Z = (A @ X[g].T).view(m, K, n) + b[..., None]
            pred[g] = Z.argmax(1).cpu().numpy()
    fit = BatchedFit(coef=coef.double().cpu().numpy(), intercept=bias.double().cpu().numpy(),
                     mean=mean.double().cpu().numpy(), scale=scale.double().cpu().numpy(),
                     n_iter=int(it.max()) if B else 0, n_eval=n_eval,
                     converged=converged.view(G, m).cpu().numpy(),
                     loss=f.view(G, m).cpu().numpy())
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
    if len(datas) == 1:  # no copy of one layer's rows
        X = np.ascontiguousarray(datas[0].X, np.float32)[None]
    else:
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
            meta={**dt.meta, "engine": "torch", "n_iter": fit.n_iter, "n_eval": fit.n_eval,
                  "converged": bool(fit.converged[g].all())})
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
