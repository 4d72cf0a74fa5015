"""Benchmark: extraction (hooks, roles, store writes) vs a bare forward, and peak memory vs samples.

For each tiny model, on the same dataset and the same batches, side by side in one run:

- ``bare``    read images, ``adapter.prepare``, ``model(**inputs, logits_to_keep=1)``;
- ``extract`` :func:`vlms.extract.run_extract` into a fresh store (same reads and forwards, plus
  hooks, token roles, label arrays and Zarr writes).

Repetitions alternate (bare, extract, bare, ...) and the median is reported. Peak memory: a fresh
process per dataset size runs the extraction and reports its max RSS, to show it is flat in the
number of samples. Results are appended to ``benchmarks/RESULTS.md`` ("vlms extraction").

Usage::

    python benchmarks/bench_extract.py [--n 16] [--reps 3] [--mem-sizes 8,32,96] [--no-append]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SITES = ("projector", "lm.resid", "vision.blocks")

MEM_CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from vlms.extract import ExtractConfig, run_extract
model, data, store, sites = sys.argv[1:5]
run_extract(ExtractConfig(model=model, data=data, store=store, sites=tuple(sites.split(",")),
                          batch_size=8), progress=False, echo=lambda s: None)
print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bare_pass(ad, ds, batch_size: int) -> float:
    """Seconds for reads + prepare + forward over the dataset, batched like extraction."""
    import torch

    from vlms.extract import choose_prompt

    stims = list(ds.stimuli)
    t = time.perf_counter()
    for s in range(0, len(stims), batch_size):
        part = stims[s:s + batch_size]
        imgs = [ds.image(x) for x in part]
        _ = [ds.mask(x) for x in part]
        prompts = [choose_prompt(x, "completion") for x in part]
        b = ad.prepare(imgs, prompts)
        with torch.no_grad():
            ad.model(**b.inputs, logits_to_keep=1)
    return time.perf_counter() - t


def extract_pass(ad, data: Path, store: Path, model: str, batch_size: int) -> float:
    from vlms.extract import ExtractConfig, run_extract

    shutil.rmtree(store, ignore_errors=True)
    cfg = ExtractConfig(model=model, data=str(data), store=str(store), sites=SITES,
                        batch_size=batch_size)
    t = time.perf_counter()
    run_extract(cfg, progress=False, echo=lambda s: None, adapter=ad)
    return time.perf_counter() - t


def setup_pass(ad, data: Path, store: Path, model: str, batch_size: int) -> float:
    """Seconds of the one-time part of extraction (read metadata, plan, create the store)."""
    from vlms.extract import ExtractConfig, run_extract

    shutil.rmtree(store, ignore_errors=True)
    cfg = ExtractConfig(model=model, data=str(data), store=str(store), sites=SITES,
                        batch_size=batch_size)
    t = time.perf_counter()
    run_extract(cfg, progress=False, echo=lambda s: None, adapter=ad, limit=0)
    return time.perf_counter() - t


def peak_memory(model: str, sizes, tmp: Path) -> dict[int, float]:
    from tests.helpers_vlms import write_squares

    out = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for n in sizes:
        d = tmp / f"mem{n}"
        if not d.exists():
            write_squares(d, n=n)
        st = tmp / f"mem{n}-{model}.zarr"
        shutil.rmtree(st, ignore_errors=True)
        r = subprocess.run([sys.executable, "-c", MEM_CHILD, model, str(d), str(st),
                            ",".join(SITES)], capture_output=True, text=True, env=env, cwd=ROOT,
                           check=True)
        out[n] = json.loads(r.stdout.strip().splitlines()[-1])["maxrss_mib"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="samples in the timing dataset")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions per model")
    ap.add_argument("--models", default="tiny-qwen2-vl,tiny-gemma-3")
    ap.add_argument("--mem-sizes", default="8,32,96", help="dataset sizes for peak memory")
    ap.add_argument("--no-append", action="store_true", help="print only, do not touch RESULTS.md")
    args = ap.parse_args(argv)

    import torch

    import vlms
    from scenegen import read_dataset
    from tests.helpers_vlms import write_squares

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    rows, mem = [], {}
    try:
        data = tmp / "ds"
        write_squares(data, n=args.n)
        ds = read_dataset(data)
        for model in args.models.split(","):
            ad = vlms.build_tiny(model)
            bare_pass(ad, ds, args.batch_size)  # warm-up (allocator, kernels)
            bare, ext, setup = [], [], []
            for _ in range(args.reps):
                bare.append(bare_pass(ad, ds, args.batch_size))
                setup.append(setup_pass(ad, data, tmp / "setup.zarr", model, args.batch_size))
                ext.append(extract_pass(ad, data, tmp / "st.zarr", model, args.batch_size))
            b, e, su = statistics.median(bare), statistics.median(ext), statistics.median(setup)
            size = sum(p.stat().st_size for p in (tmp / "st.zarr").rglob("*") if p.is_file())
            rows.append((model, b, e, e / b, su, (e - su) / b, args.n / e, size / 2**20))
            print(f"{model}: bare {b:.2f}s  extract {e:.2f}s  ratio {e / b:.3f}  setup {su:.2f}s "
                  f" steady ratio {(e - su) / b:.3f}  {args.n / e:.1f} samples/s  "
                  f"store {size / 2**20:.1f} MiB", flush=True)
            sizes = [int(x) for x in args.mem_sizes.split(",") if x]
            mem[model] = peak_memory(model, sizes, tmp)
            print(f"{model}: peak RSS by samples {mem[model]}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(rows, mem, args)
    print(text)
    if not args.no_append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)


def report(rows, mem, args) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    lines = [
        "", "## vlms extraction", "",
        f"Machine: {os.cpu_count()}-core CPU ({cpu}), shared with other jobs, 1 torch thread, "
        f"no GPU; {now}. `python benchmarks/bench_extract.py --n {args.n} --reps {args.reps}`.",
        f"Sites: {', '.join(SITES)} (all layers, vision pooled to the token grid), "
        f"batch {args.batch_size}, float16 store. Bare = image reads + prepare + forward "
        "(`logits_to_keep=1`) on the same batches; medians of alternating repetitions. "
        "Goal: ratio <= 1.15.", "",
        "Setup = the one-time part (metadata, site plan, store creation: `limit=0`); steady "
        "ratio = (extract - setup) / bare.", "",
        "| model | samples | bare (s) | extract (s) | ratio | setup (s) | steady ratio "
        "| samples/s | store (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, b, e, r, su, sr, sps, size in rows:
        lines.append(f"| {m} | {args.n} | {b:.2f} | {e:.2f} | {r:.3f} | {su:.2f} | {sr:.3f} "
                     f"| {sps:.1f} | {size:.1f} |")
    lines += ["", "Peak RSS of a fresh extraction process (MiB) by number of samples:", ""]
    sizes = sorted({n for v in mem.values() for n in v})
    lines.append("| model | " + " | ".join(str(n) for n in sizes) + " |")
    lines.append("|---" * (len(sizes) + 1) + "|")
    for m, v in mem.items():
        lines.append(f"| {m} | " + " | ".join(f"{v[n]:.0f}" for n in sizes) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
