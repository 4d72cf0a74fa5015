"""Store write throughput at the Qwen2-VL-7B extraction width: zarr's shard writes vs the direct
shard writer, beside a bare ``np.save`` of the same bytes (the disk's ceiling).

One batch is what full-depth extraction hands the writer (issue 14's GPU benchmark): 16 images x
(projector 144 tokens + 29 ``lm.resid`` sites x 203 token slots) x 3584, float16 = 680 MB
(40.5 MiB per image), plus the token labels. Variants, run in alternating order in one process
on the same arrays, each into its own fresh store:

* ``zarr``: ``StoreWriter(direct=False)``, every shard through zarr's sharding codec (the write
  path before this change);
* ``direct-K``: the direct shard writer with K I/O threads (``direct-1``, ``direct-4``, ...);
* ``npsave``: ``np.save`` of the same per-(batch, layer) arrays, made contiguous beforehand,
  one file each (no labels, no done flags, no index), one thread: the disk's ceiling.

Each variant writes ``--batches`` batches, then ``os.sync()``: "write" is the time until the
last write returned (into the page cache), "durable" includes the sync (the disk); creating the
store (the same for every variant) is timed apart and not counted. CPU seconds
are this process's user + system time (all threads) over the variant; MB/s are stored bytes
over the durable wall time. The store is deleted after each variant.

    python benchmarks/bench_store_write.py --batches 4 --reps 2 --variants zarr,direct-1,direct-2,npsave
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actstore import SiteSpec, StoreWriter  # noqa: E402
from actstore.testing import DEFAULT_PROVENANCE, synthetic_samples, synthetic_tokens  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sys_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def make_batch(B, n_img, n_seq, layers, hidden, seed=0):
    rng = np.random.default_rng(seed)
    sites = [SiteSpec(name="projector", n_tokens=n_img, hidden=hidden, dtype="float16"),
             SiteSpec(name="lm.resid", layers=tuple(range(layers)), n_tokens=n_seq,
                      hidden=hidden, dtype="float16")]
    acts, tokens = {}, {}
    for s in sites:
        a = np.empty((B, len(s.layers), s.n_tokens, s.hidden), np.float16)
        for li in range(len(s.layers)):
            a[:, li] = rng.standard_normal((B, s.n_tokens, s.hidden), dtype=np.float32)
        acts[s.name] = a
        tokens[s.name] = synthetic_tokens(B, s, grid=int(np.sqrt(n_img)), rng=rng)
    return sites, acts, tokens


def run_store(path, sites, acts, tokens, *, n_batches, direct, threads):
    B = next(iter(acts.values())).shape[0]
    t0 = time.perf_counter()
    w = StoreWriter.open_or_create(path, model="bench", provenance=DEFAULT_PROVENANCE,
                                   samples=synthetic_samples(B * n_batches), sites=sites,
                                   params={}, batch_size=B, direct=direct, io_threads=threads)
    os.sync()
    t_open = time.perf_counter() - t0  # creation (the same for every variant) is not counted
    c0, s0, t0 = cpu_s(), sys_s(), time.perf_counter()
    for idx in w.batches():
        w.write(idx, acts, tokens)
    w.close()
    t_write = time.perf_counter() - t0
    os.sync()
    return dict(open_s=t_open, write_s=t_write, durable_s=time.perf_counter() - t0,
                cpu_s=cpu_s() - c0, sys_s=sys_s() - s0)


def run_npsave(path, parts, *, n_batches):
    """np.save of contiguous copies of every (layer) slab of a batch, one file each: the same
    bytes as the store's shard files (less their 16-entry indexes), no store around them."""
    os.makedirs(path)
    c0, s0, t0 = cpu_s(), sys_s(), time.perf_counter()
    for b in range(n_batches):
        for name, a in parts.items():
            np.save(os.path.join(path, f"{name}.{b}.npy"), a)
    t_write = time.perf_counter() - t0
    os.sync()
    return dict(open_s=0.0, write_s=t_write, durable_s=time.perf_counter() - t0,
                cpu_s=cpu_s() - c0, sys_s=sys_s() - s0)


def breakdown(a: np.ndarray, work: Path) -> dict:
    """Where zarr's time goes on one shard (``a``: samples x tokens x hidden), best of 5:
    zarr's whole-shard write, its empty-chunk test alone (``np.array_equal`` of each inner
    chunk with the NaN fill, ``equal_nan=True``, as zarr's ``all_equal`` does) and a raw file
    write of the same bytes."""
    import zarr

    def best(f, n=5):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
        return min(out)

    B = a.shape[0]
    g = zarr.open_group(work / "breakdown.zarr", mode="w", zarr_format=3)
    arr = g.create_array("x", shape=(B * 5, 1, *a.shape[1:]), dtype=a.dtype,
                         chunks=(1, 1, *a.shape[1:]), shards=(B, 1, *a.shape[1:]),
                         compressors=None, fill_value=np.nan)
    k = [0]

    def zarr_write():
        arr[B * (k[0] % 5):B * (k[0] % 5 + 1), 0] = a
        k[0] += 1

    def empty_test():
        for j in range(B):
            d, o = np.broadcast_arrays(a[j], a.dtype.type(np.nan))
            np.array_equal(d, o, equal_nan=True)

    def raw():
        with open(work / "raw.bin", "wb") as f:
            f.write(memoryview(np.ascontiguousarray(a)).cast("B"))

    out = {"shard_mb": a.nbytes / 1e6, "zarr_write_s": best(zarr_write),
           "empty_test_s": best(empty_test), "raw_write_s": best(raw)}
    shutil.rmtree(work / "breakdown.zarr")
    os.remove(work / "raw.bin")
    return out


def du(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=3, help="batches per variant")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--layers", type=int, default=29, help="lm.resid sites (29 = Qwen2-VL-7B)")
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--image-tokens", type=int, default=144)
    ap.add_argument("--seq", type=int, default=203)
    ap.add_argument("--variants", default="zarr,direct-1,direct-4,npsave",
                    help="zarr, npsave and direct-K (the direct writer with K I/O threads)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time zarr's shard write, its empty-chunk test and a raw write")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_write_"))
    work.mkdir(parents=True, exist_ok=True)
    sites, acts, tokens = make_batch(args.batch_size, args.image_tokens, args.seq, args.layers,
                                     args.hidden)
    per_batch = sum(a.nbytes for a in acts.values())
    print(f"batch: {args.batch_size} images, {per_batch / 1e6:.0f} MB of activations "
          f"({per_batch / args.batch_size / 2**20:.1f} MiB per image); {args.batches} batches per "
          f"variant; free disk {shutil.disk_usage(work).free / 2**30:.0f} GiB", flush=True)
    variants = args.variants.split(",")
    parts = ({f"{f}.{li}": np.ascontiguousarray(a[:, li]) for f, a in acts.items()
              for li in range(a.shape[1])} if "npsave" in variants else {})
    res: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "host": platform.node(), "cpus": os.cpu_count(), "args": vars(args),
                 "bytes_per_batch": per_batch, "runs": {v: [] for v in variants}}
    try:
        if args.breakdown:
            res["breakdown"] = bd = breakdown(acts["lm.resid"][:, 0], work)
            print(f"one shard ({bd['shard_mb']:.1f} MB), best of 5: zarr write "
                  f"{bd['zarr_write_s'] * 1e3:.0f} ms, of which its empty-chunk test "
                  f"{bd['empty_test_s'] * 1e3:.0f} ms; raw file write {bd['raw_write_s'] * 1e3:.0f} ms",
                  flush=True)
        for rep in range(args.reps):
            order = variants if rep % 2 == 0 else variants[::-1]
            for v in order:
                path = work / f"{v}.{rep}"
                load = os.getloadavg()[0]
                if v == "npsave":
                    r = run_npsave(path, parts, n_batches=args.batches)
                else:
                    r = run_store(path, sites, acts, tokens, n_batches=args.batches,
                                  direct=v != "zarr",
                                  threads=1 if v == "zarr" else int(v.split("-")[1]))
                r.update(bytes=du(path), load=load)
                r["mb_s"] = r["bytes"] / r["durable_s"] / 1e6
                r["write_mb_s"] = r["bytes"] / r["write_s"] / 1e6
                res["runs"][v].append(r)
                print(f"rep {rep} {v:9s} write {r['write_s']:6.2f} s  durable {r['durable_s']:6.2f} s"
                      f"  cpu {r['cpu_s']:6.2f} s (sys {r['sys_s']:5.2f})  {r['mb_s']:6.0f} MB/s durable "
                      f"({r['write_mb_s']:6.0f} to cache)  load {load:.1f}", flush=True)
                shutil.rmtree(path)
                os.sync()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    med = {v: {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
           for v, rs in res["runs"].items() if rs}
    res["median"] = med
    if "zarr" in med:
        z = med["zarr"]
        print("\nmedians (ratio = zarr / variant; > 1 is faster than zarr):")
        for v, m in med.items():
            print(f"  {v:9s} write {m['write_s']:6.2f} s  durable {m['durable_s']:6.2f} s  cpu "
                  f"{m['cpu_s']:6.2f} s  {m['mb_s']:6.0f} MB/s  wall ratio "
                  f"{z['durable_s'] / m['durable_s']:.2f} (to cache {z['write_s'] / m['write_s']:.2f})"
                  f"  cpu ratio {z['cpu_s'] / m['cpu_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
