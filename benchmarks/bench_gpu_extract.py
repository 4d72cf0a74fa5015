"""GPU extraction at full size: Qwen2-VL-7B's architecture (random weights) into one store.

Issue 14's GPU benchmark. Builds the published Qwen2-VL-7B-Instruct config (28 LM layers of
3584, 32 vision blocks of 1280; random bfloat16 weights made on the GPU, no download; tiny local
tokenizer, ids < 512), generates the paper's Squares stimuli at the paper's 336 px geometry
(12x12 merged image tokens, the size the paper feeds What'sUp images to Qwen) and runs, on the
same images, side by side:

* **bare**: read image + mask, ``prepare``, ``model(**inputs, logits_to_keep=1)``, batched like
  extraction (a plain forward loop, nothing kept);
* **extract**: ``run_extract`` with the projector and every ``lm.resid`` site (29) into one
  float16 store (``spatialbind extract --sites projector,lm.resid``), the store fsync'd.

The store of the requested number of images may not fit the disk (about 40 MiB per image at
this geometry: 3.8k images need ~150 GiB); the script then extracts as many images as fit in
``--disk-fraction`` of the free space and states the projection. The bare loop runs over the
requested count too, so its time at full count is measured, not projected.

    python benchmarks/bench_gpu_extract.py --images 3800 --json out.json
    python benchmarks/bench_gpu_extract.py --images 24 --lm-layers 2 --vision-layers 2 --device cpu
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def build(device: str, lm_layers: int, vision_layers: int):
    import torch
    from transformers import AutoModelForImageTextToText

    import vlms
    from bench_families import REAL

    spec = REAL["qwen2-vl"]
    cls = vlms.adapter_class(spec["tiny"])
    tok = cls.tiny_tokenizer()
    over = dict(spec["cfg"], num_hidden_layers=lm_layers)
    over[spec["vision_depth_key"]] = vision_layers
    cfg = cls.tiny_config(tok, **over)
    cfg.architectures = list(cls.architectures)
    model_cls = AutoModelForImageTextToText._model_mapping[type(cfg)]
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device itself (seconds, not minutes)
        model = model_cls._from_config(cfg, dtype=torch.bfloat16)
    proc = cls.tiny_processor(tok, **spec["processor"])
    return cls(model.eval(), proc, name="qwen2-vl-7b-random", source="tiny-qwen2-vl")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_loop(ad, ds, stims, batch_size: int, device: str) -> float:
    import torch

    from vlms.extract import choose_prompt

    sync(device)
    t = time.perf_counter()
    for s in range(0, len(stims), batch_size):
        part = stims[s:s + batch_size]
        imgs = [ds.image(x) for x in part]
        _ = [ds.mask(x) for x in part]
        b = ad.prepare(imgs, [choose_prompt(x, "completion") or "" for x in part])
        with torch.inference_mode():
            out = ad.model(**ad.to_model(b.inputs), logits_to_keep=1)
        out.logits.float().cpu()  # the loop's only result leaves the GPU each batch
    sync(device)
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3800)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lm-layers", type=int, default=28)
    ap.add_argument("--vision-layers", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--disk-fraction", type=float, default=0.5,
                    help="share of the free disk the store may take")
    ap.add_argument("--work", default=None, help="working folder (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from actstore import open_store
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.extract import ExtractConfig, choose_prompt, run_extract

    res: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "device": args.device, "batch_size": args.batch_size,
                 "lm_layers": args.lm_layers, "vision_layers": args.vision_layers}
    if args.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(0)
    import transformers
    res["transformers"] = transformers.__version__
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    try:
        t = time.perf_counter()
        ad = build(args.device, args.lm_layers, args.vision_layers)
        sync(args.device)
        res["build_s"] = time.perf_counter() - t
        res["params"] = sum(p.numel() for p in ad.model.parameters())
        log(f"built {res['params'] / 1e9:.2f} B params in {res['build_s']:.1f} s")

        # the paper's Squares at 336 px: 120 triples x 4 directions per 480 base items, each with
        # its twins; n base items so that the dataset holds at least the requested images
        t = time.perf_counter()
        probe_cfg = preset_config("squares-qwen2-vl", n=8)
        generate(probe_cfg, work / "probe_data", progress=False)
        per_base = len(read_dataset(work / "probe_data").stimuli) / 8
        n_base = int(np.ceil(args.images / max(per_base - 0.2, 1.0))) + 1
        from scenegen.presets import preset
        d = preset("squares-qwen2-vl")  # more than the 480 paper layouts: random positions
        d["n"] = n_base
        if n_base > 480:
            d["flat"] = dict(d["flat"], layout="random")
        from scenegen.config import GenerateConfig
        generate(GenerateConfig.from_dict(d), work / "data", progress=False)
        ds = read_dataset(work / "data")
        stims = list(ds.stimuli)[:args.images]
        res["generate_s"] = time.perf_counter() - t
        res["images_requested"] = len(stims)
        log(f"generated {len(ds.stimuli)} images ({n_base} base) in {res['generate_s']:.1f} s")

        b = ad.prepare([ds.image(stims[0])], [choose_prompt(stims[0], "completion") or ""])
        res["image_tokens"] = int(len(b.image_positions[0]))
        res["seq_len"] = int(b.seq_len)

        # warm-up: kernels, allocator, processor
        bare_loop(ad, ds, stims[:args.batch_size], args.batch_size, args.device)

        t_bare_all = bare_loop(ad, ds, stims, args.batch_size, args.device)
        res["bare_all_s"] = t_bare_all
        log(f"bare loop over {len(stims)} images: {t_bare_all:.1f} s")

        # how many images the store can hold here
        store = work / "store.zarr"
        free = shutil.disk_usage(work).free
        # float16 projector + (L+1) residual sites; x1.15 for the store's padded token slots and
        # labels (measured 1.09 on a cut build of the same geometry)
        per_img = int(1.15 * 2 * 3584 * (res["image_tokens"]
                                         + (args.lm_layers + 1) * res["seq_len"]))
        n_fit = int(free * args.disk_fraction // per_img)
        n_ext = min(len(stims), n_fit - n_fit % args.batch_size) if n_fit < len(stims) \
            else len(stims)
        res.update(disk_free_gib=free / 2**30, est_mib_per_image=per_img / 2**20,
                   images_extracted=n_ext)
        log(f"free disk {free / 2**30:.1f} GiB; store ~{per_img / 2**20:.1f} MiB/image; "
            f"extracting {n_ext} of {len(stims)} images")

        # the extraction data folder must hold exactly the extracted images: write a subset
        sub = work / "data_sub"
        _subset(ds, stims[:n_ext], sub)

        bare_n = bare_loop(ad, read_dataset(sub), list(read_dataset(sub).stimuli),
                           args.batch_size, args.device)
        torch.cuda.reset_peak_memory_stats() if args.device.startswith("cuda") else None
        t = time.perf_counter()
        r = run_extract(ExtractConfig(model="qwen2-vl-7b-random", data=str(sub),
                                      store=str(store), sites=("projector", "lm.resid"),
                                      batch_size=args.batch_size, store_dtype="float16",
                                      device=args.device),
                        progress=True, adapter=ad, echo=log)  # the bar's rate survives a cut-off
        os.sync()
        t_ext = time.perf_counter() - t
        bare_n2 = bare_loop(ad, read_dataset(sub), list(read_dataset(sub).stimuli),
                            args.batch_size, args.device)
        disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        res.update(extract_s=t_ext, written=r["written"], bare_n_s=[bare_n, bare_n2],
                   store_gib=disk / 2**30, store_mib_per_image=disk / max(n_ext, 1) / 2**20,
                   write_mb_s=disk / t_ext / 1e6)
        if args.device.startswith("cuda"):
            res["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        bare_med = float(np.mean([bare_n, bare_n2]))
        res["ratio"] = t_ext / bare_med
        res["projected_extract_s_requested"] = t_ext * len(stims) / max(n_ext, 1)
        res["projected_store_gib_requested"] = disk / max(n_ext, 1) * len(stims) / 2**30
        log(f"extract {n_ext} images: {t_ext:.1f} s ({n_ext / t_ext:.1f} img/s, "
            f"{res['write_mb_s']:.0f} MB/s, store {res['store_gib']:.1f} GiB); bare "
            f"{bare_n:.1f} / {bare_n2:.1f} s; ratio {res['ratio']:.2f}")

        t = time.perf_counter()
        st = open_store(str(store))
        q = st.select("qwen2-vl-7b-random", f"lm.resid.{args.lm_layers}", role="object").values
        res["query_s"] = time.perf_counter() - t
        res["query_shape"] = list(q.shape)
        log(f"role query lm.resid.{args.lm_layers} object: {q.shape} in {res['query_s']:.1f} s")
        res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


def _subset(ds, stims, out: Path) -> None:
    """A dataset folder holding only ``stims`` (hard links to the images, metadata filtered)."""
    import json as _json

    out.mkdir(parents=True, exist_ok=True)
    keep = {s.id for s in stims}
    root = Path(ds.root)
    for p in root.iterdir():
        if p.name == "metadata.jsonl":
            lines = [ln for ln in p.read_text().splitlines()
                     if ln.strip() and _json.loads(ln)["id"] in keep]
            (out / p.name).write_text("\n".join(lines) + "\n")
        elif p.is_dir():
            shutil.copytree(p, out / p.name, copy_function=os.link, dirs_exist_ok=True)
        elif p.name != "manifest.parquet":
            shutil.copy2(p, out / p.name)


if __name__ == "__main__":
    main()
