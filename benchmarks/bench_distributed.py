"""Distributed extraction and object storage: throughput of ``extract`` on 1, 2 and 4 local dask
workers against one plain process, and store write / role-query throughput on an S3-compatible
object store (moto's server on 127.0.0.1 through s3fs) against the local disk.

    python benchmarks/bench_distributed.py [--samples 48] [--s3-samples 512] [--append]

Extraction runs the tiny Qwen2-VL build (random weights) over a generated ``squares-qwen2-vl``
dataset (projector + every LM layer), batch 4 = one store shard, one block per task; wall time
includes starting the cluster and loading the model in each worker (what a user waits for), and
every store is checked equal to the single-process one. The object-store rows write the same
synthetic batches through the same writer (shards of 16 samples) to ``s3://`` and to a local
directory and read the ``object`` tokens of every sample back.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def bench_extract(work: Path, n: int, workers=(1, 2, 4)) -> list[dict]:
    import torch

    from actstore.testing import assert_stores_equal
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.extract import ExtractConfig, run_extract
    from vlms.launch import run_extract_cluster

    torch.set_num_threads(1)
    data = work / "ds"
    generate(preset_config("squares-qwen2-vl", n=n), data, progress=False)
    rows = []

    def cfg(name):
        return ExtractConfig(model="tiny-qwen2-vl", data=str(data), store=str(work / name),
                             sites=("projector", "lm.resid"), batch_size=4)

    t0 = time.perf_counter()
    r = run_extract(cfg("one.zarr"), progress=False, echo=lambda *_: None)
    t = time.perf_counter() - t0
    total = r["total"]
    rows.append({"run": "one process (run_extract, 1 torch thread)", "samples": total,
                 "wall_s": t, "samples_s": total / t})
    for k in workers:
        t0 = time.perf_counter()
        r = run_extract_cluster(cfg(f"dask{k}.zarr"), f"local:{k}", progress=False,
                                echo=lambda *_: None, block_batches=1)
        t = time.perf_counter() - t0
        assert_stores_equal(work / f"dask{k}.zarr", work / "one.zarr")
        rows.append({"run": f"--scheduler local:{k} ({k} worker process{'es' if k > 1 else ''})",
                     "samples": total, "wall_s": t, "samples_s": total / t})
    return rows


def bench_s3(work: Path, n: int, T: int = 64, H: int = 256, B: int = 16) -> list[dict]:
    from moto.server import ThreadedMotoServer

    import s3fs

    from actstore import ROLE_CODES, SiteSpec, StoreWriter, open_store
    from bench_store_query import roles_for

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    opts = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    s3fs.S3FileSystem(**opts).mkdir("bench")
    rng = np.random.default_rng(0)
    role = roles_for(n, T, rng, k=12)
    base = rng.standard_normal((B, T, H)).astype(np.float16)
    prov = {"model_id": "bench", "revision": "0", "adapter": "bench", "dtype": "float16",
            "data_hash": "bench"}
    rows = []
    try:
        for name, path, so in (("local disk", str(work / "local.zarr"), None),
                               ("S3 (moto server, s3fs)", "s3://bench/store.zarr", opts)):
            w = StoreWriter.open_or_create(
                path, model="bench", provenance=prov,
                samples=pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)]}),
                sites=[SiteSpec(name="lm.resid", layers=(0,), n_tokens=T, hidden=H)],
                batch_size=B, storage_options=so)
            t0 = time.perf_counter()
            for idx in w.batches():
                a = (base[:len(idx)] + np.float16(idx[0] % 97))[:, None]
                w.write(idx, {"lm.resid": a}, {"lm.resid": {"role": role[idx]}})
            tw = time.perf_counter() - t0
            s = open_store(path, storage_options=so)
            t0 = time.perf_counter()
            x = s.select(site="lm.resid.0", role="object").values
            tq = time.perf_counter() - t0
            assert np.isfinite(x[~np.isnan(x)]).all() and x.shape[0] == n
            mb = n * T * H * 2 / 1e6
            rows.append({"backend": name, "samples": n, "write_s": tw, "write_mb_s": mb / tw,
                         "query_s": tq, "objects_per_array": -(-n // B)})
    finally:
        server.stop()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--s3-samples", type=int, default=512)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--append", action="store_true")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    load0 = os.getloadavg()[0]
    try:
        ex = bench_extract(work, a.samples, a.workers)
        s3 = bench_s3(work, a.s3_samples)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["", "## distributed extraction and object storage (bench_distributed.py)", "",
             f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()}-core CPU "
             f"({platform.machine()}), shared: load avg {load0:.1f} at start, "
             f"{os.getloadavg()[0]:.1f} at end; no GPU. `python benchmarks/bench_distributed.py "
             f"--samples {a.samples} --s3-samples {a.s3_samples}`.", "",
             "Extraction, tiny-qwen2-vl (random weights), projector + all LM layers, batch 4, "
             "wall time incl. cluster start and model load per worker; every store equal to the "
             "single-process one:", "",
             "| run | samples | wall s | samples/s |", "|---|---|---|---|"]
    for r in ex:
        lines.append(f"| {r['run']} | {r['samples']} | {r['wall_s']:.1f} | {r['samples_s']:.2f} |")
    lines += ["", "Object store vs local disk (same writer, 64 tokens x 256 hidden fp16, shards of "
              "16 samples; query = `object` tokens of every sample):", "",
              "| backend | samples | write s | write MB/s | role query s |", "|---|---|---|---|---|"]
    for r in s3:
        lines.append(f"| {r['backend']} | {r['samples']} | {r['write_s']:.1f} | "
                     f"{r['write_mb_s']:.1f} | {r['query_s']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
