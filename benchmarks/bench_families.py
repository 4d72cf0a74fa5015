"""Real-size dry runs: every family at its published width and image geometry, depth cut.

For each of the five families this builds the real published config (hidden sizes, heads,
vocabulary, patch sizes, merge, windows, image token counts: the values of the hub
``config.json`` / ``preprocessor_config.json`` written in :data:`REAL`) with **random weights**
and the LM and the vision tower **cut to a few layers** (``--lm-layers``, ``--vision-layers``;
default 2 + 2) so that it fits a 24 GiB box, in the checkpoint's dtype (bfloat16 for all five
hub checkpoints). The tokenizer is the tiny local one (ids < 512 of the real-size vocabulary;
no hub). It then runs, each family in a fresh process (so peak RSS is that family's):

    generate (scenegen, the family's flat preset) -> extract (projector, all lm.resid, pooled
    vision.blocks; float16 store) -> query (object tokens at one LM layer) -> probe (projector
    object tokens, grouped CV) -> patch (E4 criss-cross, 3 regions x 2 layers, 1 item)

and records image tokens per image (as the family's real processor makes them), token roles of
a base stimulus (from its mask), store MiB per image, peak RSS, seconds per item, and the
projected cost of the full-depth model: store size for the paper's 480 items with their twins,
memory of one probe fit (object and all image tokens at one layer, float32), and forwards per
experiment. Results go to ``benchmarks/RESULTS.md`` ("Real-size dry runs").

Usage::

    python benchmarks/bench_families.py [--families pixtral,llava] [--n 4] [--no-append]
    python benchmarks/bench_families.py --child FAMILY --n 4 --json OUT   # one family
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Published configs (hub config.json values), as tiny_config overrides, plus full depths, the
#: stimulus preset at the family's geometry and processor settings. Sources: Qwen/Qwen2-VL-7B-
#: Instruct, Qwen/Qwen2.5-VL-7B-Instruct, google/gemma-3-4b-it, llava-hf/llava-1.5-7b-hf,
#: mistral-community/pixtral-12b.
REAL: dict[str, dict] = {
    "qwen2-vl": dict(
        alias="qwen2-vl-7b", tiny="tiny-qwen2-vl", preset="squares-qwen2-vl",
        lm_layers=28, vision_layers=32, vision_depth_key="vision_depth",
        cfg=dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                 rms_norm_eps=1e-6,
                 rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                      mrope_section=[16, 24, 24]),
                 vision_embed_dim=1280, vision_num_heads=16, vision_mlp_ratio=4),
        processor=dict(min_pixels=3136, max_pixels=12845056)),
    "qwen2.5-vl": dict(
        alias="qwen2.5-vl-7b", tiny="tiny-qwen2.5-vl", preset="squares-qwen2-vl",
        lm_layers=28, vision_layers=32, vision_depth_key="vision_depth",
        cfg=dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                 rms_norm_eps=1e-6,
                 rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                      mrope_section=[16, 24, 24]),
                 vision_hidden_size=1280, vision_intermediate_size=3420, vision_num_heads=16,
                 vision_window_size=112),
        # full attention in the last cut block (the 7B: blocks 7, 15, 23, 31 of 32)
        cut=lambda nv: dict(vision_fullatt_block_indexes=[nv - 1]),
        processor=dict(min_pixels=3136, max_pixels=12845056)),
    "gemma-3": dict(
        alias="gemma-3-4b", tiny="tiny-gemma-3", preset="squares-gemma-3",
        lm_layers=34, vision_layers=27, vision_depth_key="vision_num_hidden_layers",
        cfg=dict(hidden_size=2560, intermediate_size=10240, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                 sliding_window=1024, vocab_size=262208,
                 vision_hidden_size=1152, vision_intermediate_size=4304,
                 vision_num_attention_heads=16),
        processor={}),
    "llava": dict(
        alias="llava-1.5-7b", tiny="tiny-llava", preset="squares-qwen2-vl",
        lm_layers=32, vision_layers=24, vision_depth_key="vision_num_hidden_layers",
        cfg=dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32064, rms_norm_eps=1e-5,
                 vision_hidden_size=1024, vision_intermediate_size=4096,
                 vision_num_attention_heads=16, vision_projection_dim=768,
                 vision_hidden_act="quick_gelu"),
        processor={}),
    "pixtral": dict(
        alias="pixtral-12b", tiny="tiny-pixtral", preset="squares-pixtral",
        lm_layers=40, vision_layers=24, vision_depth_key="vision_num_hidden_layers",
        cfg=dict(hidden_size=5120, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, vocab_size=131072, rope_theta=1e9,
                 rms_norm_eps=1e-5, max_position_embeddings=1024000,
                 vision_hidden_size=1024, vision_intermediate_size=4096,
                 vision_num_attention_heads=16, vision_head_dim=64),
        processor={}),
}

#: base stimuli of the paper's flat presets (120 ordered triples x 4 directions)
PAPER_ITEMS = 480


def build_real(family: str, *, lm_layers: int, vision_layers: int, dtype: str = "bfloat16"):
    """The family's published config with random weights, depth cut, built directly in ``dtype``."""
    import torch

    import vlms
    from vlms.tiny import seeded_init

    spec = REAL[family]
    cls = vlms.adapter_class(spec["tiny"])
    tok = cls.tiny_tokenizer()
    over = dict(spec["cfg"], num_hidden_layers=lm_layers)
    over[spec["vision_depth_key"]] = vision_layers
    if "cut" in spec:
        over.update(spec["cut"](vision_layers))
    cfg = cls.tiny_config(tok, **over)
    cfg.architectures = list(cls.architectures)
    from transformers import AutoModelForImageTextToText

    model_cls = AutoModelForImageTextToText._model_mapping[type(cfg)]
    with seeded_init(0):
        model = model_cls._from_config(cfg, dtype=getattr(torch, dtype))
        if family == "gemma-3":
            cls.init_projector(model)
    proc = cls.tiny_processor(tok, **spec["processor"])
    ad = cls(model.eval(), proc, name=f"{spec['alias']}-cut", source=f"tiny-{family}")
    return ad


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def child(family: str, n: int, lm_layers: int, vision_layers: int, out_json: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from actstore import open_store
    from interventions.patching import PatchConfig, run_e4
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.extract import ExtractConfig, choose_prompt, run_extract
    from vlms.roles import image_roles

    spec = REAL[family]
    res: dict = {"family": family, "alias": spec["alias"], "lm_layers_cut": lm_layers,
                 "vision_layers_cut": vision_layers, "lm_layers_full": spec["lm_layers"],
                 "vision_layers_full": spec["vision_layers"], "n_base": n}
    work = Path(tempfile.mkdtemp(prefix=f"bench_{family}_"))
    try:
        t = time.perf_counter()
        ad = build_real(family, lm_layers=lm_layers, vision_layers=vision_layers)
        res["build_s"] = time.perf_counter() - t
        res["params_cut"] = n_params(ad.model)
        res["dtype"] = str(ad.model.dtype).removeprefix("torch.")
        res["d_lm"], res["d_vision"] = ad.d_lm, ad.d_vision

        t = time.perf_counter()
        generate(preset_config(spec["preset"], n=n), work / "data", progress=False)
        res["generate_s"] = time.perf_counter() - t
        ds = read_dataset(work / "data")
        base = [s for s in ds.stimuli if s.counterfactual_of is None and s.prompts]
        res["items"] = len(ds.stimuli)
        res["twins_per_base"] = (len(ds.stimuli) - 1) / len(base) - 1  # one blank canvas

        # geometry and roles of one base stimulus, as the family's processor makes them
        stim = base[0]
        b = ad.prepare([ds.image(stim)], [choose_prompt(stim, "completion")])
        res["image_px"] = f"{stim.width}x{stim.height}"
        res["grid"] = list(b.grids[0])
        res["image_tokens"] = int(len(b.image_positions[0]))
        res["seq_len"] = b.seq_len
        ir = image_roles(stim, ds.mask(stim), b.grids[0], object_fraction=0.5)
        res["roles"] = {r: int((ir.role == r).sum()) for r in sorted(set(ir.role))}

        t = time.perf_counter()
        store = work / "store.zarr"
        run_extract(ExtractConfig(model=res["alias"], data=str(work / "data"), store=str(store),
                                  sites=("projector", "lm.resid", "vision.blocks"),
                                  batch_size=1, store_dtype="float16"),
                    progress=False, adapter=ad, echo=lambda s: None)
        res["extract_s"] = time.perf_counter() - t
        res["extract_s_per_item"] = res["extract_s"] / res["items"]
        st = open_store(str(store))
        per = {}
        for fam in ("projector", "lm.resid", "vision.blocks"):
            a = st.select(res["alias"], fam)
            per[fam] = int(np.prod(a.shape[1:])) * 2  # float16 bytes per sample (padded slots)
        res["store_bytes_per_item"] = per
        disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        res["store_disk_mib_per_item"] = disk / res["items"] / 2**20

        t = time.perf_counter()
        q = st.select(res["alias"], f"lm.resid.{lm_layers}", role="object").compute()
        res["query_s"] = time.perf_counter() - t
        res["query_shape"] = list(q.shape)

        t = time.perf_counter()
        from click.testing import CliRunner

        from cli import spatialbind

        r = CliRunner().invoke(spatialbind, [
            "probe", "--store", str(store), "--model", res["alias"], "--site", "projector",
            "--layers", "0", "--roles", "object", "--n-splits", "2", "--map-samples", "0",
            "--out", str(work / "probe")])
        res["probe_s"] = time.perf_counter() - t
        res["probe_ok"] = r.exit_code == 0
        if r.exit_code != 0:
            res["probe_error"] = r.output.strip().splitlines()[-1][:200]

        t = time.perf_counter()
        _, summ = run_e4(ad, ds, PatchConfig(experiment="e4", layers=f"0,{lm_layers}", limit=1,
                                             regions=("object", "strip", "band"),
                                             # random weights answer nothing right: the paper
                                             # recipe's correctness filter would drop every pair
                                             recipe="robust"),
                         progress=False)
        res["patch_s"] = time.perf_counter() - t
        res["patch_forwards"] = summ["forwards"]
        res["patch_rows"] = 2 * 3
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(out_json).write_text(json.dumps(res, indent=1))


def project(r: dict) -> dict:
    """Full-depth projections from one family's measured dry run."""
    L, Lv = r["lm_layers_full"], r["vision_layers_full"]
    lc, vc = r["lm_layers_cut"], r["vision_layers_cut"]
    per = r["store_bytes_per_item"]
    full_item = (per["projector"] + per["lm.resid"] / (lc + 1) * (L + 1)
                 + per["vision.blocks"] / vc * Lv)
    n_items = PAPER_ITEMS * (1 + r["twins_per_base"]) + 1
    obj = r["roles"].get("object", 0)
    probe_obj = n_items * obj * r["d_lm"] * 4
    probe_img = n_items * r["image_tokens"] * r["d_lm"] * 4
    # E4 at every LM site: 3 regions x (L+1) rows per item, batched 8 rows per forward, plus the
    # base and the cached source run (as run_e4 counts them)
    e4 = PAPER_ITEMS * (2 + math.ceil(3 * (L + 1) / 8))
    return {"store_mib_per_item_full": full_item / 2**20,
            "store_gib_paper": full_item * n_items / 2**30, "paper_items": n_items,
            "probe_fit_mib_object": probe_obj / 2**20, "probe_fit_mib_image": probe_img / 2**20,
            "e4_forwards_full": e4, "e5_forwards_full": PAPER_ITEMS * 2,
            "e7_forwards_full_per_alpha": PAPER_ITEMS * 2 * 2}


def table(rows: list[dict]) -> str:
    head = ("| family (hub) | cut depth LM/vision (full) | params cut | image px | grid | image "
            "tokens | seq | roles obj/strip/dist/bg | store MiB/item cut (disk) | s/item extract "
            "| query / probe / patch s | peak RSS GiB | full depth: store MiB/item, paper store "
            "GiB (items) | probe fit MiB obj / all image tokens | forwards E4 / E5 / E7 per alpha |")
    out = [head, "|" + "---|" * head.count("|")[:-1] if False else "|" + "|".join(
        ["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['family']} | failed: {r['error']} |")
            continue
        p = project(r)
        roles = r["roles"]
        cut_mib = sum(r["store_bytes_per_item"].values()) / 2**20
        probe = f"{r['probe_s']:.1f}" if r["probe_ok"] else f"failed ({r.get('probe_error', '')})"
        out.append(
            f"| {r['family']} ({r['alias']}) | {r['lm_layers_cut']}/{r['vision_layers_cut']} "
            f"({r['lm_layers_full']}/{r['vision_layers_full']}) | {r['params_cut'] / 1e9:.2f} B "
            f"{r['dtype']} | {r['image_px']} | {r['grid'][0]}x{r['grid'][1]} | "
            f"{r['image_tokens']} | {r['seq_len']} | {roles.get('object', 0)}/"
            f"{roles.get('strip', 0)}/{roles.get('distractor', 0)}/{roles.get('background', 0)} | "
            f"{cut_mib:.1f} ({r['store_disk_mib_per_item']:.1f}) | "
            f"{r['extract_s_per_item']:.1f} | {r['query_s']:.2f} / {probe} / "
            f"{r['patch_s']:.1f} ({r['patch_forwards']} fwd) | {r['peak_rss_mib'] / 1024:.1f} | "
            f"{p['store_mib_per_item_full']:.0f}, {p['store_gib_paper']:.0f} "
            f"({p['paper_items']:.0f}) | {p['probe_fit_mib_object']:.0f} / "
            f"{p['probe_fit_mib_image']:.0f} | {p['e4_forwards_full']} / "
            f"{p['e5_forwards_full']} / {p['e7_forwards_full_per_alpha']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(REAL))
    ap.add_argument("--n", type=int, default=4, help="base stimuli per family (with twins)")
    ap.add_argument("--lm-layers", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--from-log", default=None,
                    help="append the rows (JSON lines) printed by an earlier --no-append run "
                         "instead of running; --note says under what load it ran")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.n, a.lm_layers, a.vision_layers, a.json)
        return
    rows = []
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if a.from_log:
        rows = [json.loads(x) for x in Path(a.from_log).read_text().splitlines()
                if x.startswith("{")]
    for fam in ([] if a.from_log else a.families.split(",")):
        out = Path(tempfile.mkdtemp()) / "r.json"
        cmd = [sys.executable, __file__, "--child", fam, "--n", str(a.n), "--lm-layers",
               str(a.lm_layers), "--vision-layers", str(a.vision_layers), "--json", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
        if p.returncode != 0 or not out.exists():
            rows.append({"family": fam, "error": (p.stderr.strip().splitlines() or ["?"])[-1]
                         [:200]})
        else:
            rows.append(json.loads(out.read_text()))
        print(json.dumps(rows[-1]), flush=True)
    load1 = os.getloadavg()
    md = table(rows)
    print(md)
    if not a.no_append:
        import torch

        head = (f"\n## Real-size dry runs: five families at published width, depth cut "
                f"({dt.date.today().isoformat()})\n\n"
                f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), "
                f"torch {torch.__version__}, 1 thread, bfloat16 (the hub checkpoints' dtype), "
                "random weights. "
                + (a.note + " " if a.from_log else
                   f"Load average {load0[0]:.1f} before, {load1[0]:.1f} after; "
                   f"{time.perf_counter() - t0:.0f} s in all. ")
                + f"`python benchmarks/bench_families.py "
                f"--n {a.n} --lm-layers {a.lm_layers} --vision-layers {a.vision_layers}`. "
                "Each family: the published config (width, heads, vocabulary, patch/merge/window, "
                f"image geometry) with the LM cut to {a.lm_layers} and the vision tower to "
                f"{a.vision_layers} layers so it fits a 24 GiB box; tokenizer tiny (local BPE, "
                "ids < 512). The flat preset of each family (Qwen / LLaVA: 336 px; Gemma: 896 "
                "px; Pixtral: 240 px), n base stimuli with their twins. Store: projector + every "
                "lm.resid + pooled vision blocks, float16; MiB/item counts padded token slots. "
                "Projections: full-depth store per item = projector + lm.resid x (L+1) + vision "
                "x Lv; the paper's 480 base items with their twins and the blank; one probe fit "
                "= float32 features of every item's object (or all image) tokens at one layer; "
                "E4 at every LM site (3 regions, 8 rows a forward), E5 base+ablated, E7 base+steered "
                "x both option orders per alpha.\n\n")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(head + md + "\n")


if __name__ == "__main__":
    main()
