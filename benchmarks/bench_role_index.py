"""The role index of a freshly opened store: read from the index the writer persisted in the store
(the default), against building it from the token labels read straight from their chunk files
(``index=False``) and through zarr (``index=False, direct=False``), side by side.

    python benchmarks/bench_role_index.py                 # 100k samples x 64 tokens, all six labels
    python benchmarks/bench_role_index.py --samples 10000 --rounds 4

The store holds every token label array populated as extraction writes them (role, ordinal,
entity, row, col, position; one zstd chunk file per write batch of 64 samples and label: 9,378
files at 100k), the persisted role index the writer leaves at ``close()`` (one piece), and tiny
activations (hidden 8), so only the index reads are measured. Each round opens the store anew
and gets the ``object`` index once cold (the store's files evicted with
``posix_fadvise(DONTNEED)``, checked with ``mincore``) and once warm, for the three ways in
rotating order; wall and CPU seconds (user + system of the process, helper threads included).
All three indexes are checked equal (element for element) first.
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
        modes = {"persisted": {}, "labels": {"index": False},
                 "zarr": {"index": False, "direct": False}}
        import warnings

        from actstore import _index

        with warnings.catch_warnings():
            warnings.simplefilter("error", _index.IndexWarning)  # the piece must be used
            ref = {m: open_store(path, **kw) for m, kw in modes.items()}
            got = {m: s._role_index(s.group(), "lm.resid", code) for m, s in ref.items()}
        x = got["persisted"]
        for y in got.values():
            assert all(p.tobytes() == q.tobytes() for p, q in zip(x[:2], y[:2]))
            assert all(x[2][k].tobytes() == y[2][k].tobytes() for k in x[2]), "indexes differ"
        del ref, got, x, y
        names = list(modes)
        rows = []
        for r in range(a.rounds):
            for mode in names[r % 3:] + names[:r % 3]:
                def build():
                    s = open_store(path, **modes[mode])
                    s._role_index(s.group(), "lm.resid", code)
                evict(path)
                res = resident_fraction(path)
                cold = _measure(build)
                warm = _measure(build)
                rows.append(dict(round=r + 1, mode=mode, load=os.getloadavg()[0],
                                 resident=res, cold=cold, warm=warm))
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()}-core CPU "
             f"({platform.machine()}), load {rows[0]['load']:.1f}-{rows[-1]['load']:.1f}. "
             f"`python benchmarks/bench_role_index.py --samples {a.samples} --rounds {a.rounds}`: "
             f"{a.samples} samples, {n_files} files (store written in {t_write:.0f} s).", "",
             "| round | index | load | cold (resident) wall s / CPU s | warm wall s / CPU s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['mode']} | {r['load']:.1f} | "
                     f"{r['cold'][0]:.2f} / {r['cold'][1]:.2f} ({r['resident']:.3f}) | "
                     f"{r['warm'][0]:.2f} / {r['warm'][1]:.2f} |")
    lines += ["", "| index | median cold wall s / CPU s | median warm wall s / CPU s |", "|---|---|---|"]
    for m in names:
        rr = [r for r in rows if r["mode"] == m]
        med = lambda k, i: float(np.median([r[k][i] for r in rr]))  # noqa: E731
        lines.append(f"| {m} | {med('cold', 0):.2f} / {med('cold', 1):.2f} | "
                     f"{med('warm', 0):.2f} / {med('warm', 1):.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
