"""The cold role query at 100k samples against a raw memmap of the same bytes, with the two reads
given the same conditions: both files evicted before every cold read, and each cold read started
the same ``--settle`` seconds after the eviction (several values side by side in one run).

    python benchmarks/bench_cold_query.py --workdir /tmp/cold          # builds the store once, keeps it
    python benchmarks/bench_cold_query.py --workdir /tmp/cold --rounds 6 --settle 0 6 --append
    python benchmarks/bench_cold_query.py --workdir /tmp/cold --own   # + the old protocol beside
    python benchmarks/bench_cold_query.py --workdir /tmp/cold --processes --rounds 12 --settle 0 \
        --hot 4.5 --max-load 2.5 --json /tmp/cold/rounds.json   # many rounds, one process per read

Why the pause matters on a VM: a guest whose balloon device has free page reporting (Firecracker,
QEMU with ``free-page-reporting=on``) hands free 2 MiB blocks back to the host a few seconds after
they are freed, and the host drops them; the next first touch of such memory (zeroing a fresh
output array, copying out of page-cache pages just read into it) faults on the host, which the
guest sees as slow user and system time of its own. Evicting 3.3 GB frees 3.3 GB, and how much
of it a cold read gets back before it is reported depends on how long ago it was freed: the
single memmap file is evicted and checked in under 0.1 s, the store's 6,385 files (1,563
shards, the rest labels, ``done`` flags, index) in 0.8-1.7 s, so a protocol that evicts only the
file about to be read, and reads at once, does not give the two reads the same memory (measured:
a memmap read right after its own eviction cost 0.3-0.6 CPU-s in some runs, 3.3-4.0 after a 6 s
pause). Here both files are
evicted (and checked with ``mincore``) before every cold read, whichever is read, and every cold
read waits the same pause; ``--hot GIB`` adds an arm where GIB GiB are touched and freed right
after the eviction, so that both reads get memory the guest has not reported yet (what a machine
without page reporting gives every read); ``--own`` adds, in the same rounds, the protocol of
``bench_store_scale.py`` (evict only the file about to be read, read at once) for comparison.
``reported`` in the output is how much memory the guest reported to
the host during the pause (``/sys/module/page_reporting/parameters/reported_kib``, where the
kernel has it).

Same store shape as ``bench_store_scale.py`` (100k samples x 64 tokens x 256 hidden float16,
shards of 64 samples, ~12 ``object`` tokens per sample, only the ``role`` label; the same writer
and seed) and the same two reads: ``open_store(path).select(site="lm.resid.0", role="object")
.values`` (role index already built; and a freshly opened store's first query with its persisted
index) against ``np.load(raw, mmap_mode="r")[arange[:, None], idx]`` into the same fresh output,
NaN in the padding (checked equal byte for byte first). Rounds alternate who goes first. Warm =
best of ``--reps`` repeats right after each cold read. Wall and CPU seconds (user + system of the
process, helper threads included) of each read.

``--processes`` (many-rounds mode): every read runs in a new process of its own, started and set
up (imports; the memmap's index; the open store opened, its role index built and one query run;
for the fresh store, one query of another, tiny store of the same layout, because a process's
first ``open_store`` imports xarray, zarr, dask, ... (~640 modules), reported apart as ``first
open``) *before* the eviction, so only the timed read is cold. Three reads per round and pause, in an
order drawn from ``--seed``: the memmap; a freshly opened store's first query
(``open_store(path).select(...).values`` in a process that has never opened it); the open store's
query. CPU = ``time.process_time()`` of the reading process (user + system, all its threads) and
wall around the call, then ``--reps`` warm repeats of the same call in the same process (best
taken). Reported: per-round ratios store / memmap, their median and a bootstrap 95 % CI of the
median (10,000 resamples of the rounds, ``--seed``), for cold (fresh and open store) and warm, CPU
and wall, over the rounds whose 1-minute load average at the start of the round is below
``--max-load`` (the rule is fixed by the option before the run; all rounds are shown too). Every
read's minor / major page faults (``getrusage``) and peak RSS are reported beside its CPU.
``--steps`` also splits the fresh reader's cold read into ``open_store``, ``select`` and
``.values`` (CPU and faults of each); ``--base-tree DIR`` adds a fourth read to every round, a
fresh store's first query run by another checkout of this repository (its own
``benchmarks/bench_cold_query.py --child fresh`` and ``actstore``), so that a change to the reader
is measured before and after in the same rounds, under the same conditions::

    git archive main | tar -x -C /tmp/before      # the reader before the change
    python benchmarks/bench_cold_query.py --workdir /tmp/cold --processes --rounds 4 --settle 0 \
        --hot 4.5 --steps --base-tree /tmp/before --json /tmp/cold/after-vs-before.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_store_query import evict, resident_fraction, roles_for, write_memmap, write_store  # noqa: E402
from bench_store_scale import _measure as measure, memmap_role_read, shape_args  # noqa: E402

REPORTED = "/sys/module/page_reporting/parameters/reported_kib"


def reported_kib() -> int | None:
    """KiB of free memory the guest has reported to its host so far (None: not reported here)."""
    try:
        return int(Path(REPORTED).read_text())
    except (OSError, ValueError):
        return None


def before_cold_read(arm: str, hot_gib: float, settle: float) -> float:
    """After eviction, before a cold read: in the ``hot`` arm touch and free ``hot_gib`` GiB (the
    read then gets memory the guest has not reported to its host), then wait ``settle`` s; the
    GiB reported to the host meanwhile (NaN where not reported)."""
    if arm == "hot":
        hot = np.ones(int(hot_gib * 2**30), np.uint8)
        del hot
    k0 = reported_kib()
    time.sleep(settle)
    k1 = reported_kib()
    return (k1 - k0) / 2**20 if k0 is not None else float("nan")


def build(work: Path, N: int, T: int, H: int, B: int, K: int) -> dict:
    """The store, its role labels and the memmap in ``work``, written once (reused when its
    ``meta.json`` says they have this shape)."""
    meta = {"samples": N, "tokens": T, "hidden": H, "batch": B, "objects": K}
    mf = work / "meta.json"
    if mf.exists() and json.loads(mf.read_text()) == meta and (work / "raw.npy").exists():
        return meta
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)  # the order of draws of bench_store_scale.py's writer
    base = rng.standard_normal((B, T, H)).astype(np.float16)
    role = roles_for(N, T, rng, k=K)
    np.save(work / "role.npy", role)
    print(f"writing the store ({N} samples) ...", flush=True)
    write_store(work / "s.zarr", N=N, T=T, H=H, B=B, inner=1, role=role, base=base)
    print("writing the memmap ...", flush=True)
    write_memmap(work / "raw.npy", N=N, T=T, H=H, B=B, base=base)
    mf.write_text(json.dumps(meta))
    return meta


SITE = dict(site="lm.resid.0", role="object")


def _usage() -> tuple[int, int, float]:
    """Minor faults, major faults and CPU s (process_time) of this process now."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_minflt, ru.ru_majflt, time.process_time()


def _peak_rss_mib() -> float | None:
    """Peak resident memory of this process (``VmHWM``; Linux only). Not ``ru_maxrss``, which
    a child keeps from its parent across ``exec`` (the parent touched 4.5 GiB in ``--hot``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _child(kind: str, work: str, reps: int, check: bool, warmup: str, steps: bool = False) -> None:
    """One read in a process of its own (``--processes``): set up, print ``ready``, wait for
    ``go`` on stdin (the parent evicts meanwhile), then time the cold read and ``reps`` warm
    repeats and print one JSON line. ``steps`` (the fresh reader): also the minor faults and
    CPU of each step of its cold read (``open_store``, ``select``, ``.values``)."""
    import hashlib
    import resource

    from actstore import open_store

    work_p = Path(work)
    path, mm_path = work_p / "s.zarr", work_p / "raw.npy"
    if kind == "mm":
        fn, _ = memmap_role_read(mm_path, np.load(work_p / "role.npy"))
    elif kind == "store":
        s = open_store(path)
        s.select(**SITE).values  # role index built, the site's arrays opened once

        def fn():
            return s.select(**SITE).values
    else:
        # the first open_store of a process imports xarray, zarr, dask, ... (~640 modules):
        # done here on another, tiny store of the same layout, so that the timed
        # read is this store's first opening and query, not the process's imports
        c0 = time.process_time()
        open_store(warmup).select(**SITE).values
        first_cpu = time.process_time() - c0

        def fn():
            return open_store(path).select(**SITE).values
    step_usage = {}
    if steps and kind == "fresh":
        def cold():  # the same calls as fn, with the usage between them
            u0 = _usage()
            s = open_store(path)
            u1 = _usage()
            x = s.select(**SITE)
            u2 = _usage()
            out = x.values
            u3 = _usage()
            for name, a, b in (("open", u0, u1), ("select", u1, u2), ("values", u2, u3)):
                step_usage[name] = {"minflt": b[0] - a[0], "majflt": b[1] - a[1],
                                    "cpu": b[2] - a[2]}
            return out
    else:
        cold = fn
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, t0 = time.process_time(), time.perf_counter()
    out = cold()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    digest = hashlib.blake2b(out.tobytes(), digest_size=16).hexdigest() if check else None
    del out
    warm = [measure(fn) for _ in range(reps)]
    print(json.dumps({"cold": wall, "cold_cpu": cpu,
                      "cold_user": ru1.ru_utime - ru0.ru_utime, "cold_sys": ru1.ru_stime - ru0.ru_stime,
                      "minflt": ru1.ru_minflt - ru0.ru_minflt, "majflt": ru1.ru_majflt - ru0.ru_majflt,
                      "warm": min(w for w, _ in warm), "warm_cpu": min(c for _, c in warm),
                      "peak_rss_mib": _peak_rss_mib(),
                      "digest": digest, **({"first_cpu": first_cpu} if kind == "fresh" else {}),
                      **({"steps": step_usage} if step_usage else {})}),
          flush=True)


def boot_median(v, seed: int, n: int = 10_000) -> tuple[float, float, float]:
    """Median of ``v`` and the 2.5 / 97.5 percentiles of the medians of ``n`` bootstrap
    resamples (with replacement, ``seed`` fixed)."""
    v = np.asarray(v, float)
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, len(v), (n, len(v)))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(np.median(v)), float(lo), float(hi)


def verdict(lo: float, hi: float, goal: float = 1.5) -> str:
    return ("met" if hi < goal else "not met" if lo > goal else "not decided") + f" (CI vs {goal:g}x)"


def processes_mode(a, work: Path, path: Path, mm_path: Path, K: int) -> None:
    """``--processes``: many alternating rounds, every read in a new process (module doc)."""
    import shutil
    import subprocess
    import tempfile

    # a tiny store of the same layout, for the fresh reader's imports (see _child)
    tmp = Path(tempfile.mkdtemp(prefix="bench_cold_warmup_"))
    g = np.random.default_rng(1)
    write_store(tmp / "s.zarr", N=2 * a.batch, T=a.tokens, H=a.hidden, B=a.batch, inner=1,
                role=roles_for(2 * a.batch, a.tokens, g, k=a.objects),
                base=g.standard_normal((a.batch, a.tokens, a.hidden)).astype(np.float16))
    try:
        _rounds(a, work, path, mm_path, K, tmp / "s.zarr")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rounds(a, work: Path, path: Path, mm_path: Path, K: int, warmup: Path) -> None:
    import subprocess

    rng = np.random.default_rng(a.seed)
    arms = [(f"{x:g}", x) for x in a.settle] + ([("hot", 0.0)] if a.hot else [])
    reads = ["mm", "fresh", "store"] + (["base"] if a.base_tree else [])
    t_start, runs = dt.datetime.now(dt.UTC), []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    digests = {}
    for r in range(a.rounds):
        load_round = os.getloadavg()
        for arm, settle in arms:
            order = list(rng.permutation(reads))
            row = {"round": r + 1, "arm": arm, "load": load_round[0], "load5": load_round[1],
                   "order": "/".join(order), "time": f"{dt.datetime.now(dt.UTC):%H:%M:%S}"}
            for name in order:
                check = r == 0
                if name == "base":  # the other checkout's own benchmark and actstore, fresh read
                    cmd = [str(Path(a.base_tree) / "benchmarks" / "bench_cold_query.py"),
                           "--child", "fresh", str(work), str(a.reps), str(int(check)), str(warmup)]
                    penv = {**env, "PYTHONPATH": str(Path(a.base_tree).resolve())}
                else:
                    cmd = [str(Path(__file__).resolve()), "--child", name, str(work), str(a.reps),
                           str(int(check)), str(warmup)] + (["steps"] if a.steps else [])
                    penv = env
                p = subprocess.Popen([sys.executable, *cmd], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=penv)
                while (line := p.stdout.readline()) and line.strip() != "ready":
                    pass
                if not line:
                    raise SystemExit(f"bench_cold_query.py: the {name} reader process failed to "
                                     f"start (exit {p.wait()}); see its error above")
                evict(mm_path, path)
                row[f"{name}_resident"] = resident_fraction(mm_path, path)
                row[f"{name}_reported_gib"] = before_cold_read(arm, a.hot, settle)
                row[f"{name}_load"] = os.getloadavg()[0]
                out, _ = p.communicate("go\n")
                if p.returncode:
                    raise SystemExit(f"bench_cold_query.py: the {name} reader process exited "
                                     f"{p.returncode}; see its error above")
                res = json.loads(out.strip().splitlines()[-1])
                if (d := res.pop("digest")) is not None:
                    digests[name] = d
                row.update({f"{name}_{k}": v for k, v in res.items()})
            runs.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        if r == 0 and len(set(digests.values())) != 1:
            raise SystemExit(f"bench_cold_query.py: the store's query and the memmap read differ "
                             f"(digests {digests})")
    evict(mm_path, path)
    t_end = dt.datetime.now(dt.UTC)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "argv": sys.argv[1:], "K": K, "start": f"{t_start:%Y-%m-%d %H:%M:%S}",
                                            "end": f"{t_end:%H:%M:%S}", "rounds": runs}, indent=1))
    text = processes_report(runs, a, t_start, t_end, K)
    print(text)
    if a.append:
        with open(Path(__file__).resolve().parent / "RESULTS.md", "a") as f:
            f.write(text)


RATIOS = [("fresh/mm cold", "fresh_cold", "mm_cold"), ("store/mm cold", "store_cold", "mm_cold"),
          ("store/mm warm", "store_warm", "mm_warm"), ("fresh/mm warm", "fresh_warm", "mm_warm")]


def report_files(a) -> None:
    """``--report``: one report of the rounds of several ``--json`` files (``run`` = file)."""
    runs, spans = [], []
    for i, f in enumerate(a.report, 1):
        d = json.loads(Path(f).read_text())
        for x in d["rounds"]:
            runs.append({**x, "run": i})
        cmd = d.get("argv") or [f"--{k.replace('_', '-')} {v}" for k, v in d["args"].items()
                                 if v not in (None, False) and k not in ("report", "append")]
        spans.append(f"run {i}: {d['start']}–{d['end']} UTC, `{' '.join(map(str, cmd))}`")
    start = dt.datetime.strptime(json.loads(Path(a.report[0]).read_text())["start"], "%Y-%m-%d %H:%M:%S")
    end = dt.datetime.strptime(json.loads(Path(a.report[-1]).read_text())["end"], "%H:%M:%S")
    a.rounds = len({(x["run"], x["round"]) for x in runs})
    a.settle = [float(x) for x in dict.fromkeys(x["arm"] for x in runs) if x != "hot"]
    args0 = json.loads(Path(a.report[0]).read_text())["args"]
    a.hot, a.reps, a.samples, a.hidden = args0["hot"], args0["reps"], args0["samples"], args0["hidden"]
    a.steps, a.base_tree = args0.get("steps", False), args0.get("base_tree")
    K = json.loads(Path(a.report[0]).read_text()).get("K", "K")
    text = processes_report(runs, a, start, end, K, spans)
    print(text)
    if a.append:
        with open(Path(__file__).resolve().parent / "RESULTS.md", "a") as f:
            f.write(text)


def processes_report(runs, a, t_start, t_end, K, spans=None) -> str:
    counted = [x for x in runs if x["load"] < a.max_load]
    base = all("base_cold" in x for x in runs)
    lines = [
        "", "### many rounds, one process per read (bench_cold_query.py --processes)", "",
        f"{t_start:%Y-%m-%d %H:%M}–{t_end:%H:%M} UTC, {os.cpu_count()}-core {platform.machine()}. "
        f"`python benchmarks/bench_cold_query.py --processes --samples {a.samples} --rounds "
        f"{a.rounds} --settle {' '.join(f'{x:g}' for x in a.settle)}"
        f"{f' --hot {a.hot:g}' if a.hot else ''} --reps {a.reps} --seed {a.seed} --max-load "
        f"{a.max_load:g}{' --steps' if getattr(a, 'steps', False) else ''}"
        f"{f' --base-tree {a.base_tree}' if getattr(a, 'base_tree', None) else ''}`; output "
        f"{a.samples}×{K}×{a.hidden} float16. Rounds counted: 1-min load "
        f"at the round's start < {a.max_load:g}: "
        f"{len({(x.get('run', 1), x['round']) for x in counted})} of {a.rounds}.",
        *([""] + [f"- {x}" for x in spans] if spans else []), "", "Per round, wall s / CPU s (cold; warm = best of the repeats):", "",
        "| run.round | arm | load 1/5 min | order | memmap cold | fresh store cold | open store cold | "
        "memmap warm | fresh warm | open store warm | counted |"
        + (" fresh store cold, --base-tree |" if base else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if base else "")]
    for x in runs:
        lines.append(
            f"| {x.get('run', 1)}.{x['round']} | {x['arm']} | {x['load']:.1f} / {x['load5']:.1f} | {x['order']} | "
            + " | ".join(f"{x[f'{n}_{c}']:.2f} / {x[f'{n}_{c}_cpu']:.2f}"
                         for c in ("cold", "warm") for n in ("mm", "fresh", "store"))
            + f" | {'yes' if x['load'] < a.max_load else 'no'} |"
            + (f" {x['base_cold']:.2f} / {x['base_cold_cpu']:.2f} |" if base else ""))
    for title, rows in (("counted rounds", counted), ("all rounds", runs)):
        if not rows:
            lines += ["", f"No {title}."]
            continue
        lines += ["", f"Median of the per-round ratios [bootstrap 95 % CI of the median], {title}:",
                  "", "| arm | n | ratio | CPU | verdict (CPU) | wall | verdict (wall) |",
                  "|---|---|---|---|---|---|---|"]
        for arm in dict.fromkeys(x["arm"] for x in runs):
            sel = [x for x in rows if x["arm"] == arm]
            if not sel:
                continue
            for name, num, den in RATIOS:
                cells = []
                for suf in ("_cpu", ""):
                    m, lo, hi = boot_median([x[num + suf] / x[den + suf] for x in sel], a.seed)
                    cells += [f"{m:.2f}x [{lo:.2f}–{hi:.2f}]",
                              verdict(lo, hi) if len(sel) >= 5 else "too few rounds for a CI"]
                lines.append(f"| {arm} | {len(sel)} | {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Medians, CPU s ({title}): " + "; ".join(
            f"{arm}: " + ", ".join(f"{n} cold {np.median([x[f'{n}_cold_cpu'] for x in rows if x['arm'] == arm]):.2f}"
                                   for n in ("mm", "fresh", "store"))
            for arm in dict.fromkeys(x["arm"] for x in rows))]
        if all("fresh_first_cpu" in x for x in rows):
            lines[-1] += (f". A new process's first `open_store` + query (a tiny store, imports "
                          f"included; not in the ratios): "
                          f"{np.median([x['fresh_first_cpu'] for x in rows]):.2f} CPU-s.")
        lines += _faults_report(rows, title, a.seed)
    return "\n".join(lines) + "\n"


def _faults_report(rows, title: str, seed: int) -> list[str]:
    """Medians of CPU s and page faults of each cold read per arm, and (with ``--base-tree``) the
    fresh reader of this checkout against the other's, side by side; (with ``--steps``) the fresh
    reader's steps. Rows without those fields (older runs) are left out."""
    names = [n for n in ("mm", "fresh", "base", "store") if all(f"{n}_minflt" in x for x in rows)]
    if not names:
        return []
    label = {"mm": "memmap", "fresh": "fresh store", "base": "fresh store, --base-tree",
             "store": "open store"}
    out = ["", f"Cold reads, medians ({title}): CPU s (user + system), minor / major page faults, "
               f"peak RSS of the reading process (its whole life: setup, cold read, warm "
               f"repeats):", "",
           "| arm | n | read | CPU s | user s | system s | minor faults | major faults | peak RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(x["arm"] for x in rows):
        sel = [x for x in rows if x["arm"] == arm]
        for n in names:
            def med(k):
                v = [x[f"{n}_{k}"] for x in sel if x.get(f"{n}_{k}") is not None]
                return np.median(v) if v else float("nan")
            out.append(f"| {arm} | {len(sel)} | {label[n]} | {med('cold_cpu'):.3f} | "
                       f"{med('cold_user'):.3f} | {med('cold_sys'):.3f} | {med('minflt'):.0f} | "
                       f"{med('majflt'):.0f} | "
                       f"{'–' if np.isnan(med('peak_rss_mib')) else format(med('peak_rss_mib'), '.0f')} |")
    if "base" in names:
        out += ["", f"This checkout's fresh reader against `--base-tree`'s, per-round ratios "
                    f"(median [bootstrap 95 % CI]), {title}:", "",
                "| arm | n | fresh / memmap CPU | base / memmap CPU | fresh / base CPU | "
                "fresh / base minor faults |", "|---|---|---|---|---|---|"]
        for arm in dict.fromkeys(x["arm"] for x in rows):
            sel = [x for x in rows if x["arm"] == arm]
            cells = []
            for num, den, k in (("fresh", "mm", "cold_cpu"), ("base", "mm", "cold_cpu"),
                                ("fresh", "base", "cold_cpu"), ("fresh", "base", "minflt")):
                m, lo, hi = boot_median([x[f"{num}_{k}"] / x[f"{den}_{k}"] for x in sel], seed)
                cells.append(f"{m:.2f}x [{lo:.2f}–{hi:.2f}]")
            out.append(f"| {arm} | {len(sel)} | " + " | ".join(cells) + " |")
    if all("fresh_steps" in x for x in rows):
        out += ["", f"The fresh reader's cold read by step, medians ({title}): CPU s / minor "
                    f"faults:", "", "| arm | n | open_store | select | .values |",
                "|---|---|---|---|---|"]
        for arm in dict.fromkeys(x["arm"] for x in rows):
            sel = [x for x in rows if x["arm"] == arm]
            out.append(f"| {arm} | {len(sel)} | " + " | ".join(
                f"{np.median([x['fresh_steps'][st]['cpu'] for x in sel]):.3f} / "
                f"{np.median([x['fresh_steps'][st]['minflt'] for x in sel]):.0f}"
                for st in ("open", "select", "values")) + " |")
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, work, reps, check, warmup = argv[1:6]
        return _child(kind, work, int(reps), bool(int(check)), warmup, argv[6:7] == ["steps"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shape_args(ap)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2, help="warm repeats after each cold read")
    ap.add_argument("--settle", type=float, nargs="+", default=[0.0, 6.0],
                    help="seconds between the eviction and a cold read (each value, every round)")
    ap.add_argument("--own", action="store_true",
                    help="also the protocol of bench_store_scale.py: evict only the file about to "
                         "be read and read at once (pause '0, own file' in the tables)")
    ap.add_argument("--hot", type=float, default=0.0, metavar="GIB",
                    help="also an arm where, after the eviction, GIB GiB of memory are touched and "
                         "freed right before the read (both sides alike): the read then gets "
                         "memory not yet reported to the host, as on a machine without page "
                         "reporting ('hot' in the tables)")
    ap.add_argument("--workdir",
                    help="where the store and memmap are written once and kept (~7 GB at 100k)")
    ap.add_argument("--append", action="store_true", help="add a section to RESULTS.md")
    ap.add_argument("--processes", action="store_true",
                    help="many-rounds mode: every read in a new process, per-round ratios with "
                         "bootstrap CIs of their median (module doc)")
    ap.add_argument("--seed", type=int, default=0,
                    help="--processes: the order of the reads in each round and the bootstrap")
    ap.add_argument("--max-load", type=float, default=2.5,
                    help="--processes: count a round only if the 1-minute load average at its "
                         "start is below this")
    ap.add_argument("--json", help="--processes: also write every round's numbers to this file")
    ap.add_argument("--steps", action="store_true",
                    help="--processes: also the minor faults and CPU of each step of the fresh "
                         "reader's cold read (open_store, select, .values; 'fresh_steps' in the "
                         "JSON, a table in the report)")
    ap.add_argument("--base-tree", metavar="DIR",
                    help="--processes: a fourth read in every round, a fresh store's first query "
                         "run by another checkout DIR of this repository (its own benchmarks/"
                         "bench_cold_query.py --child and actstore, e.g. main before a change): "
                         "before and after side by side ('base' in the JSON and the report; its "
                         "first round's output checked byte-equal to the others')")
    ap.add_argument("--report", nargs="+", metavar="JSON",
                    help="--processes: no measuring; the report of the rounds in these --json files "
                         "together (runs of the same options, e.g. more rounds later on a quieter "
                         "machine), counted by --max-load")
    a = ap.parse_args(argv)
    if a.report:
        return report_files(a)
    if not a.workdir:
        ap.error("--workdir is required (where the store and the memmap are, or are written)")
    N, T, H, B = a.samples, a.tokens, a.hidden, a.batch
    work = Path(a.workdir)
    build(work, N, T, H, B, a.objects)
    path, mm_path = work / "s.zarr", work / "raw.npy"

    from actstore import open_store

    raw, K = memmap_role_read(mm_path, np.load(work / "role.npy"))
    if a.processes:
        return processes_mode(a, work, path, mm_path, K)

    s = open_store(path)

    def api():
        return s.select(site="lm.resid.0", role="object").values

    def fresh():
        return open_store(path).select(site="lm.resid.0", role="object").values

    want = raw().tobytes()
    for f in (api, fresh):
        assert f().tobytes() == want, "store and memmap differ"
    del want
    load0, t_start = os.getloadavg()[0], dt.datetime.now(dt.UTC)
    reads = [("mm", raw), ("store", api), ("fresh", fresh)]
    arms = ([("0, own file", 0.0, True)] if a.own else []) + \
        [(f"{x:g}", x, False) for x in a.settle] + ([("hot", 0.0, False)] if a.hot else [])
    runs = []
    for r in range(a.rounds):
        for arm, settle, own in arms:
            row = {"round": r + 1, "settle": arm, "load": os.getloadavg()[0]}
            for name, fn in (reads if r % 2 == 0 else reads[::-1]):
                files = ([mm_path] if name == "mm" else [path]) if own else [mm_path, path]
                evict(*files)  # both (unless --own's arm), whichever is read
                row[f"{name}_resident"] = max(resident_fraction(f) for f in files)
                row[f"{name}_reported_gib"] = before_cold_read(arm, a.hot, settle)
                row[f"{name}_cold"], row[f"{name}_cold_cpu"] = measure(fn)
                if name != "fresh":
                    warm = [measure(fn) for _ in range(a.reps)]
                    row[f"{name}_warm"] = min(w for w, _ in warm)
                    row[f"{name}_warm_cpu"] = min(c for _, c in warm)
            runs.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    evict(mm_path, path)

    def med(rows, k):
        v = [x[k] for x in rows]
        return f"{np.median(v):.2f} ({min(v):.2f}–{max(v):.2f})"

    def ratio(rows, num, den):
        v = [x[num] / x[den] for x in rows]
        return f"{np.median(v):.2f}x ({min(v):.2f}–{max(v):.2f})"

    lines = [
        "", f"## cold role query, both reads after the same eviction and pause (bench_cold_query.py)",
        "",
        f"{t_start:%Y-%m-%d %H:%M}–{dt.datetime.now(dt.UTC):%H:%M} UTC, {os.cpu_count()}-core "
        f"{platform.machine()}, load avg {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end. "
        f"`python benchmarks/bench_cold_query.py --samples {N} --rounds {a.rounds} --settle "
        f"{' '.join(f'{x:g}' for x in a.settle)}{' --own' if a.own else ''}"
        f"{f' --hot {a.hot:g}' if a.hot else ''}`: {N} samples × "
        f"{T} tokens × {H} hidden float16, "
        f"shards of {B}; output {N}×{K}×{H}.",
        "",
        "| round | pause s | load | memmap cold | store cold | fresh store cold | memmap warm | "
        "store warm | reported during the pause, GiB (mm / store / fresh) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in runs:
        lines.append(
            f"| {x['round']} | {x['settle']} | {x['load']:.1f} | {x['mm_cold']:.2f} / "
            f"{x['mm_cold_cpu']:.2f} | {x['store_cold']:.2f} / {x['store_cold_cpu']:.2f} | "
            f"{x['fresh_cold']:.2f} / {x['fresh_cold_cpu']:.2f} | {x['mm_warm']:.2f} / "
            f"{x['mm_warm_cpu']:.2f} | {x['store_warm']:.2f} / {x['store_warm_cpu']:.2f} | "
            f"{x['mm_reported_gib']:.2f} / {x['store_reported_gib']:.2f} / "
            f"{x['fresh_reported_gib']:.2f} |")
    lines += ["", "Medians (min–max) per pause, wall s / CPU s, and store / memmap of the same "
              "round and pause:", "",
              "| pause s | memmap cold CPU | store cold CPU | fresh cold CPU | store/mm cold wall | "
              "store/mm cold CPU | fresh/mm cold wall | fresh/mm cold CPU | store/mm warm wall | "
              "store/mm warm CPU |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, _, _ in arms:
        rows = [x for x in runs if x["settle"] == arm]
        lines.append(
            f"| {arm} | {med(rows, 'mm_cold_cpu')} | {med(rows, 'store_cold_cpu')} | "
            f"{med(rows, 'fresh_cold_cpu')} | {ratio(rows, 'store_cold', 'mm_cold')} | "
            f"{ratio(rows, 'store_cold_cpu', 'mm_cold_cpu')} | {ratio(rows, 'fresh_cold', 'mm_cold')} | "
            f"{ratio(rows, 'fresh_cold_cpu', 'mm_cold_cpu')} | {ratio(rows, 'store_warm', 'mm_warm')} | "
            f"{ratio(rows, 'store_warm_cpu', 'mm_warm_cpu')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(Path(__file__).resolve().parent / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
