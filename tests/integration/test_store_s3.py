"""An activation store on an S3-compatible object store (moto's server on 127.0.0.1, spoken to
through s3fs): two writer processes, one killed (SIGKILL) mid-run and resumed, fill a store equal
to a local one; the writers never put the same object; a reader polling during the writes sees
only complete samples."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

from actstore import open_store  # noqa: E402
from actstore.testing import assert_stores_equal, assert_valid, make_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N, B = 24, 4  # 6 batches (= zarr shards per array), 3 per writer

# A writer process: records every object key it puts (zarr's FsspecStore.set), slows each batch so
# that the parent can kill it between/inside batches, prints the keys as JSON at the end.
WRITER = """
import json, sys, time
import zarr.storage
from actstore import StoreWriter
from actstore.testing import make_store
url, endpoint, shard, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
orig_set = zarr.storage.FsspecStore.set
async def logged_set(self, key, value, *a, **k):
    with open(log, "a") as f:
        f.write(key + "\\n")
    return await orig_set(self, key, value, *a, **k)
zarr.storage.FsspecStore.set = logged_set
orig_write = StoreWriter.write
def slow_write(self, *a, **k):
    time.sleep(float(sys.argv[5]))
    return orig_write(self, *a, **k)
StoreWriter.write = slow_write
make_store(url, n_samples=%d, batch_size=%d, planted=1.5, shard=(shard, 2), storage_options=opts)
""" % (N, B)


@pytest.fixture(scope="module")
def s3():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("stores")
    yield endpoint, opts
    server.stop()


def _done(url, opts) -> int:
    try:
        return int(open_store(url, storage_options=opts).labels()["done"].sum())
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_two_writers_one_killed_and_resumed_equal_a_local_store(s3, tmp_path):
    endpoint, opts = s3
    local = tmp_path / "local"
    truth = make_store(local, n_samples=N, batch_size=B, planted=1.5)
    url = "s3://stores/two.zarr"
    make_store(url, n_samples=N, batch_size=B, planted=1.5, stop_after=0,
               storage_options=opts)  # phase 1 from one process: an object store has no O_EXCL
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    logs = [tmp_path / f"keys{i}.txt" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, endpoint, str(i), str(logs[i]),
                               "6.0" if i == 0 else "0.05"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    seen_partial = []
    try:
        t0 = time.time()
        while time.time() - t0 < 240 and procs[0].poll() is None:
            # a reader during the writes: every sample it returns is complete and correct
            s = open_store(url, storage_options=opts)
            x = s.select(site="lm.resid", layer=2)
            idx = x["sample"].values
            seen_partial.append(len(idx))
            np.testing.assert_array_equal(x.values, truth.acts["lm.resid"][idx, 2, :x.sizes["token"]])
            done = open_store(url, storage_options=opts).labels()["done"].to_numpy()
            mine = done[(np.arange(N) // B) % 2 == 0]  # writer 0's samples
            if 0 < mine.sum() < len(mine):  # some of its shards written, some not
                break
            time.sleep(0.2)
        os.kill(procs[0].pid, signal.SIGKILL)  # writer 0 dies part-way through its shards
        procs[1].wait(timeout=240)
    finally:
        for p in procs:
            p.wait(timeout=240)
    assert procs[0].returncode == -signal.SIGKILL, "writer 0 finished before it could be killed"
    assert procs[1].returncode == 0, procs[1].stderr.read()[-2000:]
    done_before = _done(url, opts)
    assert done_before < N and any(0 < k < N for k in seen_partial)
    # resume writer 0 (same command); it writes only what is missing
    res = subprocess.run([sys.executable, "-c", WRITER, url, endpoint, "0", str(logs[2]), "0"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _done(url, opts) == N
    assert_stores_equal(url, local, storage_options=opts)
    assert_valid(url, storage_options=opts)
    # per-shard ownership: the two writers never put the same object
    keys = [set(p.read_text().split()) if p.exists() else set() for p in logs]
    w0, w1 = keys[0] | keys[2], keys[1]
    assert w0 and w1 and not (w0 & w1), sorted(w0 & w1)[:5]
    chunk_of = {k.rsplit("/c/", 1)[-1].split("/")[0] for k in w1
                if "/c/" in k and "/role_index/" not in k}
    assert chunk_of == {"1", "3", "5"}  # writer 1 owns batches 1, 3, 5 of every array
    # each writer leaves its own role index piece (written by no one else), and the reader
    # takes every done sample from them
    pieces = [{k.split("/role_index/")[1].split("/")[0] for k in w if "/role_index/" in k}
              for w in (keys[1], keys[2])]
    assert len(pieces[0]) == 1 and len(pieces[1]) == 1 and pieces[0] != pieces[1]
    from actstore import _index

    s = open_store(url, storage_options=opts)
    g = s.group()
    taken, _ = _index.load(g, "lm.resid", 1, g["lm.resid"]["role"].shape[1],
                           s.labels()["done"].to_numpy(), s.root.store, {})
    assert taken.all()
