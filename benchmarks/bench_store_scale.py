"""The activation store at 100k samples: write, validate, query by role (vs a raw memmap of the same
bytes, cold and warm), and writer / reader peak memory at two store sizes.

    python benchmarks/bench_store_scale.py                     # 100k x 64 tokens x 256 hidden fp16 (3.3 GB)
    python benchmarks/bench_store_scale.py --samples 10000     # quicker
    python benchmarks/bench_store_scale.py --append            # + a section in RESULTS.md

Writer and reader each run in a child process whose peak RSS (VmHWM) is reported, at ``--samples``
and at a tenth of it: flat memory means the same peak at both sizes. The reader child opens the
store, prints its summary, and streams the role query block by block (dask chunks of ~64 MiB) — a
reader that never holds the whole selection. The role query timing uses
``bench_store_query``'s procedure (whole selection ``.values``; cold = our files evicted with
``posix_fadvise``; warm = best of the repeats).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_store_query import evict, roles_for, timed, write_memmap, write_store  # noqa: E402

WRITER = r"""
import sys, time, numpy as np
sys.path.insert(0, sys.argv[6])
from bench_store_query import write_store, roles_for
N, T, H, B, K = (int(x) for x in sys.argv[1:6])
rng = np.random.default_rng(0)
base = rng.standard_normal((B, T, H)).astype(np.float16)
role = roles_for(N, T, rng, k=K)
np.save(sys.argv[8], role)
t = write_store(sys.argv[7], N=N, T=T, H=H, B=B, inner=1, role=role, base=base)
print(t, [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""

READER = r"""
import sys, time
import numpy as np
from actstore import open_store, validate
t0 = time.perf_counter()
validate(sys.argv[1])
t_val = time.perf_counter() - t0
s = open_store(sys.argv[1])
summ = s.summary()
x = s.select(site="lm.resid.0", role="object")
n = 0
t0 = time.perf_counter()
for blk in x.data.blocks:     # stream: one dask chunk (~64 MiB) at a time
    n += int(np.asarray(blk.compute()).shape[0])
t_stream = time.perf_counter() - t0
assert n == x.sizes["sample"]
print(t_val, t_stream, n, [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def _child(code, *args):
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return r.stdout.strip().splitlines()[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--objects", type=int, default=12, help="mean object tokens per sample")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--append", action="store_true")
    a = ap.parse_args(argv)
    N, T, H, B = a.samples, a.tokens, a.hidden, a.batch
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=a.workdir))
    here = Path(__file__).resolve().parent
    load0 = os.getloadavg()[0]
    res = {}
    try:
        for n in (N // 10, N):
            path, rp = work / f"s{n}.zarr", work / f"role{n}.npy"
            t, rss = _child(WRITER, n, T, H, B, a.objects, here, path, rp).split(" ", 1)
            res[n] = {"write_s": float(t), "writer_rss": int(rss.strip("[]")) / 1024}
            tv, ts, nq, rss = _child(READER, path).split(" ", 3)
            res[n].update(validate_s=float(tv), stream_s=float(ts),
                          reader_rss=int(rss.strip("[]")) / 1024)
            if n != N:
                shutil.rmtree(path)
        # the role query at N: API vs memmap of the same bytes, side by side
        from actstore import ROLE_CODES, open_store

        role = np.load(work / f"role{N}.npy")
        rng = np.random.default_rng(0)
        base = rng.standard_normal((B, T, H)).astype(np.float16)
        mm_path = work / "raw.npy"
        t_mm = write_memmap(mm_path, N=N, T=T, H=H, B=B, base=base)
        mask = role == ROLE_CODES["object"]
        K = int(mask.sum(1).max())
        idx = np.argsort(~mask, axis=1, kind="stable")[:, :K]
        pad = np.arange(K)[None] >= mask.sum(1)[:, None]
        idx = np.where(pad, 0, idx)

        def raw():
            mm = np.load(mm_path, mmap_mode="r")
            out = mm[np.arange(N)[:, None], idx]
            out[pad] = np.nan
            return out

        path = work / f"s{N}.zarr"
        s = open_store(path)

        def api():
            return s.select(site="lm.resid.0", role="object").values

        # alternate the two so that both see the same machine state; cold first
        ref, mm_cold, mm_warm = timed(raw, cold_paths=[mm_path], reps=a.reps)
        got, cold, warm = timed(api, cold_paths=[path], reps=a.reps)
        evict(mm_path)
        assert np.array_equal(got, ref, equal_nan=True), "store and memmap disagree"
        del got, ref
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gb = N * T * H * 2 / 1e9
    lines = [
        "", "## actstore at scale (bench_store_scale.py)", "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()}-core CPU "
        f"({platform.machine()}), shared: load avg {load0:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; no GPU. `python benchmarks/bench_store_scale.py "
        f"--samples {N} --tokens {T} --hidden {H} --batch {B}`.",
        f"One site × layer: {N} samples × {T} tokens × {H} hidden float16 = {gb:.2f} GB, shards of "
        f"{B} samples, no compression; ~{a.objects} `object` tokens per sample (padded to {K}).",
        "",
        "| samples | write s (MB/s) | writer peak RSS MiB | validate s | streamed role query s | reader peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in res.items():
        lines.append(f"| {n} | {r['write_s']:.1f} ({n * T * H * 2 / r['write_s'] / 1e6:.0f}) | "
                     f"{r['writer_rss']:.0f} | {r['validate_s']:.1f} | {r['stream_s']:.1f} | "
                     f"{r['reader_rss']:.0f} |")
    lines += [
        "",
        f"Role query over all {N} samples (output {N}×{K}×{H}), side by side:",
        "",
        "| read | cold s | warm s | cold / memmap | warm / memmap |",
        "|---|---|---|---|---|",
        f"| raw numpy memmap (N, T, H), fancy index (written at {N * T * H * 2 / t_mm / 1e6:.0f} MB/s) | "
        f"{mm_cold:.2f} | {mm_warm:.2f} | 1.00x | 1.00x |",
        f"| `open_store(...).select(site=..., role='object').values` | {cold:.2f} | {warm:.2f} | "
        f"{cold / mm_cold:.2f}x | {warm / mm_warm:.2f}x |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(here / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
