"""The activation store at 100k samples: write, validate, query by role (vs a raw memmap of the same
bytes, cold and warm), and writer / reader peak memory at two store sizes.

    python benchmarks/bench_store_scale.py                     # 100k x 64 tokens x 256 hidden fp16 (3.3 GB)
    python benchmarks/bench_store_scale.py --samples 10000     # quicker
    python benchmarks/bench_store_scale.py --append            # + a section in RESULTS.md

Writer and reader each run in a child process whose peak RSS (VmHWM) is reported, at ``--samples``
and at a tenth of it: flat memory means the same peak at both sizes. The reader child opens the
store, prints its summary, and streams the role query block by block (dask chunks of ~64 MiB) — a
reader that never holds the whole selection. The role query (whole selection ``.values``) is then
timed against a raw numpy memmap of the same bytes giving the same output array, ``--rounds``
times side by side: cold = both files (memmap and store) evicted with ``posix_fadvise(DONTNEED)``
before every cold read, whichever is read (on a VM with free page reporting, evicting only the
file about to be read does not give the two reads the same memory: see ``bench_cold_query.py``),
checked with ``mincore``, then ``--settle`` seconds of pause; warm = best of ``--reps`` repeats;
wall and CPU seconds of each; plus the first query of a freshly opened store, cold, twice: with the role index the writer persisted in the store
(``open_store(path)``, what a user gets) and with it built from the cold label arrays
(``open_store(path, index=False)``, every store before the persisted index).
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

from bench_store_query import evict, resident_fraction, write_memmap  # noqa: E402

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


def _measure(fn):
    """Wall and CPU seconds (user + system of this process) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    del out
    return wall, cpu


def memmap_role_read(mm_path, role):
    """The raw baseline and the output's padded width K: a function reading the ``object``
    tokens of every sample from the memmap ``(N, T, H)`` at ``mm_path`` with one fancy index,
    into the same output as the store's query ((N, K, H) float16, fresh, NaN in padding); the
    index is built here, untimed."""
    from actstore import ROLE_CODES

    mask = role == ROLE_CODES["object"]
    K = int(mask.sum(1).max())
    pad = np.arange(K)[None] >= mask.sum(1)[:, None]
    idx = np.where(pad, 0, np.argsort(~mask, axis=1, kind="stable")[:, :K])
    rows = np.arange(len(role))[:, None]

    def raw():
        out = np.load(mm_path, mmap_mode="r")[rows, idx]
        out[pad] = np.nan
        return out
    return raw, K


def shape_args(ap: argparse.ArgumentParser) -> None:
    """The synthetic store's shape options (shared with bench_cold_query.py)."""
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--objects", type=int, default=12, help="mean object tokens per sample")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shape_args(ap)
    ap.add_argument("--reps", type=int, default=3, help="warm repeats per round")
    ap.add_argument("--rounds", type=int, default=3, help="cold + warm rounds of both reads")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds between the eviction and each cold read (both sides alike)")
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
        raw, K = memmap_role_read(mm_path, role)
        del role

        path = work / f"s{N}.zarr"
        s = open_store(path)

        def api():
            return s.select(site="lm.resid.0", role="object").values

        split = {}  # wall / CPU of opening the store and building the selection (index included)

        def fresh_with(index):
            def fn():
                c0, t0 = time.process_time(), time.perf_counter()
                x = open_store(path, index=index).select(site="lm.resid.0", role="object")
                split["sel"] = (time.perf_counter() - t0, time.process_time() - c0)
                return x.values
            return fn

        fresh = fresh_with(True)          # a new Store: the role index read from its persisted piece
        fresh_labels = fresh_with(False)  # a new Store: the role index built from the label arrays

        import warnings

        from actstore import _index

        with warnings.catch_warnings():  # the persisted index must be there and be used
            warnings.simplefilter("error", _index.IndexWarning)
            s0 = open_store(path)
            g0 = s0.group()
            taken, _ = _index.load(g0, "lm.resid", ROLE_CODES["object"], T,
                                   s0.labels()["done"].to_numpy(), s0.root.store, {})
            assert taken.all(), "the persisted role index does not cover the store"
            want = raw().tobytes()
            for f in (fresh, fresh_labels):
                assert f().tobytes() == want, "fresh store and memmap differ"
            del s0, g0, want

        ref = raw()
        got = api()  # also builds the store's role index (the memmap's idx is built above)
        assert np.array_equal(got, ref, equal_nan=True), "store and memmap disagree"
        assert got.tobytes() == ref.tobytes(), "store and memmap differ in some byte"
        del got, ref
        runs = []
        for r in range(a.rounds):
            row = {"round": r + 1, "load": os.getloadavg()[0]}
            pair = [("mm", raw, mm_path), ("api", api, path)]
            for name, fn, p in (pair if r % 2 == 0 else pair[::-1]):  # who goes first alternates
                evict(mm_path, path)  # both, whichever is read (see bench_cold_query.py)
                row[f"{name}_resident"] = resident_fraction(p)
                time.sleep(a.settle)
                row[f"{name}_cold"], row[f"{name}_cold_cpu"] = _measure(fn)
                warm = [_measure(fn) for _ in range(a.reps)]
                row[f"{name}_warm"] = min(w for w, _ in warm)
                row[f"{name}_warm_cpu"] = min(c for _, c in warm)
            fr = [("fresh", fresh), ("freshlab", fresh_labels)]
            for name, fn in (fr if (r // 2) % 2 == 0 else fr[::-1]):
                pair = [(name, fn, path), (f"{name}_mm", raw, mm_path)]
                # who goes first alternates between rounds, the same for both ways in a round
                # (the read after another one's 1 GB output costs less on this VM)
                for nm, f, p in (pair if r % 2 == 0 else pair[::-1]):
                    evict(mm_path, path)
                    row[f"{nm}_resident"] = resident_fraction(p)
                    time.sleep(a.settle)
                    row[f"{nm}_cold"], row[f"{nm}_cold_cpu"] = _measure(f)
                    if nm == name:
                        row[f"{nm}_sel"], row[f"{nm}_sel_cpu"] = split["sel"]
            runs.append(row)
            print(row, flush=True)
        evict(mm_path)
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
    def spread(key, num, den):
        v = [r[num] / r[den] for r in runs]
        return f"{np.median(v):.2f}x ({min(v):.2f}–{max(v):.2f})"

    lines += [
        "",
        f"Role query over all {N} samples (output {N}×{K}×{H} float16, freshly allocated, NaN in "
        f"padding; the memmap's fancy index gives the same bytes, checked), {a.rounds} rounds "
        f"side by side, who goes first alternating. Cold = both files (memmap and store) evicted "
        f"with `posix_fadvise(DONTNEED)` before every cold read, whichever is read, the fraction "
        f"of the read file's pages still resident checked with `mincore` (column 'resident'), "
        f"then a pause of {a.settle:g} s; warm = best of {a.reps} repeats "
        f"right after. Fresh store: a new `open_store` and its first query, with the role index "
        f"read from the piece the writer persisted, or built from the label arrays "
        f"(`index=False`), each beside a cold memmap read (who goes first alternating); in "
        f"brackets the part spent opening the store and building the selection (labels, "
        f"role index, coords) before the gather. Wall s / CPU s (user + system of the process):",
        "",
        "| round | load | memmap cold (resident) | store cold (resident) | memmap warm | store warm | "
        "fresh store, persisted index, cold (resident) | its memmap cold | "
        "fresh store, index from labels, cold (resident) | its memmap cold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['round']} | {r['load']:.1f} | {r['mm_cold']:.2f} / {r['mm_cold_cpu']:.2f} "
            f"({r['mm_resident']:.3f}) | {r['api_cold']:.2f} / {r['api_cold_cpu']:.2f} "
            f"({r['api_resident']:.3f}) | {r['mm_warm']:.2f} / {r['mm_warm_cpu']:.2f} | "
            f"{r['api_warm']:.2f} / {r['api_warm_cpu']:.2f} | {r['fresh_cold']:.2f} / "
            f"{r['fresh_cold_cpu']:.2f} ({r['fresh_resident']:.3f}) [{r['fresh_sel']:.2f} / "
            f"{r['fresh_sel_cpu']:.2f}] | {r['fresh_mm_cold']:.2f} / "
            f"{r['fresh_mm_cold_cpu']:.2f} ({r['fresh_mm_resident']:.3f}) | "
            f"{r['freshlab_cold']:.2f} / {r['freshlab_cold_cpu']:.2f} ({r['freshlab_resident']:.3f}) "
            f"[{r['freshlab_sel']:.2f} / {r['freshlab_sel_cpu']:.2f}] | "
            f"{r['freshlab_mm_cold']:.2f} / {r['freshlab_mm_cold_cpu']:.2f} "
            f"({r['freshlab_mm_resident']:.3f}) |")
    med = lambda k: float(np.median([r[k] for r in runs]))  # noqa: E731
    mm_all = [r[k] for r in runs for k in ("mm_cold_cpu", "fresh_mm_cold_cpu", "freshlab_mm_cold_cpu")]
    lines += [
        "",
        f"Medians, CPU s: memmap cold {np.median(mm_all):.2f} (all {len(mm_all)} cold memmap reads), "
        f"store cold with its index built {med('api_cold_cpu'):.2f}; fresh store with the persisted "
        f"index {med('fresh_cold_cpu'):.2f} (open + selection {med('fresh_sel_cpu'):.2f}), from "
        f"labels {med('freshlab_cold_cpu'):.2f} (open + selection {med('freshlab_sel_cpu'):.2f}).",
        "",
        "Store / memmap (the fresh store: / the memmap read beside it), median (min–max) over the "
        "rounds:",
        "",
        "| | wall | CPU |",
        "|---|---|---|",
        f"| cold | {spread('', 'api_cold', 'mm_cold')} | {spread('', 'api_cold_cpu', 'mm_cold_cpu')} |",
        f"| warm | {spread('', 'api_warm', 'mm_warm')} | {spread('', 'api_warm_cpu', 'mm_warm_cpu')} |",
        f"| cold, store freshly opened, persisted index | {spread('', 'fresh_cold', 'fresh_mm_cold')} | "
        f"{spread('', 'fresh_cold_cpu', 'fresh_mm_cold_cpu')} |",
        f"| cold, store freshly opened, index from labels | "
        f"{spread('', 'freshlab_cold', 'freshlab_mm_cold')} | "
        f"{spread('', 'freshlab_cold_cpu', 'freshlab_mm_cold_cpu')} |",
        "",
        f"(memmap file written at {N * T * H * 2 / t_mm / 1e6:.0f} MB/s.)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(here / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
