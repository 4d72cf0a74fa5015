"""The input/output boundary (``common.io``) and the store-creation lock's owner checks."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from common.io import FileError, boundary, check_writable, describe


class MyError(ValueError):
    pass


def _raise_in(block, path, **kw):
    with pytest.raises(MyError) as e:
        with boundary(path, error=MyError, **kw):
            block()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_decode_errors_name_the_file_and_the_fix(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{oops")
    msg = _raise_in(lambda: json.loads(p.read_text()), p, fix="regenerate it")
    assert msg.startswith(f"{p} is not valid JSON") and "line 1 column 2" in msg
    assert msg.endswith("regenerate it")
    p.write_bytes(b"\xff\xfe")
    assert "is not UTF-8 text" in _raise_in(lambda: p.read_text(encoding="utf-8"), p)
    yaml = pytest.importorskip("yaml")
    p.write_text("a: [1,\n")
    assert "is not valid YAML" in _raise_in(lambda: yaml.safe_load(p.read_text()), p)
    from PIL import Image

    p.write_bytes(b"not a png at all")
    assert "corrupt or not an image" in _raise_in(lambda: Image.open(p).load(), p)


def test_os_errors_use_their_own_file_name_and_errno():
    for code, words in [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only"),
                        (errno.ENOSPC, "disk full"), (errno.EEXIST, "already exists"),
                        (errno.ENOTDIR, "is a file, not a directory"),
                        (errno.EISDIR, "is a directory")]:
        e = OSError(code, os.strerror(code), "/where/it/failed")
        msg = describe(e, "/given", "write")
        assert msg.startswith("cannot write /where/it/failed: ") and words in msg
    assert "/given" in describe(OSError(errno.EACCES, "x"), "/given", "read")


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(KeyError):
        with boundary(tmp_path, error=MyError):
            raise KeyError("x")
    with pytest.raises(ValueError, match="plain"):
        with boundary(tmp_path, error=MyError):
            raise ValueError("plain")


def test_check_writable(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(FileError, match="is a file"):
        check_writable(f)
    with pytest.raises(FileError, match="is a file, not a directory"):
        check_writable(f / "sub" / "out")
    with pytest.raises(FileError, match="is a directory"):
        check_writable(tmp_path, kind="file")
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing is created


# ----------------------------------------------------------------------------- creation lock
def _open(path, **kw):
    from actstore import StoreWriter
    from actstore.testing import DEFAULT_PROVENANCE, default_sites, synthetic_samples

    return StoreWriter.open_or_create(path, model="tiny", provenance=DEFAULT_PROVENANCE,
                                      samples=synthetic_samples(4), sites=default_sites(),
                                      params={"object_coverage": 0.5}, batch_size=4, **kw)


def _lock(path, pid):
    from actstore.writer import lock_file

    f = lock_file(path, "tiny")
    with open(f, "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": pid}, fh)
    return f


def test_a_dead_owners_lock_is_taken_over_at_once(tmp_path):
    pytest.importorskip("zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    f = _lock(tmp_path / "s", dead.pid)
    told = []
    w = _open(tmp_path / "s", wait_s=60, notify=told.append)
    assert told == [] and not os.path.exists(f)
    assert w.group.attrs["complete"] is True and len(w.pending()) == 4


def test_a_live_owner_is_waited_for_with_one_message(tmp_path):
    pytest.importorskip("zarr")
    from actstore import StoreError, open_store

    f = _lock(tmp_path / "s", os.getpid())  # this process is alive
    os.makedirs(tmp_path / "s")  # an empty folder: not a store yet
    told = []
    with pytest.raises(StoreError, match="still being created by process") as e:
        _open(tmp_path / "s", wait_s=0.5, notify=told.append)
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    assert len(told) == 1 and told[0].startswith(f"waiting for process {os.getpid()}")
    with pytest.raises(StoreError, match="being created"):
        open_store(tmp_path / "s")
    assert os.path.exists(f)  # a live owner's lock is never removed
    np.testing.assert_equal(sorted(os.listdir(tmp_path / "s")), ["zarr.json"])


def test_only_one_process_takes_over_a_dead_owners_lock(tmp_path):
    zarr = pytest.importorskip("zarr")
    from actstore.writer import _CreationLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    f = _lock(tmp_path / "s", dead.pid)
    store = zarr.storage.LocalStore(str(tmp_path / "s"))
    a, b = (_CreationLock(store, "tiny", "s", 1, notify=lambda _: None) for _ in range(2))
    owner = a._owner()
    assert a._dead(owner) and b._dead(owner)  # both saw the dead owner...
    assert a._take_over(owner) is True  # ...the first to write itself in wins,
    assert b._take_over(owner) is False  # the second finds the lock changed under it
    assert json.load(open(f))["pid"] == os.getpid()


def test_a_truncated_image_is_one_line(tmp_path):
    from PIL import Image

    p = tmp_path / "x.png"
    Image.new("RGB", (64, 64), "red").save(p)
    p.write_bytes(p.read_bytes()[:60])
    msg = _raise_in(lambda: Image.open(p).load(), p, fix="regenerate it")
    assert str(p) in msg and msg.endswith("regenerate it")
