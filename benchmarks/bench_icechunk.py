"""Plain Zarr vs icechunk on an S3-compatible object store (moto's server on 127.0.0.1): write
throughput, CPU, S3 requests and role-query time with 1 and 2 concurrent writer processes, and
the guarantees issue 14 asks of a store on object storage (no lost updates between writers, a
killed writer resumes, a reader sees only complete samples).

    python benchmarks/bench_icechunk.py [--samples 512] [--writers 1 2] [--variants ...]
        [--no-semantics] [--pause 2.0] [--append]

(icechunk may live outside the project's environment: ``PYTHONPATH=/path/to/site:$PWD``.)

The store shape is that of ``bench_distributed.py``'s object-store rows: one site family
(``lm.resid``, one layer), 64 tokens x 256 hidden fp16 per sample, shards of 16 samples (one write
batch = one shard per array), the same synthetic batches. Variants, each into its own prefix of
one bucket:

- ``zarr``: our ``StoreWriter`` through zarr's ``FsspecStore`` / s3fs (what ``extract`` does on
  ``s3://``): per-shard ownership, a batch's ``done`` chunk written after its data.
- ``icechunk, commit per batch``: the same writer, the same arrays (the layout is made by
  ``StoreWriter.open_or_create`` on an icechunk session store), every write batch one icechunk
  commit (``rebase_with=ConflictDetector()``, so concurrent writers of disjoint chunks rebase
  instead of failing), i.e. the commit takes the role of our per-batch ``done`` flag.
- ``icechunk, one commit``: icechunk's cooperative distributed-writes pattern: the coordinator
  forks one writable session per writer process (``Session.fork``, pickled to the process), each
  writes all its batches, the forks come back pickled and are merged (``Session.merge``) into one
  commit.

Every writer is its own process (``--shard i/n`` style: batches ``b % n == i``) and writes its
role-index piece at the end, as ``StoreWriter.close`` does. S3 requests are counted from the moto
server's request log, which runs as its own process (its CPU is reported separately). Afterwards
every store is compared, element for element, with the plain single-writer store
(``actstore.testing.assert_stores_equal``). The semantics rows repeat the 2-writer runs with
writer 0 pausing ``--pause`` s between a batch's data and its ``done`` flag / commit, a reader
polling the store during the writes (every sample it returns must equal the truth), writer 0
SIGKILLed in such a pause and run again.

icechunk is optional (not a dependency of spatialbind): without it the script says so and exits 2.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BUCKET = "bench"
ICE = "icechunk://"          # pseudo-URL of an icechunk session store (see _use_ice)
PROV = {"model_id": "bench", "revision": "0", "adapter": "bench", "dtype": "float16",
        "data_hash": "bench"}
_STORES: dict = {}           # pseudo-URL -> zarr store of an icechunk session


# ----------------------------------------------------------------------------- shared helpers

def _use_ice(url: str, store) -> str:
    """Make ``url`` (``icechunk://name``) resolve to ``store`` wherever actstore opens a store, so
    that the unchanged writer, reader and comparison code run on an icechunk session."""
    import actstore.schema as S

    if not getattr(S.resolve_store, "_ice", False):
        orig = S.resolve_store

        def resolve_store(path, *, mode="r", storage_options=None):
            p = str(path)
            if p.startswith(ICE):
                return _STORES[p]
            return orig(path, mode=mode, storage_options=storage_options)

        resolve_store._ice = True
        S.resolve_store = resolve_store
    _STORES[url] = store
    return url


def _s3_opts(endpoint):
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}


def _ice_storage(endpoint, prefix):
    import icechunk as ic

    return ic.s3_storage(bucket=BUCKET, prefix=prefix, region="us-east-1", endpoint_url=endpoint,
                         allow_http=True, force_path_style=True, access_key_id="testing",
                         secret_access_key="testing")


def _data(n, T, H, B):
    from bench_store_query import roles_for

    rng = np.random.default_rng(0)
    role = roles_for(n, T, rng, k=12)
    base = rng.standard_normal((B, T, H)).astype(np.float16)
    return role, base


def _batch(idx, role, base):
    """The batch bench_distributed.py writes: a fixed random block plus an offset per batch."""
    a = (base[:len(idx)] + np.float16(idx[0] % 97))[:, None]
    return {"lm.resid": a}, {"lm.resid": {"role": role[idx]}}


def _writer(url, n, T, H, B, storage_options=None, creator=None):
    from actstore import SiteSpec, StoreWriter

    return StoreWriter.open_or_create(
        url, model="bench", provenance=PROV,
        samples=pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)]}),
        sites=[SiteSpec(name="lm.resid", layers=(0,), n_tokens=T, hidden=H)],
        batch_size=B, storage_options=storage_options, creator=creator)


def _rebind(w, store):
    """Point an open StoreWriter at a new icechunk session's store (a commit ends a session;
    the next batch needs a new one). Only the zarr handles change; what the writer owns and
    wrote (for its role-index piece) is kept."""
    import zarr

    import actstore.schema as S

    root = zarr.open_group(store, mode="r+", zarr_format=3)
    w.root = root
    w.group = root[S.model_key(w.model)]
    w._done = w.group["samples"]["done"]
    w._arrays = {f: {name: w.group[f][name] for name in ("acts", *S.TOKEN_LABELS, "n_tokens")}
                 for f in w.specs}


# ----------------------------------------------------------------------------- writer process

def worker(cfg: dict) -> dict:
    """One writer process. Modes: ``zarr`` (s3:// through fsspec), ``ice-batch`` (icechunk,
    commit per batch), ``ice-fork`` (write into a pickled ForkSession, pickle it back)."""
    import icechunk as ic  # noqa: F401 - imported for every mode so all pay the same start-up

    n, T, H, B = cfg["n"], cfg["T"], cfg["H"], cfg["B"]
    i, k, mode, slow = cfg["i"], cfg["k"], cfg["mode"], cfg["slow"]
    role, base = _data(n, T, H, B)
    progress = open(cfg["progress"], "a") if cfg.get("progress") else None

    def tick(idx, what="done"):
        if progress:
            progress.write(f"{what} {idx[0] // B}\n")
            progress.flush()

    def between(idx):
        """After a batch's data are written, before it is marked done / committed: the semantics
        runs slow writer 0 down here, so that the kill lands mid-batch."""
        if slow:
            tick(idx, "data")
            time.sleep(slow)

    t0, c0 = time.perf_counter(), time.process_time()
    batches = 0
    if mode == "zarr":
        w = _writer(cfg["url"], n, T, H, B, storage_options=_s3_opts(cfg["endpoint"]),
                    creator=False)
        put_done = w._put_done
        w._put_done = lambda idx: (between(idx), put_done(idx))
        for idx in w.batches(shard=(i, k)):
            w.write(idx, *_batch(idx, role, base))
            batches += 1
            tick(idx)
        ti = time.perf_counter()
        w.close()  # writes this writer's role-index piece
        t_index = time.perf_counter() - ti
    elif mode == "ice-batch":
        import icechunk as ic

        repo = ic.Repository.open(_ice_storage(cfg["endpoint"], cfg["prefix"]))
        session = repo.writable_session("main")
        url = _use_ice(ICE + cfg["prefix"], session.store)
        w = _writer(url, n, T, H, B, creator=False)
        todo = list(w.batches(shard=(i, k)))
        for j, idx in enumerate(todo):
            if j:
                session = repo.writable_session("main")
                _rebind(w, session.store)
            w.write(idx, *_batch(idx, role, base))
            between(idx)
            session.commit(f"samples {idx[0]}..{idx[-1]}", rebase_with=ic.ConflictDetector())
            batches += 1
            tick(idx)
        ti = time.perf_counter()
        if todo:  # this writer's role-index piece, in a commit of its own (close() would write it)
            session = repo.writable_session("main")
            _rebind(w, session.store)
            if w.write_index() is not None:
                session.commit(f"role index of writer {i}/{k}", rebase_with=ic.ConflictDetector())
            w._wrote = set()
        w.close()
        t_index = time.perf_counter() - ti
    elif mode == "ice-fork":
        with open(cfg["fork_in"], "rb") as f:
            fork = pickle.load(f)
        url = _use_ice(ICE + cfg["prefix"], fork.store)
        w = _writer(url, n, T, H, B, creator=False)
        for idx in w.batches(shard=(i, k)):
            w.write(idx, *_batch(idx, role, base))
            between(idx)
            batches += 1
            tick(idx)
        ti = time.perf_counter()
        w.close()  # the role-index piece, into the fork
        t_index = time.perf_counter() - ti
        with open(cfg["fork_out"] + ".tmp", "wb") as f:
            pickle.dump(fork, f)
        os.replace(cfg["fork_out"] + ".tmp", cfg["fork_out"])
    else:
        raise SystemExit(f"bench_icechunk: unknown worker mode {mode!r}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "batches": batches, "index_s": t_index}


# ----------------------------------------------------------------------------- moto server

class Moto:
    """moto's S3 server as its own process; counts requests from its log, reports its CPU."""

    REQ = re.compile(r'"(?:\x1b\[[0-9;]*m)?(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/')

    def __init__(self, work: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log = work / "moto.log"
        self._logf = open(self.log, "wb")
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(port)], stdout=self._logf, stderr=self._logf,
                                     env=env)
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        else:
            raise SystemExit("bench_icechunk: moto server did not start")
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
        self.s3.create_bucket(Bucket=BUCKET)

    def mark(self):
        self._logf.flush()
        stat = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return self.log.stat().st_size, cpu

    def since(self, mark) -> dict:
        time.sleep(0.3)  # let the server log the last requests
        off, cpu0 = mark
        with open(self.log, "rb") as f:
            f.seek(off)
            text = f.read().decode("utf-8", "replace")
        reqs = self.REQ.findall(text)
        count = {"requests": len(reqs), "put": sum(m == "PUT" for m, _ in reqs),
                 "get": sum(m == "GET" for m, _ in reqs),
                 "other": sum(m not in ("PUT", "GET") for m, _ in reqs)}
        kinds: dict = {}
        for m, path in reqs:
            kind = f"{m} {self.kind(path)}"
            kinds[kind] = kinds.get(kind, 0) + 1
        count["kinds"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
        count["server_cpu_s"] = self.mark()[1] - cpu0
        return count

    @staticmethod
    def kind(path: str) -> str:
        """What a request touched: zarr metadata, a chunk/shard, icechunk's own objects, a list."""
        key, _, query = path.partition("?")
        if "list-type" in query or "prefix=" in query or key.rstrip("/").count("/") <= 1:
            return "list/bucket"
        if key.endswith("zarr.json"):
            return "zarr.json"
        for part in ("chunks", "manifests", "snapshots", "transactions", "refs", "config"):
            if f"/{part}/" in key or key.endswith(f"/{part}.yaml"):
                return f"icechunk {part}"
        if "/c/" in key or key.endswith("/c"):
            return "zarr chunk"
        return "other"

    def objects(self, prefix) -> tuple[int, int, int]:
        """Objects under ``prefix``: count, bytes, and bytes of icechunk manifests."""
        n = size = manifests = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                     Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                n += 1
                size += o["Size"]
                if "/manifests/" in o["Key"]:
                    manifests += o["Size"]
        return n, size, manifests

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._logf.close()


def conditional_writes(moto: Moto) -> dict:
    """Does the server enforce the conditional PUTs icechunk's commits rely on?"""
    import botocore.exceptions

    out = {}
    key = "probe/conditional"
    moto.s3.put_object(Bucket=BUCKET, Key=key, Body=b"1", IfNoneMatch="*")
    for name, kw in (("If-None-Match: *", {"IfNoneMatch": "*"}),
                     ("If-Match: stale etag", {"IfMatch": '"0123456789abcdef"'})):
        try:
            moto.s3.put_object(Bucket=BUCKET, Key=key, Body=b"2", **kw)
            out[name] = "ignored (overwrote)"
        except botocore.exceptions.ClientError as e:
            out[name] = f"enforced ({e.response['Error']['Code']})"
    return out


def stale_commit_refused(moto: Moto, prefix: str) -> str:
    """Two sessions from the same snapshot, both commit without rebase: the second must fail."""
    import icechunk as ic
    import zarr

    repo = ic.Repository.create(_ice_storage(moto.endpoint, prefix))
    s = repo.writable_session("main")
    zarr.open_group(s.store, mode="w").create_array("x", shape=(4,), chunks=(2,), dtype="i4",
                                                    fill_value=0)
    s.commit("init")
    a, b = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(a.store, path="x")[:2] = 1
    zarr.open_array(b.store, path="x")[2:] = 2
    a.commit("a")
    try:
        b.commit("b")
    except ic.ConflictError:
        return "ConflictError (no lost update)"
    return "committed over the other writer (LOST UPDATE)"


# ----------------------------------------------------------------------------- one run

class Run:
    """One store on the server, written by ``k`` writer processes in one of three modes."""

    def __init__(self, bench, variant: str, k: int, tag: str):
        self.b, self.variant, self.k = bench, variant, k
        self.prefix = f"{variant}-{k}-{tag}"
        self.mode = {"zarr": "zarr", "ice-batch": "ice-batch", "ice-end": "ice-fork"}[variant]
        b = bench
        if variant == "zarr":
            self.url = f"s3://{BUCKET}/{self.prefix}"
            _writer(self.url, b.n, b.T, b.H, b.B, storage_options=b.opts).close()  # phase 1
        else:
            import icechunk as ic

            self.repo = ic.Repository.create(_ice_storage(b.moto.endpoint, self.prefix))
            s = self.repo.writable_session("main")
            _use_ice(ICE + self.prefix, s.store)
            _writer(ICE + self.prefix, b.n, b.T, b.H, b.B).close()  # phase 1: the same layout
            s.commit("create the store")
            self.url = ICE + self.prefix
        self.coordinator = None

    def reader(self):
        """A fresh reader of what is committed now."""
        from actstore import open_store

        if self.variant == "zarr":
            return open_store(self.url, storage_options=self.b.opts)
        _use_ice(self.url, self.repo.readonly_session(branch="main").store)
        return open_store(self.url)

    def spawn(self, i, slow=0.0):
        b = self.b
        cfg = {"mode": self.mode, "i": i, "k": self.k, "n": b.n, "T": b.T, "H": b.H, "B": b.B,
               "slow": slow, "endpoint": b.moto.endpoint, "url": self.url, "prefix": self.prefix,
               "progress": str(b.work / f"{self.prefix}.{i}.progress")}
        if self.mode == "ice-fork":
            if self.coordinator is None:
                self.coordinator = self.repo.writable_session("main")
            cfg["fork_in"] = str(b.work / f"{self.prefix}.{i}.fork")
            cfg["fork_out"] = str(b.work / f"{self.prefix}.{i}.forkout")
            with open(cfg["fork_in"], "wb") as f:  # a ForkSession pickles (with its storage)
                pickle.dump(self.coordinator.fork(), f)
        return subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(cfg)],
                                env=b.env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def finish(self, procs) -> list[dict]:
        out = []
        for p in procs:
            so, se = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise SystemExit(f"bench_icechunk: writer of {self.prefix} failed "
                                 f"(exit {p.returncode}):\n{se[-3000:]}")
            out.append(json.loads(so.strip().splitlines()[-1]))
        return out

    def merge_and_commit(self):
        """ice-end: merge the writers' forks into the coordinator's session, one commit."""
        forks = []
        for i in range(self.k):
            with open(self.b.work / f"{self.prefix}.{i}.forkout", "rb") as f:
                forks.append(pickle.load(f))
        self.coordinator.merge(*forks)
        self.coordinator.commit(f"{self.k} writers, one commit")
        self.coordinator = None


# ----------------------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, work: Path, n: int, T=64, H=256, B=16):
        self.work, self.n, self.T, self.H, self.B = work, n, T, H, B
        self.moto = Moto(work)
        self.opts = _s3_opts(self.moto.endpoint)
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]),
            OMP_NUM_THREADS="1", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        self.role, self.base = _data(n, T, H, B)
        self.truth = np.concatenate([_batch(np.arange(s, min(s + B, n)), self.role,
                                            self.base)[0]["lm.resid"][:, 0]
                                     for s in range(0, n, B)])
        self.reference = None  # URL of the plain single-writer store

    def check_against_truth(self, run) -> None:
        """Every sample done, every activation and label equal to what was written."""
        s = run.reader()
        done = s.labels()["done"].to_numpy()
        assert done.all(), f"{run.prefix}: {int((~done).sum())} of {self.n} samples missing"
        x = s.select(site="lm.resid", layer=0).values
        np.testing.assert_array_equal(x, self.truth[:, :x.shape[1]])

    def timed(self, variant, k) -> dict:
        from actstore.testing import assert_stores_equal

        run = Run(self, variant, k, "t")
        m = self.moto.mark()
        t0 = time.perf_counter()
        res = run.finish([run.spawn(i) for i in range(k)])
        tm = 0.0
        if variant == "ice-end":
            c0, tm0 = time.process_time(), time.perf_counter()
            run.merge_and_commit()
            tm = time.perf_counter() - tm0
            res.append({"wall_s": 0.0, "cpu_s": time.process_time() - c0, "batches": 0,
                        "index_s": 0.0})
        e2e = time.perf_counter() - t0
        req = self.moto.since(m)
        objs, size, manifests = self.moto.objects(run.prefix)
        self.check_against_truth(run)
        if self.reference is None:
            self.reference = run.url
        else:
            assert_stores_equal(run.url, self.reference, storage_options=self.opts)
        s = run.reader()
        s.select(site="lm.resid.0", role="object")  # the role index (built once per store)
        t0 = time.perf_counter()
        q = s.select(site="lm.resid.0", role="object").values
        tq = time.perf_counter() - t0
        s2 = run.reader()
        t0 = time.perf_counter()
        q2 = s2.select(site="lm.resid.0", role="object").values  # incl. building the role index
        tq_open = time.perf_counter() - t0
        np.testing.assert_array_equal(q, q2)
        wall = max(r["wall_s"] for r in res) + tm
        mb = self.n * self.T * self.H * 2 / 1e6
        return {"variant": variant, "k": k, "write_s": wall, "e2e_s": e2e, "merge_s": tm,
                "index_s": max(r["index_s"] for r in res),
                "cpu_s": sum(r["cpu_s"] for r in res), "mb_s": mb / wall,
                "query_s": tq, "query_open_s": tq_open, "objects": objs, "mib": size / 2**20,
                "manifest_kib": manifests / 2**10,
                "commits": self._commits(run), **req}

    @staticmethod
    def _commits(run):
        if run.variant == "zarr":
            return None
        # the writers' commits: minus the repository's initial snapshot and the creation commit
        return sum(1 for _ in run.repo.ancestry(branch="main")) - 2

    def semantics(self, variant, slow=2.0) -> dict:
        """2 writers; writer 0 pauses ``slow`` s between writing a batch's data and marking it
        done (zarr) / committing it (icechunk); a reader polls the store all along; writer 0 is
        SIGKILLed in that pause of its ``kill_after + 1``-th batch (data written, not done) and
        run again; the store must then equal the single-writer one."""
        from actstore.testing import assert_stores_equal

        run = Run(self, variant, 2, "s")
        kill_after = max(1, min(3, self.n // self.B // 2 // 3))
        progress = self.work / f"{run.prefix}.0.progress"

        def lines(what):
            return sum(1 for ln in progress.read_text().splitlines()
                       if ln.startswith(what)) if progress.exists() else 0

        procs = [run.spawn(0, slow=slow), run.spawn(1)]

        def killer():  # in writer 0's pause of batch kill_after + 1: data written, not done
            t0 = time.time()
            while time.time() - t0 < 900 and procs[0].poll() is None:
                if lines("data") > kill_after:
                    os.kill(procs[0].pid, signal.SIGKILL)
                    return
                time.sleep(0.01)

        import threading

        kt = threading.Thread(target=killer, daemon=True)
        kt.start()
        polls, seen, wrong = 0, set(), 0
        while procs[0].poll() is None:
            s = run.reader()  # what a reader sees during the writes
            x = s.select(site="lm.resid", layer=0)
            idx = x["sample"].values
            if not np.array_equal(x.values, self.truth[idx][:, :x.sizes["token"]]):
                wrong += 1
            polls += 1
            seen.add(len(idx))
            time.sleep(0.05)
        kt.join()
        procs[0].wait()
        assert procs[0].returncode == -signal.SIGKILL, \
            f"{run.prefix}: writer 0 ended (exit {procs[0].returncode}) before it was killed"
        run.finish(procs[1:])
        before = lines("done")
        s = run.reader()
        visible_after_kill = int(s.labels()["done"].sum())
        x = s.select(site="lm.resid", layer=0)  # after the kill, too: only complete samples
        if not np.array_equal(x.values, self.truth[x["sample"].values][:, :x.sizes["token"]]):
            wrong += 1
        # run writer 0 again (ice-end: from a new fork; the killed one's fork is lost)
        rerun = run.finish([run.spawn(0)])
        if variant == "ice-end":
            forks = []
            for i in (0, 1):
                with open(self.work / f"{run.prefix}.{i}.forkout", "rb") as f:
                    forks.append(pickle.load(f))
            run.coordinator.merge(*forks)
            run.coordinator.commit("2 writers (writer 0 run again), one commit")
        self.check_against_truth(run)
        assert_stores_equal(run.url, self.reference, storage_options=self.opts)
        return {"variant": variant, "polls": polls, "wrong_reads": wrong,
                "seen": sorted(seen), "kill_after": kill_after, "batches_before_kill": before,
                "visible_after_kill": visible_after_kill, "rerun_batches": rerun[0]["batches"],
                "equal": True}


VARIANTS = {"zarr": "plain Zarr (StoreWriter, s3fs)",
            "ice-batch": "icechunk, commit per batch",
            "ice-end": "icechunk, one commit (forks merged)"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--no-semantics", action="store_true", help="timing rows only")
    ap.add_argument("--pause", type=float, default=2.0,
                    help="semantics runs: writer 0's pause between a batch's data and its done "
                         "flag / commit (s)")
    ap.add_argument("--append", action="store_true", help="append the tables to RESULTS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        import icechunk
    except ImportError:
        print("bench_icechunk: icechunk is not installed (it is optional, not a spatialbind "
              "dependency); install it (e.g. `pip install icechunk`) or put it on PYTHONPATH",
              file=sys.stderr)
        return 2
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    if a.samples < 64 or a.samples % 16:
        print(f"bench_icechunk: --samples must be a multiple of 16 and >= 64 (got {a.samples})",
              file=sys.stderr)
        return 2
    import logging

    import moto
    import zarr

    logging.getLogger("botocore").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    work = Path(tempfile.mkdtemp(prefix="bench-ice-"))
    load0 = os.getloadavg()
    c0 = os.times()
    t_start = time.time()
    bench = Bench(work, a.samples)
    rows, sem = [], []
    try:
        cond = conditional_writes(bench.moto)
        stale = stale_commit_refused(bench.moto, "probe-stale")
        for k in a.writers:
            for v in a.variants:
                r = bench.timed(v, k)
                rows.append(r)
                print(f"{v} x{k}: write {r['write_s']:.2f} s, cpu {r['cpu_s']:.2f} s, "
                      f"{r['requests']} requests {r['kinds']}", file=sys.stderr, flush=True)
        if not a.no_semantics:
            for v in a.variants:
                sem.append(bench.semantics(v, slow=a.pause))
                print(f"semantics {v}: {sem[-1]}", file=sys.stderr, flush=True)
    finally:
        bench.moto.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    c1 = os.times()
    mb = a.samples * 64 * 256 * 2 / 1e6
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    cpu_all = (c1.user + c1.system + c1.children_user + c1.children_system
               - c0.user - c0.system - c0.children_user - c0.children_system)
    lines = ["", "## plain Zarr vs icechunk on an S3-compatible server (bench_icechunk.py)", "",
             f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()}-core CPU "
             f"({platform.machine()}), shared: load avg {load0[0]:.1f} at start, "
             f"{os.getloadavg()[0]:.1f} at end; no GPU. `nice -n 10 python "
             f"benchmarks/bench_icechunk.py {cmd}` ({time.time() - t_start:.0f} s wall, "
             f"{cpu_all:.0f} CPU-s in all, moto's server and the writers included). "
             f"icechunk {icechunk.__version__}, zarr {zarr.__version__}, moto "
             f"{moto.__version__} (server mode, its own process).", "",
             f"moto's conditional PUTs: {', '.join(f'{k} {v}' for k, v in cond.items())}; "
             f"a stale icechunk commit (default settings, no rebase): {stale}. No unsafe "
             f"setting (`unsafe_use_conditional_update/create=False`) was needed.", "",
             f"Store: {a.samples} samples x 64 tokens x 256 hidden fp16 ({mb:.1f} MB of "
             f"activations), shards of 16 samples. write s = slowest writer's write loop "
             f"(after start-up and opening the store) + the coordinator's merge and commit for "
             f"one-commit; end-to-end includes starting the writer processes. writer CPU s = sum "
             f"over writer processes (+ coordinator merge/commit); server CPU s = moto's process. "
             f"Requests = HTTP requests moto logged during the run (all processes). Query = "
             f"`select(site='lm.resid.0', role='object').values` on an open store (role index "
             f"built), and on a freshly opened one. Every store equals the first one of the table "
             f"element for element (`assert_stores_equal`). commits (attempts): the writers' "
             f"icechunk commits on the branch (snapshot PUTs: a commit that "
             f"lost the race to another writer is rebased and tried again); manifests KiB: "
             f"icechunk's chunk manifests as stored.", "",
             "| store | writers | write s | of which index piece s | end-to-end s | write MB/s "
             "| writer CPU s | server CPU s | requests (PUT / GET / other) | objects (MiB) | "
             "commits (attempts) | manifests KiB | query s | query, fresh open s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {VARIANTS[r['variant']]} | {r['k']} | {r['write_s']:.2f} | {r['index_s']:.2f} | "
            f"{r['e2e_s']:.1f} | "
            f"{r['mb_s']:.1f} | {r['cpu_s']:.2f} | {r['server_cpu_s']:.1f} | {r['requests']} "
            f"({r['put']} / {r['get']} / {r['other']}) | {r['objects']} ({r['mib']:.1f}) | "
            f"{'-' if r['commits'] is None else r['commits']}"
            f"{'' if r['commits'] is None else ' (%d)' % r['kinds'].get('PUT icechunk snapshots', 0)}"
            f" | {'-' if r['commits'] is None else '%.0f' % r['manifest_kib']} | {r['query_s']:.2f} | "
            f"{r['query_open_s']:.2f} |")
    lines += ["", "Requests by kind (method, object), all writers of a run:", "",
              "| store | writers | requests by kind |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {VARIANTS[r['variant']]} | {r['k']} | "
                     + ", ".join(f"{k} {v}" for k, v in r["kinds"].items()) + " |")
    if sem:
        lines += ["", f"Guarantees, 2 writers: writer 0 pauses {a.pause:g} s between writing a batch's "
                  f"data and marking it done (zarr) / committing it (icechunk), and is SIGKILLed "
                  f"in that pause of its batch {sem[0]['kill_after'] + 1} (data written, not "
                  f"done), then run again; a reader polls the store during the writes and after "
                  f"the kill and compares every sample it returns with the truth:", "",
                  "| store | reader polls | wrong reads | samples the reader saw | "
                  "done after the kill | batches writer 0 wrote before / after the kill | "
                  "resumed store equals single-writer store |", "|---|---|---|---|---|---|---|"]
        for s in sem:
            seen = s["seen"]
            lines.append(f"| {VARIANTS[s['variant']]} | {s['polls']} | {s['wrong_reads']} | "
                         f"{seen[0]}..{seen[-1]} ({len(seen)} distinct counts) | "
                         f"{s['visible_after_kill']} of {a.samples} | "
                         f"{s['batches_before_kill']} / {s['rerun_batches']} | "
                         f"{'yes' if s['equal'] else 'NO'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
