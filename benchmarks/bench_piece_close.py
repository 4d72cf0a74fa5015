"""S3 requests and time of ``StoreWriter.close()`` (the writer's role-index piece) on moto's S3
server on 127.0.0.1, by kind of request.

    python benchmarks/bench_piece_close.py [--samples 512] [--writers 1]

The store of ``bench_icechunk.py`` (one site family, 64 tokens x 256 hidden fp16 per sample,
shards of 16), written by ``--writers`` writers in turn (``--shard i/n`` style, one process);
only the last writer's ``close()`` is measured: requests from moto's log, wall and CPU seconds
of this process. The ``actstore`` measured is the checkout the script sits in (as for
``bench_icechunk.py``); to compare versions, copy the script into the other checkout's
``benchmarks/`` and run both.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_icechunk import BUCKET, Moto, _batch, _data, _s3_opts, _writer  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--writers", type=int, default=1)
    a = ap.parse_args(argv)
    if a.samples < 16 or a.samples % 16 or a.writers < 1:
        print("bench_piece_close: --samples must be a multiple of 16 and --writers >= 1",
              file=sys.stderr)
        return 2
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    logging.getLogger("botocore").setLevel(logging.ERROR)
    n, T, H, B = a.samples, 64, 256, 16
    work = Path(tempfile.mkdtemp(prefix="bench-piece-close-"))
    moto = Moto(work)
    try:
        url = f"s3://{BUCKET}/p/s.zarr"
        role, base = _data(n, T, H, B)
        for i in range(a.writers):
            w = _writer(url, n, T, H, B, storage_options=_s3_opts(moto.endpoint))
            for idx in w.batches(shard=(i, a.writers)):
                w.write(idx, *_batch(idx, role, base))
            if i < a.writers - 1:
                w.close()
        mark = moto.mark()
        t0, c0 = time.perf_counter(), time.process_time()
        w.close()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        r = moto.since(mark)
    finally:
        moto.proc.terminate()
        shutil.rmtree(work, ignore_errors=True)
    import actstore

    print(f"close() of writer {a.writers - 1} of {a.writers} ({n} samples, actstore at "
          f"{Path(actstore.__file__).parent}): {wall:.2f} s wall, {cpu:.2f} CPU-s, "
          f"{r['requests']} requests: " + ", ".join(f"{k} {v}" for k, v in r["kinds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
