"""Probe data from the activation store: one function, :func:`dataset`, turns a store query into
``X, y, groups, frame``.

Rows are either image tokens of one role (``pool='token'``, the paper's E3: one sample per
object-region token) or entities (``pool='entity'``: the mean over each entity's tokens, the E7
direction data). ``groups`` is the ``scene_id`` of each row, so a scene and its counterfactual
twins always fall on the same side of a split. ``frame`` holds every label of every row: the
store's token coordinates (``row``, ``col``, ``entity``, ``ordinal``, ``role``), the per-sample
labels (``axis``, ``relation``, scene factors ...) and ``sample_id`` / ``scene_id``.

Derived labels
--------------
``side``
    Two classes along the layout axis: 0 = the first slot (left / top), 1 = the last slot
    (right / bottom); entities in between (a middle slot) are dropped. With two entities this is the
    E7 label (subject side vs reference side).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from .errors import DataError, suggest

PAD_ROLES = ("", "pad", "none")
PAD_CODE = 0  # actstore's role code of padding
DERIVED_LABELS = ("side",)


@dataclass(frozen=True, eq=False)
class ProbeData:
    """What :func:`dataset` returns; unpacks as ``X, y, groups, frame``."""

    X: np.ndarray
    """``(n, hidden)`` float32 features."""
    y: np.ndarray
    """``(n,)`` int class codes, indices into :attr:`classes`."""
    groups: np.ndarray
    """``(n,)`` str ``scene_id`` of each row."""
    frame: pd.DataFrame
    """``n`` rows of labels (token coords, sample labels); index 0..n-1 aligned with ``X``."""
    classes: tuple
    """Label value of each class code."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Query provenance: model, site, layer, role, label, pool, where, data_hash."""

    def __iter__(self) -> Iterator:
        return iter((self.X, self.y, self.groups, self.frame))

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> "ProbeData":
        """Rows ``idx`` (indices or a boolean mask) as a new :class:`ProbeData`."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        return ProbeData(X=self.X[idx], y=self.y[idx], groups=self.groups[idx],
                         frame=self.frame.iloc[idx].reset_index(drop=True), classes=self.classes,
                         meta=dict(self.meta))


def open_store(store):
    """Return ``store`` itself, or ``actstore.open_store(store)`` for a path or URL."""
    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        import actstore

        return actstore.open_store(str(store))
    return store


def scene_labels(data_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scene factors and entity attributes from a dataset directory's ``metadata.jsonl``.

    The store keeps per-sample labels only; the dataset record (the scenegen file contract, read
    here as plain JSON) also has each stimulus's ``factors`` and its entities' colours, which
    grouped splits (``group_by=("color_set",)``) and the control task's token type need.

    Returns
    -------
    samples : DataFrame
        One row per stimulus: ``sample_id`` plus one column per factor (lists and dicts as compact
        JSON strings, e.g. ``layout``) and ``color_set`` (sorted target colours joined by ``-``).
    entities : DataFrame
        One row per (``sample_id``, ``entity`` = mask id): ``color``, ``kind``.
    """
    path = Path(data_dir) / "metadata.jsonl"
    if not path.is_file():
        raise DataError(f"data={str(data_dir)!r}: no metadata.jsonl there; give the dataset "
                        "directory that `spatialbind generate` (or an importer) wrote.")
    rows, ents = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                sid = rec["id"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path} line {n}: not a stimulus record ({e}); "
                                "regenerate or repair the dataset.") from None
            row = {"sample_id": sid, "image_hash": _file_hash(Path(data_dir), rec.get("file_name"))}
            for k, v in (rec.get("factors") or {}).items():
                row[k] = json.dumps(v, sort_keys=True, separators=(",", ":")) \
                    if isinstance(v, (dict, list)) else v
            targets = [e for e in rec.get("entities") or () if e.get("role") == "target"]
            row["color_set"] = "-".join(sorted(str(e.get("color")) for e in targets))
            rows.append(row)
            ents.extend({"sample_id": sid, "entity": int(e["mask_id"]), "color": e.get("color"),
                         "kind": e.get("kind")} for e in rec.get("entities") or ())
    return pd.DataFrame(rows), pd.DataFrame(ents, columns=["sample_id", "entity", "color", "kind"])


def _file_hash(root: Path, rel) -> str:
    """sha256 of an image file's bytes ('' when missing): the flat generator writes identical
    images byte-identically, so equal hashes = one image (left and right questions share one)."""
    import hashlib

    if not rel:
        return ""
    path = root / rel
    if not path.is_file():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20]


def _join_scene_labels(frame: pd.DataFrame, data_dir) -> pd.DataFrame:
    samples, ents = scene_labels(data_dir)
    new = ["sample_id"] + [c for c in samples.columns if c not in frame.columns]
    frame = frame.merge(samples[new], on="sample_id", how="left", validate="many_to_one")
    key = "entity" if "entity" in frame else "mask_id" if "mask_id" in frame else None
    if key is not None:
        e = ents.rename(columns={"entity": key})
        e = e[["sample_id", key] + [c for c in ("color", "kind") if c not in frame.columns]]
        frame = frame.merge(e.drop_duplicates(["sample_id", key]),
                            on=["sample_id", key], how="left", validate="many_to_one")
    return frame


def dataset(store, *, model: str, site: str, layer: int, role: str = "object",
            label: str = "ordinal", pool: str = "token", where: dict | None = None,
            items: Iterable[str] | Callable[[pd.DataFrame], Any] | None = None,
            data=None) -> ProbeData:
    """Build probe data from one (model, site, layer, role) query of the store.

    Parameters
    ----------
    store : actstore store, path, or any object with ``select`` / ``pooled`` / ``labels``
        Where the activations live (``probes.testing.PlantedStore`` in tests).
    model, site, layer, role : str, str, int, str
        The query. ``role`` is a token role of the store's vocabulary (``object``, ``strip``,
        ``background`` ...).
    label : str
        Column to predict: a token coordinate (``ordinal``), a sample label (``relation``,
        ``axis``, any factor), or a derived label (``side``, see the module docstring).
    pool : {'token', 'entity'}
        ``token``: one row per token of ``role``; ``entity``: one row per entity, the mean of its
        tokens of ``role``.
    where : dict, optional
        Sample filter ``{label column: value or list of values}`` (e.g. ``{"axis": "horizontal"}``).
    items : iterable of sample ids, or callable, optional
        Keep only these samples (e.g. the items the model already answers correctly, for E7). A
        callable gets the label frame and returns a boolean mask over its rows.
    data : path, optional
        The dataset directory the store was extracted from: its scene factors (``color_set``,
        ``layout``, ...) and entity colours (``color``) are joined onto the rows
        (:func:`scene_labels`).

    Returns
    -------
    ProbeData
        Unpacks as ``X, y, groups, frame``; also carries ``classes`` and ``meta``.

    Raises
    ------
    DataError
        No rows, a missing label column, or fewer than two classes.
    """
    if pool not in ("token", "entity"):
        raise DataError(f"pool must be 'token' or 'entity', got {pool!r}.")
    store = open_store(store)
    if pool == "token":
        da = store.select(model=model, site=site, layer=layer, role=role, where=where)
    else:
        da = store.pooled(model=model, site=site, layer=layer, role=role, by="entity",
                          where=where)
    X, frame = flatten(da, role=role if pool == "token" else None, role_names=role_names(store))
    if pool == "token" and role != "object" and label in ("ordinal", *DERIVED_LABELS):
        frame = _fill_band_ordinals(store, frame, model=model, site=site, layer=layer, where=where)
    labels = store.labels(model) if hasattr(store, "labels") else None
    where_s = f"model={model} site={site} layer={layer} role={role} pool={pool}" + \
        (f" where={dict(where)}" if where else "")
    if data is not None:
        frame = _join_scene_labels(frame, data)
    # the store applied ``where`` already (with its own typing of numeric labels)
    out = from_arrays(X, frame, label=label, labels=labels, items=items, context=where_s)
    out.meta.update(model=model, site=site, layer=int(layer), role=role, pool=pool,
                    where=dict(where or {}))
    return out


def _fill_band_ordinals(store, frame, *, model, site, layer, where) -> pd.DataFrame:
    """Strip tokens carry the ``entity`` of the target whose band they lie in but no ordinal of
    their own: give them that target's ordinal, read from the object tokens' coords (no
    activations are loaded)."""
    if "entity" not in frame or "ordinal" not in frame:
        return frame
    need = (frame["ordinal"].to_numpy() < 0) & (frame["entity"].to_numpy() > 0)
    if not need.any():
        return frame
    obj = store.select(model=model, site=site, layer=layer, role="object", where=where)
    c = {k: np.asarray(obj.coords[k].values) for k in ("entity", "ordinal")}
    sid = np.broadcast_to(np.asarray(obj.coords["sample_id"].values)[:, None], c["entity"].shape)
    ok = (c["ordinal"] >= 0) & (c["entity"] > 0)
    table = pd.Series(c["ordinal"][ok], index=pd.MultiIndex.from_arrays(
        [sid[ok], c["entity"][ok].astype(np.int64)]))
    table = table[~table.index.duplicated()]
    keys = pd.MultiIndex.from_arrays([frame["sample_id"].to_numpy()[need],
                                      frame["entity"].to_numpy()[need].astype(np.int64)])
    filled = table.reindex(keys).fillna(-1).to_numpy()
    frame = frame.copy()
    ordn = frame["ordinal"].to_numpy().astype(np.int64)
    ordn[need] = filled
    frame["ordinal"] = ordn
    return frame


def role_names(store) -> list[str] | None:
    """The store's role code -> name table as a list indexed by code, if it has one."""
    roles = getattr(store, "roles", None)
    if isinstance(roles, dict) and roles:
        names = [""] * (max(roles) + 1)
        for code, name in roles.items():
            names[int(code)] = name
        return names
    return None


def flatten(da, *, role: str | None = None,
            role_names=None) -> tuple[np.ndarray, pd.DataFrame]:
    """Flatten a ``(sample, token, hidden)`` or ``(item, hidden)`` DataArray to rows.

    Every coordinate becomes a column (sample coords broadcast over tokens). Padding tokens
    (``pad`` coord true, role code 0 / name ``pad`` or empty, NaN values) are dropped, and so are
    tokens whose ``role`` differs from ``role`` when given. Integer role codes are turned into
    names with ``role_names`` (code -> name, e.g. ``actstore.ROLE_NAMES``) when given.

    Returns
    -------
    X : ndarray, shape (n, hidden)
    frame : DataFrame with n rows
    """
    hidden = da.dims[-1]
    lead = [d for d in da.dims if d != hidden]
    values = np.asarray(da.transpose(*lead, hidden).values, dtype=np.float32)
    shape = values.shape[:-1]
    X = values.reshape(-1, values.shape[-1])
    cols: dict[str, np.ndarray] = {}
    for name, c in da.coords.items():
        if hidden in c.dims or name in lead or not set(c.dims) <= set(lead):
            continue
        v = np.asarray(c.transpose(*[d for d in lead if d in c.dims]).values)
        idx = tuple(slice(None) if d in c.dims else None for d in lead)
        cols[str(name)] = np.broadcast_to(v[idx], shape).reshape(-1)
    frame = pd.DataFrame(cols)
    keep = np.ones(len(frame), bool)
    if "pad" in frame:
        keep &= ~frame["pad"].astype(bool).to_numpy()
    if "role" in frame and len(lead) > 1:
        r = frame["role"]
        if r.dtype.kind in "iu":
            keep &= r.to_numpy() != PAD_CODE
            if role is not None and role_names is not None:
                keep &= r.to_numpy() == list(role_names).index(role)
        else:
            keep &= ~r.astype(str).str.lower().isin(PAD_ROLES).to_numpy()
            if role is not None:
                keep &= (r.astype(str) == role).to_numpy()
    keep &= ~np.isnan(X).any(1)
    frame = frame[keep].reset_index(drop=True)
    if role_names is not None and "role" in frame and frame["role"].dtype.kind in "iu":
        frame["role"] = np.asarray(role_names, dtype=object)[frame["role"].to_numpy()]
    return X[keep], frame


def from_arrays(X: np.ndarray, frame: pd.DataFrame, *, label: str = "ordinal",
                labels: pd.DataFrame | None = None, where: dict | None = None,
                items=None, context: str = "the query") -> ProbeData:
    """Build :class:`ProbeData` from plain arrays: ``X`` rows and their label ``frame``.

    ``labels`` (one row per ``sample_id``) is joined onto ``frame``; then ``where`` and ``items``
    filter rows, rows without a label are dropped, and ``label`` is encoded to class codes.
    ``frame`` must have a ``scene_id`` column (or get one from ``labels``).
    """
    frame = frame.reset_index(drop=True)
    if labels is not None and "sample_id" in frame and len(labels):
        lab = labels.drop_duplicates("sample_id")
        extra = ["sample_id"] + [c for c in lab.columns if c not in frame.columns]
        frame = frame.merge(lab[extra], on="sample_id", how="left", validate="many_to_one")
    keep = np.ones(len(frame), bool)
    for k, v in (where or {}).items():
        if k not in frame:
            raise DataError(f"where: unknown label column {k!r} in {context}."
                            f"{suggest(k, frame.columns)} Known: {', '.join(map(str, frame.columns))}.")
        vals = list(v) if isinstance(v, (list, tuple, set)) else [v]
        col = frame[k]
        if col.dtype.kind not in "OSUT" and any(isinstance(x, str) for x in vals):
            col = col.astype(str)  # "--where n_objects=2" compares as text
            vals = [str(x) for x in vals]
        keep &= col.isin(vals).to_numpy()
    if items is not None:
        if callable(items):
            keep &= np.asarray(items(frame), bool)
        else:
            keep &= frame["sample_id"].isin(set(items)).to_numpy()
    if label in DERIVED_LABELS:
        frame[label] = _side(frame, context)
    if label not in frame:
        raise DataError(f"label column {label!r} not found in {context}.{suggest(label, frame.columns)} "
                        f"Known: {', '.join(map(str, frame.columns))}.")
    if "scene_id" not in frame:
        raise DataError(f"no scene_id for the rows of {context}: grouped splits need it; "
                        "store labels must carry scene_id per sample.")
    n_iso = 0
    if label in ("ordinal", *DERIVED_LABELS) and "counterfactual_kind" in frame:
        # an isolated twin shows its entity alone at the centre: its base slot is no position
        iso = (frame["counterfactual_kind"].astype(str) == "isolated").to_numpy()
        n_iso = int((keep & iso).sum())
        keep &= ~iso
    lab = frame[label]
    keep &= lab.notna().to_numpy()
    if lab.dtype.kind in "iuf":
        keep &= (lab.fillna(-1).to_numpy() >= 0)  # -1 marks "no entity" (background tokens)
    frame = frame[keep].reset_index(drop=True)
    X = np.ascontiguousarray(X[keep], dtype=np.float32)
    if len(frame) == 0:
        filt = f", where={where!r}" if where else ""
        raise DataError(f"no samples for {context} (label={label!r}{filt}): the role is "
                        "empty or every row was filtered out; check --roles / --where / the items filter.")
    classes, y = np.unique(frame[label].to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"label {label!r} has one class only ({classes[0]!r}) in {context}; "
                        "a probe needs at least two.")
    groups = frame["scene_id"].astype(str).to_numpy()
    meta = {"label": label, "n": int(len(y)), "data_hash": data_hash(X, y, groups),
            "dropped_isolated_rows": n_iso}
    return ProbeData(X=X, y=y.astype(np.int64), groups=groups, frame=frame,
                     classes=tuple(c.item() if hasattr(c, "item") else c for c in classes), meta=meta)


def _side(frame: pd.DataFrame, context: str) -> pd.Series:
    if "ordinal" not in frame:
        raise DataError(f"label 'side' needs an 'ordinal' column in {context}.")
    o = frame["ordinal"].astype(float).where(frame["ordinal"].astype(float) >= 0)
    last = o.groupby(frame["sample_id"] if "sample_id" in frame else frame.index).transform("max")
    side = pd.Series(np.nan, index=frame.index)
    side[o == 0] = 0
    side[(o == last) & (last > 0)] = 1
    return side.astype("Int64")


def data_hash(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> str:
    """Short sha256 of the features, labels and groups (recorded as directions' provenance)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X, np.float32).tobytes())
    h.update(np.ascontiguousarray(y, np.int64).tobytes())
    h.update("\x00".join(map(str, groups)).encode())
    return h.hexdigest()[:16]
