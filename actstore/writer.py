"""Two-phase, resumable, shard-aligned writer of activations into the store (used by ``vlms`` extraction).

Phase 1, :meth:`StoreWriter.open_or_create`, pre-allocates every array of a model group from the
full list of sample labels (the sample order is fixed from then on) or re-opens an existing group
after checking that it belongs to the same model, schema, data and dtype. Phase 2,
:meth:`StoreWriter.write`, writes one batch of samples by region (a whole zarr shard when the batch
is aligned) and only then sets their ``done`` flags, so a killed run never leaves a sample marked
done whose data are missing. On a local disk the whole activation shards of an aligned batch are
written straight to their files, several at once (``_shardwrite``: the bytes zarr would write,
each file renamed into place complete); everything else goes through zarr. :meth:`StoreWriter.pending` tells a resumed run (or one of several
processes, via ``shard=(i, n)``) what is left.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import threading
import time
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from common.io import boundary, test_point

from . import schema as S
from ._shardwrite import _ShardFiles
from ._shardwrite import wait_all as _wait_all
from .errors import StoreError


class StoreWriter:
    """Writer of one model group of a store. Build it with :meth:`open_or_create`."""

    def __init__(self, *, path: str, root, group, specs: list[S.SiteSpec], n_samples: int,
                 batch_size: int, io_threads: int | None = None, direct: bool = True):
        self.path = str(path)
        self.root = root
        self.group = group
        self.specs = {s.name: s for s in specs}
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.model = group.attrs["model"]
        self._done = group["samples"]["done"]
        # every array a write touches, opened once: opening one reads its zarr.json, which on an
        # object store is a HEAD and a GET per array and batch (benchmarks/RESULTS.md,
        # "plain Zarr vs icechunk")
        self._arrays = {f: {name: group[f][name] for name in ("acts", *S.TOKEN_LABELS, "n_tokens")}
                        for f in self.specs}
        # whole-shard writes of the activations straight to files (same bytes as zarr's sharding
        # codec, see _ShardFiles); None for an array zarr must write (remote store, other codecs)
        self._direct = {f: (_ShardFiles.of(self._arrays[f]["acts"]) if direct else None)
                        for f in self.specs}
        if io_threads is not None and (not isinstance(io_threads, int) or io_threads < 1):
            raise StoreError(f"io_threads must be an int >= 1; got {io_threads!r}")
        self.io_threads = io_threads or max(1, min(8, os.cpu_count() or 1))
        self._pool = None
        self._pool_lock = threading.Lock()  # writes of several batches may run at once
        # the role index piece written at close(): the batches this writer owns (its shard's, as
        # given to pending()/batches(); every batch without a shard) and those it wrote
        self._owned: set | None = set()  # None: every batch
        self._wrote: set[int] = set()
        # the labels this writer wrote, so that its piece is built without reading them back
        from ._index import HeldLabels

        self._held = HeldLabels({s.name: s.n_tokens for s in specs})

    # ------------------------------------------------------------------ phase 1
    @classmethod
    def open_or_create(cls, path, *, model: str, provenance: Mapping, samples: pd.DataFrame,
                       sites: list[S.SiteSpec], params: Mapping | None = None,
                       batch_size: int = 16, inner_samples: int = 1,
                       storage_options: dict | None = None, wait_s: float = 600.0,
                       notify=None, creator: bool | None = None, io_threads: int | None = None,
                       direct: bool = True) -> "StoreWriter":
        """Open the model group of a store for writing, creating and pre-allocating it if needed.

        Parameters
        ----------
        path : str or path-like
            Local directory or fsspec URL of the store (created if missing).
        model : str
            Key of the model inside the store (e.g. ``"qwen2-vl-7b"``; ``/`` becomes ``--``).
        provenance : mapping
            Must hold ``model_id``, ``revision``, ``adapter``, ``dtype``, ``data_hash``; more keys
            are stored as well.
        samples : pandas.DataFrame
            One row per sample in the order they will be stored; needs a unique ``sample_id``.
        sites : list of SiteSpec
            Site families to allocate (dims sample × layer × token × hidden each).
        params : mapping, optional
            Extraction parameters that change the labels (e.g. ``object_coverage``); checked on reopen.
        batch_size : int
            Samples per zarr shard; write batches of this size (``batches()`` yields them).
        inner_samples : int
            Samples per inner chunk of a shard (1: smallest single-sample reads through zarr; the
            whole shard measured the same in ``benchmarks/bench_store_query.py``).
        wait_s : float
            How long to wait for another live process that is creating the same group (a lock
            whose process is gone is taken over at once).
        notify : callable, optional
            Gets one line when this call waits for another process (default: stderr).
        creator : bool, optional
            None (default): any process may create the store (on a local disk processes started
            together elect one through the creation lock). False: never create; wait up to
            ``max(wait_s, 600)`` s for the process that does (e.g. shard 0 of several on an object
            store, which has no atomic create). True: may create.
        io_threads : int, optional
            Threads that write the shard files of one batch at once (default: the CPU count,
            at most 8; 1 writes them one after another).
        direct : bool
            Write whole activation shards of a local store straight to their files (the bytes
            zarr's sharding codec writes, without its per-chunk copies and checks); False: every
            write goes through zarr (the reference the direct path is tested against).

        Returns
        -------
        StoreWriter

        Raises
        ------
        StoreError
            Bad arguments, or an existing group made for another model, schema, data or dtype.
        """
        import zarr

        prov = _check_provenance(provenance)
        specs = _check_sites(sites)
        params = dict(params or {})
        _check_json(params, "params")
        frame = _check_samples(samples)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise StoreError(f"batch_size must be an int >= 1; got {batch_size!r}")
        if not isinstance(inner_samples, int) or inner_samples < 1 or batch_size % inner_samples:
            raise StoreError(f"inner_samples must divide batch_size={batch_size}; got {inner_samples!r}")
        key = S.model_key(model)
        check_target(path)
        make = dict(model=model, prov=prov, frame=frame, specs=specs, params=params,
                    batch_size=batch_size, inner_samples=inner_samples)
        if creator is False:
            with boundary(path, action="write", error=StoreError):
                store = S.resolve_store(path, mode="a", storage_options=storage_options)
                return cls._wait_for_creator(path, store, key, make, max(wait_s, 600.0),
                                             io_threads=io_threads, direct=direct)
        with boundary(path, action="write", error=StoreError):
            store = S.resolve_store(path, mode="a", storage_options=storage_options)
            root = _open_root(store, path)
            try:
                group = _open_or_create_group(root, store, key, path, make, wait_s, notify)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise StoreError(f"disk full while creating {path}/{key}: free space and "
                                     f"rerun the same command (the half-made group is "
                                     f"rebuilt)") from None
                raise
        _check_compatible(group, path, key, prov=prov, frame=frame, specs=specs, params=params)
        return cls(path=str(path), root=root, group=group, specs=specs,
                   n_samples=len(frame), batch_size=int(group.attrs["batch_size"]),
                   io_threads=io_threads, direct=direct)

    @classmethod
    def _wait_for_creator(cls, path, store, key, make, wait_s, **writer) -> "StoreWriter":
        import zarr

        deadline = time.monotonic() + wait_s
        group = None
        while group is None:
            try:
                root = zarr.open_group(store, mode="r+", zarr_format=3)
                if root.attrs.get("schema_version") is not None and key in root:
                    g = root[key]
                    group = g if g.attrs.get("complete") else None
            except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
                group = None
            if group is None:
                if time.monotonic() >= deadline:
                    raise StoreError(f"{path}/{key} was not created within {wait_s:.0f} s by the "
                                     f"creating process (shard 0); start it, or run it once alone "
                                     f"to create the store, then rerun this one")
                time.sleep(0.5)
        _check_compatible(group, path, key, prov=make["prov"], frame=make["frame"],
                          specs=make["specs"], params=make["params"])
        return cls(path=str(path), root=root, group=group, specs=make["specs"],
                   n_samples=len(make["frame"]), batch_size=int(group.attrs["batch_size"]),
                   **writer)

    # ------------------------------------------------------------------ resume
    def done(self) -> np.ndarray:
        """Boolean ``done`` flag per sample (read from the store)."""
        return np.asarray(self._done[:], dtype=bool)

    def pending(self, shard: tuple[int, int] | None = None) -> np.ndarray:
        """Indices of samples not yet written, optionally only those of process ``i`` of ``n``.

        Batches are assigned round-robin (``batch % n == i``) so that two processes never write
        into the same zarr shard.
        """
        idx = np.flatnonzero(~self.done())
        if shard is not None:
            i, n = _check_shard(shard)
            idx = idx[(idx // self.batch_size) % n == i]
            if self._owned is not None:
                self._owned.add((i, n))
        else:
            self._owned = None
        return idx

    def batches(self, shard: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """Yield the pending sample indices one shard-aligned batch at a time."""
        idx = self.pending(shard)
        if len(idx) == 0:
            return
        cuts = np.flatnonzero(np.diff(idx // self.batch_size)) + 1
        yield from np.split(idx, cuts)

    # ------------------------------------------------------------------ phase 2
    def write(self, idx, acts: Mapping[str, np.ndarray],
              tokens: Mapping[str, Mapping[str, np.ndarray]]) -> int:
        """Write activations and token labels of the samples ``idx``, then mark them done.

        Parameters
        ----------
        idx : sequence of int
            Store indices of the samples (sorted, distinct).
        acts : dict
            ``{family: array (B, L, T, H)}`` for every site family of the store; ``T`` may be less
            than the family's ``n_tokens`` (the rest is padding). bfloat16 torch tensors are cast.
        tokens : dict
            ``{family: {label: array (B, T)}}``; ``role`` is required, ``ordinal``, ``entity``,
            ``row``, ``col``, ``position`` default to their "none" values.

        Returns
        -------
        int
            Number of samples written (0 when all were already done).

        Raises
        ------
        StoreError
            Missing site families, wrong shapes, role codes out of range, or a full disk.
        """
        idx = self._check_idx(idx)
        prepared = {f: self._prepare(f, idx, acts, tokens) for f in self.specs}
        extra = set(acts) - set(self.specs)
        if extra:
            raise StoreError(f"write got site families {sorted(extra)} that {self.path} does not "
                             f"hold (it holds {sorted(self.specs)}); create a new store for them")
        todo = ~np.asarray(self._done.get_coordinate_selection(idx), dtype=bool)
        if not todo.any():
            return 0
        if not todo.all():  # some already done (e.g. rerun of a half batch): rewrite only the others
            idx = idx[todo]
            prepared = {f: (a[todo], {k: v[todo] for k, v in t.items()}, n[todo])
                        for f, (a, t, n) in prepared.items()}
        try:
            # every shard file of the batch in flight at once (disjoint objects); the done flags
            # only after all of them are written
            futures: list = []
            try:
                for f, (a, labels, n_tok) in prepared.items():
                    futures += self._start(f, idx, a, labels, n_tok)
            except BaseException:
                _wait_all(futures, raise_first=False)  # no write left running behind an error
                raise
            _wait_all(futures)
            self._put_done(idx)
            try:
                self._held.add(idx, {f: labels for f, (_, labels, _) in prepared.items()})
            except OSError as e:
                if e.errno == errno.ENOSPC:  # the temporary directory's disk, not the store's
                    raise StoreError(
                        f"disk full in the temporary directory {tempfile.gettempdir()} while "
                        f"holding the labels of samples {idx[0]}..{idx[-1]} for the role index: "
                        f"free space there or point TMPDIR at a disk with room, and rerun the "
                        f"same command to resume (samples {idx[0]}..{idx[-1]} are written and "
                        f"marked done in {self.path})") from None
                raise
            with self._pool_lock:
                self._wrote.update(np.unique(idx // self.batch_size).tolist())
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StoreError(f"disk full while writing samples {idx[0]}..{idx[-1]} to "
                                 f"{self.path}: free space and rerun the same command to resume "
                                 f"(samples already marked done are intact)") from None
            raise
        return len(idx)

    def close(self) -> None:
        """Finish writing: every write has returned by now (``write`` waits for its files), so
        this stops the writer's I/O threads, writes the role index piece of this writer (when
        it wrote anything; see :meth:`write_index`) and drops references."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._wrote:
            try:
                self.write_index()
            except Exception as e:  # noqa: BLE001 - the index is an optional speed-up
                import warnings

                from ._index import IndexWarning

                warnings.warn(f"{self.path}/{S.model_key(self.model)}: the role index piece of "
                              f"this writer was not written ({type(e).__name__}: {e}); queries "
                              f"read the token labels instead (same result, slower); add it "
                              f"later with `spatialbind query STORE --reindex`", IndexWarning,
                              stacklevel=2)
            self._wrote = set()
        self._held.close()
        self._arrays = {}
        self._direct = {}

    def write_index(self) -> str | None:
        """Persist the role index of the done samples in this writer's batches: those of the
        shard(s) given to :meth:`pending` / :meth:`batches` (every batch when no shard was given)
        and those it wrote. One piece (``<model>/role_index/<piece>``) that only this writer
        writes; :meth:`close` calls it. Stores made before the index existed have no
        ``role_index`` group and get none (add it with :func:`actstore.reindex`).

        Returns the piece's name, or None when nothing was written (no such group, nothing
        done, or a complete piece of the same samples already there).
        """
        from . import _index

        if _index.GROUP not in self.group:
            return None
        batch = np.arange(self.n_samples) // self.batch_size
        mine = np.isin(batch, sorted(self._wrote))
        if self._owned is None:
            mine[:] = True
        else:
            for i, n in self._owned:
                mine |= batch % n == i
        sig = _index.done_stat(self.group, mine)  # before the flags are read
        done = np.zeros(self.n_samples, bool)  # only this writer's batches' flags are read
        for a, b in _index._runs(np.flatnonzero(mine)):
            done[a:b] = self._done[a:b]
        return _index.write_piece(self.group, np.flatnonzero(mine & done), done_stat=sig,
                                  held=self._held)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ helpers
    def _check_idx(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            raise StoreError("write got an empty list of sample indices")
        if idx.min() < 0 or idx.max() >= self.n_samples:
            raise StoreError(f"sample index out of range [0, {self.n_samples}) in write to "
                             f"{self.path}: got {idx.min()}..{idx.max()}")
        if np.any(np.diff(idx) <= 0):
            raise StoreError("write needs sorted, distinct sample indices (use pending()/batches())")
        return idx

    def _prepare(self, f, idx, acts, tokens):
        spec = self.specs[f]
        if f not in acts:
            raise StoreError(f"write to {self.path} is missing site family {f!r}: every call must "
                             f"give all of {sorted(self.specs)}")
        a = _to_numpy(acts[f])
        if a.ndim == 3 and len(spec.layers) == 1:
            a = a[:, None]
        b, L, t, h = len(idx), len(spec.layers), a.shape[2] if a.ndim == 4 else -1, spec.hidden
        if a.ndim != 4 or a.shape[0] != b or a.shape[1] != L or a.shape[3] != h or t > spec.n_tokens:
            raise StoreError(f"acts[{f!r}] has shape {a.shape}; expected ({b}, {L}, T<={spec.n_tokens}, "
                             f"{h}) = (samples, layers {list(spec.layers)}, tokens, hidden)")
        if not np.issubdtype(a.dtype, np.floating):
            raise StoreError(f"acts[{f!r}] must be floating point; got {a.dtype}")
        labels_in = (tokens or {}).get(f)
        if labels_in is None or "role" not in labels_in:
            raise StoreError(f"tokens[{f!r}]['role'] is required (role codes per token, shape ({b}, {t}))")
        unknown_labels = set(labels_in) - set(S.TOKEN_LABELS)
        if unknown_labels:
            raise StoreError(f"tokens[{f!r}] has unknown labels {sorted(unknown_labels)}; "
                             f"known: {list(S.TOKEN_LABELS)}")
        labels = {}
        for name, (dt, none) in S.TOKEN_LABELS.items():
            v = labels_in.get(name)
            v = np.full((b, t), none, dt) if v is None else _to_numpy(v)
            if v.shape != (b, t):
                raise StoreError(f"tokens[{f!r}][{name!r}] has shape {v.shape}; expected ({b}, {t}) "
                                 f"to match acts[{f!r}]")
            info = np.iinfo(dt)
            if v.size and (v.min() < info.min or v.max() > info.max):
                raise StoreError(f"tokens[{f!r}][{name!r}] values out of {dt} range")
            labels[name] = v.astype(dt)
        role = labels["role"]
        if role.size and (role.min() < 0 or role.max() >= len(S.ROLE_NAMES)):
            raise StoreError(f"tokens[{f!r}]['role'] has codes outside 0..{len(S.ROLE_NAMES) - 1} "
                             f"(see actstore.ROLE_CODES)")
        pad_t = spec.n_tokens - t
        if pad_t:
            out = np.zeros((b, L, spec.n_tokens, h), spec.dtype)
            out[:, :, :t] = a  # padding activations are 0
        else:  # no copy when the batch already has the full token axis in the stored dtype
            out = np.ascontiguousarray(a, dtype=spec.dtype)
        for name, (dt, none) in S.TOKEN_LABELS.items():
            if pad_t:
                labels[name] = np.concatenate([labels[name], np.full((b, pad_t), none, dt)], axis=1)
        n_tok = (labels["role"] != S.PAD).sum(axis=1).astype("int32")
        return out, labels, n_tok

    def _put(self, f, idx, a, labels, n_tok):
        """Write one family's part of a batch and return when it is on the store."""
        _wait_all(self._start(f, idx, a, labels, n_tok))

    def _start(self, f, idx, a, labels, n_tok) -> list:
        """Write one family's part of a batch; whole activation shards written directly are
        started on the writer's I/O threads and returned as futures (the rest is written
        before this returns)."""
        g = self._arrays[f]
        B = self.batch_size
        s0 = int(idx[0])
        aligned = (s0 % B == 0 and np.array_equal(idx, np.arange(s0, s0 + len(idx)))
                   and len(idx) == min(B, self.n_samples - s0))
        futures = []
        if aligned:  # one region write per array: whole shards, no read-modify-write
            sl = slice(s0, s0 + len(idx))
            direct = self._direct.get(f)
            if direct is not None:
                pool = self._io_pool()
                futures = [pool.submit(direct.write_shard, s0 // B, layer, a[:, layer])
                           for layer in range(a.shape[1])]
            else:
                g["acts"][sl] = a
            try:
                for name, v in labels.items():
                    g[name][sl] = v
                g["n_tokens"][sl] = n_tok
            except BaseException:
                _wait_all(futures, raise_first=False)
                raise
        else:
            for j, i in enumerate(idx):
                g["acts"][int(i)] = a[j]
            for name, v in labels.items():
                g[name].set_orthogonal_selection((idx, slice(None)), v)
            g["n_tokens"].set_coordinate_selection(idx, n_tok)
        return futures

    def _io_pool(self):
        with self._pool_lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.io_threads,
                                                thread_name_prefix="actstore-io")
            return self._pool

    def _put_done(self, idx):
        s0 = int(idx[0])
        if int(idx[-1]) - s0 + 1 == len(idx):  # contiguous: a region write, which does not read
            self._done[s0:s0 + len(idx)] = True  # the old chunk when it covers a whole one
        else:
            self._done.set_coordinate_selection(idx, np.ones(len(idx), bool))


# ---------------------------------------------------------------------- creation

def _create(root, key, *, model, prov, frame, specs, params, batch_size, inner_samples):
    n = len(frame)
    g = root.create_group(key, overwrite=False)
    g.attrs.update({
        "model": model, "provenance": prov, "params": params,
        "role_names": list(S.ROLE_NAMES), "sites": [s.to_dict() for s in specs],
        "batch_size": batch_size, "inner_samples": inner_samples, "n_samples": n,
        "schema_version": S.SCHEMA_VERSION, "complete": False,
    })
    sg = g.create_group("samples")
    for col in frame.columns:
        _write_label(sg, col, frame[col], batch_size)
    sg.create_array("done", shape=(n,), dtype="bool", chunks=(batch_size,), fill_value=False,
                    dimension_names=(S.SAMPLE,), compressors=None)
    for s in specs:
        fg = g.create_group(s.name)
        fg.attrs.update({"site": s.to_dict()})
        T, H, L = s.n_tokens, s.hidden, len(s.layers)
        fg.create_array("acts", shape=(n, L, T, H), dtype=s.dtype, chunks=(inner_samples, 1, T, H),
                        shards=(batch_size, 1, T, H), compressors=None, fill_value=np.nan,
                        dimension_names=S.ACTS_DIMS)
        lay = fg.create_array("layer", shape=(L,), dtype="int32", chunks=(L,), fill_value=-1,
                              dimension_names=(S.LAYER,))
        lay[:] = np.array(s.layers, "int32")
        for name, (dt, none) in S.TOKEN_LABELS.items():
            fg.create_array(name, shape=(n, T), dtype=dt, chunks=(batch_size, T), fill_value=none,
                            dimension_names=S.TOKEN_DIMS)
        fg.create_array("n_tokens", shape=(n,), dtype="int32", chunks=(batch_size,), fill_value=0,
                        dimension_names=(S.SAMPLE,), compressors=None)
    from ._index import GROUP

    g.create_group(GROUP)  # role index pieces, one per writer (actstore/_index.py)
    g.attrs["complete"] = True


def _write_label(sg, col, series: pd.Series, batch_size):
    n = len(series)
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        vals = series.to_numpy()
        if vals.dtype == object:  # numeric with None -> float
            vals = vals.astype("float64")
        arr = sg.create_array(col, shape=(n,), dtype=vals.dtype, chunks=(max(n, 1),),
                              dimension_names=(S.SAMPLE,))
        arr.attrs.update({"kind": "number"})
    else:
        vals, cats = S.encode_strings(series.tolist())
        arr = sg.create_array(col, shape=(n,), dtype="int32", chunks=(max(n, 1),),
                              dimension_names=(S.SAMPLE,))
        arr.attrs.update({"kind": "string", "categories": cats})
    if n:
        arr[:] = vals


def check_target(path) -> None:
    """Refuse a local path that is neither missing, an empty directory nor a zarr store (the
    schema is checked once the root is open): never write into someone else's files."""
    p = str(path)
    if "://" in p and not p.startswith("file://"):
        return
    d = p[len("file://"):] if p.startswith("file://") else p
    if not os.path.exists(d):
        return
    if not os.path.isdir(d):
        raise StoreError(f"--store {path} is a file, not an activation store; give a new or "
                         f"empty directory (or an existing store)")
    # zarr writes a file as <name>.<uuid>.partial, then renames it: a store another process is
    # creating this instant may hold only those
    names = [n for n in os.listdir(d) if not n.startswith(".") and not n.endswith(".partial")]
    if names and "zarr.json" not in names:
        raise StoreError(f"--store {path} is not an activation store (it holds "
                         f"{', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''}); "
                         f"give a new or empty --store path")
    if names:
        meta = os.path.join(d, "zarr.json")
        for attempt in range(_RETRIES):  # another process may be writing it this instant
            try:
                with boundary(meta, fix="it is not an activation store's: give a new or empty "
                                        "--store path", error=StoreError):
                    with open(meta, encoding="utf-8") as f:
                        attrs = json.load(f)
                break
            except StoreError:
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.2)
        if not isinstance(attrs, dict) or "schema_version" not in (attrs.get("attributes") or {}):
            raise StoreError(f"--store {path} is a zarr store but not an activation store (its "
                             f"zarr.json has no schema_version); give a new or empty --store path")


_RETRIES = 5


def _open_root(store, path):
    """Open the store's root group, creating it with our attributes in one write if missing."""
    import zarr

    attrs = {"schema_version": S.SCHEMA_VERSION, "toolkit_version": S.toolkit_version()}
    for attempt in range(_RETRIES):  # a zarr.json being written by another process: read again
        try:
            try:
                root = zarr.open_group(store, mode="r+", zarr_format=3)
            except (FileNotFoundError, zarr.errors.GroupNotFoundError):
                try:  # the root is born with our attrs: no moment where it looks foreign
                    root = zarr.create_group(store, zarr_format=3, attributes=attrs,
                                             overwrite=False)
                except zarr.errors.ContainsGroupError:  # another process created it just now
                    time.sleep(0.2)
                    root = zarr.open_group(store, mode="r+", zarr_format=3)
            break
        except (zarr.errors.NodeTypeValidationError, ValueError, TypeError):
            if attempt == _RETRIES - 1:
                raise StoreError(f"--store {path} holds a zarr.json that is not an activation "
                                 f"store's; give a new or empty --store path") from None
            time.sleep(0.2)
    _check_root(root, path)
    return root


def _complete(root, key):
    try:
        g = root[key]
    except (KeyError, ValueError):  # not there, or its metadata is being written
        return None
    return g if g.attrs.get("complete") else None


def _open_or_create_group(root, store, key, path, make, wait_s, notify):
    """The complete model group ``key``: made here under the creation lock when it is missing,
    or rebuilt when a killed creator left it half-made (the lock tells a live creator from a
    dead one)."""
    import zarr

    g = _complete(root, key)
    lock = _CreationLock(store, key, path, wait_s, notify)
    if g is not None:
        lock.clear_stale()  # left by a creator killed after it finished the group
        return g
    if lock.file is None:  # no lock on this kind of store: first creator wins, others wait
        if key not in root:
            try:
                _create(root, key, **make)
            except zarr.errors.ContainsGroupError:
                pass
        g = _wait_complete(root, key, min(wait_s, 30.0))
        if g is None:  # left half-made by a creator that died
            del root[key]
            _create(root, key, **make)
            g = root[key]
        return g
    with lock:
        g = _complete(root, key)
        if g is not None:  # made by the process we waited for
            return g
        test_point("store-lock")
        if key in root:  # half-made by a creator that is gone: rebuild it
            del root[key]
        _create(root, key, **make)
        test_point("store-created")
        return root[key]


class _CreationLock:
    """Exclusive right to create a model group (``--shard i/n`` processes start together).

    Local stores: a lock file beside the store (zarr would warn about unknown entries inside
    it), made atomically with its owner's host and PID in it. A lock whose owner is gone (same
    host, no such process) is taken over at once; a live owner is waited for (one line through
    ``notify``), at most ``wait_s`` seconds. Other stores have no atomic create: every process
    "holds" the lock there and zarr's existence checks decide (create the store from one
    process first).
    """

    def __init__(self, store, key, path, wait_s, notify=None):
        import zarr.storage

        self.file = lock_file(store.root, key) if isinstance(store, zarr.storage.LocalStore) \
            else None
        self.where = f"{path}/{key}"
        self.wait_s = wait_s
        self.notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))
        self.held = False

    def _try(self) -> bool:
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
        tmp = f"{self.file}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(me)
        try:
            os.link(tmp, self.file)  # atomic, fails if the lock exists: never an empty lock
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: exclusive create, then the owner
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(me)
            return True
        finally:
            os.remove(tmp)

    def _owner(self) -> dict | None:
        try:
            with open(self.file, "rb") as f:
                return json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _take_over(self, dead: dict) -> bool:
        """Write ourselves into a dead owner's lock; of several processes doing this at once,
        exactly one wins (check-and-set under ``flock`` on the lock file itself)."""
        import fcntl

        try:
            fd = os.open(self.file, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                now = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                now = {}
            try:  # still the dead owner's, and still the lock file at that path
                same = now == dead and os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"host": socket.gethostname(),
                                      "pid": os.getpid()}).encode(), 0)
            return True
        finally:
            os.close(fd)  # closing releases the flock

    def clear_stale(self) -> None:
        """Remove the lock file if its owner process is gone."""
        if self.file is not None:
            owner = self._owner()
            if owner is not None and self._dead(owner) and self._take_over(owner):
                try:
                    os.remove(self.file)
                except FileNotFoundError:
                    pass

    def _dead(self, owner: dict) -> bool:
        if owner:
            return _gone(owner)
        try:  # no owner written (killed between create and write, no-hard-link file systems)
            return time.time() - os.path.getmtime(self.file) > 5.0
        except FileNotFoundError:
            return False

    def __enter__(self):
        if self.file is None:
            self.held = True
            return self
        os.makedirs(os.path.dirname(self.file), exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            if self._try():
                self.held = True
                return self
            owner = self._owner()
            if owner is None:  # released just now
                continue
            if self._dead(owner):  # its creator was killed: take the lock over
                if self._take_over(owner):
                    self.held = True
                    return self
                continue
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"{self.where} is still being created by process {owner.get('pid')} on "
                    f"{owner.get('host')} after {self.wait_s:.0f} s; rerun when it has "
                    f"finished, or delete {self.file} if that process no longer exists")
            if not told:
                self.notify(f"waiting for process {owner.get('pid')} on {owner.get('host')}, "
                            f"which is creating {self.where} (lock {self.file})")
                told = True
            time.sleep(0.2)

    def __exit__(self, *exc):
        if self.held and self.file is not None:
            try:
                os.remove(self.file)
            except FileNotFoundError:
                pass


def _wait_complete(root, key, wait_s):
    """Return the group once its creation has completed, or None if it stays half-made."""
    deadline = time.monotonic() + wait_s
    while True:
        g = _complete(root, key)
        if g is not None:
            return g
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def lock_file(store_path, key: str) -> str:
    """Path of the creation lock of model group ``key`` of a local store."""
    root = os.path.abspath(str(store_path)).rstrip(os.sep)
    return os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.{key}.creating")


def lock_keys(store_path) -> list[str]:
    """Model keys of a local store that a creation lock says are being created right now."""
    root = os.path.abspath(str(store_path)).rstrip(os.sep)
    head = f".{os.path.basename(root)}."
    try:
        names = os.listdir(os.path.dirname(root))
    except OSError:
        return []
    return sorted(n[len(head):-len(".creating")] for n in names
                  if n.startswith(head) and n.endswith(".creating"))


def _gone(owner: dict) -> bool:
    """Whether a lock's owner process no longer exists (only decidable on this host)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return not isinstance(owner.get("pid"), int)
    return False


# ---------------------------------------------------------------------- checks

def _check_root(root, path):
    v = root.attrs.get("schema_version")
    if v is None:
        raise StoreError(f"{path} is a zarr group but not an activation store (no schema_version "
                         f"attr); give a new or empty --store path")
    if v != S.SCHEMA_VERSION:
        raise StoreError(f"{path} has store schema version {v}, this toolkit writes version "
                         f"{S.SCHEMA_VERSION}; write to a new --store path (or re-extract)")


def _check_compatible(group, path, key, *, prov, frame, specs, params):
    where = f"{path}/{key}"
    fix = f"use another --store path, or delete {where} to re-extract"
    a = group.attrs
    if a.get("schema_version") != S.SCHEMA_VERSION:
        raise StoreError(f"{where} was written with schema version {a.get('schema_version')}, this "
                         f"toolkit uses {S.SCHEMA_VERSION}; {fix}")
    old = a.get("provenance", {})
    for k in S.PROVENANCE_KEYS:
        if k in ("toolkit_version",):
            continue
        if old.get(k) != prov.get(k):
            raise StoreError(f"{where} holds activations with {k}={old.get(k)!r} but this run has "
                             f"{k}={prov.get(k)!r}; refusing to mix them: {fix}")
    old_sites = {d["name"]: d for d in a.get("sites", [])}
    new_sites = {s.name: s.to_dict() for s in specs}
    if old_sites != new_sites:
        diff = sorted(k for k in set(old_sites) | set(new_sites) if old_sites.get(k) != new_sites.get(k))
        raise StoreError(f"{where} was created with other sites/layers/shapes/dtype for "
                         f"{diff} (stored: {[old_sites.get(k) for k in diff]}); {fix}")
    if a.get("params", {}) != params:
        raise StoreError(f"{where} was extracted with params {a.get('params')} but this run has "
                         f"{params}; {fix}")
    stored_ids = _read_sample_ids(group)
    if list(stored_ids) != [str(x) for x in frame["sample_id"]]:
        raise StoreError(f"{where} holds {len(stored_ids)} samples whose ids/order differ from this "
                         f"dataset's {len(frame)}; {fix}")


def _read_sample_ids(group) -> np.ndarray:
    arr = group["samples"]["sample_id"]
    return S.decode_strings(arr[:], arr.attrs["categories"]) if arr.attrs.get("kind") == "string" \
        else np.asarray(arr[:]).astype(str)


def _check_provenance(provenance) -> dict:
    if not isinstance(provenance, Mapping):
        raise StoreError(f"provenance must be a dict with keys {S.PROVENANCE_KEYS}; got {type(provenance).__name__}")
    missing = [k for k in S.PROVENANCE_KEYS if k not in provenance]
    if missing:
        raise StoreError(f"provenance is missing {missing}; it needs {list(S.PROVENANCE_KEYS)}")
    prov = {k: (None if v is None else str(v)) if k in S.PROVENANCE_KEYS else v
            for k, v in provenance.items()}
    _check_json(prov, "provenance")
    prov["toolkit_version"] = S.toolkit_version()
    prov["schema_version"] = S.SCHEMA_VERSION
    return prov


def _check_sites(sites) -> list[S.SiteSpec]:
    if not sites or not all(isinstance(s, S.SiteSpec) for s in sites):
        raise StoreError("sites must be a non-empty list of actstore.SiteSpec")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise StoreError(f"sites name a family twice: {names}; give each family once with all its layers")
    for reserved in ("samples", "role_index"):
        if reserved in names:
            raise StoreError(f"{reserved!r} is reserved and cannot be a site family name")
    return sorted(sites, key=lambda s: s.name)


def _check_samples(samples) -> pd.DataFrame:
    if not isinstance(samples, pd.DataFrame):
        raise StoreError(f"samples must be a pandas DataFrame with a 'sample_id' column; got "
                         f"{type(samples).__name__}")
    if "sample_id" not in samples.columns:
        raise StoreError(f"samples needs a 'sample_id' column; it has {list(samples.columns)}")
    ids = samples["sample_id"].astype(str)
    dup = ids[ids.duplicated()].unique()[:3]
    if len(dup):
        raise StoreError(f"samples has duplicate sample_id values (e.g. {list(dup)}); ids must be unique")
    if len(samples) == 0:
        raise StoreError("samples is empty: nothing to store")
    frame = samples.reset_index(drop=True).copy()
    frame["sample_id"] = ids.to_numpy()
    for col in S.STANDARD_SAMPLE_LABELS:
        if col not in frame.columns:
            frame[col] = ""
    reserved = {"done", "", S.SAMPLE, S.LAYER, S.TOKEN, S.HIDDEN, S.ITEM, "pad", "mask_id",
                "n_pooled", *S.TOKEN_LABELS}
    bad = [c for c in frame.columns if not isinstance(c, str) or "/" in c or c in reserved]
    if bad:
        raise StoreError(f"samples has column names that cannot be stored: {bad} (use plain strings, "
                         f"no '/', none of {sorted(reserved - {''})})")
    return frame


def _check_json(d, what):
    import json

    try:
        json.dumps(d, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serialisable: {e}") from None


def _check_shard(shard) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise StoreError(f"shard must be (i, n) with 0 <= i < n; got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise StoreError(f"shard must be (i, n) with 0 <= i < n; got {shard!r}")
    return i, n


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x)


def estimate_bytes(sites: list[S.SiteSpec], n_samples: int) -> int:
    """Bytes the activations of ``n_samples`` samples will take on disk (uncompressed)."""
    return int(sum(n_samples * len(s.layers) * s.n_tokens * s.hidden * np.dtype(s.dtype).itemsize
                   for s in sites))


def reindex(path, *, storage_options: dict | None = None) -> dict[str, dict]:
    """Persist the role index of every model group of a store: one piece covering all its done
    samples, replacing the pieces written before (a store made before the index existed gets its
    ``role_index`` group here). Safe while writers run: it writes only its own piece and removes
    only complete pieces that existed when it started (their done samples are in the new one).

    Returns ``{model: {"covered": done samples indexed, "n_samples": ..., "written": bool,
    "removed": [piece names]}}``; ``written`` is False when a sound piece of exactly those
    samples was already there (a damaged one is rewritten).
    """
    import warnings

    import zarr

    from . import _index

    with boundary(path, action="write", error=StoreError):
        try:  # read-only first: a missing path is an error, never created
            zarr.open_group(S.resolve_store(path, mode="r", storage_options=storage_options),
                            mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError,
                zarr.errors.NodeTypeValidationError):
            raise StoreError(f"no activation store at {path}: give the path of a store that "
                             f"extraction wrote (a directory with zarr.json)") from None
        store = S.resolve_store(path, mode="a", storage_options=storage_options)
        root = zarr.open_group(store, mode="r+", zarr_format=3)
        _check_root(root, path)
        out = {}
        for key, g in sorted(root.groups()):
            if not g.attrs.get("complete"):
                continue
            damaged: list = []
            with warnings.catch_warnings():  # damaged pieces are replaced here: no warning
                warnings.simplefilter("ignore", _index.IndexWarning)
                before = [k for k, _ in _index.pieces(g, damaged)] + [k for k, _ in damaged]
            if _index.GROUP not in g:
                g.create_group(_index.GROUP)
            sig = _index.done_stat(g, np.ones(g["samples"]["done"].shape[0], bool))  # before the flags
            done = np.asarray(g["samples"]["done"][:], bool)
            covered = np.flatnonzero(done)
            keep = _index.piece_name(covered)
            # a piece of exactly these samples is kept only if it is sound (else rewritten)
            name = _index.write_piece(g, covered, done_stat=sig, force=keep in before and bool(
                _index.check(g, key, done, only=keep)))
            removed = [k for k in before if k != keep]
            for k in removed:
                del g[_index.GROUP][k]
            out[g.attrs.get("model", key)] = {"covered": int(len(covered)),
                                              "n_samples": int(g.attrs["n_samples"]),
                                              "written": name is not None, "removed": removed}
    return out
