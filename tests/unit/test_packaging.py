"""Packaging guards (STYLE R1): the wheel ships our top-level names, and the import DAG holds."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("scenegen", "vlms", "actstore", "probes", "interventions", "study", "organisms",
            "common")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stderr[-2000:]}")
    (whl,) = out.glob("spatialbind-*.whl")
    return whl


def test_wheel_holds_every_package_and_the_cli(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in PACKAGES:
        assert f"{pkg}/__init__.py" in names, f"{pkg} missing from the wheel"
    assert "cli.py" in names
    assert not any(n.startswith("tests/") for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "spatialbind = cli:main" in text


def _modules_after_import(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("pkg", ["scenegen", "actstore", "probes"])
def test_light_packages_do_not_import_torch_or_gl(pkg):
    mods = _modules_after_import(f"import {pkg}")
    assert "torch" not in mods
    assert "pyrender" not in mods and "OpenGL" not in mods


def test_scenegen_and_actstore_import_nothing_else_of_ours():
    for pkg, allowed in (("scenegen", {"scenegen", "common"}),
                         ("actstore", {"actstore", "common"})):
        mods = _modules_after_import(f"import {pkg}")
        ours = {m.split(".")[0] for m in mods} & set(PACKAGES)
        assert ours <= allowed, f"{pkg} imports {ours - allowed}"


def test_cli_help_is_light():
    mods = _modules_after_import("import cli; cli.spatialbind.main(['--help'], standalone_mode=False)")
    assert "torch" not in mods and "pyrender" not in mods
