"""Benchmark: an E4-style patching sweep (criss-cross, every residual site x {object, strip}) vs
plain forwards, and the number of forward passes vs a naive loop.

For each item of a small flat dataset, on a tiny Qwen2-VL build with ``--layers`` LM layers:

- ``sweep``  :func:`interventions.sweeps.sweep`: base run, one cached source run, rows batched
  ``--batch-size`` at a time (vision tower skipped for batched rows by reusing the base's
  projector output);
- ``plain``  the very same forwards (same shapes, same batches, same feature reuse) without any
  hook or patch: the overhead of the hook mechanism itself (goal <= 1.2x);
- ``naive``  one source forward and one patched forward per row, unbatched (what a simple loop
  does): the saving from caching sources and batching layers.

Repetitions alternate and the median is reported; results are appended to
``benchmarks/RESULTS.md`` under "interventions".

Usage::

    python benchmarks/bench_patching.py [--items 3] [--layers 8] [--batch-size 8] [--reps 3]
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _setup(n_items: int, layers: int):
    import torch

    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.registry import adapter_class

    out = Path(tempfile.mkdtemp(prefix="bench_patching_")) / "ds"
    generate(preset_config("squares-qwen2-vl", n=n_items), out, progress=False)
    ad = adapter_class("tiny-qwen2-vl").tiny(seed=0, num_hidden_layers=layers)
    ad.name = f"tiny-qwen2-vl ({layers} LM layers)"
    torch.set_num_threads(1)
    return ad, read_dataset(out)


def _jobs(ad, ds, n_items):
    from interventions.hooks import Interchange, n_resid_sites
    from interventions.layout import crisscross_map
    from interventions.stimuli import base_items, pick_prompt, prepare, twin
    from interventions.sweeps import Edit

    ic = Interchange()
    jobs = []
    for stim in base_items(ds, limit=n_items):
        prompt = pick_prompt(stim)
        p = prepare(ad, ds, stim, prompt)
        cf = prepare(ad, ds, twin(ds, stim, "crisscross"), prompt)
        rows = []
        for region in ("object", "strip"):
            b, s = crisscross_map(p.layout, cf.layout, region)
            rows += [[Edit(site=f"lm.resid.{l}", intervention=ic, tokens=b.tolist(),
                           source="cf", source_tokens=s.tolist())]
                     for l in range(n_resid_sites(ad))]
        jobs.append((p, cf, rows))
    return jobs


def run_sweep(ad, jobs, bs):
    from interventions.sweeps import ForwardCounter, SourceRun, sweep

    c = ForwardCounter()
    for p, cf, rows in jobs:
        c.add(sweep(ad, p.inputs, rows, sources={"cf": SourceRun(inputs=cf.inputs)},
                    batch_size=bs).counter)
    return c


def run_plain(ad, jobs, bs):
    """The same forwards as the sweep (shapes, batches, feature reuse), without hooks."""
    from interventions.hooks import run, tile_inputs

    n = 0
    for p, cf, rows in jobs:
        feats = run(ad, p.inputs, capture=["projector"], last_only=True).acts["projector"]
        run(ad, cf.inputs, last_only=True)
        n += 2
        for start in range(0, len(rows), bs):
            k = len(rows[start:start + bs])
            run(ad, tile_inputs(p.inputs, k), features=feats.repeat(k, 1, 1), last_only=True)
            n += 1
    return n


def run_naive(ad, jobs):
    """Per row: a source forward capturing the one site, then the patched forward."""
    from interventions.hooks import Patch, pairs, run

    n = 0
    for p, cf, rows in jobs:
        for (e,) in rows:
            src = run(ad, cf.inputs, capture=[e.site], last_only=True).acts[e.site]
            run(ad, p.inputs, last_only=True, patches=[Patch(
                site=e.site, intervention=e.intervention, index=pairs(0, e.tokens),
                source=src[0, list(e.source_tokens)])])
            n += 2
    return n


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8, help="LM layers of the tiny build")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args(argv)

    ad, ds = _setup(a.items, a.layers)
    jobs = _jobs(ad, ds, a.items)
    n_rows = sum(len(r) for _, _, r in jobs)
    run_sweep(ad, jobs, a.batch_size)  # warm-up
    t_sweep, t_plain, t_naive = [], [], []
    for _ in range(a.reps):
        dt_, counter = _time(lambda: run_sweep(ad, jobs, a.batch_size))
        t_sweep.append(dt_)
        dt_, n_plain = _time(lambda: run_plain(ad, jobs, a.batch_size))
        t_plain.append(dt_)
    for _ in range(max(1, a.reps // 2)):
        dt_, n_naive = _time(lambda: run_naive(ad, jobs))
        t_naive.append(dt_)
    ms, mp, mn = (statistics.median(t) for t in (t_sweep, t_plain, t_naive))
    assert counter.forwards == n_plain
    lines = [
        f"### interventions: patching sweep ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
        "UTC)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), 1 torch thread, "
        f"{platform.python_version()}. Model: {ad.name}, 336 px squares (12x12 tokens). "
        f"{len(jobs)} items x {n_rows // len(jobs)} rows (all {a.layers + 1} residual sites x "
        f"object/strip criss-cross), batch size {a.batch_size}, median of {a.reps}.",
        "",
        "| run | forward passes | patched rows | wall s | rows/s | vs plain |",
        "|---|---|---|---|---|---|",
        f"| plain (same forwards, no hooks) | {n_plain} | 0 | {mp:.2f} | {n_rows / mp:.1f} | "
        "1.00x |",
        f"| sweep (cached source, batched layers) | {counter.forwards} | {n_rows} | {ms:.2f} | "
        f"{n_rows / ms:.1f} | {ms / mp:.2f}x |",
        f"| naive loop (source + patched per row) | {n_naive} | {n_rows} | {mn:.2f} | "
        f"{n_rows / mn:.1f} | {mn / mp:.2f}x |",
        "",
        f"Forward passes: sweep {counter.forwards} vs naive {counter.naive_forwards} "
        f"({counter.naive_forwards / counter.forwards:.1f}x fewer); per item "
        f"2 + ceil({n_rows // len(jobs)}/{a.batch_size}) = "
        f"{2 + math.ceil(n_rows // len(jobs) / a.batch_size)}. Hook overhead (sweep / plain): "
        f"{ms / mp:.2f}x (goal <= 1.2x). Sweep speed-up over the naive loop: {mn / ms:.1f}x.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not a.no_append:
        res = ROOT / "benchmarks" / "RESULTS.md"
        have = res.read_text() if res.exists() else ""
        with open(res, "a") as f:
            if "## interventions" not in have:
                f.write("\n## interventions\n")
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
