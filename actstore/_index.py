"""The persisted role index: where each token role sits in every done sample, kept in the store.

A freshly opened store used to rebuild its role index from every sample's token labels (one
chunk file per write batch and label: ~9k files at 100k samples). Writers now leave it in the
store as *pieces*: ``<model>/role_index/<piece>/``, one per writer (an ``extract --shard i/n``
process, a dask block, a ``reindex``), written when that writer finishes and never touched by
another writer, so concurrent writers never put the same stored object. A writer builds its
piece from the labels it wrote (:class:`HeldLabels`), reading from the store only the covered
samples it did not write; ``reindex`` reads them all.

A piece covers a set of samples (``covered``: the samples that were done, in the batches the
writer owned, when it read their labels; done samples' labels never change) and holds, per site
family, every non-pad token of them as flat arrays sorted by (role, sample, token): ``sample``,
``token`` and the token labels ``ordinal``, ``entity``, ``row``, ``col``, ``position`` (the role
is implied by the position). The family group's attrs say where each role's entries start, per
block of up to ``BLOCK`` covered samples (``blocks``), with a CRC-32 of each (block, role) slice
of the seven arrays (``crc``); the piece group's attrs get ``complete: true`` last (a writer
killed while writing a piece leaves one without it, which readers ignore). A piece's name is a
hash of the samples it covers, so two runs that cover the same samples write the same bytes.

A reader (:func:`load`) uses a piece only for its covered samples that are done now, checks
every slice it reads against its CRC and bounds (a corrupted or truncated piece is skipped with
a warning, never used), and builds whatever no valid piece covers from the token labels, as
before: the result equals the index built from the labels, element for element.

On a local disk a piece also vouches for the ``done`` chunk files of its writer's batches
(:data:`DONE_STAT`): a reader that finds such a file unchanged (``os.stat``) takes its flags from
the piece instead of opening it (:func:`done_flags`), and reads every other one.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import warnings
import zlib

import numpy as np

from . import schema as S

GROUP = "role_index"
"""Name of the group (inside a model group) holding the index pieces."""

FORMAT = 1
"""Layout version of a piece (attr ``format``); other versions are ignored (built from labels)."""

FIELDS: dict[str, tuple[str, int]] = {
    "sample": ("int64", -1),
    "token": ("int32", -1),
    **{k: v for k, v in S.TOKEN_LABELS.items() if k != "role"},
}
"""The flat arrays of one family of a piece: (dtype, fill value)."""

CHUNK = 2**17
"""Entries per chunk of a piece's flat arrays (a role's slice reads only the chunks it overlaps)."""

BLOCK = 8192
"""Covered samples per block of a piece (the writer reads labels and sorts entries a block at a time)."""

N_ROLES = len(S.ROLE_NAMES)

DONE_STAT = "done_stat"
"""Array of a piece (local stores only) vouching for the ``done`` chunk files of its writer's
batches: one row ``(chunk, inode, size, mtime_ns, ctime_ns)`` per chunk file, as ``os.stat`` saw
it just before the writer read the flags. A reader whose ``os.stat`` of that file gives the same
five numbers takes the chunk's flags from the piece (its covered samples in that chunk are done,
the others not) instead of reading the file: one ``stat`` instead of an open and a read per
write batch. Any write replaces the file (zarr writes a new file and renames it into place: a new
inode) or at least moves its mtime and ctime, so a flag set or cleared later is read from the
file."""

RACY_NS = 2 * 10**9
"""A ``done`` chunk file modified (mtime or ctime) less than this many nanoseconds before its
signature is taken is not vouched for: a later in-place change within the same file-system
timestamp tick would leave its times equal (git's "racy clean" case). Later changes get
timestamps at least this much newer than any vouched one."""


class IndexWarning(UserWarning):
    """A persisted role index piece was unreadable or inconsistent and was not used."""


def piece_name(covered: np.ndarray) -> str:
    """The name of the piece covering the sorted sample indices ``covered``."""
    return "piece-" + hashlib.sha1(np.asarray(covered, "<i8").tobytes()).hexdigest()[:16]


def entries(rows: np.ndarray, labels: dict[str, np.ndarray]):
    """The non-pad tokens of samples ``rows`` (store indices, one per row of the ``(b, T)`` label
    arrays), sorted by (role, sample, token): ``({field: array}, offsets (N_ROLES + 1,))``."""
    role = labels["role"]
    r, t = np.nonzero(role != S.PAD)  # row-major: by sample, then token
    codes = role[r, t]
    order = np.argsort(codes, kind="stable")
    r, t, codes = r[order], t[order], codes[order]
    out = {"sample": np.asarray(rows, np.int64)[r], "token": t.astype(np.int32)}
    for name in FIELDS:
        if name not in out:
            out[name] = labels[name][r, t]
    offsets = np.searchsorted(codes, np.arange(N_ROLES + 1), side="left")
    return out, offsets.astype(np.int64)


def _crc(parts) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(np.ascontiguousarray(p).view(np.uint8), c)
    return c


def _runs(samples: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs ``[start, stop)`` of the sorted sample indices ``samples``."""
    if len(samples) == 0:
        return []
    cut = np.flatnonzero(np.diff(samples) != 1) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(samples)]])
    return [(int(samples[a]), int(samples[b - 1]) + 1) for a, b in zip(starts, stops)]


def read_rows(arr, store, a: int, b: int, cache: dict | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[a, b)`` of a small array: straight from its chunk files on a local store, else
    zarr (into ``out`` when given)."""
    from . import _direct

    key = ("chunked", arr.path)
    if cache is None or key not in cache:
        lay = _direct.chunked(arr, store)
        if cache is not None:
            cache[key] = lay
    else:
        lay = cache[key]
    if lay is not None:
        return _direct.read_rows(lay, a, b, out)
    if out is None:
        return np.asarray(arr[a:b])
    out[...] = arr[a:b]
    return out


class HeldLabels:
    """The token labels a writer wrote, kept so that its piece is built at ``close()`` without
    reading them back from the store (on S3 that re-read was 2.9 of 7.2 s of a 512-sample write,
    benchmarks/RESULTS.md "plain Zarr vs icechunk").

    Each :meth:`add` (one write batch) appends one zlib-compressed blob per site family (the
    batch's six label arrays, exactly as written) to a spooled temporary file: in memory up to
    ``max_memory`` bytes, then on local disk, so the writer's memory stays flat in the number of
    samples (what is held in memory beyond that: one ``(offset, size)`` per batch and family and
    the batch's sample range). Thread-safe (a writer's batches may be written at once)."""

    def __init__(self, families: dict[str, int], max_memory: int = 64 * 2**20):
        self.families = dict(families)  # family -> n_tokens
        self._file = tempfile.SpooledTemporaryFile(max_size=max_memory)
        self._adds: list = []  # per add: (idx: (start, stop) or array, {family: (offset, size)})
        self._lock = threading.Lock()
        self._loc = None

    @property
    def nbytes(self) -> int:
        """Compressed bytes held (in memory or spilled to the temporary file)."""
        with self._lock:
            self._file.seek(0, 2)
            return self._file.tell()

    def add(self, idx: np.ndarray, labels: dict[str, dict[str, np.ndarray]]) -> None:
        """Hold the labels ``{family: {label: (len(idx), n_tokens)}}`` written for samples ``idx``
        (a later add of the same sample replaces it)."""
        idx = np.asarray(idx, np.int64)
        blobs = {f: zlib.compress(b"".join(np.ascontiguousarray(labels[f][k], S.TOKEN_LABELS[k][0])
                                           .tobytes() for k in S.TOKEN_LABELS), 1)
                 for f in self.families}
        contiguous = len(idx) and int(idx[-1]) - int(idx[0]) + 1 == len(idx)
        rows = (int(idx[0]), int(idx[-1]) + 1) if contiguous else idx.copy()
        with self._lock:
            self._file.seek(0, 2)
            where = {}
            for f, blob in blobs.items():
                where[f] = (self._file.tell(), len(blob))
                self._file.write(blob)
            self._adds.append((rows, where))
            self._loc = None

    def _locate(self, n_samples: int):
        """Per sample: the add that holds it (-1: none) and its row there."""
        if self._loc is None or len(self._loc[0]) != n_samples:
            which = np.full(n_samples, -1, np.int32)
            row = np.zeros(n_samples, np.int32)
            for j, (rows, _) in enumerate(self._adds):
                idx = np.arange(*rows) if isinstance(rows, tuple) else rows
                which[idx] = j
                row[idx] = np.arange(len(idx))
            self._loc = (which, row)
        return self._loc

    def has(self, rows: np.ndarray, n_samples: int) -> np.ndarray:
        """Which of the sample indices ``rows`` are held."""
        return self._locate(n_samples)[0][rows] >= 0

    def fill(self, fam: str, rows: np.ndarray, n_samples: int, out: dict[str, np.ndarray],
             at: np.ndarray) -> None:
        """Write the held labels of samples ``rows`` (all held) into rows ``at`` of ``out``
        (``{label: (m, n_tokens)}``)."""
        which, row = self._locate(n_samples)
        T = self.families[fam]
        w = which[rows]
        for j in np.unique(w).tolist():
            rws, where = self._adds[j]
            b = (rws[1] - rws[0]) if isinstance(rws, tuple) else len(rws)
            off, size = where[fam]
            with self._lock:
                self._file.seek(off)
                raw = zlib.decompress(self._file.read(size))
            sel = w == j
            pos = 0
            for k, (dt, _) in S.TOKEN_LABELS.items():
                n = b * T * np.dtype(dt).itemsize
                v = np.frombuffer(raw, dt, b * T, pos).reshape(b, T)
                out[k][at[sel]] = v[row[rows[sel]]]
                pos += n

    def close(self) -> None:
        self._file.close()
        self._adds = []
        self._loc = None


def _block_labels(fg, store, cache: dict, rows: np.ndarray, fam: str, T: int,
                  held: HeldLabels | None, n_samples: int) -> dict[str, np.ndarray]:
    """The token labels ``{label: (len(rows), T)}`` of samples ``rows`` of family group ``fg``:
    those ``held`` from the writer's memory, every other one read from the store (its label
    arrays opened only then: on an object store opening one is a HEAD and a GET)."""
    have = held.has(rows, n_samples) if held is not None and fam in held.families \
        else np.zeros(len(rows), bool)
    key = ("label-arrays", fg.path)
    if not have.all() and key not in cache:
        cache[key] = {k: fg[k] for k in S.TOKEN_LABELS}
    lab_arrays = cache.get(key, {})
    if not have.any():
        return {k: np.concatenate([read_rows(arr, store, a, b, cache) for a, b in _runs(rows)])
                for k, arr in lab_arrays.items()}
    out = {k: np.empty((len(rows), T), dt) for k, (dt, _) in S.TOKEN_LABELS.items()}
    rest = rows[~have]
    if len(rest):
        for k, arr in lab_arrays.items():
            out[k][~have] = np.concatenate([read_rows(arr, store, a, b, cache)
                                            for a, b in _runs(rest)])
    held.fill(fam, rows[have], n_samples, out, np.flatnonzero(have))
    return out


def write_piece(g, covered: np.ndarray, *, force: bool = False,
                done_stat: np.ndarray | None = None,
                held: HeldLabels | None = None) -> str | None:
    """Write the piece of model group ``g`` covering the sorted sample indices ``covered`` (done
    samples: their labels are final), reading their token labels from the store (those in
    ``held``, the labels a writer wrote, from there). Returns its
    name, or None when a complete piece of that name is already there (same samples, same
    bytes; ``force`` rewrites it) or ``covered`` is empty. Memory: one block of ``BLOCK`` samples at a time.
    ``done_stat``: the signatures of :func:`done_stat`, taken before ``covered`` was read
    (stored as the piece's ``done_stat`` array; None: none stored)."""
    covered = np.asarray(covered, np.int64)
    if len(covered) == 0 or GROUP not in g:
        return None
    ig = g[GROUP]
    name = piece_name(covered)
    if not force and name in ig:
        try:
            there = bool(ig[name].attrs.get("complete"))
        except Exception:  # noqa: BLE001 - damaged: rewritten below
            there = False
        if there:
            return None
    store = g.store
    cache: dict = {}
    n_samples = int(g.attrs["n_samples"])
    try:
        fresh = name not in ig
    except Exception:  # noqa: BLE001 - damaged: removed and rewritten below
        fresh = False
    if len(covered) <= BLOCK and fresh:
        return _write_piece_at_once(g, ig, name, covered, done_stat, held, cache, n_samples)
    pg = ig.create_group(name, overwrite=True)
    cov = pg.create_array("covered", shape=(len(covered),), dtype="int64",
                          chunks=(min(CHUNK, len(covered)),), fill_value=-1,
                          dimension_names=("covered",))
    cov[:] = covered
    for d in g.attrs["sites"]:
        fam, T = d["name"], int(d["n_tokens"])
        fg = g[fam]
        pf = pg.create_group(fam)
        arrays = {f: pf.create_array(f, shape=(0,), dtype=dt, chunks=(CHUNK,), fill_value=none,
                                     dimension_names=("entry",))
                  for f, (dt, none) in FIELDS.items()}
        n, blocks, crcs = 0, [], []
        for b0 in range(0, len(covered), BLOCK):
            rows = covered[b0:b0 + BLOCK]
            ent, crc, block = _block_entries(
                rows, _block_labels(fg, store, cache, rows, fam, T, held, n_samples), n)
            m = len(ent["sample"])
            if m:
                for f, arr in arrays.items():
                    arr.resize((n + m,))
                    arr[n:n + m] = ent[f]
            crcs.append(crc)
            blocks.append(block)
            n += m
        pf.attrs.update({"n_tokens": T, "blocks": blocks, "crc": crcs, "n_entries": n})
    sig, attrs = _piece_attrs(g, covered, done_stat, n_samples)
    if sig is not None:
        arr = pg.create_array(DONE_STAT, shape=sig.shape, dtype="int64", chunks=sig.shape,
                              fill_value=-1, dimension_names=("chunk", "field"))
        arr[:] = sig
    pg.attrs.update(attrs)
    return name


def _block_entries(rows: np.ndarray, labels: dict[str, np.ndarray], base: int):
    """One block of a piece: its entries (:func:`entries`), the CRC of each role's slice and
    its ``blocks`` record ``[first, stop, role offsets...]`` with the offsets from ``base``."""
    ent, off = entries(rows, labels)
    crc = [_crc(ent[f][off[c]:off[c + 1]] for f in FIELDS) for c in range(N_ROLES)]
    return ent, crc, [int(rows[0]), int(rows[-1]) + 1, *(int(base + o) for o in off)]


def _piece_attrs(g, covered: np.ndarray, done_stat, n_samples: int):
    """A finished piece's ``done_stat`` array (None: none stored) and its attributes."""
    sig, extra = None, {}
    if done_stat is not None and len(done_stat):
        sig = np.ascontiguousarray(done_stat, "<i8")
        extra = {"done_rows": int(g["samples"]["done"].chunks[0]), "done_stat_crc": _crc([sig])}
    return sig, {"format": FORMAT, "n_covered": int(len(covered)), **extra,
                 "covered_crc": _crc([covered]), "n_samples": n_samples, "complete": True}


def _array_meta(shape, dtype, chunks, fill_value, dims):
    """The zarr metadata ``create_array`` writes for these settings (made in memory)."""
    import zarr

    return zarr.create_array(zarr.storage.MemoryStore(), shape=shape, dtype=dtype, chunks=chunks,
                             fill_value=fill_value, dimension_names=dims).metadata


def _write_piece_at_once(g, ig, name, covered, done_stat, held, cache, n_samples) -> str:
    """:func:`write_piece` of a piece of one block (at most ``BLOCK`` samples): the same
    arrays and bytes, but every entry computed first, so that the piece's groups and arrays are
    made at their final size in one ``create_hierarchy`` (on an object store each node made
    one by one costs zarr's existence checks of it and its parents, and each resize a PUT)."""
    from zarr.core.group import GroupMetadata

    store = g.store
    nodes = {name: GroupMetadata(),
             f"{name}/covered": _array_meta((len(covered),), "int64",
                                            (min(CHUNK, len(covered)),), -1, ("covered",))}
    data = {f"{name}/covered": covered}
    rows = covered
    for d in g.attrs["sites"]:
        fam, T = d["name"], int(d["n_tokens"])
        ent, crc, block = _block_entries(
            rows, _block_labels(g[fam], store, cache, rows, fam, T, held, n_samples), 0)
        m = len(ent["sample"])
        nodes[f"{name}/{fam}"] = GroupMetadata(attributes={
            "n_tokens": T, "blocks": [block], "crc": [crc], "n_entries": m})
        for f, (dt, none) in FIELDS.items():
            nodes[f"{name}/{fam}/{f}"] = _array_meta((m,), dt, (CHUNK,), none, ("entry",))
            if m:
                data[f"{name}/{fam}/{f}"] = ent[f]
    sig, attrs = _piece_attrs(g, covered, done_stat, n_samples)
    if sig is not None:
        nodes[f"{name}/{DONE_STAT}"] = _array_meta(sig.shape, "int64", sig.shape, -1,
                                                   ("chunk", "field"))
        data[f"{name}/{DONE_STAT}"] = sig
    made = dict(ig.create_hierarchy(nodes))
    for path, v in data.items():
        made[path][...] = v
    made[name].attrs.update(attrs)
    return name


def _done_layout(g, store):
    """The direct-read layout of the ``done`` array of model group ``g`` (None: not local)."""
    from . import _direct

    return _direct.chunked(g["samples"]["done"], store)


def done_stat(g, mine: np.ndarray) -> np.ndarray | None:
    """Signatures ``(chunk, inode, size, mtime_ns, ctime_ns)`` of the ``done`` chunk files of model
    group ``g`` whose samples are all in the mask ``mine`` (a writer's batches), for
    :func:`write_piece`; None when the store is not a local directory. Take them *before* reading
    the flags they vouch for (a file changed in between then no longer matches). Missing files
    (nothing done there yet) and files modified less than ``RACY_NS`` ago are left out."""
    lay = _done_layout(g, g.store)
    if lay is None or lay.shape[0] == 0:
        return None
    n, rows = lay.shape[0], lay.rows
    nch = -(-n // rows)
    full = np.ones(nch * rows, bool)
    full[:n] = np.asarray(mine, bool)
    recent = time.time_ns() - RACY_NS
    chunks = np.flatnonzero(full.reshape(nch, rows).all(1)).tolist()
    out = [(ci, *st) for ci, st in zip(chunks, _stats(lay, chunks))
           if st is not None and st[2] < recent and st[3] < recent]
    return np.array(out, "<i8").reshape(-1, 5)


def _vouched(p, lay, n_samples: int, store, cache: dict) -> np.ndarray | None:
    """The checked ``done_stat`` rows of piece ``p`` for the ``done`` layout ``lay`` (None: it has
    none, or they do not fit this store; an unreadable or altered array warns)."""
    key = ("piece-done-stat", p.path)
    if key in cache:
        return cache[key]
    a = p.attrs.asdict()
    sig = None
    if a.get("done_rows") == lay.rows and "done_stat_crc" in a:
        try:
            arr = p[DONE_STAT]
            if len(arr.shape) != 2 or arr.shape[1] != 5:
                raise ValueError(f"{DONE_STAT} has shape {arr.shape}")
            sig = read_rows(arr, store, 0, arr.shape[0], cache)
            if _crc([sig.astype("<i8")]) != a["done_stat_crc"]:
                raise ValueError(f"checksum of {DONE_STAT!r} differs")
            if len(sig) and (sig[:, 0].min() < 0 or sig[:, 0].max() * lay.rows >= n_samples):
                raise ValueError(f"{DONE_STAT} names chunks outside the store")
        except Exception as e:  # noqa: BLE001 - any damage: read the flags from their files
            warnings.warn(f"role index piece {p.path}: its {DONE_STAT} is not used ({type(e).__name__}: "
                          f"{e}); the done flags are read from their files instead (same result, "
                          f"slower). Rebuild it with `spatialbind query STORE --reindex`",
                          IndexWarning, stacklevel=3)
            sig = None
    cache[key] = sig
    return sig


def _stats(lay, chunks: list[int]) -> list[tuple | None]:
    """``(inode, size, mtime_ns, ctime_ns)`` of the chunk files ``chunks`` of a 1-D
    :func:`actstore._direct.chunked` array (None where missing), looked up in their directory."""
    out = []
    try:
        dfd = os.open(os.path.join(lay.directory, "c"), os.O_RDONLY)
    except OSError:
        return [None] * len(chunks)
    try:
        for ci in chunks:
            try:
                st = os.stat(str(ci), dir_fd=dfd)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            except OSError:
                out.append(None)
    finally:
        os.close(dfd)
    return out


def done_flags(g, arr, store, cache: dict) -> np.ndarray | None:
    """The ``done`` flags of model group ``g`` on a local store, equal to the stored array: the
    chunks some sound piece vouches for (:data:`DONE_STAT`, the file's ``os.stat`` unchanged)
    from that piece's ``covered``, every other chunk read from its file. None when the store is
    not local (read them through zarr). ``arr``: the ``done`` array of ``g``."""
    from . import _direct

    lay = _direct.chunked(arr, store)
    if lay is None or len(lay.shape) != 1:
        return None
    n_samples = lay.shape[0]
    rows = lay.rows
    nch = -(-n_samples // rows)
    known = np.zeros(nch, bool)
    done = np.zeros(n_samples, bool)
    for _, p in _pieces_cached(g, cache):
        sig = _vouched(p, lay, n_samples, store, cache)
        if sig is None or not len(sig):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IndexWarning)
            cov = covered_of(p, n_samples, store, cache)
        if cov is None:
            continue
        mine = np.zeros(nch, bool)
        want = [r for r in sig.tolist() if not known[r[0]]]
        for r, now in zip(want, _stats(lay, [r[0] for r in want])):
            if now == tuple(r[1:]):
                mine[r[0]] = True
        if mine.any():
            done[cov[mine[cov // rows]]] = True
            known |= mine
    for c0, c1 in _runs(np.flatnonzero(~known)):
        done[c0 * rows:min(c1 * rows, n_samples)] = _direct.read_rows(lay, c0 * rows, c1 * rows)
    return done


def _pieces_cached(g, cache: dict) -> list[tuple[str, object]]:
    """:func:`pieces` of ``g``, listed once per reader (``cache``: the reader's cache)."""
    key = ("pieces", g.path)
    if key not in cache:
        cache[key] = pieces(g)
    return cache[key]


def pieces(g, damaged: list | None = None) -> list[tuple[str, object]]:
    """The complete pieces of model group ``g`` (largest first, then by name). A piece whose
    metadata cannot be read is left out with a warning (and its name and why appended to
    ``damaged``)."""
    if GROUP not in g:
        return []
    from zarr.core.sync import collect_aiterator

    ig = g[GROUP]
    # opened one by one (not ig.groups(), which fails as a whole on one damaged piece)
    names = sorted(k for k in collect_aiterator(ig.store.list_dir(ig.path)) if k != "zarr.json")
    found = []
    for k in names:
        try:
            found.append((k, ig[k]))
        except Exception as e:  # noqa: BLE001
            _warn(f"{ig.path}/{k}", f"{type(e).__name__}: {e}")
            if damaged is not None:
                damaged.append((k, f"{type(e).__name__}: {e}"))
    out = []
    for k, p in found:
        try:
            if p.attrs.get("complete"):
                out.append((int(p.attrs.get("n_covered", 0)), k, p))
        except Exception as e:  # noqa: BLE001
            _warn(p.path, f"{type(e).__name__}: {e}")
            if damaged is not None:
                damaged.append((k, f"{type(e).__name__}: {e}"))
    return [(k, p) for _, k, p in sorted(out, key=lambda t: (-t[0], t[1]))]


def _warn(where: str, why: str) -> None:
    warnings.warn(f"role index piece {where} is not used ({why}); its samples are read from the "
                  f"token labels instead (same result, slower). Rebuild it with `spatialbind "
                  f"query STORE --reindex` (actstore.reindex)", IndexWarning, stacklevel=4)


def covered_of(p, n_samples: int, store, cache: dict) -> np.ndarray | None:
    """The checked ``covered`` array of piece group ``p`` (None, with a warning, if bad)."""
    key = ("piece-covered", p.path)
    if key in cache:
        return cache[key]
    a = p.attrs.asdict()
    cov = None
    try:
        if a.get("format") != FORMAT or a.get("n_samples") != n_samples:
            raise ValueError(f"format {a.get('format')} / n_samples {a.get('n_samples')}, "
                             f"expected {FORMAT} / {n_samples}")
        arr = p["covered"]
        if arr.shape != (int(a["n_covered"]),):
            raise ValueError(f"covered has shape {arr.shape}, attrs say {a['n_covered']}")
        cov = read_rows(arr, store, 0, arr.shape[0], cache)
        if _crc([cov.astype("<i8")]) != a["covered_crc"]:
            raise ValueError("checksum of 'covered' differs")
        if len(cov) and (cov[0] < 0 or cov[-1] >= n_samples or np.any(np.diff(cov) <= 0)):
            raise ValueError("'covered' is not a sorted list of sample indices")
    except Exception as e:  # noqa: BLE001 - any damage: do not use the piece
        _warn(p.path, f"{type(e).__name__}: {e}")
        cov = None
    cache[key] = cov
    return cov


def read_role(p, fam: str, code: int, T: int, store, cache: dict):
    """Entries of role ``code`` of family ``fam`` in piece group ``p``, checked against the CRCs
    and bounds: ``{field: array}`` in (sample, token) order, or None (with a warning) if bad."""
    try:
        pf = p[fam]
        a = pf.attrs.asdict()
        if int(a["n_tokens"]) != T:
            raise ValueError(f"n_tokens {a['n_tokens']}, the store has {T}")
        arrays = {f: pf[f] for f in FIELDS}
        n = int(a["n_entries"])
        for f, arr in arrays.items():
            if arr.shape != (n,) or str(arr.dtype) != FIELDS[f][0]:
                raise ValueError(f"{f} has shape {arr.shape} {arr.dtype}, expected ({n},) "
                                 f"{FIELDS[f][0]}")
        blocks, crcs = a["blocks"], a["crc"]
        if len(blocks) != len(crcs):
            raise ValueError(f"{len(blocks)} blocks but {len(crcs)} checksums")
        spans = [(int(blk[2 + code]), int(blk[3 + code])) for blk in blocks]
        for s0, s1 in spans:
            if not (0 <= s0 <= s1 <= n):
                raise ValueError(f"role offsets {s0}..{s1} outside 0..{n}")
        total = sum(s1 - s0 for s0, s1 in spans)
        # each block's slice read straight into its place in the result (no concatenation)
        got = _field_arrays(total)
        pos = 0
        for blk, crc, (s0, s1) in zip(blocks, crcs, spans):
            lo, hi = blk[0], blk[1]
            part = {f: read_rows(arr, store, s0, s1, cache, out=got[f][pos:pos + s1 - s0])
                    for f, arr in arrays.items()}
            if _crc(part[f] for f in FIELDS) != crc[code]:
                raise ValueError(f"checksum of the entries of role {S.ROLE_NAMES[code]!r} "
                                 f"(samples {lo}..{hi - 1}) differs")
            smp, tok = part["sample"], part["token"]
            if s1 > s0 and (smp[0] < lo or smp[-1] >= hi or np.any(smp[1:] < smp[:-1])
                            or tok.min() < 0 or tok.max() >= T):
                raise ValueError("entries out of their block's samples or tokens")
            pos += s1 - s0
        return got
    except Exception as e:  # noqa: BLE001 - any damage: do not use the piece
        _warn(f"{p.path}/{fam}", f"{type(e).__name__}: {e}")
        return None


KEPT = ("ordinal", "entity", "row", "col", "position")
"""The fields a reader keeps after building a role's index (for its label tables, built when
first read); ``sample`` and ``token`` are reduced to the index at once."""


def _field_arrays(n: int) -> dict[str, np.ndarray]:
    """Empty arrays of ``n`` entries for every field of :data:`FIELDS`: ``sample`` and ``token``
    each its own, the :data:`KEPT` label fields views into one shared buffer (widest first, so
    each view is aligned). One allocation of ~11 bytes per entry instead of five, each under
    numpy's 4 MiB huge-page threshold at 100k samples (1-5 MiB: thousands of 4 KiB first-touch
    faults); the buffer is freed when the last of the views is."""
    kept = sorted(KEPT, key=lambda f: -np.dtype(FIELDS[f][0]).itemsize)
    buf = np.empty(n * sum(np.dtype(FIELDS[f][0]).itemsize for f in kept), np.uint8)
    out, pos = {}, 0
    for f in kept:
        dt = np.dtype(FIELDS[f][0])
        out[f] = buf[pos:pos + n * dt.itemsize].view(dt)
        pos += n * dt.itemsize
    return {f: out[f] if f in out else np.empty(n, FIELDS[f][0]) for f in FIELDS}


def load(g, fam: str, code: int, T: int, done: np.ndarray, store, cache: dict):
    """What the valid pieces of ``g`` say about role ``code`` of family ``fam``.

    Returns ``(taken, parts)``: ``taken`` (N,) bool marks the samples whose entries come from a
    piece (covered by it, done now, not taken from an earlier piece); ``parts`` a list of
    ``{field: array}`` holding exactly those samples' entries. The pad role is never persisted.
    """
    N = len(done)
    taken = np.zeros(N, bool)
    parts = []
    if code == S.PAD:
        return taken, parts
    for _, p in _pieces_cached(g, cache):
        cov = covered_of(p, N, store, cache)
        if cov is None:
            continue
        use = cov[done[cov] & ~taken[cov]]
        if len(use) == 0:
            continue
        got = read_role(p, fam, code, T, store, cache)
        if got is None:
            continue
        if len(use) != len(cov):  # some covered samples are not done now, or taken already
            mine = np.zeros(N, bool)
            mine[use] = True
            keep = mine[got["sample"]]
            got = {f: v[keep] for f, v in got.items()}
        taken[use] = True
        parts.append(got)
    return taken, parts


def _check_done_stat(g, p, where: str, cov: np.ndarray, done: np.ndarray, fix: str) -> list[str]:
    """Problems of the ``done_stat`` of piece ``p``: unreadable, or vouching (its chunk files
    unchanged since) for done flags other than the stored ones ``done``."""
    lay = _done_layout(g, g.store)
    if lay is None or lay.shape[0] != len(done):
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sig = _vouched(p, lay, len(done), g.store, {})
    if caught:
        return [f"{where}/{DONE_STAT}: damaged ({caught[-1].message}); {fix}"]
    if sig is None:
        return []
    mine = np.zeros(len(done), bool)
    mine[cov] = True
    rows, bad = lay.rows, []
    for r, now in zip(sig.tolist(), _stats(lay, sig[:, 0].tolist())):
        sl = slice(r[0] * rows, (r[0] + 1) * rows)
        if now == tuple(r[1:]) and not np.array_equal(mine[sl], done[sl]):
            bad.append(r[0])
    if bad:
        return [f"{where}/{DONE_STAT}: vouches for the done flags of {len(bad)} chunk file(s) "
                f"(e.g. chunk {bad[0]}) that differ from the stored flags; {fix}"]
    return []


def check(g, key: str, done: np.ndarray, only: str | None = None) -> list[str]:
    """Problems of the persisted role index of model group ``g`` (for ``validate``): pieces
    that cannot be read, fail their checksums, or disagree with the token labels of the done
    samples they cover (``only``: just that piece). Reads one block of a piece (and its samples'
    labels) at a time."""
    out = []
    N = len(done)
    store = g.store
    fix = "rebuild it with `spatialbind query STORE --reindex` (actstore.reindex)"
    cache: dict = {}
    damaged: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexWarning)
        found = pieces(g, damaged)
    out += [f"{key}/{GROUP}/{name}: damaged ({why}); {fix}" for name, why in damaged
            if only is None or name == only]
    for name, p in found:
        if only is not None and name != only:
            continue
        where = f"{key}/{GROUP}/{name}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cov = covered_of(p, N, store, {})
        if cov is None:
            out.append(f"{where}: damaged ({caught[-1].message if caught else 'unreadable'}); {fix}")
            continue
        out += _check_done_stat(g, p, where, cov, done, fix)
        for d in g.attrs["sites"]:
            fam, T = d["name"], int(d["n_tokens"])
            try:
                pf = p[fam]
                a = pf.attrs.asdict()
                arrays = {f: pf[f] for f in FIELDS}
                lab_arrays = {k: g[fam][k] for k in S.TOKEN_LABELS}
                for blk, crc in zip(a["blocks"], a["crc"], strict=True):
                    lo, hi, off = blk[0], blk[1], blk[2:]
                    got = {f: np.asarray(arr[off[0]:off[-1]]) for f, arr in arrays.items()}
                    for c in range(N_ROLES):
                        part = [got[f][off[c] - off[0]:off[c + 1] - off[0]] for f in FIELDS]
                        if _crc(part) != crc[c]:
                            raise ValueError(f"checksum of role {S.ROLE_NAMES[c]!r} entries of "
                                             f"samples {lo}..{hi - 1} differs")
                    rows = cov[(cov >= lo) & (cov < hi)]
                    rows = rows[done[rows]]
                    labels = {k: np.concatenate([read_rows(arr, store, a0, b0, cache)
                                                 for a0, b0 in _runs(rows)])
                              if len(rows) else np.zeros((0, T), S.TOKEN_LABELS[k][0])
                              for k, arr in lab_arrays.items()}
                    want, woff = entries(rows, labels)
                    isdone = np.zeros(N, bool)
                    isdone[rows] = True
                    keep = isdone[np.clip(got["sample"], 0, N - 1)] & (got["sample"] >= 0) \
                        & (got["sample"] < N)
                    roles = np.repeat(np.arange(N_ROLES), np.diff(np.asarray(off)))
                    wroles = np.repeat(np.arange(N_ROLES), np.diff(woff))
                    if not (np.array_equal(roles[keep], wroles)
                            and all(np.array_equal(got[f][keep], want[f]) for f in FIELDS)):
                        raise ValueError(f"entries of samples {lo}..{hi - 1} differ from their "
                                         f"token labels")
            except Exception as e:  # noqa: BLE001 - any damage is one finding
                out.append(f"{where}/{fam}: {type(e).__name__}: {e}; {fix}")
    return out
