"""Frozen, keyword-only configs of the probes package, validated on construction.

:class:`ProbeConfig` says how one probe is trained and scored (classifier, split, control task,
confidence interval); :class:`SweepConfig` says which (layer, role) cells a sweep covers and where
it runs. Both are saved as JSON next to every output (``to_dict``) and rebuilt with
``from_dict``, which rejects unknown keys with a close-match suggestion.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError, suggest

POOLS = ("token", "entity")
ENGINES = ("sklearn", "torch")
SPLITS = ("group_kfold", "group_shuffle")
CI_METHODS = ("wilson", "bootstrap")
CLASSIFIERS = ("logreg", "torch_linear")


def _check(cond: bool, cls: str, name: str, what: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"The {name!r} parameter of {cls} must be {what}. Got {got!r} instead.")


class _FromDict:
    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a plain dict (e.g. loaded JSON); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in known:
                raise ConfigError(f"unknown {cls.__name__} key {k!r}.{suggest(k, known)} "
                                  f"Known: {', '.join(sorted(known))}.")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeConfig(_FromDict):
    """How one probe is trained, split and scored."""

    C: float = 1.0
    """Inverse L2 regularisation strength of the logistic regression (sklearn's ``C``), > 0."""
    max_iter: int = 1000
    """Iterations of the lbfgs solver."""
    split: Literal["group_kfold", "group_shuffle"] = "group_kfold"
    """``group_kfold``: k folds over groups; ``group_shuffle``: one random train/test split."""
    n_splits: int = 5
    """Folds for ``group_kfold`` (>= 2); ignored by ``group_shuffle``."""
    test_size: float = 0.25
    """Fraction of groups held out by ``group_shuffle``, in (0, 1)."""
    group_by: tuple[str, ...] = ()
    """Label columns whose values must never straddle train and test (e.g. ``("color_set",)``);
    empty = group by ``scene_id`` only (a scene and its counterfactual twins stay together)."""
    control: bool = True
    """Also train a control task (Hewitt & Liang 2019) and report selectivity."""
    token_type: tuple[str, ...] = ()
    """Columns defining a token *type* for the control task: every sample of one type gets the same
    random label. Empty = those of ``color``, ``row``, ``col`` that the data has, i.e. the entity's
    colour and the token's grid cell."""
    ci: Literal["wilson", "bootstrap"] = "wilson"
    """Confidence interval of accuracy: Wilson score over test samples, or a bootstrap over groups."""
    ci_level: float = 0.95
    """Confidence level in (0, 1)."""
    n_bootstrap: int = 1000
    """Bootstrap resamples (``ci='bootstrap'``)."""
    random_state: int = 0
    """Seed of the split, the control labels and the bootstrap."""
    classifier: Literal["logreg", "torch_linear"] = "logreg"
    """``logreg``: standardised scikit-learn logistic regression (``C``, ``max_iter``);
    ``torch_linear``: the authors' probe ``W h + b`` on raw features, cross-entropy, AdamW
    (``lr``, ``weight_decay``), ``epochs`` full-batch steps, init N(0, 1/sqrt(D)), torch seed
    ``random_state`` (the paper recipe's E3)."""
    epochs: int = 200
    """Full-batch AdamW steps of ``torch_linear``."""
    lr: float = 1e-3
    """AdamW learning rate of ``torch_linear``."""
    weight_decay: float = 1e-4
    """AdamW weight decay of ``torch_linear``."""

    def __post_init__(self):
        n = "ProbeConfig"
        _check(self.classifier in CLASSIFIERS, n, "classifier", f"one of {CLASSIFIERS}",
               self.classifier)
        _check(isinstance(self.epochs, int) and self.epochs >= 1, n, "epochs", "an int >= 1",
               self.epochs)
        _check(isinstance(self.lr, (int, float)) and self.lr > 0, n, "lr", "a float > 0", self.lr)
        _check(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, n,
               "weight_decay", "a float >= 0", self.weight_decay)
        _check(isinstance(self.C, (int, float)) and self.C > 0, n, "C", "a float > 0", self.C)
        _check(isinstance(self.max_iter, int) and self.max_iter >= 1, n, "max_iter", "an int >= 1",
               self.max_iter)
        _check(self.split in SPLITS, n, "split", f"one of {SPLITS}", self.split)
        _check(isinstance(self.n_splits, int) and self.n_splits >= 2, n, "n_splits", "an int >= 2",
               self.n_splits)
        _check(0 < self.test_size < 1, n, "test_size", "a float in (0, 1)", self.test_size)
        _check(isinstance(self.group_by, tuple) and all(isinstance(g, str) for g in self.group_by),
               n, "group_by", "a tuple of label column names", self.group_by)
        _check(isinstance(self.token_type, tuple) and all(isinstance(t, str) for t in self.token_type),
               n, "token_type", "a tuple of column names", self.token_type)
        _check(self.ci in CI_METHODS, n, "ci", f"one of {CI_METHODS}", self.ci)
        _check(0 < self.ci_level < 1, n, "ci_level", "a float in (0, 1)", self.ci_level)
        _check(isinstance(self.n_bootstrap, int) and self.n_bootstrap >= 10, n, "n_bootstrap",
               "an int >= 10", self.n_bootstrap)
        _check(isinstance(self.random_state, int), n, "random_state", "an int", self.random_state)


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepConfig(_FromDict):
    """Which (layer, role) cells a sweep trains probes on, and where it runs."""

    model: str
    """Model id as recorded in the store."""
    site: str = "projector"
    """Site name (``projector``, ``vision.blocks.{i}``, ``lm.resid.{i}``): the layer is the site's
    block index; sites without blocks (``projector``) have a single layer, written 0."""
    layers: tuple[int, ...] = (0,)
    """Layer indices to sweep."""
    roles: tuple[str, ...] = ("object",)
    """Token roles to sweep (``object``, ``strip``, ``background``, ...)."""
    label: str = "ordinal"
    """Label column to predict."""
    pool: Literal["token", "entity"] = "token"
    """``token``: one sample per token (paper); ``entity``: one per entity, mean over its tokens."""
    baselines: tuple[str, ...] = ("position",)
    """Built-in baselines also scored per cell: ``position`` (one-hot row/col of the token; skipped
    when ``pool='entity'``, whose rows have no single grid cell)."""
    scheduler: str | None = "local"
    """``local``: a ``distributed.LocalCluster`` of ``n_workers``; ``local:N``: one of N workers
    (the spelling ``extract``, ``patch`` and ``amplify`` use; stored as ``local`` with
    ``n_workers=N``); ``serial``: in-process, no dask; otherwise a dask scheduler address
    (``tcp://host:8786``)."""
    n_workers: int = 2
    """Workers of the local cluster."""
    processes: bool = True
    """Local cluster workers are processes (True) or threads of this process (False)."""
    engine: Literal["sklearn", "torch"] = "sklearn"
    """``sklearn``: one scikit-learn probe per (layer, role, fold, task); ``torch``: all folds, the
    control task and the refit of ``layers_per_block`` layers of a role as one batched logistic
    regression (:mod:`probes.batched`; same accuracy, minutes instead of hours at 3584 wide)."""
    layers_per_block: int = 1
    """torch engine: layers fitted together (memory: this many layers' rows of one role)."""
    device: str | None = None
    """torch engine: torch device (``cpu``, ``cuda``); None = CPU."""
    threads: int | None = None
    """BLAS / torch threads, set once for the whole sweep (serial) or per worker (dask: 1 when
    None). None in a serial sweep = the number of cores."""
    max_iter: int = 100
    """torch engine: L-BFGS iterations per batched fit."""
    region: Literal["role", "layout"] = "role"
    """Which tokens are an entity's ``object`` tokens (:func:`probes.dataset.dataset`):
    ``role`` (the store's mask-coverage role) or ``layout`` (the paper recipe: a flat
    stimulus's layout cells, read from the dataset; needs ``data``)."""
    warm_start: bool = False
    """torch engine: start each block of layers from the previous block's weights instead of
    from zero (as scikit-learn does). Off by default: at model width (C=1, 3584 features, ~23k
    rows) the objective is flat near its minimum, so where a fit stops under the gtol 1e-4 rule
    depends on where it started, and warm-started layers scored 0.012-0.014 higher held-out
    accuracy than zero-started ones (bench_probe_sweep.py, layers 26-28) while saving only ~5%
    of the CPU time."""

    def __post_init__(self):
        n = "SweepConfig"
        if isinstance(self.scheduler, str) and self.scheduler.startswith("local:"):
            k = self.scheduler[len("local:"):]
            _check(k.isdigit() and int(k) >= 1, n, "scheduler",
                   "'local', 'local:N' with N >= 1 workers, 'serial' or an address",
                   self.scheduler)
            object.__setattr__(self, "scheduler", "local")
            object.__setattr__(self, "n_workers", int(k))
        _check(isinstance(self.model, str) and self.model != "", n, "model", "a non-empty str",
               self.model)
        _check(isinstance(self.layers, tuple) and len(self.layers) >= 1
               and all(isinstance(x, int) and x >= 0 for x in self.layers), n, "layers",
               "a non-empty tuple of ints >= 0", self.layers)
        _check(isinstance(self.roles, tuple) and len(self.roles) >= 1
               and all(isinstance(x, str) and x for x in self.roles), n, "roles",
               "a non-empty tuple of role names", self.roles)
        _check(self.pool in POOLS, n, "pool", f"one of {POOLS}", self.pool)
        _check(all(b in ("position",) for b in self.baselines), n, "baselines",
               "a tuple drawn from ('position',)", self.baselines)
        _check(isinstance(self.n_workers, int) and self.n_workers >= 1, n, "n_workers",
               "an int >= 1", self.n_workers)
        _check(self.engine in ENGINES, n, "engine", f"one of {ENGINES}", self.engine)
        _check(isinstance(self.layers_per_block, int) and self.layers_per_block >= 1, n,
               "layers_per_block", "an int >= 1", self.layers_per_block)
        _check(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1), n,
               "threads", "None or an int >= 1", self.threads)
        _check(isinstance(self.max_iter, int) and self.max_iter >= 1, n, "max_iter",
               "an int >= 1", self.max_iter)
        _check(self.region in ("role", "layout"), n, "region", "'role' or 'layout'",
               self.region)
        _check(isinstance(self.warm_start, bool), n, "warm_start", "True or False",
               self.warm_start)
