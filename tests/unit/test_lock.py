"""The environment that runs the tests is exactly the one requirements.lock describes.

scripts/setup.sh installs every distribution at the version pinned in requirements.lock (written by
scripts/lock.sh); this test fails when anything installed differs from the lock: a version, a
distribution missing, or one that the lock does not know. A machine set up with TORCH_SPEC (a CUDA
torch in place of the lock's CPU build) is told apart by .venv/.spatialbind-torch-override, and only
torch and its CUDA runtime may differ there.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
# torch's CUDA builds bring these; only allowed to differ when TORCH_SPEC replaced torch
TORCH_FAMILY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert m, f"requirements.lock: not an exact pin: {raw!r}"
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    return {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()
            if d.metadata["Name"]}


def lock_differences(pins: dict[str, str], have: dict[str, str], *, torch_override: bool) -> list[str]:
    diffs = []
    for name, want in sorted(pins.items()):
        if torch_override and TORCH_FAMILY.match(name):
            continue
        got = have.get(name)
        if got is None:
            diffs.append(f"{name}: locked {want}, not installed")
        elif got != want:
            diffs.append(f"{name}: locked {want}, installed {got}")
    for name, got in sorted(have.items()):
        if name in pins or name == "spatialbind":
            continue
        if torch_override and TORCH_FAMILY.match(name):
            continue
        diffs.append(f"{name}: installed {got}, not in the lock")
    return diffs


def test_lock_parser_and_comparison_catch_each_kind_of_difference():
    pins = parse_lock("# header\nfoo-bar==1.0   # via x\nTorch==2.13.0+cpu\n")
    assert pins == {"foo-bar": "1.0", "torch": "2.13.0+cpu"}
    have = {"foo-bar": "1.1", "extra": "3", "spatialbind": "0.1.0"}
    assert lock_differences(pins, have, torch_override=False) == [
        "foo-bar: locked 1.0, installed 1.1", "torch: locked 2.13.0+cpu, not installed",
        "extra: installed 3, not in the lock"]
    have = {"foo-bar": "1.0", "torch": "2.14.1", "nvidia-cublas": "12"}
    assert lock_differences(pins, have, torch_override=True) == []
    with pytest.raises(AssertionError, match="not an exact pin"):
        parse_lock("numpy>=1\n")


def test_installed_versions_equal_the_lock():
    if not (Path(sys.prefix) / "pyvenv.cfg").exists():
        pytest.skip("not running inside a virtual environment made by scripts/setup.sh")
    override = (Path(sys.prefix) / ".spatialbind-torch-override").exists()
    diffs = lock_differences(parse_lock(LOCK.read_text()), installed(), torch_override=override)
    assert not diffs, ("installed versions differ from requirements.lock (run bash scripts/setup.sh; "
                       "to move the lock, bash scripts/lock.sh):\n  " + "\n  ".join(diffs))
