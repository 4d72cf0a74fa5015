"""The environment that runs the tests is exactly the one requirements.lock describes.

scripts/setup.sh installs every distribution at the version pinned in requirements.lock (written by
scripts/lock.sh); this test fails when anything installed differs from the lock: a version, a
distribution missing, or one that the lock does not know. A machine set up with TORCH_SPEC (a CUDA
torch in place of the lock's CPU build) is told apart by .venv/.spatialbind-torch-override, and only
torch and its CUDA runtime may differ there.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lock_check", ROOT / "scripts" / "lock_check.py")
lock_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_check)
parse_lock, lock_differences = lock_check.parse_lock, lock_check.lock_differences


def test_lock_parser_and_comparison_catch_each_kind_of_difference():
    pins = parse_lock("# header\nfoo-bar==1.0   # via x\nTorch==2.13.0+cpu\n")
    assert pins == {"foo-bar": "1.0", "torch": "2.13.0+cpu"}
    have = {"foo-bar": "1.1", "extra": "3", "spatialbind": "0.1.0"}
    assert lock_differences(pins, have, torch_override=False) == [
        "foo-bar: locked 1.0, installed 1.1", "torch: locked 2.13.0+cpu, not installed",
        "extra: installed 3, not in the lock"]
    have = {"foo-bar": "1.0", "torch": "2.14.1", "nvidia-cublas": "12"}
    assert lock_differences(pins, have, torch_override=True) == []
    with pytest.raises(ValueError, match="not an exact pin"):
        parse_lock("numpy>=1\n")


def test_installed_versions_equal_the_lock():
    if not (Path(sys.prefix) / "pyvenv.cfg").exists():
        pytest.skip("not running inside a virtual environment made by scripts/setup.sh")
    diffs = lock_differences(parse_lock(lock_check.LOCK.read_text()), lock_check.installed(),
                             torch_override=lock_check.torch_override())
    assert not diffs, ("installed versions differ from requirements.lock (run bash scripts/setup.sh; "
                       "to move the lock, bash scripts/lock.sh):\n  " + "\n  ".join(diffs))
