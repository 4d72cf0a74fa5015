"""``spatialbind extract`` under launchers: rank/world-size variables (torchrun-style, several
processes at once) and ``--scheduler local:2`` (a dask cluster) each fill a store equal, byte for
byte in every array, to a single-process run; the launcher variables are read as documented."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from cli import spatialbind
from tests.helpers_vlms import write_squares
from vlms.errors import ExtractError
from vlms.launch import block_plan, launcher_shard, parse_scheduler

from .extract_store import assert_same_stores, extract_args, store_arrays

ROOT = Path(__file__).resolve().parents[2]
N = 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    data = tmp / "ds"
    write_squares(data, n=N)
    ref = tmp / "one.zarr"
    env_clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "OMPI_", "PMI_", "LOCAL_RANK"))}
    res = subprocess.run([sys.executable, "-m", "cli", *extract_args(data, ref)], cwd=ROOT,
                         env={**env_clean, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return data, store_arrays(ref), env_clean


def test_torchrun_style_processes_shard_themselves(reference, tmp_path):
    data, ref, env = reference
    store = tmp_path / "ranks.zarr"
    procs = [subprocess.Popen([sys.executable, "-m", "cli", *extract_args(data, store)], cwd=ROOT,
                              env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                   "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]  # started together: they race to create the store
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    for r, (out, _) in enumerate(outs):
        assert f"shard {r}/2 from RANK/WORLD_SIZE (torchrun)" in out
        assert "wrote 4 samples" in out  # 8 samples in 4 batches, 2 batches each
    assert_same_stores(store_arrays(store), ref)


def test_explicit_shard_wins_over_launcher_variables(reference, tmp_path, monkeypatch):
    data, _, _ = reference
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    res = CliRunner().invoke(spatialbind,
                             extract_args(data, tmp_path / "s.zarr", "--shard", "0/2"))
    assert res.exit_code == 0, res.output
    assert "from RANK" not in res.output and "wrote 4 samples" in res.output


def test_dask_cluster_extraction_equals_one_process(reference, tmp_path):
    data, ref, _ = reference
    store = tmp_path / "dask.zarr"
    res = CliRunner().invoke(spatialbind, extract_args(data, store, "--scheduler", "local:2",
                                                "--block-batches", "1"))
    assert res.exit_code == 0, res.output
    assert "in 4 blocks on 2 workers" in res.output and "(8/8 done)" in res.output
    assert_same_stores(store_arrays(store), ref)
    # a rerun finds nothing to do and changes nothing
    res = CliRunner().invoke(spatialbind, extract_args(data, store, "--scheduler", "local:2"))
    assert res.exit_code == 0 and "wrote 0 samples" in res.output, res.output
    assert_same_stores(store_arrays(store), ref)


@pytest.mark.parametrize("env,want", [
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, ((3, 4), "RANK/WORLD_SIZE")),
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "5", "SLURM_ARRAY_TASK_MIN": "10"},
     ((2, 5), "SLURM_ARRAY_TASK_ID")),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, ((1, 2), "SLURM_PROCID")),
    # an array of 3 tasks, each an srun step of 2: 6 shards
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "1",
      "SLURM_NTASKS": "2"}, ((5, 6), "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT x")),
    # torchrun inside a Slurm job: torchrun's variables win
    ({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"},
     ((0, 2), "RANK/WORLD_SIZE")),
    ({"RANK": "0", "WORLD_SIZE": "1"}, (None, None)),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3"}, ((1, 3), "OMPI")),
    ({}, (None, None)),
])
def test_launcher_variables(env, want):
    shard, name = launcher_shard(env)
    assert shard == want[0]
    assert (name is None) if want[1] is None else name.startswith(want[1])


@pytest.mark.parametrize("env,msg", [({"RANK": "4", "WORLD_SIZE": "4"}, "outside 0 <= i < n"),
                                     ({"RANK": "x", "WORLD_SIZE": "4"}, "RANK='x' is not an integer")])
def test_bad_launcher_variables_are_one_clear_line(env, msg):
    with pytest.raises(ExtractError, match=msg):
        launcher_shard(env)


def test_scheduler_spec_and_block_plan():
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.1:8786") == ("tcp://10.0.0.1:8786", None)
    with pytest.raises(ExtractError, match="local:N"):
        parse_scheduler("local:zero")
    batches = [[2 * i, 2 * i + 1] for i in range(10)]
    blocks = block_plan(batches, n_workers=2)
    assert [b for blk in blocks for b in blk] == batches  # every batch once, in order
    assert len(blocks) == 5 and all(len(blk) == 2 for blk in blocks)
    assert block_plan(batches, 2, block_batches=4)[-1] == batches[8:]


def _shards(store) -> int:
    """Store shards along samples of the first stored activations array (``c/<shard>/<layer>/
    0/0``: one folder per shard, one file per layer in it)."""
    acts = sorted(Path(store).rglob("acts/zarr.json"))[0].parent
    return sum(1 for p in (acts / "c").iterdir() if p.is_dir())


def test_shard_samples_decouple_store_shards_from_forwards(reference, tmp_path):
    """``--batch-size 2 --shard-samples 4``: forwards of 2 fill shards of 4, and the store holds
    the same arrays, byte for byte, as the reference (forwards of 2, shards of 2), in half as
    many shards; two ``--shard i/n`` processes and a dask cluster fill it the same way;
    another ``--shard-samples`` on the existing store is refused."""
    data, ref, env = reference
    one = tmp_path / "one.zarr"
    res = CliRunner().invoke(spatialbind, extract_args(data, one, "--shard-samples", "4"))
    assert res.exit_code == 0, res.output
    assert_same_stores(store_arrays(one), ref)
    g = next(iter(zarr.open_group(str(one), mode="r").groups()))[1]
    assert g.attrs["batch_size"] == 4
    assert g.attrs["provenance"]["extract"]["shard_samples"] == 4
    assert _shards(one) == N // 4  # shards of 4 samples (the reference: N // 2)
    two = tmp_path / "two.zarr"
    for i in range(2):  # shard-aligned: process i writes shards b % 2 == i, one each
        res = CliRunner().invoke(spatialbind, extract_args(data, two, "--shard-samples", "4",
                                                           "--shard", f"{i}/2"))
        assert res.exit_code == 0 and "wrote 4 samples" in res.output, res.output
    assert_same_stores(store_arrays(two), ref)
    dask_store = tmp_path / "dask.zarr"
    res = CliRunner().invoke(spatialbind, extract_args(data, dask_store, "--shard-samples", "4",
                                                       "--scheduler", "local:2",
                                                       "--block-batches", "1"))
    assert res.exit_code == 0 and "in 2 blocks on 2 workers" in res.output, res.output
    assert_same_stores(store_arrays(dask_store), ref)
    res = CliRunner().invoke(spatialbind, extract_args(data, one, "--shard-samples", "8"))
    assert res.exit_code == 1 and "created with shards of 4 samples" in res.output, res.output


def test_shard_samples_killed_mid_shard_resumes_to_the_reference(reference, tmp_path):
    """Killed (SIGKILL) after the first forward of the second shard: that shard has nothing
    marked done (a shard is written only once all its forwards are done), and the same command
    run again fills the store equal to the reference."""
    data, ref, env = reference
    store = tmp_path / "killed.zarr"
    args = [sys.executable, "-m", "cli", *extract_args(data, store, "--shard-samples", "4")]
    penv = {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    kill = {**penv, "SPATIALBIND_TEST_KILL_AT": "extract-forward@3"}
    res = subprocess.run(args, cwd=ROOT, env=kill, capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr  # killed at the test point
    done = next(iter(zarr.open_group(str(store), mode="r").groups()))[1]["samples"]["done"][:]
    assert not done[4:].any() and len(set(done[:4].tolist())) == 1, done
    res = subprocess.run(args, cwd=ROOT, env=penv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"wrote {N - int(done.sum())} samples" in res.stdout, res.stdout
    assert_same_stores(store_arrays(store), ref)
