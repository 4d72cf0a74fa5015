"""CPU of opening a store and building a role query's selection, cold: what a freshly opened
store's first query costs before its gather (``open_store(path).select(site, role=...)``, no
``.values``).

    python benchmarks/bench_open_select.py /tmp/cold/s.zarr --rounds 4
    python benchmarks/bench_open_select.py /tmp/cold/s.zarr --no-index   # index from the labels

Each round evicts every file of the store but its activation shards (which ``select`` does not
read: the gather happens at ``.values``) with ``posix_fadvise(DONTNEED)``, checks a sample of them
with ``mincore``, then times ``open_store(path).select(...)`` once cold and once warm right after.
Wall and CPU seconds (user + system of the process, helper threads included); medians printed
last. Page cache only: inodes and dentries stay cached, as in the other benchmarks' eviction.
Compare code versions by running this script once per checkout, alternating, at the same load
(``PYTHONPATH=<checkout>``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: another checkout's code wins

from bench_store_query import resident_fraction  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="a store (e.g. the one bench_cold_query.py writes: WORKDIR/s.zarr)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--site", default="lm.resid.0")
    ap.add_argument("--role", default="object")
    ap.add_argument("--no-index", action="store_true", help="open_store(index=False)")
    a = ap.parse_args(argv)

    import dask.array  # noqa: F401  (imports are not what is measured)
    import xarray  # noqa: F401

    from actstore import open_store

    path = Path(a.store)
    if not (path / "zarr.json").is_file():
        sys.exit(f"bench_open_select: no store at {path} (no zarr.json); give the s.zarr that "
                 f"bench_cold_query.py wrote")
    files = [q for q in path.rglob("*") if q.is_file() and f"{os.sep}acts{os.sep}c{os.sep}" not in str(q)]

    def evict():
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def query():
        return open_store(path, index=not a.no_index).select(site=a.site, role=a.role)

    query()  # first use of every code path, untimed
    rows = []
    for r in range(a.rounds):
        evict()
        res = resident_fraction(*files[::max(1, len(files) // 500)])
        out = []
        for _ in ("cold", "warm"):
            c0, t0 = time.process_time(), time.perf_counter()
            x = query()
            out += [time.perf_counter() - t0, time.process_time() - c0]
            del x
        rows.append(out)
        print(f"round {r + 1}: resident {res:.3f}  cold {out[0]:.3f} s / {out[1]:.3f} CPU-s  "
              f"warm {out[2]:.3f} s / {out[3]:.3f} CPU-s  load {os.getloadavg()[0]:.1f}", flush=True)
    m = np.median(np.array(rows), axis=0)
    print(f"median over {a.rounds} rounds: cold {m[0]:.3f} s / {m[1]:.3f} CPU-s, "
          f"warm {m[2]:.3f} s / {m[3]:.3f} CPU-s")


if __name__ == "__main__":
    main()
