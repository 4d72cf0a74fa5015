"""Compare the running environment with requirements.lock (used by scripts/setup.sh and the tests).

    python scripts/lock_check.py               # list every difference; exit 1 if any
    python scripts/lock_check.py --extraneous  # print the installed distributions the lock lacks

A machine set up with TORCH_SPEC (a CUDA torch in place of the lock's CPU build) is told apart by
<venv>/.spatialbind-torch-override; there only torch and its CUDA runtime may differ.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
#: torch's CUDA builds bring these; only allowed to differ when TORCH_SPEC replaced torch
TORCH_FAMILY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
#: never in the lock: the project itself
SELF = {"spatialbind"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if not m:
            raise ValueError(f"requirements.lock: not an exact pin: {raw!r}")
        pins[norm(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    return {norm(d.metadata["Name"]): d.version for d in metadata.distributions()
            if d.metadata["Name"]}


def torch_override() -> bool:
    return (Path(sys.prefix) / ".spatialbind-torch-override").exists()


def lock_differences(pins: dict[str, str], have: dict[str, str], *,
                     torch_override: bool) -> list[str]:
    diffs = []
    for name, want in sorted(pins.items()):
        if torch_override and TORCH_FAMILY.match(name):
            continue
        got = have.get(name)
        if got is None:
            diffs.append(f"{name}: locked {want}, not installed")
        elif got != want:
            diffs.append(f"{name}: locked {want}, installed {got}")
    diffs += [f"{name}: installed {have[name]}, not in the lock"
              for name in extraneous(pins, have, torch_override=torch_override)]
    return diffs


def extraneous(pins: dict[str, str], have: dict[str, str], *, torch_override: bool) -> list[str]:
    return [name for name in sorted(have) if name not in pins and name not in SELF
            and not (torch_override and TORCH_FAMILY.match(name))]


def main(argv: list[str]) -> int:
    pins, have = parse_lock(LOCK.read_text()), installed()
    if argv[1:] == ["--extraneous"]:
        print("\n".join(extraneous(pins, have, torch_override=torch_override())))
        return 0
    diffs = lock_differences(pins, have, torch_override=torch_override())
    print("\n".join(diffs) if diffs else "the environment equals requirements.lock")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
