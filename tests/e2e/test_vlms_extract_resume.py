"""``spatialbind extract`` killed with SIGKILL mid-run and resumed equals a clean run (every
array of the store compared); two ``--shard`` processes equal one process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zarr
from click.testing import CliRunner

from cli import spatialbind
from tests.helpers_vlms import write_squares

from .extract_store import assert_same_stores, extract_args, store_arrays

ROOT = Path(__file__).resolve().parents[2]
N = 8
# slow each batch down (in the child only) so that the kill lands between batches' writes
CHILD = """
import sys, time, torch
torch.set_num_threads(1)
import vlms.extract as e
orig = e.extract_batch
def slow(*a, **k):
    time.sleep(0.4)
    return orig(*a, **k)
e.extract_batch = slow
from cli import main
main(sys.argv[1:])
"""


def test_kill_resume_equals_clean_run_and_shards(tmp_path):
    data = tmp_path / "ds"
    write_squares(data, n=N)
    clean, killed, sharded = tmp_path / "clean.zarr", tmp_path / "killed.zarr", tmp_path / "sh.zarr"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *extract_args(data, killed)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_at_kill = 0
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and proc.poll() is None:
            try:
                done_at_kill = int(zarr.open_group(str(killed), mode="r")["tiny-qwen2-vl"]
                                   ["samples"]["done"][:].sum())
            except Exception:  # noqa: BLE001 - store not created yet
                done_at_kill = 0
            if done_at_kill >= 2:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    assert 2 <= done_at_kill < N
    res = CliRunner().invoke(spatialbind, extract_args(data, killed))
    assert res.exit_code == 0, res.output
    assert f"({N}/{N} done)" in res.output
    res = CliRunner().invoke(spatialbind, extract_args(data, clean))
    assert res.exit_code == 0, res.output
    ref = store_arrays(clean)
    assert_same_stores(store_arrays(killed), ref)
    # two processes' worth of shards fill one store: same as one process
    for i in (1, 0):
        res = CliRunner().invoke(spatialbind, extract_args(data, sharded, "--shard", f"{i}/2"))
        assert res.exit_code == 0, res.output
        assert "wrote 4 samples" in res.output
    assert_same_stores(store_arrays(sharded), ref)
