"""What ``organism train --portable-math`` costs: CPU seconds per training step with the CPU math
pinned to AVX2 (``organisms.trainer.PORTABLE_MATH``) against the native code paths, on the
shipped Qwen vision chain's stage-1 configuration (3 x 128 ViT, batch 32, 1 thread).

Each round runs both modes one after the other, in a fresh process each (the libraries choose
their code path once per process), in an order that alternates between rounds; the report is
the per-round ratio portable / native of CPU seconds per step (the trainer's ``cpu_time_s``,
``time.process_time`` over the training steps), its median and range, and whether the two
modes trained the same weights (they do not on a CPU whose native path is not AVX2).

    python benchmarks/bench_portable_math.py --rounds 3 --steps 30
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from organisms.trainer import PORTABLE_MATH  # noqa: E402  (no computation on import)

STEP = r"""
import hashlib, json, sys
import torch
from organisms import trainer as org
steps, portable = int(sys.argv[1]), sys.argv[2] == "1"
cfg = org.OrganismConfig(arch="qwen2-vl", mechanism="vision", seed=0, threads=1, batch=32,
                         vision_depth=3, vision_dim=128, aux_slot_weight=2.0, steps=steps,
                         eval_every=10**9, portable_math=portable)
res = org.train(cfg, out=None, progress=False, final_eval_items=8)
h = hashlib.sha256()
for k, v in sorted(res.model.state_dict().items()):
    h.update(v.detach().contiguous().numpy().tobytes())
print(json.dumps({"cpu_s_per_step": res.log["cpu_time_s"] / steps, "steps": steps,
                  "capability": torch.backends.cpu.get_cpu_capability(),
                  "sha": h.hexdigest()[:16]}))
"""


def run(mode: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_MATH}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", STEP, str(steps),
                        "1" if mode == "portable" else "0"], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench_portable_math: the {mode} run failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    a = ap.parse_args()
    ratios, rows = [], []
    for r in range(a.rounds):
        order = ("native", "portable") if r % 2 == 0 else ("portable", "native")
        got = {m: run(m, a.steps) for m in order}
        ratio = got["portable"]["cpu_s_per_step"] / got["native"]["cpu_s_per_step"]
        ratios.append(ratio)
        rows.append({"round": r, "order": order, **{m: got[m] for m in got}, "ratio": ratio})
        print(f"round {r} ({order[0]} first): native "
              f"{got['native']['cpu_s_per_step']:.3f} CPU-s/step ({got['native']['capability']}), portable {got['portable']['cpu_s_per_step']:.3f} "
              f"({got['portable']['capability']}): x{ratio:.2f}; same weights: "
              f"{got['native']['sha'] == got['portable']['sha']}", flush=True)
    print(json.dumps({"median_ratio": statistics.median(ratios), "min": min(ratios),
                      "max": max(ratios), "load": os.getloadavg(), "rounds": rows}))


if __name__ == "__main__":
    main()
