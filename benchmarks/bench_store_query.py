"""Benchmark of the activation store: role query through the API vs a raw numpy memmap, write
throughput, and peak RSS of writing as a function of the number of samples.

Run: ``.venv/bin/python benchmarks/bench_store_query.py [--samples 2000 --tokens 256 --hidden 1024]
[--append]``. The role query reads one site × layer × role ("object", ~40 tokens per sample, a
different list per sample) over all samples: ``open_store(...).select(site=..., role="object")
.values`` against ``mm[arange[:, None], idx]`` on a memmap holding the same bytes. "cold" evicts the
store's and the memmap's pages with ``posix_fadvise(DONTNEED)`` first (only our files, not the whole
page cache); "warm" is the best of the repeats right after. ``--append`` adds a section to
``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array  # noqa: F401 - imported before timing so the first query does not pay for it
import numpy as np
import pandas as pd
import xarray  # noqa: F401

from actstore import ROLE_CODES, SiteSpec, StoreWriter, open_store

PROV = {"model_id": "bench/model", "revision": "0", "adapter": "bench", "dtype": "float16",
        "data_hash": "bench"}


def roles_for(n, T, rng, k=40):
    role = np.full((n, T), ROLE_CODES["background"], np.int8)
    for i in range(n):
        kk = int(rng.integers(k - 8, k + 9))
        role[i, rng.choice(T, kk, replace=False)] = ROLE_CODES["object"]
    return role


def batch_data(b0, B, T, H, base):
    """Distinct, cheap fp16 data for samples b0..b0+B (a fixed random block plus an offset)."""
    return (base[:B] + np.float16(b0 % 97)).astype(np.float16)


def write_store(path, *, N, T, H, B, inner, role, base):
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(N)]})
    w = StoreWriter.open_or_create(path, model="bench", provenance=PROV, samples=samples,
                                   sites=[SiteSpec(name="lm.resid", layers=(0,), n_tokens=T, hidden=H)],
                                   batch_size=B, inner_samples=inner)
    t0 = time.perf_counter()
    for idx in w.batches():
        a = batch_data(int(idx[0]), len(idx), T, H, base)[:, None]
        w.write(idx, {"lm.resid": a}, {"lm.resid": {"role": role[idx]}})
    w.close()  # as extraction does: also persists the role index (one piece)
    _fsync_tree(path)
    return time.perf_counter() - t0


def write_memmap(path, *, N, T, H, B, base):
    t0 = time.perf_counter()
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(N, T, H))
    for b0 in range(0, N, B):
        n = min(B, N - b0)
        mm[b0:b0 + n] = batch_data(b0, n, T, H, base)
    mm.flush()
    del mm
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def _files(path):
    p = Path(path)
    return [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]


def _fsync_tree(path):
    for f in _files(path):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def evict(*paths):
    for p in paths:
        for f in _files(p):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def resident_fraction(*paths) -> float:
    """Fraction of the pages of ``paths``' files that are in the page cache now (``mincore`` on
    a mapping of each file; maps nothing in and reads nothing): checks that ``evict`` worked."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    total = resident = 0
    for p in paths:
        for f in _files(p):
            size = os.path.getsize(f)
            if not size:
                continue
            with open(f, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
            try:
                view = np.frombuffer(mm, np.uint8)
                vec = np.zeros((size + page - 1) // page, np.uint8)
                if libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size),
                                ctypes.c_void_p(vec.ctypes.data)):
                    raise OSError(ctypes.get_errno(), f"mincore failed on {f}")
                del view
            finally:
                mm.close()
            total += len(vec)
            resident += int((vec & 1).sum())
    return resident / max(total, 1)


def timed(fn, *, cold_paths, reps):
    evict(*cold_paths)
    t0 = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    return out, cold, float(np.min(warm))


def query_bench(args, work, base, role):
    N, T, H, B = args.samples, args.tokens, args.hidden, args.batch
    mm_path = work / "raw.npy"
    t_mm = write_memmap(mm_path, N=N, T=T, H=H, B=B, base=base)
    mask = role == ROLE_CODES["object"]
    K = int(mask.sum(1).max())
    idx = np.argsort(~mask, axis=1, kind="stable")[:, :K]
    pad = np.arange(K)[None] >= mask.sum(1)[:, None]
    idx = np.where(pad, 0, idx)
    rows = []

    def raw():
        mm = np.load(mm_path, mmap_mode="r")
        out = mm[np.arange(N)[:, None], idx]
        out[pad] = np.nan
        return out

    ref, mm_cold, mm_warm = timed(raw, cold_paths=[mm_path], reps=args.reps)
    nbytes = N * T * H * 2
    rows.append(dict(layout="raw numpy memmap (N, T, H)", write_mb_s=nbytes / t_mm / 1e6,
                     cold=mm_cold, warm=mm_warm, ratio_cold=1.0, ratio_warm=1.0))
    for inner in args.inner:
        path = work / f"store-inner{inner}.zarr"
        t_w = write_store(path, N=N, T=T, H=H, B=B, inner=inner, role=role, base=base)
        s = open_store(path)

        def api():
            return s.select(site="lm.resid.0", role="object").values

        got, cold, warm = timed(api, cold_paths=[path], reps=args.reps)
        assert np.array_equal(got, ref, equal_nan=True), "store and memmap disagree"
        rows.append(dict(layout=f"actstore select, shard ({B},1,T,H), inner ({inner},1,T,H)",
                         write_mb_s=nbytes / t_w / 1e6, cold=cold, warm=warm,
                         ratio_cold=cold / mm_cold, ratio_warm=warm / mm_warm))
        if inner == args.inner[0]:  # the same store read through zarr + dask vindex only
            z = open_store(path, direct=False)
            got, cold, warm = timed(lambda: z.select(site="lm.resid.0", role="object").values,
                                    cold_paths=[path], reps=max(1, args.reps // 2))
            assert np.array_equal(got, ref, equal_nan=True), "store and memmap disagree"
            rows.append(dict(layout=f"  same store, direct=False (xarray isel over zarr/dask)",
                             write_mb_s=float("nan"), cold=cold, warm=warm,
                             ratio_cold=cold / mm_cold, ratio_warm=warm / mm_warm))
        shutil.rmtree(path)
    os.remove(mm_path)
    return rows, K


RSS_CHILD = r"""
import sys, tempfile, shutil, numpy as np
sys.path.insert(0, sys.argv[5])
from bench_store_query import write_store, roles_for
N, T, H, B = (int(x) for x in sys.argv[1:5])
rng = np.random.default_rng(0)
base = rng.standard_normal((B, T, H)).astype(np.float16)
role = roles_for(N, T, rng)
d = tempfile.mkdtemp(dir=sys.argv[6])
write_store(d + "/s.zarr", N=N, T=T, H=H, B=B, inner=1, role=role, base=base)
shutil.rmtree(d)
# VmHWM: peak RSS of this process image (ru_maxrss would include the parent's peak before exec)
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def rss_bench(args, work):
    out = []
    for n in args.rss_samples:
        r = subprocess.run([sys.executable, "-c", RSS_CHILD, str(n), str(args.tokens), "256",
                            str(args.batch), str(Path(__file__).parent), str(work)],
                           capture_output=True, text=True, check=True)
        out.append((n, int(r.stdout.strip().splitlines()[-1]) / 1024))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--inner", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rss-samples", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.workdir))
    try:
        rng = np.random.default_rng(0)
        base = rng.standard_normal((args.batch, args.tokens, args.hidden)).astype(np.float16)
        role = roles_for(args.samples, args.tokens, rng)
        rows, K = query_bench(args, work, base, role)
        rss = rss_bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gb = args.samples * args.tokens * args.hidden * 2 / 1e9
    load = os.getloadavg()[0]
    lines = [
        "", "## actstore", "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()}-core CPU ({platform.machine()}), "
        f"shared (load avg {load:.1f}), no GPU. `python benchmarks/bench_store_query.py "
        f"--samples {args.samples} --tokens {args.tokens} --hidden {args.hidden}`.",
        f"One site × layer: {args.samples} samples × {args.tokens} tokens × {args.hidden} hidden, "
        f"float16 = {gb:.2f} GB, written in batches of {args.batch} (= one zarr shard), no compression. "
        f"Role query: the `object` tokens of every sample (~40 per sample, padded to {K}), "
        f"output {args.samples}×{K}×{args.hidden}; cold = our files evicted with fadvise (imports done "
        f"beforehand), warm = best of {args.reps} repeats (timeit convention: the cores are shared).",
        "",
        "| layout | write MB/s (incl. fsync) | role query cold s | warm s | cold / memmap | warm / memmap |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['layout']} | {'-' if r['write_mb_s'] != r['write_mb_s'] else round(r['write_mb_s'])} | {r['cold']:.2f} | {r['warm']:.2f} | "
                     f"{r['ratio_cold']:.2f}x | {r['ratio_warm']:.2f}x |")
    lines += ["", f"Peak RSS of a writer process (tokens {args.tokens}, hidden 256, batch {args.batch}): "
              + ", ".join(f"{n} samples {m:.0f} MiB" for n, m in rss) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({"rows": rows, "rss_mib": rss}))
    if args.append:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
