"""Benchmark the flat generator: scenes per second, with masks, at 448 px and 896 px.

Measures two things per canvas size:

- ``render``: :meth:`FlatGenerator.unit` in memory (image + mask + records of the base and its
  twins), one process;
- ``write``: the full ``generate`` path (render + PNG encode + atomic writes + manifest) into a
  fresh directory, with 1 worker and with 2 workers.

A "scene" is one unit = base stimulus + its twins (swap, crisscross, 3 isolated: 6 images and 6
masks); images/s = 6 x scenes/s. Results are appended to ``benchmarks/RESULTS.md`` under the
"scenegen flat" heading.

Usage::

    python benchmarks/bench_scenegen_flat.py [--n 120] [--no-append]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from scenegen.config import GenerateConfig
from scenegen.generate import build_generator, generate

SIZES = {  # canvas px -> grid (Qwen2-VL-like 16x28 = 448; Gemma-3 16x56 = 896)
    448: {"num_tokens": 16, "token_px": 28, "size": 2, "spacing": 2},
    896: {"num_tokens": 16, "token_px": 56, "size": 3, "spacing": 3},
}


def config(px: int, n: int) -> GenerateConfig:
    return GenerateConfig.from_dict({"n": n, "flat": {"task": "shapes", "grid": SIZES[px]}})


def bench_render(px: int, n: int) -> float:
    gen = build_generator(config(px, n))
    gen.unit(0)  # warm caches (sprites)
    t = time.perf_counter()
    for i in range(n):
        gen.unit(i)
    return n / (time.perf_counter() - t)


def bench_write(px: int, n: int, workers: int) -> tuple[float, float]:
    """(scenes per wall second, scenes per CPU second of this process)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_flat_"))
    try:
        t, c = time.perf_counter(), time.process_time()
        generate(config(px, n), tmp / "ds", workers=workers, progress=False)
        return n / (time.perf_counter() - t), n / (time.process_time() - c)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120, help="scenes per measurement")
    ap.add_argument("--no-append", action="store_true", help="print only")
    args = ap.parse_args()
    rows = []
    generate(config(448, 2), Path(tempfile.mkdtemp(prefix="bench_flat_")) / "warm",
             progress=False)  # import pyarrow, tqdm, ... once, outside the timings
    for px in SIZES:
        r = bench_render(px, args.n)
        w1, c1 = bench_write(px, args.n, 1)
        w2, _ = bench_write(px, args.n, 2)
        rows.append((px, r, w1, c1, w2))
        print(f"{px}px: render {r:.1f} scenes/s; write 1 worker {w1:.1f} scenes/s "
              f"({c1:.1f} per CPU s), 2 workers {w2:.1f} scenes/s", flush=True)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.system()}, "
               f"load average at the end {os.getloadavg()[0]:.1f}")
    lines = [
        "",
        f"### scenegen flat — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine}. Task shapes, {args.n} scenes per cell; a scene = base + 5 twins "
        "(6 RGB PNGs + 6 mask PNGs). `render` = in memory, 1 process; `write` = full "
        "`generate` to disk (PNG encode, atomic writes, manifest). "
        "Command: `python benchmarks/bench_scenegen_flat.py`.",
        "",
        "Wall-clock numbers depend on what else runs on the shared cores; the per-CPU-second "
        "column (1 worker) does not.",
        "",
        "| canvas | render scenes/s (1 proc) | write scenes/s, 1 worker | write scenes/CPU s, "
        "1 worker | write scenes/s, 2 workers | write images/s, 2 workers |",
        "|---|---|---|---|---|---|",
    ]
    for px, r, w1, c1, w2 in rows:
        lines.append(f"| {px}² | {r:.1f} | {w1:.1f} | {c1:.1f} | {w2:.1f} | {6 * w2:.0f} |")
    text = "\n".join(lines) + "\n"
    if args.no_append:
        print(text)
        return
    path = Path(__file__).with_name("RESULTS.md")
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    if "## scenegen flat" not in existing:
        existing = existing.rstrip("\n") + "\n\n## scenegen flat\n"
        path.write_text(existing + text)
    else:  # insert right after the section's existing entries
        head, _, tail = existing.partition("## scenegen flat\n")
        nxt = tail.find("\n## ")
        body, rest = (tail, "") if nxt < 0 else (tail[:nxt + 1], tail[nxt + 1:])
        path.write_text(head + "## scenegen flat\n" + body.rstrip("\n") + "\n" + text + rest)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
