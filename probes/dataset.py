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
    rows, ents = [], []
    for sid, rec in _metadata_records(data_dir):
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


def _metadata_records(data_dir):
    """``(id, record)`` of every line of a dataset's ``metadata.jsonl`` (plain JSON, the scenegen
    file contract); a missing file or a line that is not a record is one clear error."""
    path = Path(data_dir) / "metadata.jsonl"
    if not path.is_file():
        raise DataError(f"data={str(data_dir)!r}: no metadata.jsonl there; give the dataset "
                        "directory that `spatialbind generate` (or an importer) wrote.")
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
            yield sid, rec


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
            data=None, region: str = "role") -> ProbeData:
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
    region : {'role', 'layout'}
        Which tokens are an entity's ``object`` tokens. ``role``: the store's role (mask
        coverage at extraction, >= 50% of the cell). ``layout`` (the paper recipe): for flat
        stimuli, each target's layout cells, the ``size x size`` token block it was drawn in
        (:func:`common.paper.layout_block`), whatever the drawn shape covers, read from the
        dataset ``data`` (required); samples without layout cells (3D scenes, photos) keep the
        store's ``object`` tokens and are counted in ``meta["layout"]``. Other roles are the
        store's either way.

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
    if region not in ("role", "layout"):
        raise DataError(f"region must be 'role' or 'layout', got {region!r}.")
    store = open_store(store)
    layout_meta = None
    if region == "layout" and role == "object":
        if data is None:
            raise DataError("region='layout' reads each entity's layout cells from the dataset: "
                            "pass data= the dataset directory the store was extracted from "
                            "(probe --data DIR).")
        X, frame, layout_meta = layout_rows(store, model=model, site=site, layer=layer,
                                            where=where, data=data, pool=pool)
    elif pool == "token":
        da = store.select(model=model, site=site, layer=layer, role=role, where=where)
    else:
        da = store.pooled(model=model, site=site, layer=layer, role=role, by="entity",
                          where=where)
    if layout_meta is None:
        X, frame = flatten(da, role=role if pool == "token" else None,
                           role_names=role_names(store))
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
                    where=dict(where or {}), region=region if layout_meta else "role")
    if layout_meta is not None:
        out.meta["layout"] = layout_meta
    return out


def layout_records(data_dir) -> dict[str, dict]:
    """Per sample id: the image size, token grid and targets (``mask_id``, ``ordinal``, pixel
    ``box``, block ``size``) of every flat-generator record of a dataset's ``metadata.jsonl``
    (read as plain JSON, the scenegen file contract); other records map to ``None``."""
    path = Path(data_dir) / "metadata.jsonl"
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else 0)
    if key in _LAYOUT_CACHE:
        return _LAYOUT_CACHE[key]
    out: dict[str, dict | None] = {}
    for sid, rec in _metadata_records(data_dir):
        grid = ((rec.get("factors") or {}).get("grid") or {})
        if rec.get("generator") != "flat" or "num_tokens" not in grid:
            out[sid] = None
            continue
        out[sid] = {"width": int(rec["width"]), "height": int(rec["height"]),
                    "num_tokens": int(grid["num_tokens"]),
                    "targets": [(int(e["mask_id"]), int(e["ordinal"]), e.get("box"),
                                 e.get("size"), e.get("centroid") is not None)
                                for e in rec.get("entities") or ()
                                if e.get("role") == "target" and e.get("ordinal") is not None]}
    _LAYOUT_CACHE.clear()  # one dataset at a time is plenty
    _LAYOUT_CACHE[key] = out
    return out


_LAYOUT_CACHE: dict = {}


def layout_rows(store, *, model: str, site: str, layer: int, where=None, data,
                pool: str = "token") -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Rows of the targets' layout cells (the paper recipe's entity region) from one store query.

    Every image token of a flat sample that lies in a target's ``size x size`` layout block
    (:func:`common.paper.layout_block`, from the dataset record's pixel box) becomes an
    ``object`` row of that entity (``entity`` = its mask id, ``ordinal`` = its slot), whatever
    the drawn shape covers; ``pool='entity'`` averages each entity's block. Samples that are not
    flat (no layout cells) keep the store's ``object`` tokens; entities whose box fits no block
    are left out. Both are counted and listed in the returned ``meta``.

    Returns
    -------
    X, frame, meta
        As :func:`flatten` (token rows) or like ``store.pooled`` (entity rows: ``mask_id``,
        ``ordinal``, ``n_pooled`` and the sample labels); ``meta``: ``n_layout_samples``,
        ``n_role_fallback`` / ``role_fallback`` (sample ids without layout cells, first 20),
        ``n_skipped_entities`` / ``skipped`` ({``item``, ``entity``, ``reason``}, first 20).
    """
    from actstore import schema as S

    from common.paper import layout_block

    records = layout_records(data)
    da = store.select(model=model, site=site, layer=layer, role=None, where=where)
    sids = np.asarray(da.coords["sample_id"].values).astype(str)
    row = np.asarray(da.coords["row"].values).astype(np.int64)
    col = np.asarray(da.coords["col"].values).astype(np.int64)
    role = np.asarray(da.coords["role"].values)
    pad = np.asarray(da.coords["pad"].values).astype(bool)
    n_s, n_t = row.shape
    ent = np.zeros((n_s, n_t), np.int64)
    ordn = np.full((n_s, n_t), -1, np.int64)
    obj_code = "object" if role.dtype.kind in "OUS" else S.role_code("object")
    fallback, skipped, n_layout = [], [], 0
    missing = [sid for sid in sids if sid not in records]
    if missing:
        raise DataError(f"sample {missing[0]!r} (and {len(missing) - 1} more) of the store is not "
                        f"in the dataset {str(data)!r}: pass the dataset the store was extracted "
                        "from (probe --data DIR).")
    for i, sid in enumerate(sids):
        rec = records.get(sid)
        img = (row[i] >= 0) & (col[i] >= 0) & ~pad[i]
        if rec is None or not img.any():
            m = (role[i] == obj_code) & ~pad[i]  # no layout cells: the store's object tokens
            ent[i, m] = np.asarray(da.coords["entity"].values[i])[m]
            ordn[i, m] = np.asarray(da.coords["ordinal"].values[i])[m]
            fallback.append(sid)
            continue
        rows_n, cols_n = int(row[i][img].max()) + 1, int(col[i][img].max()) + 1
        if rec["num_tokens"] != cols_n or rec["num_tokens"] != rows_n:
            raise DataError(f"sample {sid} was generated on a {rec['num_tokens']}x"
                            f"{rec['num_tokens']} token grid but the store's model has "
                            f"{rows_n}x{cols_n}; generate with the model's preset or use "
                            "--recipe robust.")
        cell = np.where(img, row[i] * cols_n + col[i], -1)
        n_layout += 1
        for mask_id, ordinal, box, size, visible in rec["targets"]:
            try:
                if not visible or box is None or size is None:
                    raise ValueError("not visible (no box)")
                cells = layout_block(box, size, (rec["width"], rec["height"]), (rows_n, cols_n))
            except ValueError as e:
                skipped.append({"item": sid, "entity": mask_id, "reason": str(e)})
                continue
            m = np.isin(cell, cells)
            ent[i, m] = mask_id
            ordn[i, m] = ordinal
    s_idx, t_idx = np.nonzero(ent > 0)
    hidden = da.sizes[da.dims[-1]]
    if len(s_idx):
        vals = np.asarray(da.data.vindex[s_idx, t_idx].compute() if hasattr(da.data, "vindex")
                          else np.asarray(da.values)[s_idx, t_idx], dtype=np.float32)
    else:
        vals = np.zeros((0, hidden), np.float32)
    sample_cols = {str(k): np.asarray(c.values) for k, c in da.coords.items()
                   if c.dims == (da.dims[0],)}
    if pool == "token":
        tok_cols = {k: np.asarray(da.coords[k].values)[s_idx, t_idx]
                    for k in ("row", "col", "position") if k in da.coords}
        frame = pd.DataFrame({**{k: v[s_idx] for k, v in sample_cols.items()}, **tok_cols,
                              "role": "object", "entity": ent[s_idx, t_idx],
                              "ordinal": ordn[s_idx, t_idx], "token": t_idx})
        X = vals
    else:
        key = pd.DataFrame({"s": s_idx, "e": ent[s_idx, t_idx]})
        grp = key.groupby(["s", "e"], sort=True)
        codes = grp.ngroup().to_numpy()
        n_items = int(codes.max()) + 1 if len(codes) else 0
        X = np.zeros((n_items, hidden), np.float64)
        np.add.at(X, codes, vals.astype(np.float64))
        counts = np.bincount(codes, minlength=n_items)
        X = (X / np.maximum(counts, 1)[:, None]).astype(np.float32)
        first = grp.head(1).sort_values(["s", "e"])
        s_first, t_first = first["s"].to_numpy(), t_idx[first.index.to_numpy()]
        frame = pd.DataFrame({**{k: v[s_first] for k, v in sample_cols.items()},
                              "mask_id": first["e"].to_numpy(),
                              "ordinal": ordn[s_first, t_first], "n_pooled": counts})
    frame = frame.drop(columns=[c for c in ("done",) if c in frame.columns])
    meta = {"region": "layout", "n_layout_samples": n_layout,
            "n_role_fallback": len(fallback), "role_fallback": fallback[:20],
            "n_skipped_entities": len(skipped), "skipped": skipped[:20]}
    return X, frame, meta


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
    """``side`` of each row: 0 for slot 0, 1 for the sample's last slot, missing otherwise.

    The last slot is ``n_targets - 1`` (a per-sample label stores write since 2026-11-30), so an
    entity that owns no token of the queried role (a thin star at Qwen's geometry) cannot pass
    its side on to the middle entity. Stores without ``n_targets`` fall back to the highest slot
    among the sample's rows, which is wrong exactly in that case; a warning says so.
    """
    if "ordinal" not in frame:
        raise DataError(f"label 'side' needs an 'ordinal' column in {context}.")
    o = frame["ordinal"].astype(float).where(frame["ordinal"].astype(float) >= 0)
    if "n_targets" in frame:
        last = pd.to_numeric(frame["n_targets"], errors="coerce").astype(float) - 1
    else:
        import warnings

        warnings.warn(f"{context} has no per-sample 'n_targets' label (a store written before "
                      "2026-11-30): 'side' takes the last slot from the rows present, which mislabels "
                      "the middle entity of a sample whose last entity owns no token; re-extract "
                      "to fix.", stacklevel=3)
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
