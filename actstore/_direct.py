"""Direct reads of token rows from local, uncompressed, sharded activation arrays.

A role query needs ~40 of 256 token rows per sample. Zarr decodes whole inner chunks (every token
of a sample), so through zarr a role query reads every byte of the layer; here the shard files are
memory-mapped and only the needed rows are copied, which is what makes the query as fast as a raw
numpy memmap. The layout is read from the array's own metadata (sharding codec, inner chunk,
chunk-key encoding, index at the end) and anything else — a remote store, compression, another
codec — makes :func:`layout` return None, so the reader falls back to xarray/dask over zarr.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

_EMPTY = np.uint64(2**64 - 1)


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
    """Rows ``acts[samples[i], layer_pos, tokens[i, k]]`` as an ``(n, K, H)`` array.

    ``tokens`` entries < 0 are padding and come back as NaN; samples whose shard or inner chunk was
    never written come back as the fill value (NaN). Samples are grouped by shard with one sort
    (none when they are already in store order); each shard file is memory-mapped once, its rows
    gathered through one small reused buffer (no allocation per shard) and a run of consecutive
    outputs copied into place as one slice.
    """
    n, K = tokens.shape
    H = lay.shard[3]
    T = lay.shard[2]
    Bs, Bi = lay.shard[0], lay.inner[0]
    out = np.empty((n, K, H), lay.dtype)
    if n == 0:
        return out
    samples = np.asarray(samples, np.int64)
    tok = np.maximum(tokens, 0)
    shard_of = samples // Bs
    order = None if np.all(shard_of[1:] >= shard_of[:-1]) else np.argsort(shard_of, kind="stable")
    sh = shard_of if order is None else shard_of[order]
    starts = np.flatnonzero(np.concatenate([[True], sh[1:] != sh[:-1]]))
    ends = np.append(starts[1:], n)
    per_sample = T * H                                    # elements of one sample's rows
    n_inner = Bs // Bi
    cb = Bi * per_sample * lay.dtype.itemsize              # bytes of one inner chunk
    in_order = np.arange(n_inner, dtype=np.uint64) * np.uint64(cb)
    buf = np.empty(Bi * per_sample, lay.dtype)             # one inner chunk, reused
    tmp = np.empty(Bs * K * H, lay.dtype)                  # one shard's gathered rows, reused
    for a, e in zip(starts.tolist(), ends.tolist()):
        sel = np.arange(a, e) if order is None else order[a:e]
        path = os.path.join(lay.directory, "c", str(int(sh[a])), str(layer_pos), "0", "0")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            out[sel] = lay.fill
            continue
        try:
            index = _read_index(fd, path, lay, n_inner)
            within = samples[sel] % Bs
            if np.array_equal(index[:, 0], in_order):
                # a whole-shard write: inner chunks lie in order, so the shard is one (Bs, T, H)
                # array; memory-mapped, so only the pages of the wanted rows are touched (this
                # measured less CPU than reading the samples' byte range with preadv)
                lo, hi = int(within.min()), int(within.max()) + 1
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                data = np.frombuffer(mm, dtype=lay.dtype, count=(hi - lo) * per_sample,
                                     offset=lo * per_sample * lay.dtype.itemsize)
                data = data.reshape((hi - lo) * T, H)
                rows = (within - lo)[:, None] * T + tok[sel]
                # gathered into one small reused buffer (no allocation per shard), then copied
                # into place; rows are in range by construction (mode="clip": no check, no
                # buffering of out=)
                if rows.size * H > tmp.size:  # several outputs per sample (pooled items)
                    tmp = np.empty(rows.size * H, lay.dtype)
                part = tmp[:rows.size * H].reshape(*rows.shape, H)
                np.take(data, rows, axis=0, out=part, mode="clip")
                del data
                mm.close()
                if sel[-1] - sel[0] + 1 == len(sel):  # consecutive outputs: a slice, no index
                    out[sel[0]:sel[-1] + 1] = part
                else:
                    out[sel] = part
                continue
            chunk = buf[:Bi * per_sample]
            for i, w in zip(sel, within):  # any other order (e.g. single-sample writes): one by one
                j, r = w // Bi, w % Bi
                if index[j, 0] == _EMPTY:
                    out[i] = lay.fill
                    continue
                _pread_into(fd, chunk, int(index[j, 0]), path)
                out[i] = chunk.reshape(Bi, T, H)[r][tok[i]]
        finally:
            os.close(fd)
    pad = tokens < 0
    if pad.any():
        out[pad] = np.nan
    return out


def _read_index(fd: int, path: str, lay: Layout, n_inner: int) -> np.ndarray:
    """The shard index ``(n_inner, 2)`` (offset, nbytes) at the end of a shard file."""
    size = os.fstat(fd).st_size
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
