"""Probe directions for interventions: extraction from a fitted probe, save/load, E7 axis directions.

A :class:`Direction` holds the probe's weight vectors **in the original activation space**: the
probe is ``LogisticRegression(StandardScaler(x))``, i.e. ``logit = w · (x - μ)/σ + b``, which equals
``(w/σ) · x + (b - Σ w μ/σ)``; so ``weights = coef / σ`` and ``bias = intercept - weights @ μ``, and
``x @ weights.T + bias`` reproduces the pipeline's ``decision_function`` exactly. Rows of
``weights`` are *components* ``w_k``:

- multi-class probes: one row per class (sklearn's multinomial ``coef_``), named by the class;
- 2-class probes: sklearn keeps one row, the log-odds direction of ``classes[1]`` vs
  ``classes[0]``, named ``"<c1>_vs_<c0>"``. E7's amplification ``h + α Σ_k (h·w_k/‖w_k‖²) w_k``
  with this single row scales the component of ``h`` along it by ``1 + α``.

On disk a direction is a directory with ``direction.json`` (provenance, dims, coords) and
``arrays.npz`` (``weights``, ``bias``, ``scaler_mean``, ``scaler_scale``, ``coef``), loaded with
``allow_pickle=False``; never a pickle. :func:`load_direction` refuses a direction made for another
model, site, layer or width with a one-line :class:`~probes.errors.DirectionError`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DirectionError

FORMAT = "spatialbind.direction"
FORMAT_VERSION = 1
ARRAY_DIMS = {"weights": ["component", "hidden"], "bias": ["component"], "coef": ["component", "hidden"],
              "scaler_mean": ["hidden"], "scaler_scale": ["hidden"]}


@dataclass(frozen=True, kw_only=True, eq=False)
class Direction:
    """Probe weight vectors in the original activation space, with provenance."""

    weights: np.ndarray
    """``(component, hidden)`` float64: ``coef / σ`` (see the module docstring)."""
    bias: np.ndarray
    """``(component,)``: ``intercept - weights @ μ``."""
    components: tuple[str, ...]
    """Name of each row of ``weights``."""
    classes: tuple
    """The probe's classes, in order."""
    model: str
    site: str
    """Full site name of the store vocabulary (``projector``, ``lm.resid.3``, ``vision.blocks.7``)."""
    layer: int
    role: str = "object"
    pool: str = "token"
    label: str = "ordinal"
    data_hash: str = ""
    cv_accuracy: float | None = None
    cv_ci: tuple[float, float] | None = None
    n_samples: int = 0
    probe_config: dict[str, Any] = field(default_factory=dict)
    coef: np.ndarray | None = None
    """``(component, hidden)``: the weights in the standardised space (sklearn's ``coef_``)."""
    scaler_mean: np.ndarray | None = None
    scaler_scale: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (``where``, item filter size, toolkit version, creation time)."""

    @property
    def width(self) -> int:
        """Activation width (``hidden``)."""
        return int(self.weights.shape[1])

    def unit(self) -> np.ndarray:
        """Rows of ``weights`` scaled to unit norm."""
        return self.weights / np.linalg.norm(self.weights, axis=1, keepdims=True)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """``X @ weights.T + bias``: the probe's logits (one column per component)."""
        return np.asarray(X, np.float64) @ self.weights.T + self.bias

    def to_dataarray(self):
        """``weights`` as an ``xr.DataArray`` (dims ``component``, ``hidden``), provenance in attrs."""
        import xarray as xr

        return xr.DataArray(self.weights, dims=("component", "hidden"),
                            coords={"component": list(self.components)},
                            attrs={k: json.dumps(v) for k, v in self._provenance().items()})

    def _provenance(self) -> dict[str, Any]:
        return {"model": self.model, "site": self.site, "layer": int(self.layer),
                "role": self.role, "pool": self.pool, "label": self.label, "width": self.width,
                "classes": [_plain(c) for c in self.classes], "components": list(self.components),
                "data_hash": self.data_hash, "cv_accuracy": self.cv_accuracy,
                "cv_ci": list(self.cv_ci) if self.cv_ci is not None else None,
                "n_samples": int(self.n_samples), "probe_config": self.probe_config,
                "extra": self.extra}


def direction_from_pipeline(pipeline, *, classes, model: str, site: str, layer: int,
                            **provenance) -> Direction:
    """Undo the scaler of a fitted ``Pipeline(StandardScaler, LogisticRegression)``.

    Parameters
    ----------
    pipeline : sklearn Pipeline
        Fitted probe (:func:`probes.fit.make_probe`).
    classes : sequence
        Label value of each class code the probe was trained on.
    model, site, layer : str, str, int
        Provenance; more fields (``role``, ``cv_accuracy`` ...) as keywords.

    Returns
    -------
    Direction
        With ``weights = coef / σ`` and ``bias = intercept - weights @ μ``.
    """
    scaler, lr = pipeline[0], pipeline[-1]
    coef = np.asarray(lr.coef_, np.float64)
    d = coef.shape[1]  # an identity scaler (with_mean/with_std off) has no mean_ / scale_
    mean = np.zeros(d) if scaler.mean_ is None else np.asarray(scaler.mean_, np.float64)
    scale = np.ones(d) if scaler.scale_ is None else np.asarray(scaler.scale_, np.float64)
    weights = coef / scale
    bias = np.asarray(lr.intercept_, np.float64) - weights @ mean
    labels = [classes[int(c)] for c in lr.classes_]
    if coef.shape[0] == 1:
        components = (f"{_plain(labels[1])}_vs_{_plain(labels[0])}",)
    else:
        components = tuple(str(_plain(c)) for c in labels)
    return Direction(weights=weights, bias=bias, components=components, classes=tuple(labels),
                     model=model, site=site, layer=int(layer), coef=coef, scaler_mean=mean,
                     scaler_scale=scale, **provenance)


def direction_from_result(result) -> Direction:
    """The :class:`Direction` of a :class:`~probes.fit.ProbeResult` (its all-rows refit), with the
    cross-validated accuracy, CI, data hash and probe config as provenance."""
    m = result.meta
    return direction_from_pipeline(
        result.pipeline, classes=result.classes, model=m.get("model", ""),
        site=full_site(m.get("site", ""), m.get("layer", 0)),
        layer=m.get("layer", 0), role=m.get("role", ""), pool=m.get("pool", "token"),
        label=m.get("label", ""), data_hash=m.get("data_hash", ""), cv_accuracy=result.accuracy,
        cv_ci=tuple(result.ci), n_samples=len(result.pred), probe_config=result.config.to_dict(),
        extra={"where": m.get("where", {}), "n_items_filter": m.get("n_items_filter"),
               "toolkit_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime())})


def save_direction(direction: Direction, path) -> Path:
    """Write ``direction`` to the directory ``path`` (``direction.json`` + ``arrays.npz``).

    Files are written under temporary names and renamed, so an interrupted save never leaves a
    half-written direction under the final names. Returns the directory.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(getattr(direction, k), np.float64) for k in ARRAY_DIMS
              if getattr(direction, k) is not None}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **direction._provenance(),
            "dims": {k: ARRAY_DIMS[k] for k in arrays},
            "coords": {"component": list(direction.components)}}
    tmp_npz, tmp_json = path / ".arrays.tmp.npz", path / ".direction.tmp.json"
    with open(tmp_npz, "wb") as f:
        np.savez(f, **arrays)
    tmp_json.write_text(json.dumps(meta, indent=1, allow_nan=False, default=_plain))
    os.replace(tmp_npz, path / "arrays.npz")
    os.replace(tmp_json, path / "direction.json")
    return path


def load_direction(path, *, expect_model: str | None = None, expect_site: str | None = None,
                   expect_width: int | None = None, expect_layer: int | None = None) -> Direction:
    """Read a direction saved by :func:`save_direction`, refusing one made for something else.

    Parameters
    ----------
    path : str or Path
        The direction directory (or its ``direction.json``).
    expect_model, expect_site, expect_width, expect_layer : optional
        What the caller will apply it to; any mismatch is an error. ``expect_site`` may be a full
        site name (``lm.resid.3``: family and layer must match) or a family (``lm.resid``).

    Raises
    ------
    DirectionError
        Missing or malformed files, or a model / site / layer / width mismatch (one line).
    """
    path = Path(path)
    if path.name == "direction.json":
        path = path.parent
    js, npz = path / "direction.json", path / "arrays.npz"
    if not js.is_file() or not npz.is_file():
        raise DirectionError(f"no direction at {path}: expected direction.json and arrays.npz "
                             "(written by probes.save_direction / spatialbind probe --export-directions).")
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        raise DirectionError(f"{js}: not valid JSON ({e}); re-export the direction.") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DirectionError(f"{js}: format {meta.get('format')!r} v{meta.get('format_version')} is "
                             f"not {FORMAT!r} v{FORMAT_VERSION}; re-export with this toolkit.")
    checks = (("model", expect_model), ("site", expect_site), ("width", expect_width),
              ("layer", expect_layer))
    for key, want in checks:
        same = (_site_matches(meta.get("site"), meta.get("layer"), want) if key == "site"
                else meta.get(key) == want)
        if want is not None and not same:
            raise DirectionError(
                f"direction {path} was trained on {key} {meta.get(key)!r}, not {want!r} "
                f"(model={meta.get('model')!r}, site={meta.get('site')!r}, layer={meta.get('layer')}, "
                f"width={meta.get('width')}); train a direction on the {key} you apply it to.")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise DirectionError(f"{npz}: unreadable ({e}); re-export the direction.") from None
    w = arrays.get("weights")
    if w is None or w.ndim != 2 or w.shape != (len(meta["components"]), meta["width"]):
        raise DirectionError(f"{npz}: 'weights' has shape {None if w is None else w.shape}, expected "
                             f"({len(meta['components'])}, {meta['width']}); re-export the direction.")
    return Direction(
        weights=w, bias=arrays["bias"], components=tuple(meta["components"]),
        classes=tuple(meta["classes"]), model=meta["model"], site=meta["site"],
        layer=meta["layer"], role=meta["role"], pool=meta["pool"], label=meta["label"],
        data_hash=meta["data_hash"], cv_accuracy=meta["cv_accuracy"],
        cv_ci=tuple(meta["cv_ci"]) if meta["cv_ci"] is not None else None,
        n_samples=meta["n_samples"], probe_config=meta["probe_config"], coef=arrays.get("coef"),
        scaler_mean=arrays.get("scaler_mean"), scaler_scale=arrays.get("scaler_scale"),
        extra=meta.get("extra", {}))


PAPER_TEST_SIZE = 0.05
"""E7 paper recipe: the authors' 95/5 train/test split by item."""


def paper_direction_config(seed: int = 0):
    """The authors' E7 probe: their torch linear probe (AdamW lr 1e-3, wd 1e-4, 200 full-batch
    epochs, init N(0, 1/sqrt(D)), seed 0), one 95/5 split by item (an item and its twins share a
    group), no control task."""
    from .config import ProbeConfig

    return ProbeConfig(classifier="torch_linear", epochs=200, lr=1e-3, weight_decay=1e-4,
                       split="group_shuffle", test_size=PAPER_TEST_SIZE, control=False,
                       random_state=seed)


def axis_directions(store, *, model: str, site: str = "projector", layer: int = 0,
                    role: str = "object", items=None, axes=("horizontal", "vertical"),
                    config=None, data=None, recipe: str = "robust",
                    seed: int = 0, region: str | None = None) -> dict[str, Direction]:
    """E7's directions: per axis, a 2-class ``side`` probe on entity-pooled activations.

    For each axis, rows are the entities of samples with that ``axis`` label, each the mean of its
    ``role`` tokens (``pool='entity'``: for flat stimuli an entity's layout cells), labelled
    0 = first slot (left / top), 1 = last slot (right / bottom); ``items`` keeps only the samples
    the model already answers correctly (the golden items); ``data`` (the dataset directory) adds
    scene factors for ``config.group_by``.

    ``recipe='robust'`` (default): one standardised logistic-regression direction (rank 1), scored
    by grouped CV and refitted on all rows. ``recipe='paper'``: the authors' direction, both
    columns of a 2-class softmax probe ``W`` (hidden x 2, rank 2) trained by
    :func:`paper_direction_config` on the 95 % train side of one split by item; the exported
    direction is that train-side probe, ``cv_accuracy`` its accuracy on the 5 % test side, and
    ``extra`` records ``recipe``, ``rank``, ``axis``, ``golden_only`` and the ``split`` (item ids
    of each side). Without ``items`` the paper direction is not golden-only: a warning says so and
    ``extra["golden_only"]`` is False.

    ``region`` says which tokens are pooled (:func:`probes.dataset.dataset`): ``layout`` (each
    entity's layout cells, the authors' "every token touching the box"; flat stimuli, needs
    ``data``) or ``role`` (the store's ``object`` role, mask coverage). Default: ``layout`` for
    ``recipe='paper'`` with ``data``, else ``role``; ``extra["region"]`` records it.

    Returns
    -------
    dict
        axis -> :class:`Direction` (weights in the original activation space).
    """
    from .config import ProbeConfig
    from .dataset import dataset
    from .errors import ConfigError
    from .fit import fit_probe, make_splits, split_groups

    if recipe not in ("paper", "robust"):
        raise ConfigError(f"axis_directions: recipe={recipe!r} is not 'paper' or 'robust'.")
    if recipe == "paper":
        if config is not None:
            raise ConfigError("axis_directions: recipe='paper' fixes the probe and split; "
                              "pass config only with recipe='robust'.")
        config = paper_direction_config(seed)
        if items is None:
            import warnings

            warnings.warn("axis_directions(recipe='paper'): no items given, so the directions "
                          "are trained on every item, not on golden items only; pass items= the "
                          "ids the model answers right.", UserWarning, stacklevel=2)
    config = config or ProbeConfig(control=False)
    if region is None:
        region = "layout" if recipe == "paper" and data is not None else "role"
    out = {}
    for axis in axes:
        data_ = dataset(store, model=model, site=site, layer=layer, role=role, label="side",
                        pool="entity", where={"axis": axis}, items=items, data=data,
                        region=region)
        if items is not None:
            data_.meta["n_items_filter"] = int(data_.frame["sample_id"].nunique())
        res = fit_probe(data_, config, baselines=())
        if recipe == "paper":
            # the authors' direction is the probe trained on the train side, scored on the rest
            (tr, te), = make_splits(split_groups(data_.frame, config.group_by), config)
            ids = data_.frame["sample_id"].astype(str).to_numpy()
            res.pipeline = res.heldout_pipeline
            d = direction_from_result(res)
            split = {"kind": "group_shuffle", "by": "item (scene_id: an item and its twins)",
                     "test_size": PAPER_TEST_SIZE, "seed": int(seed),
                     "train_items": sorted(set(ids[tr])), "test_items": sorted(set(ids[te]))}
            extra = {**d.extra, "axis": axis, "recipe": "paper", "rank": int(d.weights.shape[0]),
                     "golden_only": items is not None, "split": split, "region": region}
            out[axis] = dataclasses.replace(d, n_samples=int(len(tr)), extra=extra)
        else:
            d = direction_from_result(res)
            out[axis] = dataclasses.replace(d, extra={**d.extra, "axis": axis, "recipe": "robust",
                                                      "rank": int(d.weights.shape[0]),
                                                      "golden_only": items is not None,
                                                      "region": region})
    return out


def full_site(site: str, layer: int | None) -> str:
    """The store vocabulary's full site name: ``("lm.resid", 3)`` -> ``"lm.resid.3"``,
    ``("projector", 0)`` -> ``"projector"`` (a name that already carries its layer is kept)."""
    from actstore.schema import parse_site, site_name

    if not site:  # data built from plain arrays: no site to name
        return site
    family, lay = parse_site(site, None)
    return site_name(family, lay if lay is not None else layer)


def _site_matches(have: str | None, layer: int | None, want: str | None) -> bool:
    """``want`` may be the full name (``lm.resid.3``) or just the family (``lm.resid``)."""
    if want is None or have == want:
        return True
    from actstore.schema import parse_site

    try:
        fam_h, lay_h = parse_site(str(have))
        fam_w, lay_w = parse_site(str(want))
    except ValueError:
        return False
    return fam_h == fam_w and (lay_w is None or lay_w == (lay_h if lay_h is not None else layer))


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    return x


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spatialbind")
    except PackageNotFoundError:  # a bare checkout without metadata
        return "unknown"
