"""The real-size dry run (benchmarks/bench_families.py) for one family: LLaVA-1.5-7B's published
width and geometry, depth cut to 1 LM + 1 vision layer, random bf16 weights. Slow (a 0.5 B
parameter model on a CPU): ``pytest -m slow``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_llava_real_width_dry_run(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_families.py"), "--child",
                        "llava", "--n", "4", "--lm-layers", "1", "--vision-layers", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=3000)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    # published llava-1.5-7b facts: 4096-wide Llama, 1024-wide CLIP ViT-L/14 at 336 px
    assert (r["d_lm"], r["d_vision"], r["dtype"]) == (4096, 1024, "bfloat16")
    assert r["grid"] == [24, 24] and r["image_tokens"] == 576 and r["image_px"] == "336x336"
    # the flat Qwen canvas (12x12 cells of 28 px, squares 2x2 cells) seen as 24x24 tokens: each
    # square covers 4x4 tokens
    assert r["roles"]["object"] == 3 * 16
    per = r["store_bytes_per_item"]
    assert per["projector"] == 576 * 4096 * 2          # float16, one row per image token
    assert per["vision.blocks"] == 1 * 576 * 1024 * 2  # pooled = one patch per token
    assert per["lm.resid"] % (2 * 4096 * 2) == 0       # lm.resid.0 and .1, padded sequence
    assert r["probe_ok"], r.get("probe_error")
    assert r["patch_forwards"] >= 3 and r["peak_rss_mib"] < 24 * 1024
    from benchmarks.bench_families import project

    p = project(r)
    assert p["store_mib_per_item_full"] > sum(per.values()) / 2**20  # 33 LM sites, 24 blocks
