"""Training and scoring linear probes: grouped splits, control tasks, baselines, confidence intervals.

A probe is plain scikit-learn, ``Pipeline(StandardScaler, LogisticRegression)`` (:func:`make_probe`).
:func:`fit_probe` scores it by grouped cross-validation (a scene and its twins, and on request every
scene sharing a factor value, stay on one side of every split), adds

- a **control task** (Hewitt & Liang 2019): each token *type* (by default the entity's colour and
  the token's grid cell, see ``ProbeConfig.token_type``) gets one random label drawn from the
  empirical label distribution, the same probe is scored on it with the same splits, and
  ``selectivity = accuracy - control_accuracy``;
- the **position-only baseline**: the same probe on one-hot (row, col) features of each token,
  i.e. what grid position alone predicts;
- confidence intervals: Wilson score over test samples, or a percentile bootstrap over groups;

and refits the probe on all rows (for direction export) plus keeps the first fold's probe and its
held-out scenes (for probe maps on images the probe never saw).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .config import ProbeConfig
from .dataset import ProbeData
from .errors import DataError


class TorchLinearProbe(ClassifierMixin, BaseEstimator):
    """The authors' E3 probe (``probing/src/probe.py`` of Nix07/spatial-variable-binding, written
    anew): logits ``h W + b`` with ``W`` of shape ``D x n_classes``, cross-entropy, AdamW, full
    batch; ``W`` and ``b`` start as N(0, 1) / sqrt(D), drawn after ``torch.manual_seed(seed)``.

    Exposes ``coef_`` (``n_classes x D``), ``intercept_`` and ``classes_`` like scikit-learn's
    linear classifiers, so direction export works unchanged.
    """

    def __init__(self, *, epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-4,
                 seed: int = 0):
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed

    def fit(self, X, y):
        import torch

        self.classes_, yi = np.unique(np.asarray(y), return_inverse=True)
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        t = torch.as_tensor(yi, dtype=torch.long)
        d, k = X.shape[1], len(self.classes_)
        gen = torch.Generator().manual_seed(int(self.seed))
        W = (torch.randn(d, k, generator=gen) / d ** 0.5).requires_grad_(True)
        b = (torch.randn(k, generator=gen) / d ** 0.5).requires_grad_(True)
        opt = torch.optim.AdamW([W, b], lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(X @ W + b, t)
            loss.backward()
            opt.step()
        self.coef_ = W.detach().numpy().T.astype(np.float64)
        self.intercept_ = b.detach().numpy().astype(np.float64)
        self.loss_ = float(loss.detach())
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict_proba(self, X):
        z = self.decision_function(X)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.decision_function(X).argmax(1)]


def make_probe(config: ProbeConfig | None = None) -> Pipeline:
    """The probe: ``Pipeline([('scale', StandardScaler()), ('logreg', LogisticRegression)])``,
    or for ``classifier='torch_linear'`` the authors' raw-feature probe behind an identity
    scaler (``Pipeline([('scale', StandardScaler(with_mean=False, with_std=False)),
    ('linear', TorchLinearProbe)])``)."""
    config = config or ProbeConfig()
    if config.classifier == "torch_linear":
        return Pipeline([("scale", StandardScaler(with_mean=False, with_std=False)),
                         ("linear", TorchLinearProbe(epochs=config.epochs, lr=config.lr,
                                                     weight_decay=config.weight_decay,
                                                     seed=config.random_state))])
    return Pipeline([("scale", StandardScaler()),
                     ("logreg", LogisticRegression(C=config.C, max_iter=config.max_iter,
                                                   random_state=config.random_state))])


def split_groups(frame: pd.DataFrame, group_by: tuple[str, ...] = ()) -> np.ndarray:
    """Group id per row: rows sharing a ``scene_id``, an ``image_hash`` (when the frame has one:
    left/right questions about one triple show one image) or (when ``group_by`` is given) the
    same value of any ``group_by`` column are joined, transitively (connected components), so no
    scene, no image and no factor value can straddle train and test.

    Returns
    -------
    ndarray of int, one group id per row.
    """
    keys = ["scene_id", *group_by]
    if "image_hash" in frame and "image_hash" not in keys:
        keys.append("image_hash")  # identical images never straddle train and test
    for k in keys:
        if k not in frame:
            raise DataError(f"--group-by: unknown label column {k!r}; known: "
                            f"{', '.join(map(str, frame.columns))}.")
    parent = list(range(len(frame)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k in keys:
        first: dict = {}
        for i, v in enumerate(frame[k].astype(str).to_numpy()):
            if k == "image_hash" and v in ("", "None", "nan"):
                continue  # unknown image: its scene_id still groups it
            j = first.setdefault(v, i)
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[a] = b
    roots = np.array([find(i) for i in range(len(frame))])
    return np.unique(roots, return_inverse=True)[1]


def make_splits(groups: np.ndarray, config: ProbeConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train/test index pairs over ``groups`` (GroupKFold or GroupShuffleSplit)."""
    n_groups = len(np.unique(groups))
    if config.split == "group_kfold":
        if n_groups < config.n_splits:
            raise DataError(f"only {n_groups} independent groups for {config.n_splits} folds; "
                            "lower --n-splits, drop a --group-by column, or add scenes.")
        cv = GroupKFold(n_splits=config.n_splits, shuffle=True, random_state=config.random_state)
    else:
        if n_groups < 2:
            raise DataError("only one independent group: a held-out split is impossible; "
                            "drop a --group-by column or add scenes.")
        cv = GroupShuffleSplit(n_splits=1, test_size=config.test_size,
                               random_state=config.random_state)
    dummy = np.zeros(len(groups))
    return [(tr, te) for tr, te in cv.split(dummy, groups=groups)]


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = norm.ppf(0.5 + level / 2)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (float(mid - half), float(mid + half))


def bootstrap_interval(correct: np.ndarray, groups: np.ndarray, *, level: float = 0.95,
                       n_boot: int = 1000, random_state: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy, resampling whole groups with replacement."""
    g, inv = np.unique(groups, return_inverse=True)
    k = np.bincount(inv, weights=correct.astype(float), minlength=len(g))
    n = np.bincount(inv, minlength=len(g)).astype(float)
    rng = np.random.default_rng(random_state)
    draws = rng.integers(len(g), size=(n_boot, len(g)))
    acc = k[draws].sum(1) / n[draws].sum(1)
    a = (1 - level) / 2
    return (float(np.quantile(acc, a)), float(np.quantile(acc, 1 - a)))


def control_labels(frame: pd.DataFrame, y: np.ndarray, token_type: tuple[str, ...],
                   random_state: int = 0) -> np.ndarray:
    """Hewitt & Liang control labels: one random label per token type (the distinct value tuples of
    the ``token_type`` columns), drawn from the empirical distribution of ``y``; consistent for all
    rows of a type."""
    missing = [c for c in token_type if c not in frame]
    if missing:
        raise DataError(f"control task: token-type column(s) {missing} not in the data; known: "
                        f"{', '.join(map(str, frame.columns))}. Pass token_type / --token-type.")
    types = pd.MultiIndex.from_frame(frame[list(token_type)].astype(str)).codes
    tid = np.unique(np.stack(types, 1), axis=0, return_inverse=True)[1].reshape(-1)
    rng = np.random.default_rng(random_state)
    per_type = rng.choice(y, size=tid.max() + 1, replace=True)
    return per_type[tid]


def default_token_type(frame: pd.DataFrame) -> tuple[str, ...]:
    """``color``, ``row``, ``col``: those the frame has (may be empty, e.g. for pooled entities)."""
    return tuple(c for c in ("color", "row", "col") if c in frame)


def position_features(frame: pd.DataFrame) -> np.ndarray:
    """One-hot ``row`` and ``col`` of each token: the position-only baseline's features."""
    if "row" not in frame or "col" not in frame:
        raise DataError("position baseline needs token 'row' and 'col' coordinates "
                        "(pool='token'); drop the baseline for pooled data.")
    parts = [pd.get_dummies(frame[c].astype(int), prefix=c).to_numpy(float) for c in ("row", "col")]
    return np.concatenate(parts, 1)


def cross_val_predict(X: np.ndarray, y: np.ndarray, splits, config: ProbeConfig):
    """Out-of-fold predictions: ``pred`` (−1 where a row was never in a test fold) and the fitted
    probes, one per split."""
    pred = np.full(len(y), -1, np.int64)
    probes = []
    for tr, te in splits:
        p = _fit(make_probe(config), X[tr], y[tr])
        pred[te] = p.predict(X[te])
        probes.append(p)
    return pred, probes


def _fit(pipe: Pipeline, X, y) -> Pipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipe.fit(X, y)


@dataclass(eq=False)
class ProbeResult:
    """Scores and fitted probes of one :func:`fit_probe` call."""

    accuracy: float
    ci: tuple[float, float]
    n_test: int
    n_groups: int
    classes: tuple
    chance: float
    """Accuracy of always predicting the training majority class, on the same test rows."""
    fold_accuracy: list[float]
    pred: np.ndarray
    """Out-of-fold prediction per row (class code; −1 where never tested)."""
    pipeline: Pipeline
    """The probe refitted on all rows (what directions are exported from)."""
    heldout_pipeline: Pipeline
    """The first split's probe, and below the scenes it never saw (for probe maps)."""
    heldout_scenes: tuple[str, ...]
    control_accuracy: float | None = None
    control_ci: tuple[float, float] | None = None
    control_chance: float | None = None
    """Majority-class rate of the control labels (with few token types the random labels are
    lumpy, so the control's own floor can sit well above 1/K)."""
    baselines: dict[str, float] = field(default_factory=dict)
    config: ProbeConfig = field(default_factory=ProbeConfig)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def selectivity(self) -> float | None:
        """Task accuracy minus control accuracy (Hewitt & Liang 2019)."""
        return None if self.control_accuracy is None else self.accuracy - self.control_accuracy

    def to_row(self) -> dict[str, Any]:
        """One flat row for the results table."""
        row = {k: self.meta.get(k) for k in ("model", "site", "layer", "role", "label", "pool")}
        row.update(n=len(self.pred), n_test=self.n_test, n_groups=self.n_groups,
                   n_classes=len(self.classes), accuracy=self.accuracy, ci_low=self.ci[0],
                   ci_high=self.ci[1], chance=self.chance, control_accuracy=self.control_accuracy,
                   control_chance=self.control_chance,
                   selectivity=self.selectivity, data_hash=self.meta.get("data_hash"))
        for k, v in self.baselines.items():
            row[f"{k}_accuracy"] = v
        return row


def fit_probe(data: ProbeData, config: ProbeConfig | None = None, *,
              baselines: tuple[str, ...] = ("position",)) -> ProbeResult:
    """Cross-validate, control and baseline one probe; refit it on all rows.

    Parameters
    ----------
    data : ProbeData
        From :func:`probes.dataset`.
    config : ProbeConfig, optional
        Classifier, split, control and CI settings.
    baselines : tuple of str
        ``position``: also score the one-hot (row, col) baseline (token data only; skipped when
        the rows have no grid cell).

    Returns
    -------
    ProbeResult
    """
    config = config or ProbeConfig()
    X, y, _, frame = data
    groups = split_groups(frame, config.group_by)
    splits = make_splits(groups, config)
    pred, probes = cross_val_predict(X, y, splits, config)
    tested = pred >= 0
    correct = pred[tested] == y[tested]
    acc = float(correct.mean())
    ci = _interval(correct, groups[tested], config)
    chance = _majority_rate(y, splits, tested)
    folds = [float((pred[te] == y[te]).mean()) for _, te in splits]
    result = ProbeResult(
        accuracy=acc, ci=ci, n_test=int(tested.sum()), n_groups=int(len(np.unique(groups))),
        classes=data.classes, chance=chance, fold_accuracy=folds, pred=pred,
        pipeline=_fit(make_probe(config), X, y), heldout_pipeline=probes[0],
        heldout_scenes=tuple(sorted(set(data.groups[splits[0][1]]))), config=config,
        meta={**data.meta})
    tt = config.token_type or default_token_type(frame)
    if config.control and not tt:
        warnings.warn("control task skipped: the rows have none of color/row/col to define a "
                      "token type (pooled entities?); pass ProbeConfig(token_type=...) "
                      "(--token-type) to run it.", UserWarning, stacklevel=2)
        result.meta["control_skipped"] = "no token-type columns"
    elif config.control:
        yc = control_labels(frame, y, tt, config.random_state)
        result.meta["token_type"] = list(tt)
        if len(np.unique(yc)) >= 2:
            cpred, _ = cross_val_predict(X, yc, splits, config)
            ccorrect = cpred[tested] == yc[tested]
            result.control_accuracy = float(ccorrect.mean())
            result.control_chance = _majority_rate(yc, splits, tested)
            result.control_ci = _interval(ccorrect, groups[tested], config)
        else:  # e.g. text tokens, whose row/col are all -1: one type, nothing to control for
            warnings.warn(f"control task skipped: token type {tt} gives a single control label; "
                          "pass a finer token_type (--token-type).", UserWarning, stacklevel=2)
            result.meta["control_skipped"] = "single control label"
    if "position" in baselines and "row" in frame and "col" in frame:
        P = position_features(frame)
        ppred, _ = cross_val_predict(P, y, splits, config)
        result.baselines["position"] = float((ppred[tested] == y[tested]).mean())
    return result


def _majority_rate(y: np.ndarray, splits, tested: np.ndarray) -> float:
    """Accuracy of predicting each training fold's majority class on its test rows."""
    pred = np.full(len(y), -1)
    for tr, te in splits:
        pred[te] = np.bincount(y[tr]).argmax()
    return float((pred[tested] == y[tested]).mean())


def _interval(correct: np.ndarray, groups: np.ndarray, config: ProbeConfig) -> tuple[float, float]:
    if config.ci == "wilson":
        return wilson_interval(int(correct.sum()), len(correct), config.ci_level)
    return bootstrap_interval(correct, groups, level=config.ci_level, n_boot=config.n_bootstrap,
                              random_state=config.random_state)
