"""``--portable-math``: the CPU math pinned to one code path, and the environment each stage
records. Each run is a fresh Python process, because ATen, MKL and oneDNN choose their code
path once per process."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from organisms import trainer as org

ROOT = Path(__file__).resolve().parents[2]

# a tiny vision organism (the shapes of tests/integration/test_organisms.py's _tiny), trained
# a few steps; prints the SHA-256 of its weights and its log's environment
TRAIN = r"""
import hashlib, json, sys
from organisms import trainer as org
cfg = org.OrganismConfig(mechanism="vision", vision_depth=1, vision_dim=32, vision_heads=1,
                         lm_layers=1, lm_dim=64, lm_heads=2, steps=8, batch=8, warmup=2,
                         lr=3e-3, eval_every=8, eval_items=8, aux_slot_weight=2.0,
                         portable_math=sys.argv[1] == "1")
res = org.train(cfg, out=sys.argv[2] if len(sys.argv) > 2 else None, progress=False,
                final_eval_items=8)
h = hashlib.sha256()
for k, v in sorted(res.model.state_dict().items()):
    h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
print(json.dumps({"sha": h.hexdigest(), "environment": res.log["environment"]}))
"""


def _run(portable: bool, env: dict[str, str], *extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in org.PORTABLE_MATH}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", TRAIN, "1" if portable else "0", *extra],
                       env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _has_avx2() -> bool:
    try:
        return platform.machine() in ("x86_64", "AMD64") and " avx2" in Path(
            "/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx2(), reason="--portable-math pins x86-64 AVX2 code paths")
def test_portable_math_equals_the_variables_set_before_python_starts(tmp_path):
    """The option, set inside the process, trains bit for bit the weights of a process started
    with the pinning variables, and of one whose MKL may use no more than AVX2 (as on a CPU
    without AVX-512); a process on other ATen kernels (the scalar ones) trains other weights, so
    the comparison can fail; the log records which math each run had."""
    opt = _run(True, {}, str(tmp_path / "o"))
    pre = _run(True, dict(org.PORTABLE_MATH))
    # a CPU without AVX-512, as far as one can be emulated here: MKL's instruction set capped too
    avx2_only = _run(True, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    native = _run(False, {})
    scalar = _run(False, {"ATEN_CPU_CAPABILITY": "default"})
    assert opt["sha"] == pre["sha"] == avx2_only["sha"]
    assert scalar["sha"] != opt["sha"]
    e = opt["environment"]
    assert e["cpu_capability"] == "AVX2" and e["portable_math"] is True
    assert e["math_env"] == org.PORTABLE_MATH
    assert e["mkl_cbwr"] == org.PORTABLE_MKL_CBWR
    assert pre["environment"] == e  # the same math, however the variables were set
    n = native["environment"]
    assert n["portable_math"] is False and n["mkl_cbwr"] != org.PORTABLE_MKL_CBWR
    assert n["math_env"] == {k: None for k in org.PORTABLE_MATH}
    assert scalar["environment"]["cpu_capability"] == "DEFAULT"
    assert scalar["environment"]["portable_math"] is False
    import torch
    assert e["torch"] == torch.__version__
    # the saved log and README say it, and the reproduce command carries the option
    log = json.loads((tmp_path / "o" / "train_log.json").read_text())
    assert log["environment"] == e and log["config"]["portable_math"] is True
    readme = (tmp_path / "o" / "README.md").read_text()
    assert "--portable-math" in readme and "CPU math pinned" in readme


def test_environment_is_kept_per_stage_and_named_in_the_readme(tmp_path):
    stage1 = {"python": "3.11.9", "torch": "2.13.0+cpu", "transformers": "5.0.0",
              "numpy": "2.3.0", "platform": "linux", "machine": "x86_64", "cpu": "CPU A",
              "cpu_capability": "AVX512", "mkl": True,
              "math_env": {k: None for k in org.PORTABLE_MATH}, "portable_math": False}
    stage2 = {**stage1, "cpu": "CPU B", "cpu_capability": "AVX2",
              "math_env": dict(org.PORTABLE_MATH), "portable_math": True}
    cfg = org.OrganismConfig(mechanism="vision", steps=10).to_json()
    log = {"config": cfg, "stages": [{"config": cfg, "environment": stage1},
                                     {"config": {**cfg, "portable_math": True},
                                      "environment": stage2}]}
    lines = org._environment_notes(log)
    text = "\n".join(lines)
    assert "Stage 1 on CPU A (x86_64)" in text and "native CPU math (AVX512 kernels)" in text
    assert "Stage 2 on CPU B" in text and "MKL_CBWR=AVX2,STRICT" in text
    cmds = org.reproduce_commands(log, "o")
    assert "--portable-math" not in cmds[0] and cmds[1].endswith("--portable-math --init "
                                                                 "o-stage1 --out o")
    # a log from before the environment was recorded gives no line (shipped READMEs unchanged)
    assert org._environment_notes({"config": cfg, "stages": [{"config": cfg}]}) == []


def test_portable_math_refuses_clashing_variables_and_fixed_kernels(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(os, "environ", {**os.environ, "ATEN_CPU_CAPABILITY": "avx512"})
    with pytest.raises(org.OrganismError, match=r"environment sets \{'ATEN_CPU_CAPABILITY'"):
        org.use_portable_math()
    # the kernels of this (test) process were chosen before the option: refused with a way out
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k not in org.PORTABLE_MATH})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(org.OrganismError, match="start a fresh process"):
        org.use_portable_math()
    # and train() stops there, before building or writing anything
    with pytest.raises(org.OrganismError, match="portable-math"):
        org.train(org.OrganismConfig(mechanism="vision", steps=2, portable_math=True),
                  out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not _has_avx2(), reason="--portable-math pins x86-64 AVX2 code paths")
def test_portable_math_refuses_a_process_whose_mkl_already_chose_its_path():
    """ATen's kernels may still be pinned when MKL has already run a product on its own path:
    the option checks MKL's mode and refuses, naming the way out."""
    code = ("import torch; a = torch.ones(8, 8); (a @ a).sum()\n"
            "from organisms import trainer as org\n"
            "try:\n    org.use_portable_math()\nexcept org.OrganismError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k not in org.PORTABLE_MATH}
    env.update(ATEN_CPU_CAPABILITY="avx2", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "needs MKL's strict AVX2 mode" in p.stdout and "start a fresh process" in p.stdout
