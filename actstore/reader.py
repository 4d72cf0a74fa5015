"""Read side of the activation store: labelled xarray/dask queries by model, site, layer and role.

``open_store(path_or_url)`` returns a :class:`Store`; ``Store.select`` gives the activations of one
site (family + layer) as a dask-backed ``xarray.DataArray`` whose token axis is "the k-th token of
the requested role in each sample", gathered through precomputed integer indices (a vectorised
``isel``), never boolean masks over dask dimensions. ``Store.pooled`` gives per-(sample, entity)
means, the table ``probes`` trains on. Only samples whose ``done`` flag is set are returned unless
``include_pending=True``.
"""
from __future__ import annotations

import functools
import os
import threading
from functools import cached_property
from typing import Mapping

import numpy as np
import pandas as pd

from common.io import boundary

from . import schema as S
from .errors import StoreError, unknown

TARGET_CHUNK_BYTES = 64 * 2**20
"""Dask chunks along ``sample`` hold about this many bytes (rounded to whole shards)."""

LABEL_BLOCK_SAMPLES = 8192
"""Token label arrays are read this many samples at a time when a role's index is built."""


def open_store(path, *, storage_options: dict | None = None, direct: bool = True,
               index: bool = True) -> "Store":
    """Open a store read-only.

    Parameters
    ----------
    path : str or path-like
        Local directory or fsspec URL (``file://``, ``memory://``, ``s3://`` ...).
    storage_options : dict, optional
        Passed to fsspec for URLs.
    direct : bool
        Gather role tokens straight from memory-mapped shard files when the store is local and
        uncompressed (same values, reads only the needed rows); False always goes through zarr.
    index : bool
        Use the role index persisted in the store (``role_index`` pieces) for the done samples it
        covers; False builds every role index from the token labels (same result, slower).

    Returns
    -------
    Store

    Raises
    ------
    StoreError
        If nothing is there, or it is not an activation store of this schema version.
    """
    import zarr

    meta = f"{str(path).rstrip('/')}/zarr.json"
    with boundary(meta, fix="it is not an activation store's: give the --store path that "
                            "extraction wrote", error=StoreError):
        try:
            root = zarr.open_group(S.resolve_store(path, mode="r",
                                                   storage_options=storage_options),
                                   mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError,
                zarr.errors.NodeTypeValidationError):
            raise StoreError(f"no activation store at {path}: give the path of a store that "
                             f"extraction wrote (a directory with zarr.json)") from None
    v = root.attrs.get("schema_version")
    if v is None:
        raise StoreError(f"{path} is a zarr group but not an activation store (no schema_version attr)")
    if v != S.SCHEMA_VERSION:
        raise StoreError(f"{path} has store schema version {v}; this toolkit reads version "
                         f"{S.SCHEMA_VERSION}: re-extract it, or use the toolkit version that wrote it")
    store = Store(root, str(path), storage_options, direct=direct, index=index)
    if not store.models and store.being_created:
        raise StoreError(f"{path} is being created: model group(s) {store.being_created} are "
                         f"not complete yet; wait for the extraction to start writing, or rerun "
                         f"the same extract command if it was interrupted")
    return store


class Store:
    """A read-only activation store. Build it with :func:`open_store`."""

    def __init__(self, root, path: str, storage_options: dict | None = None, *,
                 direct: bool = True, index: bool = True):
        self.root = root
        self.direct = direct
        self.index = index
        self.path = path
        self.storage_options = dict(storage_options or {})
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"<actstore.Store {self.path!r} models={self.models}>"

    # ------------------------------------------------------------------ catalogue
    @cached_property
    def _all_groups(self) -> list[tuple[str, object]]:
        return sorted(self.root.groups())

    @cached_property
    def _groups(self) -> dict[str, object]:
        out = {}
        for key, g in self._all_groups:
            if g.attrs.get("complete"):
                out[g.attrs.get("model", key)] = g
        return out

    @property
    def being_created(self) -> list[str]:
        """Models whose group exists but is not complete yet (being created, or its creation
        was interrupted: the next extract run rebuilds it)."""
        out = [g.attrs.get("model", key) for key, g in self._all_groups
               if not g.attrs.get("complete")]
        if "://" not in self.path:  # a creation lock beside the store: group not made yet
            from .writer import lock_keys

            have = set(map(S.model_key, [*out, *self._groups]))
            out += [k for k in lock_keys(self.path) if k not in have]
        return out

    @property
    def models(self) -> list[str]:
        """Names of the models held (as given to the writer)."""
        return list(self._groups)

    @property
    def roles(self) -> dict[int, str]:
        """Role code -> name table."""
        return dict(enumerate(S.ROLE_NAMES))

    def group(self, model: str | None = None):
        """The zarr group of ``model`` (which may be omitted when the store holds one model)."""
        if model is None:
            if len(self._groups) != 1:
                raise StoreError(f"{self.path} holds {len(self._groups)} models {self.models}: "
                                 f"choose one with model=... (--model)")
            return next(iter(self._groups.values()))
        if model in self._groups:
            return self._groups[model]
        if model in self.being_created or S.model_key(model) in map(S.model_key,
                                                                  self.being_created):
            raise StoreError(f"model {model!r} in {self.path} is being created (its group is not "
                             f"complete yet); wait for the extraction to start writing, or rerun "
                             f"the same extract command if it was interrupted")
        for g in self._groups.values():
            if S.model_key(model) == S.model_key(g.attrs["model"]):
                return g
        raise unknown("model", model, self.models, where=self.path)

    def sites(self, model: str | None = None) -> list[str]:
        """Site families held for ``model``."""
        return [d["name"] for d in self.group(model).attrs["sites"]]

    def layers(self, model: str | None = None, site: str | None = None) -> list[int]:
        """The model's layer numbers held for a site family."""
        return list(self._spec(self.group(model), site).layers)

    def provenance(self, model: str | None = None) -> dict:
        """Provenance attrs of a model group (model id, revision, adapter, dtype, data hash, ...)."""
        g = self.group(model)
        return {**g.attrs["provenance"], "params": g.attrs.get("params", {})}

    def _spec(self, g, site) -> S.SiteSpec:
        specs = {d["name"]: S.SiteSpec.from_dict(d) for d in g.attrs["sites"]}
        if site is None:
            if len(specs) != 1:
                raise StoreError(f"model {g.attrs['model']!r} has sites {sorted(specs)}: choose one "
                                 f"with site=... (--site)")
            return next(iter(specs.values()))
        fam, _ = S.parse_site(site)
        if fam not in specs:
            raise unknown("site", site, sorted(specs), where=f"model {g.attrs['model']!r}")
        return specs[fam]

    # ------------------------------------------------------------------ labels
    def labels(self, model: str | None = None) -> pd.DataFrame:
        """Per-sample labels (one row per stored sample, index = store index) plus ``done``."""
        g = self.group(model)
        key = ("labels", g.path)
        if key not in self._cache:  # built on demand: a query without where= needs no DataFrame
            cols = {}
            for name, (v, cats) in self._sample_columns(g).items():
                cols[name] = v if cats is None else S.decode_strings(v, cats)
            df = pd.DataFrame(cols)
            df["done"] = df["done"].astype(bool)
            df.index.name = S.SAMPLE
            self._cache[key] = df
        return self._cache[key].copy()

    def _sample_columns(self, g) -> dict[str, tuple[np.ndarray, list | None]]:
        """The per-sample arrays of ``g`` as stored, in the column order of :meth:`labels`
        (standard labels, the others, ``done`` last): ``{name: (values, categories)}``, the
        categories of a string column (its values are int32 codes) or None. Cached; no pandas."""
        key = ("sample-columns", g.path)
        if key not in self._cache:
            from . import _index

            raw = {}
            for name, arr in sorted(g["samples"].arrays()):
                cats = arr.attrs["categories"] if arr.attrs.get("kind") == "string" else None
                v = None
                if name == "done" and self.index and self.direct:  # one stat per vouched chunk
                    v = _index.done_flags(g, arr, self.root.store, self._cache)
                raw[name] = (self._read(arr) if v is None else v, cats)
            first = [c for c in S.STANDARD_SAMPLE_LABELS if c in raw]
            order = first + [c for c in raw if c not in first and c != "done"] + ["done"]
            self._cache[key] = {c: raw[c] for c in order}
        return self._cache[key]

    def _done(self, g) -> np.ndarray:
        """The ``done`` flag of every sample of ``g`` (bool, read-only, cached)."""
        key = ("done", g.path)
        if key not in self._cache:
            v = np.array(self._sample_columns(g)["done"][0], dtype=bool)
            v.flags.writeable = False
            self._cache[key] = v
        return self._cache[key]

    def _tokens(self, g, fam: str) -> dict[str, np.ndarray]:
        key = ("tokens", g.path, fam)
        if key not in self._cache:  # small int arrays: loaded once, used to build integer indices
            fg = g[fam]
            self._cache[key] = {name: self._read(fg[name]) for name in S.TOKEN_LABELS}
        return self._cache[key]

    def _read(self, arr, a: int = 0, b: int | None = None) -> np.ndarray:
        """Rows ``[a, b)`` of a small (unsharded) array: straight from its chunk files when the
        store is local (:func:`actstore._direct.read_rows`, the bytes zarr returns without its
        per-chunk overhead, which dominated a role index built from 100k samples' labels), else
        through zarr."""
        from . import _direct

        b = arr.shape[0] if b is None else b
        key = ("chunked", arr.path)
        if key not in self._cache:
            self._cache[key] = _direct.chunked(arr, self.root.store) if self.direct else None
        lay = self._cache[key]
        return _direct.read_rows(lay, a, b) if lay is not None else np.asarray(arr[a:b])

    def _label_blocks(self, g, fam: str, names, rows: np.ndarray | None = None):
        """The token label arrays ``names`` of a site family, ``LABEL_BLOCK_SAMPLES`` samples at a
        time (whole zarr chunks): ``(start, {name: (b, T) array})``, so no (N, T) array is held.
        ``rows`` (sorted store indices): read only the chunks holding them (blocks still start at
        multiples of the block size, so a block may hold other samples too)."""
        fg = g[fam]
        N = fg["role"].shape[0]
        c = fg["role"].chunks[0]
        step = max(c, LABEL_BLOCK_SAMPLES // c * c)
        arrays = {name: fg[name] for name in names}
        if rows is None:
            starts = range(0, N, step)
        else:
            starts = np.unique(np.asarray(rows, np.int64) // step * step).tolist()
        for a in starts:
            if rows is None:
                yield a, {name: self._read(arr, a, a + step) for name, arr in arrays.items()}
                continue
            # only the label chunks that hold wanted rows; the others stay at their fill value
            b = min(a + step, N)
            want = np.asarray(rows)[(rows >= a) & (rows < b)]
            ch = np.unique(want // c)
            blk = {}
            for name, arr in arrays.items():
                v = np.full((b - a, arr.shape[1]), arr.fill_value, arr.dtype)
                for c0, c1 in _chunk_runs(ch):
                    lo, hi = max(a, c0 * c), min(b, c1 * c)
                    v[lo - a:hi - a] = self._read(arr, lo, hi)
                blk[name] = v
            yield a, blk

    def _role_index(self, g, fam: str, code: int):
        """Where role ``code`` sits in every stored sample, and the token labels there (cached).

        Returns ``(counts (N,), idx (N, K), labels)``: ``idx[i, k]`` the token index of sample
        ``i``'s k-th token of that role (-1 past its ``counts[i]``), K the largest count, and
        ``labels[name]`` the ``(N, K)`` token label there (the label's "none" value in padding).
        Done samples covered by a valid persisted piece (``actstore/_index.py``) come from it;
        every other sample is built from the label arrays, block by block (memory: O(N K), not
        O(N T)). The arrays are read-only, so a query can hand out views of them.
        """
        counts, idx, _ = self._role_slots(g, fam, code)
        return counts, idx, {name: self._role_table(g, fam, code, name) for name in S.TOKEN_LABELS}

    def _role_table(self, g, fam: str, code: int, name: str) -> np.ndarray:
        """The ``(N, K)`` table of token label ``name`` of :meth:`_role_index` (read-only,
        cached), built on first use from the entries :meth:`_role_slots` keeps: a role query
        hands its label coords out lazily, so a query that only reads values builds none."""
        key = ("role-table", g.path, fam, int(code), name)
        if key not in self._cache:
            counts, idx, flat = self._role_slots(g, fam, code)
            with flat["lock"]:  # coords may be read from several threads
                if key not in self._cache:
                    dt, none = S.TOKEN_LABELS[name]
                    N, K = idx.shape
                    v = np.full((N, K), none, dt)
                    if name == "role":
                        v[flat["filled"]] = code
                    else:
                        v[flat["filled"]] = flat.pop(name)
                    flat["left"].discard(name)
                    if not flat["left"]:  # every table built: the entries are not needed now
                        del flat["filled"]
                    v.flags.writeable = False
                    self._cache[key] = v
        return self._cache[key]

    def _role_slots(self, g, fam: str, code: int):
        """``(counts, idx, entries)`` of role ``code``: :meth:`_role_index`'s counts and token
        index table, and the entries the label tables are built from (their flat labels and
        the ``(N, K)`` slots they fill), cached."""
        from . import _index

        key = ("role-index", g.path, fam, int(code))
        if key in self._cache:
            return self._cache[key]
        fg = g[fam]
        N, T = fg["role"].shape
        idt = np.int16 if T < 2**15 else np.int32
        rows, toks, vals = [], [], {k: [] for k in S.TOKEN_LABELS if k != "role"}
        taken = np.zeros(N, bool)
        if self.index and N:
            done = self._done(g)
            taken, parts = _index.load(g, fam, int(code), T, done, self.root.store, self._cache)
            for p in parts:
                rows.append(p["sample"])
                toks.append(p["token"])  # int32: cast when it fills idx (no copy here)
                for name in vals:
                    vals[name].append(p[name])
        # every sample no piece gave: one pass over their label arrays, the (sample, token) of
        # every token of the role, in order (np.nonzero is row-major); O(tokens of the role) memory
        rest = None if not taken.any() else np.flatnonzero(~taken)
        if rest is None or len(rest):
            for a, blk in self._label_blocks(g, fam, list(S.TOKEN_LABELS), rest):
                hit = blk["role"] == code
                if rest is not None:
                    hit &= ~taken[a:a + len(hit), None]
                r, t = np.nonzero(hit)
                rows.append(r + a)
                toks.append(t.astype(idt))
                for name in vals:
                    vals[name].append(blk[name][r, t])
                del blk
        def cat(parts, dt):  # one source (the usual: one piece): its arrays as they are
            return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, dt)
        rows = cat(rows, np.int64)
        toks = cat(toks, idt)
        vals = {name: cat(v, S.TOKEN_LABELS[name][0]) for name, v in vals.items()}
        if len(rows) > 1 and np.any(rows[1:] < rows[:-1]):  # several sources: back in sample order
            order = np.argsort(rows, kind="stable")  # (each sample's tokens stay in token order)
            rows, toks = rows[order], toks[order]
            vals = {name: v[order] for name, v in vals.items()}
        counts = np.bincount(rows, minlength=N)
        K = int(counts.max()) if N else 0
        # rows are sorted and each sample's tokens in order, so the entries fill the (N, K) slots
        # k < counts[i] in row-major order, the order a boolean mask assigns in: one (N, K) bool
        # mask for every table (not an int64 index of every entry: 4x smaller at K = 20)
        filled = np.arange(K) < counts[:, None]
        idx = np.full((N, K), -1, idt)
        idx[filled] = toks
        del rows, toks
        for v in (idx, counts, filled):
            v.flags.writeable = False
        flat = {"filled": filled, "left": set(S.TOKEN_LABELS), "lock": threading.Lock(), **vals}
        self._cache[key] = (counts, idx, flat)
        return self._cache[key]

    def _sample_arrays(self, g) -> dict[str, np.ndarray]:
        """Per-sample label columns as read-only numpy arrays (strings as fixed-width unicode,
        which xarray takes as they are; object arrays it converts on every query), cached.
        Built from the stored arrays directly (a string column is its categories, as fixed-width
        unicode as wide as the longest one in use, indexed by its codes): the arrays the
        :meth:`labels` DataFrame gives, without building it."""
        return {c: self._sample_array(g, c) for c in self._sample_dtypes(g)}

    def _sample_array(self, g, c: str) -> np.ndarray:
        """One column of :meth:`_sample_arrays` (read-only, cached)."""
        key = ("sample-array", g.path, c)
        if key not in self._cache:
            v, cats = self._sample_columns(g)[c]
            v = np.array(v, copy=True) if cats is None else _strings(v, cats)
            v.flags.writeable = False
            self._cache[key] = v
        return self._cache[key]

    def _sample_dtypes(self, g) -> dict[str, np.dtype]:
        """The dtype of every column of :meth:`_sample_arrays`, without building them (a string
        column's width from its categories in use), cached."""
        key = ("sample-dtypes", g.path)
        if key not in self._cache:
            self._cache[key] = {c: v.dtype if cats is None else _string_dtype(v, cats)
                                for c, (v, cats) in self._sample_columns(g).items() if c != "done"}
        return self._cache[key]

    def _sample_index(self, g, where, include_pending) -> np.ndarray:
        done = self._done(g)
        keep = np.ones(len(done), bool) if include_pending else done.copy()
        if not where:
            return np.flatnonzero(keep)
        df = self.labels(g.attrs["model"])
        for col, want in where.items():
            if col not in df.columns:
                raise unknown("label", col, list(df.columns), where=f"where= of {self.path}")
            vals = df[col]
            wants = list(want) if isinstance(want, (list, tuple, set, np.ndarray)) else [want]
            if pd.api.types.is_numeric_dtype(vals) or pd.api.types.is_bool_dtype(vals):
                try:
                    wants = [vals.dtype.type(w) if not isinstance(w, str) or w.lower() not in
                             ("true", "false") else w.lower() == "true" for w in wants]
                except (TypeError, ValueError):
                    raise StoreError(f"where {col}={want!r}: {col!r} is numeric in {self.path}; "
                                     f"give numbers") from None
            else:
                wants = [str(w) for w in wants]
            keep &= vals.isin(wants).to_numpy()
        return np.flatnonzero(keep)

    # ------------------------------------------------------------------ activations
    def _acts(self, g, spec: S.SiteSpec):
        import dask.array as da
        import xarray as xr

        arr = g[spec.name]["acts"]
        per_sample = spec.n_tokens * spec.hidden * np.dtype(spec.dtype).itemsize
        B = int(g.attrs["batch_size"])
        c = max(B, (TARGET_CHUNK_BYTES // max(per_sample, 1)) // B * B)
        d = da.from_array(arr, chunks=(c, 1, spec.n_tokens, spec.hidden), lock=False, fancy=False,
                          name=f"actstore-{self.path}-{g.path}-{spec.name}", asarray=True)
        return xr.DataArray(d, dims=S.ACTS_DIMS, coords={S.LAYER: list(spec.layers)},
                            name=f"{g.attrs['model']}/{spec.name}")

    def _resolve(self, model, site, layer):
        g = self.group(model)
        spec = self._spec(g, site)
        lay = None
        if site is not None:
            _, lay = S.parse_site(site, layer)
        elif layer is not None:
            lay = int(layer)
        if lay is not None and lay not in spec.layers:
            raise unknown("layer", lay, list(spec.layers),
                          where=f"site {spec.name!r} of model {g.attrs['model']!r}")
        return g, spec, lay

    def _gather(self, g, spec: S.SiteSpec, layer_pos: int, samples: np.ndarray,
                tokens: np.ndarray, dims=(S.SAMPLE, S.TOKEN)):
        """``acts[samples[i], layer_pos, tokens[i, k]]`` as a dask-backed DataArray (dims + hidden).

        ``tokens`` < 0 marks padding (NaN). Integer gathers only: straight from the shard files
        when :mod:`actstore._direct` can read them, else a vectorised ``isel`` over dask.
        """
        import dask.array as da
        import xarray as xr

        from dask.base import tokenize

        from . import _direct

        n, K = tokens.shape
        arr = g[spec.name]["acts"]
        lay = _direct.layout(arr, self.root.store) if self.direct and n and K else None
        if lay is not None:
            per = max(K * spec.hidden * np.dtype(spec.dtype).itemsize, 1)
            c = max(1, TARGET_CHUNK_BYTES // per)  # gathered blocks of bounded size (streaming)
            tok = tokenize(self.path, arr.path, layer_pos, samples, tokens)
            s_d = _row_blocks(np.asarray(samples, np.int64)[:, None], c, f"actstore-samples-{tok}")
            t_d = _row_blocks(np.asarray(tokens), c, f"actstore-tokens-{tok}")
            data = da.map_blocks(lambda s_, t_: _direct.gather(lay, layer_pos, s_[:, 0], t_),
                                 s_d, t_d, dtype=np.dtype(spec.dtype), new_axis=2,
                                 chunks=(t_d.chunks[0], (K,), (spec.hidden,)),
                                 name=f"actstore-gather-{tok}")
            data = _gathered_array_type()(data.dask, data.name, data.chunks, meta=data._meta)
            data._whole = lambda: _direct.gather(lay, layer_pos, samples, tokens)
            return xr.DataArray(data, dims=(*dims, S.HIDDEN))
        x = self._acts(g, spec).isel(layer=layer_pos)
        if n == 0 or K == 0:  # nothing to gather: an empty (n, K, H) array
            return xr.DataArray(da.zeros((n, K, spec.hidden), dtype=spec.dtype), dims=(*dims, S.HIDDEN))
        s_ix = np.broadcast_to(np.asarray(samples, np.int64)[:, None], tokens.shape)
        x = x.isel(sample=xr.DataArray(s_ix, dims=dims),
                   token=xr.DataArray(np.maximum(tokens, 0).astype(np.int64), dims=dims))
        x = x.drop_vars([c for c in x.coords])
        pad = tokens < 0
        return x.where(xr.DataArray(~pad, dims=dims)) if pad.any() else x

    def select(self, model: str | None = None, site: str | None = None, layer: int | None = None,
               role: str | int | None = None, where: Mapping | None = None, *,
               include_pending: bool = False):
        """Activations of one site (and layer) for one token role, as a labelled DataArray.

        Parameters
        ----------
        model, site, layer
            Which activations; ``site`` may carry the layer (``"lm.resid.4"``). ``layer=None`` on a
            layered site keeps a ``layer`` dim with every stored layer.
        role : str or int, optional
            Token role (name or code). The ``token`` dim then indexes the k-th token of that role
            in each sample; samples with fewer get padding (coord ``pad`` True, values NaN).
            ``None`` returns every stored token slot (``pad`` marks padding slots).
        where : mapping, optional
            Sample-label filters, ``{"axis": "horizontal", "split": ["train", "val"]}``.
        include_pending : bool
            Also return samples whose ``done`` flag is not set (their values are NaN).

        Returns
        -------
        xarray.DataArray
            Dask-backed, dims ``(sample, token, hidden)`` or ``(sample, layer, token, hidden)``;
            coords on ``sample``: ``sample`` (store index) and every label column; on
            ``(sample, token)``: ``role``, ``ordinal``, ``entity``, ``row``, ``col``, ``position``, ``pad``.
        """
        import xarray as xr

        g, spec, lay = self._resolve(model, site, layer)
        sidx = self._sample_index(g, where, include_pending)
        if role is None:
            tok = {k: v[sidx] for k, v in self._tokens(g, spec.name).items()}
            x = self._acts(g, spec)
            if lay is not None:
                x = x.isel(layer=list(spec.layers).index(lay))
            x = x.isel(sample=sidx)
            pad = tok["role"] == S.PAD
            coords = dict(tok)
            x = x.assign_coords(token=np.arange(spec.n_tokens))
        else:
            code = S.role_code(role)
            counts, idx_all, _ = self._role_slots(g, spec.name, code)
            K = int(counts[sidx].max()) if len(sidx) else 0
            if len(sidx) == len(counts) and (len(sidx) == 0 or sidx[-1] == len(sidx) - 1):
                pick = lambda v: v[:, :K]  # every sample, in store order: views, no copies  # noqa: E731
            else:
                pick = lambda v: v[sidx, :K]  # noqa: E731
            idx = pick(idx_all)
            pad = idx < 0
            # the token-label coords are built when first read (a query of values builds none)
            coords = {k: xr.Variable((S.SAMPLE, S.TOKEN), _lazy_coord(
                functools.partial(_picked_table, self, g, spec.name, code, k, pick),
                idx.shape, S.TOKEN_LABELS[k][0])) for k in S.TOKEN_LABELS}
            layer_pos = [list(spec.layers).index(lay)] if lay is not None else range(len(spec.layers))
            parts = [self._gather(g, spec, li, sidx, idx) for li in layer_pos]
            if lay is not None:
                x = parts[0].assign_coords({S.LAYER: lay})
            else:
                x = xr.concat(parts, dim=S.LAYER).transpose(S.SAMPLE, S.LAYER, S.TOKEN, S.HIDDEN)
                x = x.assign_coords({S.LAYER: list(spec.layers)})
            x = x.assign_coords(token=np.arange(idx.shape[1]))
        x = x.assign_coords({**{k: v if isinstance(v, xr.Variable) else ((S.SAMPLE, S.TOKEN), v)
                                for k, v in coords.items()},
                             "pad": ((S.SAMPLE, S.TOKEN), pad), **self._sample_coords(g, sidx)})
        x.name = f"{g.attrs['model']}/{spec.name}"
        x.attrs.update(self._attrs(g, spec, lay, role))
        return x

    def pooled(self, model: str | None = None, site: str | None = None, layer: int | None = None,
               role: str | int = "object", by: str = "entity", where: Mapping | None = None, *,
               include_pending: bool = False):
        """Mean activation over each entity's (or each sample's) tokens of one role.

        Parameters
        ----------
        model, site, layer, where, include_pending
            As in :meth:`select`; a layer is required for layered sites.
        role : str or int
            Token role pooled over (default ``object``).
        by : {"entity", "sample"}
            One item per (sample, entity) with at least one such token, or one per sample.

        Returns
        -------
        xarray.DataArray
            float32, computed, dims ``(item, hidden)``; coords on ``item``: ``sample``, ``mask_id``
            (entity; 0 with ``by="sample"``), ``ordinal`` (of the item's first token, -1 if none),
            ``n_pooled`` (tokens averaged) and every sample label (``sample_id``, ``scene_id``, ...).
        """
        import xarray as xr

        if by not in ("entity", "sample"):
            raise StoreError(f"by must be 'entity' or 'sample'; got {by!r}")
        g, spec, lay = self._resolve(model, site, layer)
        if lay is None:
            raise StoreError(f"pooled needs one layer of site {spec.name!r}: give layer= "
                             f"(one of {list(spec.layers)}) or site='{spec.name}.<layer>'")
        sidx = self._sample_index(g, where, include_pending)
        _, idx_all, lab_all = self._role_index(g, spec.name, S.role_code(role))
        ix = idx_all[sidx]
        s_loc, kk = np.nonzero(ix >= 0)  # row-major: sorted by sample, then token
        t = ix[s_loc, kk].astype(np.int64)
        tok = {"ordinal": lab_all["ordinal"][sidx]}
        ent = lab_all["entity"][sidx][s_loc, kk] if by == "entity" else np.zeros(len(t), np.int16)
        order = np.lexsort((t, ent, s_loc))
        s_loc, t, ent, kk = s_loc[order], t[order], ent[order], kk[order]
        keys = np.stack([s_loc, ent.astype(np.int64)], axis=1)
        uniq, start, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
        n_items, width = len(uniq), int(counts.max()) if len(counts) else 0
        k = np.arange(width)[None, :]
        pos = np.minimum(start[:, None] + k, start[:, None] + counts[:, None] - 1) \
            if n_items else np.zeros((0, 0), np.int64)
        w = np.where(k < counts[:, None], 1.0 / np.maximum(counts[:, None], 1), 0.0).astype("float32")
        if n_items:
            vals = self._gather(g, spec, list(spec.layers).index(lay), sidx[uniq[:, 0]],
                                np.where(k < counts[:, None], t[pos], -1), dims=(S.ITEM, "k"))
            w_da = xr.DataArray(w, dims=(S.ITEM, "k"))
            out = (vals.fillna(0).astype("float32") * w_da).sum("k").compute()
            out = out.drop_vars([c for c in out.coords if c not in (S.HIDDEN,)])
        else:
            out = xr.DataArray(np.zeros((0, spec.hidden), "float32"), dims=(S.ITEM, S.HIDDEN))
        items_s = uniq[:, 0] if n_items else np.zeros(0, np.int64)
        first_ord = tok["ordinal"][s_loc[start], kk[start]] if n_items else np.zeros(0, np.int8)
        out = out.assign_coords({
            S.SAMPLE: (S.ITEM, sidx[items_s]),
            "mask_id": (S.ITEM, uniq[:, 1].astype(np.int16) if n_items else np.zeros(0, np.int16)),
            "ordinal": (S.ITEM, first_ord.astype(np.int8)),
            "n_pooled": (S.ITEM, counts.astype(np.int32) if n_items else np.zeros(0, np.int32)),
        })
        df = self.labels(g.attrs["model"]).iloc[sidx[items_s]]
        out = out.assign_coords({c: (S.ITEM, df[c].to_numpy()) for c in df.columns if c != "done"})
        out.name = f"{g.attrs['model']}/{S.site_name(spec.name, lay)}/{role}/mean-by-{by}"
        out.attrs.update(self._attrs(g, spec, lay, role))
        out.attrs["pooled_by"] = by
        return out

    def _sample_coords(self, g, sidx) -> dict:
        """The per-sample coords of a query of samples ``sidx``: ``sample`` and every label
        column, the columns built when first read (lazy, like the token label coords): a query
        that only reads values builds none (at 100k samples a ``sample_id`` column alone is 100k
        fixed-width strings)."""
        import xarray as xr

        every = len(sidx) == len(self._done(g)) and \
            (len(sidx) == 0 or sidx[-1] == len(sidx) - 1)
        out = {S.SAMPLE: (S.SAMPLE, sidx)}
        for c, dt in self._sample_dtypes(g).items():
            load = functools.partial(_picked_column, self, g, c, None if every else sidx)
            out[c] = xr.Variable((S.SAMPLE,), _lazy_coord(load, (len(sidx),), dt))
        return out

    def _attrs(self, g, spec, lay, role) -> dict:
        prov = g.attrs["provenance"]
        return {"model": g.attrs["model"], "site": S.site_name(spec.name, lay),
                "role": "" if role is None else S.ROLE_NAMES[S.role_code(role)],
                **{k: ("" if v is None else v) for k, v in prov.items()
                   if isinstance(v, (str, int, float))},
                "store": self.path}

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict:
        """What the store holds: models, sites, layers, role token counts, sample counts, bytes."""
        out = {"path": self.path, "schema_version": self.root.attrs.get("schema_version"),
               "bytes": self.nbytes(), "models": {}}
        for name, g in self._groups.items():
            df = self.labels(name)
            done = df["done"].to_numpy()
            m = {"provenance": dict(g.attrs["provenance"]), "params": dict(g.attrs.get("params", {})),
                 "n_samples": len(df), "done": int(done.sum()), "sites": {}}
            for spec in (S.SiteSpec.from_dict(d) for d in g.attrs["sites"]):
                counts = np.zeros(len(S.ROLE_NAMES), np.int64)
                for a, blk in self._label_blocks(g, spec.name, ["role"]):  # streamed
                    role = blk["role"][done[a:a + len(blk["role"])]]
                    counts += np.bincount(role.ravel().astype(np.int64),
                                          minlength=len(S.ROLE_NAMES))[:len(S.ROLE_NAMES)]
                m["sites"][spec.name] = {
                    "layers": list(spec.layers), "n_tokens": spec.n_tokens, "hidden": spec.hidden,
                    "dtype": spec.dtype,
                    "roles": {S.ROLE_NAMES[c]: int(n) for c, n in enumerate(counts)
                              if n and c != S.PAD},
                    "bytes": int(g[spec.name]["acts"].nbytes_stored())}
            m["role_index"] = self._index_summary(g, done)
            out["models"][name] = m
        out["being_created"] = self.being_created
        return out

    def _index_summary(self, g, done) -> dict:
        """How much of the persisted role index a reader can use: complete pieces, and done
        samples covered by a sound one (``persisted`` False: no ``role_index`` group, an old store)."""
        import warnings

        from . import _index

        if _index.GROUP not in g:
            return {"persisted": False, "pieces": 0, "covered": 0}
        taken = np.zeros(len(done), bool)
        ps = _index.pieces(g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _index.IndexWarning)
            for _, p in ps:
                cov = _index.covered_of(p, len(done), self.root.store, self._cache)
                if cov is not None:
                    taken[cov[done[cov]]] = True
        return {"persisted": True, "pieces": len(ps), "covered": int(taken.sum())}

    def nbytes(self) -> int:
        """Bytes the store takes on disk (or in the object store)."""
        store = self.root.store
        if "://" in self.path:  # a plain (sync) fsspec filesystem; zarr's may be an async wrapper
            import fsspec

            fs, p = fsspec.core.url_to_fs(self.path, **self.storage_options)
            return int(fs.du(p, total=True))
        total = 0
        for dirpath, _, files in os.walk(str(store.root)):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total


def _strings(codes: np.ndarray, categories: list[str]) -> np.ndarray:
    """A string column from its int32 codes: fixed-width unicode, as wide as the longest value in
    use (at least 1; :func:`_string_dtype`), what ``labels()[col].to_numpy().astype(str)``
    gives."""
    dt = _string_dtype(codes, categories)
    codes = np.asarray(codes, np.int64)
    if not len(categories):
        return np.full(len(codes), "", dt)
    # unused categories wider than every used one are cut to the width (never indexed)
    return np.array(categories, dtype=dt)[codes]


def _string_dtype(codes: np.ndarray, categories: list[str]) -> np.dtype:
    """The dtype of ``_strings(codes, categories)`` without building the column: unicode as
    wide as the longest category in use, at least 1."""
    if not len(categories):
        return np.dtype("<U1")
    used = np.zeros(len(categories), bool)
    used[np.asarray(codes)] = True
    if used.all():
        width = max(map(len, categories))
    else:
        width = max((len(c) for c, u in zip(categories, used.tolist()) if u), default=0)
    return np.dtype(f"<U{max(1, width)}")


def _picked_column(store: "Store", g, c: str, sidx: np.ndarray | None) -> np.ndarray:
    v = store._sample_array(g, c)
    return v if sidx is None else v[sidx]


def _picked_table(store: "Store", g, fam: str, code: int, name: str, pick) -> np.ndarray:
    return pick(store._role_table(g, fam, code, name))


@functools.cache
def _lazy_coord_type():
    """An xarray backend array (``xarray.backends.BackendArray``, the API xarray's own file
    backends use for coords loaded on first access) holding a label table that is built by
    ``load()`` when a coord is first read; copies and pickles carry the built table."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class LazyTable(BackendArray):
        def __init__(self, load, shape, dtype):
            self._load, self.shape, self.dtype = load, tuple(shape), np.dtype(dtype)
            self._value = None
            self._lock = threading.Lock()

        def get(self) -> np.ndarray:
            with self._lock:  # read from several threads: built once, then the store let go
                if self._value is None:
                    v = self._load()
                    if v.shape != self.shape or v.dtype != self.dtype:  # declared up front
                        raise RuntimeError(f"lazy coord built as {v.shape} {v.dtype}; declared "
                                           f"{self.shape} {self.dtype} (a bug in actstore)")
                    self._value = v
                    self._load = None
                return self._value

        def __getitem__(self, key):
            return indexing.explicit_indexing_adapter(key, self.shape,
                                                      indexing.IndexingSupport.BASIC,
                                                      lambda k: self.get()[k])

        def __deepcopy__(self, memo):  # read-only table: shared, as numpy coords' views are
            return self

        def __reduce__(self):  # pickled as the built table (the store's cache does not travel)
            return (_loaded_table, (self.get(),))

    return LazyTable, indexing.LazilyIndexedArray


def _loaded_table(value: np.ndarray):
    table, lazy = _lazy_coord_type()
    t = table(None, value.shape, value.dtype)
    t._value = value
    return t


def _lazy_coord(load, shape, dtype):
    table, lazy = _lazy_coord_type()
    return lazy(table(load, shape, dtype))


def _row_blocks(a: np.ndarray, c: int, name: str):
    """A dask array of the blocks of ``c`` rows of ``a`` (``a.shape[0] > 0``), each block a view
    of ``a`` in the graph. ``da.from_array`` copies every numpy array it is given (4 MiB of
    first-touched memory for a 100k-sample role index); ``a`` here is the reader's read-only
    index table (a view of it) or an array made for this query alone, so no copy is needed."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    n = a.shape[0]
    rows = tuple(min(c, n - i) for i in range(0, n, c))
    dsk = {(name, i) + (0,) * (a.ndim - 1): a[i * c:i * c + r] for i, r in enumerate(rows)}
    return da.Array(HighLevelGraph.from_collections(name, dsk, dependencies=()), name,
                    (rows, *((d,) for d in a.shape[1:])), dtype=a.dtype)


def _chunk_runs(chunks: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs ``[c0, c1)`` of the sorted chunk numbers ``chunks``."""
    if len(chunks) == 0:
        return []
    cut = np.flatnonzero(np.diff(chunks) != 1) + 1
    return [(int(v[0]), int(v[-1]) + 1) for v in np.split(chunks, cut)]


@functools.cache
def _gathered_array_type():
    """A dask array of a direct gather whose ``numpy.asarray`` (what ``DataArray.values`` calls)
    gathers the whole selection straight into one array: the same values as computing the dask
    blocks, without one array per block and the concatenation copy dask makes of them. Anything
    derived from it (``.blocks``, ``isel``, arithmetic, pickling) is a plain dask array, so
    streaming block by block is unchanged."""
    import dask.array as da

    class GatheredArray(da.Array):
        def __array__(self, dtype=None, copy=None, **kwargs):
            whole = self.__dict__.get("_whole")
            if whole is None or kwargs:
                return super().__array__(dtype=dtype, copy=copy, **kwargs)
            return np.asarray(whole(), dtype=dtype)

    return GatheredArray


def format_summary(summary: dict) -> str:
    """Human-readable text of :meth:`Store.summary` (what ``spatialbind query STORE`` prints)."""
    lines = [f"store {summary['path']}  schema v{summary['schema_version']}  "
             f"{_human(summary['bytes'])} on disk"]
    for name, m in summary["models"].items():
        p = m["provenance"]
        lines.append(f"model {name}  ({p.get('model_id')}@{p.get('revision')}, adapter "
                     f"{p.get('adapter')}, {p.get('dtype')}, data {p.get('data_hash')})")
        lines.append(f"  samples {m['done']}/{m['n_samples']} done  params {m['params']}")
        ri = m.get("role_index")
        if ri is not None:
            lines.append(f"  role index: persisted for {ri['covered']}/{m['done']} done samples "
                         f"({ri['pieces']} piece{'s' * (ri['pieces'] != 1)})" if ri["persisted"]
                         else "  role index: not persisted (a store from before the index; "
                              "add it with `spatialbind query STORE --reindex`)")
        for fam, s in m["sites"].items():
            lay = s["layers"] if S.is_layered(fam) else "-"
            lines.append(f"  site {fam:<16} layers {lay}  tokens {s['n_tokens']}  hidden "
                         f"{s['hidden']}  {s['dtype']}  {_human(s['bytes'])}")
            roles = ", ".join(f"{r} {n}" for r, n in s["roles"].items()) or "(no tokens yet)"
            lines.append(f"    roles: {roles}")
    for name in summary.get("being_created", []):
        lines.append(f"model {name}  being created (not complete yet; an interrupted creation is "
                     f"rebuilt by rerunning the same extract command)")
    if not summary["models"] and not summary.get("being_created"):
        lines.append("(no models yet)")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
