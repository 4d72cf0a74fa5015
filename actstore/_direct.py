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
    never written come back as the fill value (NaN).
    """
    n, K = tokens.shape
    H = lay.shard[3]
    T = lay.shard[2]
    Bs, Bi = lay.shard[0], lay.inner[0]
    out = np.empty((n, K, H), lay.dtype)
    samples = np.asarray(samples, np.int64)
    tok = np.maximum(tokens, 0)
    shard_of = samples // Bs
    for b in np.unique(shard_of):
        sel = np.flatnonzero(shard_of == b)
        mm, index = _open_shard(lay, int(b), layer_pos)  # mmap closes when its views are gone
        if mm is None:
            out[sel] = lay.fill
            continue
        within = samples[sel] % Bs
        n_inner, cb = len(index), Bi * T * H * lay.dtype.itemsize
        if np.array_equal(index[:, 0], np.arange(n_inner, dtype=np.uint64) * np.uint64(cb)):
            # a whole-shard write: inner chunks lie in order, so the shard is one (Bs, T, H) array
            data = np.frombuffer(mm, dtype=lay.dtype, count=Bs * T * H).reshape(Bs * T, H)
            rows = within[:, None] * T + tok[sel]
            if sel[-1] - sel[0] + 1 == len(sel):  # consecutive outputs: copy straight into place
                np.take(data, rows, axis=0, out=out[sel[0]:sel[-1] + 1])
            else:
                out[sel] = data[rows]
            continue
        for i, w in zip(sel, within):  # any other order (e.g. single-sample writes): one by one
            j, r = w // Bi, w % Bi
            if index[j, 0] == _EMPTY:
                out[i] = lay.fill
                continue
            chunk = np.frombuffer(mm, dtype=lay.dtype, count=Bi * T * H,
                                  offset=int(index[j, 0])).reshape(Bi, T, H)
            out[i] = chunk[r][tok[i]]
    pad = tokens < 0
    if pad.any():
        out[pad] = np.nan
    return out


def _open_shard(lay: Layout, b: int, layer_pos: int):
    path = os.path.join(lay.directory, "c", str(b), str(layer_pos), "0", "0")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None, None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < lay.index_bytes:
            raise OSError(f"shard file {path} is truncated ({size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    n_inner = lay.shard[0] // lay.inner[0]
    index = np.frombuffer(mm, dtype="<u8", count=2 * n_inner,
                          offset=size - lay.index_bytes).reshape(n_inner, 2).copy()
    return mm, index
