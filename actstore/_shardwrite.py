"""Whole-shard writes of activation arrays straight to their files, bytes identical to zarr's.

An activations array is sharded ``(batch, 1, tokens, hidden)`` with inner chunks
``(inner, 1, tokens, hidden)``, uncompressed (the ``bytes`` codec), its shard index at the end
(``bytes`` + ``crc32c``). A whole-shard write through zarr compares every inner chunk with the
NaN fill value (``np.array_equal(..., equal_nan=True)``: several full-size temporaries), copies
each chunk into a buffer, concatenates them and only then writes the file, all on zarr's one
event-loop thread. Here the same file is written from the batch's own memory: every inner chunk
of a sample-major batch is already contiguous, so the file is one ``writev`` of the chunks plus
the index, and the shards of one batch go out on several threads (the kernel copy releases the
GIL).

What the file holds is exactly what zarr writes for the same data (tested file by file against
zarr): inner chunks in Morton order (increasing sample, the only axis with more than one chunk);
a chunk that is all NaN (the fill value) is left out and marked empty, as zarr does unless
``write_empty_chunks``; chunks past the end of the array are empty; an inner chunk cut by the
end of the array is padded with the fill value; a shard with no chunk left is deleted, not
written. The index is ``(offset, length)`` as little-endian uint64 per chunk in C order followed
by its CRC-32C. Files are written as zarr's ``LocalStore`` writes them: to
``<name>.<uuid>.partial`` beside the target, then renamed over it, so a reader or a resumed run
never sees half a shard.

Anything else (a remote store, compression, another codec or chunking, a fill value that is
not NaN, a big-endian host) is left to zarr: :meth:`_ShardFiles.of` returns None.
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass

import numpy as np

_EMPTY = 2**64 - 1
_IOV_MAX = 512  # buffers per writev call (POSIX guarantees at least 16, Linux allows 1024)


@dataclass(frozen=True)
class _ShardFiles:
    """Writer of the whole shards of one activations array of a local store."""

    directory: str
    encode_key: object  # chunk coords -> key relative to the array's directory
    n_samples: int
    shard: int  # samples per shard
    inner: int  # samples per inner chunk
    dtype: np.dtype
    skip_empty: bool

    @classmethod
    def of(cls, arr) -> "_ShardFiles | None":
        """The direct writer of ``arr`` (a zarr array), or None when zarr must write it."""
        import zarr.storage

        store = arr.store_path.store
        if not isinstance(store, zarr.storage.LocalStore) or sys.byteorder != "little":
            return None
        meta = arr.metadata.to_dict()
        codecs = meta.get("codecs", ())
        enc = meta.get("chunk_key_encoding", {})
        if (len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed"
                or enc.get("name") != "default"
                or (enc.get("configuration") or {}).get("separator", "/") != "/"):
            return None
        conf = codecs[0].get("configuration", {})
        inner_codecs = [(c.get("name"), (c.get("configuration") or {}).get("endian", "little"))
                        for c in conf.get("codecs", ())]
        index_codecs = [(c.get("name"), (c.get("configuration") or {}).get("endian", "little"))
                        for c in conf.get("index_codecs", ())]
        if (conf.get("index_location", "end") != "end" or inner_codecs != [("bytes", "little")]
                or index_codecs != [("bytes", "little"), ("crc32c", "little")]):
            return None
        shape = tuple(arr.shape)
        shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        inner = tuple(conf["chunk_shape"])
        if (len(shape) != 4 or shard[1:] != (1, *shape[2:]) or inner[1:] != shard[1:]
                or shard[0] % inner[0]):
            return None
        dtype = np.dtype(arr.dtype)
        fill = arr.fill_value
        if dtype not in (np.dtype("float16"), np.dtype("float32"), np.dtype("float64")) \
                or fill is None or not np.isnan(fill):
            return None
        return cls(directory=os.path.join(str(store.root), arr.path),
                   encode_key=arr.metadata.encode_chunk_key, n_samples=shape[0],
                   shard=shard[0], inner=inner[0], dtype=dtype,
                   skip_empty=not arr.config.write_empty_chunks)

    def write_shard(self, k: int, layer: int, a: np.ndarray) -> None:
        """Write shard ``k`` (samples ``k*shard ...``) of ``layer`` from ``a`` (samples, tokens,
        hidden): every sample of the shard that lies inside the array, in the stored dtype."""
        s0 = k * self.shard
        n = min(self.shard, self.n_samples - s0)
        if a.shape[0] != n or a.dtype != self.dtype or a.ndim != 3:
            raise ValueError(f"shard {k} of layer {layer} needs ({n}, T, H) {self.dtype}; got "
                             f"{a.shape} {a.dtype}")
        n_chunks = self.shard // self.inner
        index = np.full((n_chunks, 2), _EMPTY, "<u8")
        bufs: list = []
        at = 0
        for c in range(n_chunks):
            lo, hi = c * self.inner, min((c + 1) * self.inner, n)
            if lo >= n:  # past the end of the array: never written
                break
            rows = [np.ascontiguousarray(a[j]) for j in range(lo, hi)]
            if hi - lo < self.inner:  # cut by the end of the array: zarr pads with the fill
                rows.append(np.full((self.inner - (hi - lo), *a.shape[1:]), np.nan, self.dtype))
            if self.skip_empty and all(_all_nan(r) for r in rows):
                continue  # equal to the fill value everywhere: zarr stores nothing
            size = sum(r.nbytes for r in rows)
            index[c] = (at, size)
            bufs.extend(memoryview(r).cast("B") for r in rows)
            at += size
        path = os.path.join(self.directory, *self.encode_key((k, layer, 0, 0)).split("/"))
        if not bufs:  # every chunk empty: zarr deletes the shard
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            return
        import google_crc32c  # zarr's own CRC-32C implementation (a zarr dependency)

        raw = index.reshape(n_chunks, 1, 1, 1, 2).tobytes()
        bufs.append(raw + np.array([google_crc32c.value(raw)], "<u4").tobytes())
        _atomic_writev(path, bufs)


def _all_nan(x: np.ndarray) -> bool:
    """True when every value is NaN (zarr's ``all_equal(nan)``); the first value decides for
    almost every real chunk, so a chunk of activations costs one element, not a pass."""
    flat = x.reshape(-1)
    return bool(flat.size == 0 or (np.isnan(flat[0]) and np.isnan(flat).all()))


def _atomic_writev(path: str, bufs: list) -> None:
    """Write ``bufs`` to ``path`` through ``<path>.<uuid>.partial`` and a rename (as zarr's
    LocalStore does: the file is either absent, the old one or the whole new one)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        try:
            _writev_all(fd, bufs)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def _writev_all(fd: int, bufs: list) -> None:
    """``os.writev`` until every byte is written (a write may be short)."""
    views = [memoryview(b).cast("B") for b in bufs if len(b)]
    while views:
        done = os.writev(fd, views[:_IOV_MAX])
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if done:
            views[0] = views[0][done:]


def wait_all(futures, *, raise_first: bool = True) -> None:
    """Wait for every future; then raise the first error among them (if asked)."""
    first = None
    for f in futures:
        e = f.exception()
        if e is not None and first is None:
            first = e
    if first is not None and raise_first:
        raise first

