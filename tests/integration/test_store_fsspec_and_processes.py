"""Several writer processes fill disjoint shards of one store; stores open through fsspec URLs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from actstore import open_store
from actstore.testing import assert_stores_equal, assert_valid, make_store

SCRIPT = """
import json, sys
from actstore.testing import make_store
t = make_store(sys.argv[1], n_samples=22, batch_size=4, planted=1.5, shard=(int(sys.argv[2]), 2))
print(json.dumps([int(i) for i in t.written]))
"""


def test_two_processes_fill_disjoint_shards_equal_to_one_process(tmp_path):
    one = tmp_path / "one"
    make_store(one, n_samples=22, batch_size=4, planted=1.5)
    two = tmp_path / "two"
    make_store(two, n_samples=22, batch_size=4, planted=1.5, stop_after=0)  # phase 1: create
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(two), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    written = [set(json.loads(o[0].strip().splitlines()[-1])) for o in outs]
    assert written[0] and written[1] and not (written[0] & written[1])
    assert written[0] | written[1] == set(range(22))
    for part, i in zip(written, (0, 1)):  # each process owned whole shards of 4 samples
        assert {s // 4 % 2 for s in part} == {i}
    assert_stores_equal(two, one)
    assert_valid(two)


def test_fsspec_urls_write_and_read(tmp_path):
    local = make_store(tmp_path / "local", n_samples=9, batch_size=4)
    for url in (f"file://{tmp_path}/viafile", "memory://actstore-test/store"):
        truth = make_store(url, n_samples=9, batch_size=4)
        s = open_store(url)
        assert s.models == ["tiny"]
        x = s.select(site="lm.resid.2", role="object")
        y = open_store(tmp_path / "local").select(site="lm.resid.2", role="object")
        np.testing.assert_array_equal(x.values, y.values)
        np.testing.assert_array_equal(s.select(site="projector").values, truth.acts["projector"][:, 0])
        assert s.summary()["models"]["tiny"]["done"] == 9 and s.nbytes() > 0
        assert_valid(url)
    assert_stores_equal(f"file://{tmp_path}/viafile", tmp_path / "local")
    assert local.written.size == 9


def test_two_processes_started_together_on_a_fresh_store(tmp_path):
    one = tmp_path / "one"
    make_store(one, n_samples=22, batch_size=4, planted=1.5)
    for k in range(2):  # no phase-1 creation: both race to create the group; one does, one waits
        two = tmp_path / f"two{k}"
        procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(two), str(i)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in (0, 1)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        assert_stores_equal(two, one)
    assert not list(tmp_path.glob(".*.creating"))  # creation locks are released
