"""Direct reads of token rows from local, uncompressed, sharded activation arrays.

A role query needs ~40 of 256 token rows per sample. Zarr decodes whole inner chunks (every token
of a sample), so through zarr a role query reads every byte of the layer; here the shard files are
memory-mapped and only the needed rows are copied, which is what makes the query as fast as a raw
numpy memmap. The layout is read from the array's own metadata (sharding codec, inner chunk,
chunk-key encoding, index at the end) and anything else — a remote store, compression, another
codec — makes :func:`layout` return None, so the reader falls back to xarray/dask over zarr.
The small per-sample arrays (token labels, ``done``) are read here too (:func:`chunked`,
:func:`read_rows`): one file per chunk, decoded with the same numcodecs codec zarr uses.
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_EMPTY = np.uint64(2**64 - 1)

READ_AHEAD_BYTES = 32 * 2**20
"""A gather has helper threads read up to this many bytes of shard files ahead of its copying
(0: no helper threads, each shard read when it is copied)."""

READ_THREADS = 4
"""Helper threads of one gather: each opens a shard file, maps the wanted range and has the kernel
read it in; they wait on the disk (the GIL released), so a cold read keeps several reads in flight
as the kernel's own read-ahead does for one large file."""

HUGE_FOLIOS = True
"""Ask for 2 MiB page-cache folios (``MADV_HUGEPAGE``) when at least half a shard is read."""

_MADV_POPULATE_READ = 22  # Linux >= 5.14: fault the pages of a range in (reading them if needed)
_FADVISE = getattr(os, "posix_fadvise", None)  # not on macOS


@dataclass(frozen=True)
class Layout:
    """Where the shards of one activations array live and how they are cut."""

    directory: str
    shard: tuple[int, ...]
    inner: tuple[int, ...]
    dtype: np.dtype
    fill: float
    index_bytes: int


def layout(arr, store) -> Layout | None:
    """The direct-read layout of a zarr array, or None when it cannot be read directly."""
    import zarr.storage

    if not isinstance(store, zarr.storage.LocalStore):
        return None
    meta = arr.metadata.to_dict()
    codecs = meta.get("codecs", [])
    enc = meta.get("chunk_key_encoding", {})
    if (len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed"
            or enc.get("name") != "default"
            or enc.get("configuration", {}).get("separator", "/") != "/"):
        return None
    conf = codecs[0]["configuration"]
    inner_codecs = conf.get("codecs", [])
    index_codecs = [c.get("name") for c in conf.get("index_codecs", [])]
    if (conf.get("index_location", "end") != "end" or len(inner_codecs) != 1
            or inner_codecs[0].get("name") != "bytes"
            or inner_codecs[0].get("configuration", {}).get("endian", "little") != "little"
            or index_codecs not in (["bytes"], ["bytes", "crc32c"])):
        return None
    shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    inner = tuple(conf["chunk_shape"])
    if len(shard) != 4 or shard[1:] != (1, arr.shape[2], arr.shape[3]) or inner[1:] != shard[1:]:
        return None
    n_inner = shard[0] // inner[0]
    return Layout(directory=os.path.join(str(store.root), arr.path), shard=shard, inner=inner,
                  dtype=np.dtype(arr.dtype).newbyteorder("<"), fill=float(arr.fill_value),
                  index_bytes=n_inner * 16 + (4 if "crc32c" in index_codecs else 0))


def gather(lay: Layout, layer_pos: int, samples: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Rows ``acts[samples[i], layer_pos, tokens[i, k]]`` as a freshly allocated ``(n, K, H)`` array.

    ``tokens`` entries < 0 are padding and come back as NaN; samples whose shard or inner chunk was
    never written come back as the fill value (NaN). Samples are grouped by shard with one sort
    (none when they are already in store order); the rows and padding of each shard's outputs are
    computed when that shard is copied (small tables, no ``(n, K)`` ones) and its padding is set
    to NaN right after its copy, while those rows are in cache. For each whole-shard file (inner
    chunks in order, the writer's normal output) only the byte range of the wanted samples is
    memory-mapped and read in by helper threads (:func:`_open_shard`, up to ``READ_AHEAD_BYTES``
    ahead of the copying), and the rows are copied with one ``np.take`` straight into their place
    in the output (no intermediate buffer when the shard's outputs are consecutive, as in a
    store-order query). Shards written in any other order are read one inner chunk at a time
    with ``preadv``.
    """
    n, K = tokens.shape
    T, H = lay.shard[2], lay.shard[3]
    Bs, Bi = lay.shard[0], lay.inner[0]
    out = np.empty((n, K, H), lay.dtype)
    if n == 0 or K == 0:
        return out
    samples = np.asarray(samples, np.int64)
    shard_of = samples // Bs
    order = None if np.all(shard_of[1:] >= shard_of[:-1]) else np.argsort(shard_of, kind="stable")
    sh = shard_of if order is None else shard_of[order]
    starts = np.flatnonzero(np.concatenate([[True], sh[1:] != sh[:-1]]))
    ends = np.append(starts[1:], n)
    within = samples % Bs if order is None else samples[order] % Bs
    lo = np.minimum.reduceat(within, starts)                # first and last wanted sample of
    hi = np.maximum.reduceat(within, starts) + 1            # each shard: the range mapped
    # per shard, below: the row of each wanted token within its shard's mapped range and the
    # padding (NaN) of its outputs, computed one shard at a time (a few KiB, reused from the
    # heap) rather than as (n, K) int64 / bool tables over the whole selection (16 MiB and
    # 2 MiB at 100k samples x 20 tokens: first-touched memory, and a NaN pass over the whole
    # output after the copy; here each shard's padding is set while its rows are in cache)
    item = lay.dtype.itemsize
    per_sample = T * H * item                              # bytes of one sample in a shard file
    n_inner = Bs // Bi
    in_order = np.arange(n_inner, dtype=np.uint64) * np.uint64(Bi * per_sample)
    los, his, starts_l, ends_l = lo.tolist(), hi.tolist(), starts.tolist(), ends.tolist()
    paths = [os.path.join(lay.directory, "c", str(s), str(layer_pos), "0", "0")
             for s in sh[starts].tolist()]
    nbytes = [(h - l) * per_sample for l, h in zip(los, his)]

    def open_shard(j):
        a, e = starts_l[j], ends_l[j]
        wanted = None
        if 2 * (e - a) < his[j] - los[j]:  # sparse: read in only the wanted samples' bytes
            wanted = [(int(w) - los[j]) * per_sample for w in np.unique(within[a:e])]
        return _open_shard(paths[j], lay, n_inner, in_order, los[j] * per_sample,
                           his[j] * per_sample, per_sample, wanted,
                           huge=HUGE_FOLIOS and 2 * (his[j] - los[j]) >= Bs)

    pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="actstore-read") \
        if len(paths) > 1 and READ_AHEAD_BYTES > 0 else None
    ahead: deque = deque()  # shard files being opened and read by the helper threads
    nxt, inflight, tmp = 0, 0, None
    try:
        for j in range(len(paths)):
            if pool is None:
                got = open_shard(j)
            else:
                while nxt < len(paths) and (nxt <= j or inflight < READ_AHEAD_BYTES):
                    ahead.append(pool.submit(open_shard, nxt))
                    inflight += nbytes[nxt]
                    nxt += 1
                got = ahead.popleft().result()
                inflight -= nbytes[j]
            a, e = starts_l[j], ends_l[j]
            sel = slice(a, e) if order is None else order[a:e]
            tj = tokens[a:e] if order is None else tokens[sel]  # (e - a, K), shard order
            pj = tj < 0
            if got is None:  # shard never written
                out[sel] = lay.fill
                _nan_pad(out, sel, pj)
                continue
            fd, index, mapped = got
            try:
                if mapped is not None:
                    # a whole-shard write: the shard is one (Bs, T, H) array, mapped and read
                    consecutive = order is None or sel[-1] - sel[0] + 1 == e - a
                    if consecutive:
                        dst = out[a:e] if order is None else out[sel[0]:sel[-1] + 1]
                    else:
                        if tmp is None or tmp.size < (e - a) * K * H:
                            tmp = np.empty((e - a) * K * H, lay.dtype)
                        dst = tmp[:(e - a) * K * H].reshape(e - a, K, H)
                    mm, off = mapped
                    try:
                        data = np.frombuffer(mm, lay.dtype, count=nbytes[j] // item,
                                             offset=off).reshape(-1, H)
                        # rows are in range by construction (mode="clip": no check, and no
                        # buffering of out=)
                        # (the method, not np.take: its Python wrapper frames would hold the
                        # mapped array if a sampling profiler, e.g. a dask worker's, caught them)
                        rows = (within[a:e] - los[j])[:, None] * T + np.maximum(tj, 0)
                        data.take(rows, axis=0, out=dst, mode="clip")
                        del data
                    finally:
                        _close_map(mm)
                    if pj.any():
                        dst[pj] = np.nan
                    if not consecutive:
                        out[sel] = dst
                    continue
                # any other order (e.g. single-sample writes): one inner chunk at a time
                chunk = np.empty(Bi * T * H, lay.dtype)
                for i in range(a, e):
                    o = i if order is None else order[i]
                    jj, r = divmod(int(within[i]), Bi)
                    if index[jj, 0] == _EMPTY:
                        out[o] = lay.fill
                        continue
                    _pread_into(fd, chunk, int(index[jj, 0]), paths[j])
                    out[o] = chunk.reshape(Bi, T, H)[r][np.maximum(tj[i - a], 0)]
                _nan_pad(out, sel, pj)
            finally:
                os.close(fd)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            for f in ahead:  # opened ahead but not used (an error stopped the loop)
                if not f.cancelled() and f.exception() is None and f.result() is not None:
                    fd, _, mapped = f.result()
                    if mapped is not None:
                        _close_map(mapped[0])
                    os.close(fd)
    return out


def _nan_pad(out: np.ndarray, sel, pad: np.ndarray) -> None:
    """NaN into the padding ``pad`` (``(m, K)`` bool) of the outputs ``out[sel]`` (``sel``: a
    slice or an index array of ``m`` rows of ``out``)."""
    if not pad.any():
        return
    if isinstance(sel, slice):
        out[sel][pad] = np.nan
    else:
        i, k = np.nonzero(pad)
        out[sel[i], k] = np.nan


def _open_shard(path: str, lay: Layout, n_inner: int, in_order: np.ndarray, b0: int, b1: int,
                per_sample: int, wanted: list[int] | None, huge: bool):
    """Open one shard file; if it is a whole-shard write, map bytes ``[b0, b1)`` and read them in
    (all of them, or only the samples starting at the offsets ``wanted`` from ``b0``).

    Returns None for a missing file, else ``(fd, index, mapped)`` with ``mapped = (mmap, offset
    of b0 in it)``, or None when the inner chunks are not in order (read them one by one). Runs
    in the gather's helper thread: the kernel reads the pages (``MADV_POPULATE_READ``, through
    ctypes, so the GIL is released meanwhile) while the caller copies rows of earlier shards.
    ``huge`` (the range is at least half the shard) asks for 2 MiB page-cache folios
    (``MADV_HUGEPAGE``): a cold read of a small shard file then costs a few faults and large reads
    instead of hundreds of 4 KiB pages (measured: about a third of the system CPU time).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    mm = None
    try:
        size = os.fstat(fd).st_size
        if size == lay.shard[0] * per_sample + lay.index_bytes:  # the size of a whole-shard write
            # read the index and the wanted range together: ask for the index page first
            # (asynchronously), map and read in the range, then parse the index (a shard whose
            # inner chunks turn out not to be in order is unmapped again)
            if _FADVISE is not None:
                try:
                    _FADVISE(fd, size - lay.index_bytes, lay.index_bytes, os.POSIX_FADV_WILLNEED)
                except OSError:  # a hint only
                    pass
            m0 = b0 // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
            mm = mmap.mmap(fd, b1 - m0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=m0)
            if huge:
                _madvise(mm, getattr(mmap, "MADV_HUGEPAGE", None))
            if wanted is None:
                _madvise(mm, _MADV_POPULATE_READ)
            else:
                for w in wanted:
                    _madvise(mm, _MADV_POPULATE_READ, b0 - m0 + w, per_sample)
        index = _read_index(fd, path, lay, n_inner, size)
        if mm is None or not np.array_equal(index[:, 0], in_order):
            if mm is not None:
                _close_map(mm)
            return fd, index, None
        return fd, index, (mm, b0 - m0)
    except BaseException:
        if mm is not None:
            _close_map(mm)
        os.close(fd)
        raise


def _close_map(mm: mmap.mmap) -> None:
    """Unmap ``mm`` now, or, while an array over it is still alive somewhere (a frame held by a
    sampling profiler, such as a dask worker's, keeps a callee's locals), when that array goes:
    each buffer export holds a reference to the map, which unmaps itself when freed."""
    try:
        mm.close()
    except BufferError:
        pass


def _madvise(mm: mmap.mmap, advice: int | None, start: int = 0, length: int | None = None) -> None:
    """``madvise`` on bytes ``[start, start + length)`` of ``mm`` (default: all of it) through
    libc; a hint: errors (e.g. an older kernel without ``MADV_POPULATE_READ``) are ignored, and
    the pages are then read when first touched."""
    libc = _libc()
    if libc is None or advice is None:
        return
    length = len(mm) - start if length is None else length
    a0 = start // mmap.PAGESIZE * mmap.PAGESIZE  # madvise wants a page-aligned start
    view = np.frombuffer(mm, np.uint8)
    try:
        libc.madvise(ctypes.c_void_p(view.ctypes.data + a0), ctypes.c_size_t(start + length - a0),
                     ctypes.c_int(advice))
    finally:
        del view


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)  # a CDLL call releases the GIL
    except OSError:
        return None


def _read_index(fd: int, path: str, lay: Layout, n_inner: int, size: int | None = None) -> np.ndarray:
    """The shard index ``(n_inner, 2)`` (offset, nbytes) at the end of a shard file of ``size``
    bytes (default: its size now)."""
    size = os.fstat(fd).st_size if size is None else size
    if size < lay.index_bytes:
        raise OSError(f"shard file {path} is truncated ({size} bytes)")
    raw = os.pread(fd, 16 * n_inner, size - lay.index_bytes)
    if len(raw) != 16 * n_inner:
        raise OSError(f"shard file {path} is truncated (short read of its index)")
    return np.frombuffer(raw, dtype="<u8").reshape(n_inner, 2)


def _pread_into(fd: int, dest: np.ndarray, offset: int, path: str) -> None:
    """Fill ``dest`` with the file's bytes from ``offset`` (one ``preadv``, retried if short)."""
    mv = memoryview(dest).cast("B")
    done = 0
    while done < len(mv):
        got = os.preadv(fd, [mv[done:]], offset + done)
        if got <= 0:
            raise OSError(f"shard file {path} is truncated (wanted {len(mv)} bytes at {offset})")
        done += got


# ---------------------------------------------------------------------- small chunked arrays

@dataclass(frozen=True)
class Chunked:
    """Where the chunk files of a small, unsharded array (token labels, ``done``) live and how
    they are encoded: chunked along its first axis only, ``bytes`` (little-endian) optionally
    followed by one compressor."""

    directory: str
    shape: tuple[int, ...]
    rows: int                  # samples per chunk
    dtype: np.dtype
    fill: object
    codec: object | None       # numcodecs codec of the bytes -> bytes step, or None


_COMPRESSORS = {"zstd": ("numcodecs.zstd", "Zstd"), "gzip": ("numcodecs.gzip", "GZip")}


def chunked(arr, store) -> Chunked | None:
    """The direct-read layout of an unsharded zarr array chunked along its first axis only
    (whole rows per chunk), or None when zarr must read it (remote store, sharding, other
    codecs or chunk keys)."""
    import zarr.storage

    if not isinstance(store, zarr.storage.LocalStore):
        return None
    meta = arr.metadata.to_dict()
    enc = meta.get("chunk_key_encoding", {})
    grid = meta.get("chunk_grid", {})
    if (enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/"
            or grid.get("name") != "regular"):
        return None
    chunk = tuple(grid["configuration"]["chunk_shape"])
    shape = tuple(arr.shape)
    if not shape or chunk[1:] != shape[1:] or chunk[0] < 1:
        return None
    codecs = meta.get("codecs", [])
    if not codecs or codecs[0].get("name") != "bytes" \
            or codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    codec = None
    if len(codecs) == 2 and codecs[1].get("name") in _COMPRESSORS:
        import importlib

        mod, cls = _COMPRESSORS[codecs[1]["name"]]
        conf = dict(codecs[1].get("configuration", {}))
        try:
            codec = getattr(importlib.import_module(mod), cls)(**conf)
        except (ImportError, TypeError):
            return None
    elif len(codecs) != 1:
        return None
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "biuf":
        return None
    return Chunked(directory=os.path.join(str(store.root), arr.path), shape=shape,
                   rows=int(chunk[0]), dtype=dtype.newbyteorder("<"), fill=arr.fill_value,
                   codec=codec)


def read_rows(lay: Chunked, a: int, b: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[a, b)`` of a :func:`chunked` array as a new array (or into ``out``, of that shape
    and dtype): the bytes zarr would return (a chunk file that is missing, i.e. never written or
    equal to the fill value, reads as the fill value). Each chunk file is read whole (zarr writes
    it whole and renames it into place, so a concurrent writer is seen before or after, never
    half)."""
    a, b = max(0, int(a)), min(int(b), lay.shape[0])
    if out is None:
        out = np.empty((max(b - a, 0), *lay.shape[1:]), lay.dtype)
    elif out.shape != (max(b - a, 0), *lay.shape[1:]):
        raise ValueError(f"out has shape {out.shape}; rows {a}..{b} need {(b - a, *lay.shape[1:])}")
    if b <= a:
        return out
    c = lay.rows
    chunks = range(a // c, (b - 1) // c + 1)
    parts = min(READ_THREADS, len(chunks) // 32)  # a cold read waits on the disk per file
    if parts > 1:
        cut = np.linspace(chunks[0], chunks[-1] + 1, parts + 1).astype(int).tolist()
        with ThreadPoolExecutor(parts, thread_name_prefix="actstore-read") as pool:
            for f in [pool.submit(_read_chunks, lay, out, a, b, range(c0, c1))
                      for c0, c1 in zip(cut[:-1], cut[1:])]:
                f.result()
        return out
    _read_chunks(lay, out, a, b, chunks)
    return out


def _read_chunks(lay: Chunked, out: np.ndarray, a: int, b: int, chunks: range) -> None:
    """Fill the rows of ``out`` (rows ``[a, b)`` of the array) that the chunks ``chunks`` hold."""
    c = lay.rows
    per = int(np.prod(lay.shape[1:], dtype=np.int64)) * lay.dtype.itemsize * c
    tail = "/".join(["0"] * (len(lay.shape) - 1))
    for ci in chunks:
        lo, hi = max(a, ci * c), min(b, (ci + 1) * c)
        dst = out[lo - a:hi - a]
        path = os.path.join(lay.directory, "c", str(ci), tail) if tail else \
            os.path.join(lay.directory, "c", str(ci))
        try:
            with open(path, "rb", buffering=0) as f:
                raw = f.read()
        except FileNotFoundError:
            dst[...] = lay.fill
            continue
        if lay.codec is not None:
            raw = lay.codec.decode(raw)
        if len(raw) != per:
            raise OSError(f"chunk file {path} holds {len(raw)} bytes once decoded; expected "
                          f"{per} (truncated or not written by zarr)")
        dst[...] = np.frombuffer(raw, lay.dtype).reshape(c, *lay.shape[1:])[lo - ci * c:hi - ci * c]
