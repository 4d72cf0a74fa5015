"""Building the role index of a freshly opened store: token labels read straight from their chunk
files (the default) against the same reads through zarr, side by side.

    python benchmarks/bench_role_index.py                 # 100k samples x 64 tokens, all six labels
    python benchmarks/bench_role_index.py --samples 10000 --rounds 4

The store holds every token label array populated as extraction writes them (role, ordinal,
entity, row, col, position; one zstd chunk file per write batch of 64 samples and label: 9,378
files at 100k) and tiny activations (hidden 8), so only the label reads are measured. Each round
opens the store anew and builds the ``object`` index once cold (the store's files evicted with
``posix_fadvise(DONTNEED)``, checked with ``mincore``) and once warm, for ``open_store(path)``
and ``open_store(path, direct=False)`` in alternating order; wall and CPU seconds (user + system
of the process, helper threads included). Both indexes are checked equal first.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_store_query import _fsync_tree, evict, resident_fraction  # noqa: E402

from actstore import ROLE_CODES, SiteSpec, StoreWriter, open_store  # noqa: E402


def write(path, N, T=64, B=64, seed=0):
    """Labels like extraction's: 4-20 object tokens per sample with entity/ordinal, an 8x8-ish
    image grid with row/col, text tokens at the end, positions everywhere."""
    rng = np.random.default_rng(seed)
    role = np.full((N, T), ROLE_CODES["background"], np.int8)
    k = rng.integers(4, 21, N)
    for i in range(N):
        role[i, rng.choice(T - 8, k[i], replace=False)] = ROLE_CODES["object"]
    role[:, T - 8:] = ROLE_CODES["text"]
    ent = np.where(role == ROLE_CODES["object"], rng.integers(1, 4, (N, T)), 0).astype(np.int16)
    img = role != ROLE_CODES["text"]
    labels = {"role": role, "entity": ent,
              "ordinal": np.where(ent > 0, ent - 1, -1).astype(np.int8),
              "row": np.where(img, np.arange(T)[None] // 8, -1).astype(np.int16),
              "col": np.where(img, np.arange(T)[None] % 8, -1).astype(np.int16),
              "position": np.broadcast_to(np.arange(T, dtype=np.int32) + 5, (N, T)).copy()}
    w = StoreWriter.open_or_create(
        path, model="bench", provenance={"model_id": "bench/model", "revision": "0",
                                         "adapter": "bench", "dtype": "float16",
                                         "data_hash": "bench"},
        samples=pd.DataFrame({"sample_id": [f"s{i}" for i in range(N)]}),
        sites=[SiteSpec(name="lm.resid", layers=(0,), n_tokens=T, hidden=8)], batch_size=B)
    a = np.zeros((B, 1, T, 8), np.float16)
    for idx in w.batches():
        w.write(idx, {"lm.resid": a[:len(idx)]},
                {"lm.resid": {name: v[idx] for name, v in labels.items()}})
    w.close()
    _fsync_tree(path)


def _measure(fn):
    r0, t0 = os.times(), time.perf_counter()
    fn()
    w, r1 = time.perf_counter() - t0, os.times()
    return w, r1.user - r0.user + r1.system - r0.system


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=a.workdir))
    path = work / "s.zarr"
    code = ROLE_CODES["object"]
    try:
        t0 = time.perf_counter()
        write(path, a.samples)
        t_write = time.perf_counter() - t0
        n_files = sum(len(f) for _, _, f in os.walk(path))
        ref = [open_store(path, direct=d) for d in (True, False)]
        x, y = (s._role_index(s.group(), "lm.resid", code) for s in ref)
        assert all(np.array_equal(p, q) for p, q in zip(x[:2], y[:2]))
        assert all(x[2][k].tobytes() == y[2][k].tobytes() for k in x[2]), "indexes differ"
        rows = []
        for r in range(a.rounds):
            for direct in ((True, False) if r % 2 == 0 else (False, True)):
                def build():
                    s = open_store(path, direct=direct)
                    s._role_index(s.group(), "lm.resid", code)
                evict(path)
                res = resident_fraction(path)
                cold = _measure(build)
                warm = _measure(build)
                rows.append(dict(round=r + 1, direct=direct, load=os.getloadavg()[0],
                                 resident=res, cold=cold, warm=warm))
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()}-core CPU "
             f"({platform.machine()}), load {rows[0]['load']:.1f}-{rows[-1]['load']:.1f}. "
             f"`python benchmarks/bench_role_index.py --samples {a.samples} --rounds {a.rounds}`: "
             f"{a.samples} samples, {n_files} files (store written in {t_write:.0f} s).", "",
             "| round | labels read | load | cold (resident) wall s / CPU s | warm wall s / CPU s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {'direct' if r['direct'] else 'zarr'} | {r['load']:.1f} | "
                     f"{r['cold'][0]:.2f} / {r['cold'][1]:.2f} ({r['resident']:.3f}) | "
                     f"{r['warm'][0]:.2f} / {r['warm'][1]:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
