"""GPU extraction at full size: Qwen2-VL-7B's architecture (random weights) into one store.

Issue 14's GPU benchmark. Builds the published Qwen2-VL-7B-Instruct config (28 LM layers of
3584, 32 vision blocks of 1280; random bfloat16 weights made on the GPU, no download; tiny local
tokenizer, ids < 512), generates the paper's Squares stimuli at the paper's 336 px geometry
(12x12 merged image tokens, the size the paper feeds What'sUp images to Qwen) and runs, on the
same ``--images`` images (a fixed count that fits the disk and a few minutes; about 40 MiB per
image are stored):

* **disk**: ``np.save`` of batch-sized float16 arrays, one file per (batch, layer) as the store
  has, then ``sync``: the disk's own write rate (the ceiling of any store writer here);
* **bare**: read image + mask, ``prepare``, ``model(**inputs, logits_to_keep=1)``, batched like
  extraction (a plain forward loop, nothing kept), before and after the extraction;
* **extract**: ``run_extract`` with the projector and every ``lm.resid`` site (29) into one
  float16 store (``spatialbind extract --sites projector,lm.resid``), the store synced to disk
  before the clock stops; ratio = extract / mean(bare);
* **extract-zarr** (``--compare-zarr M``): the same on the first M images with every shard
  written through zarr and one write in flight (the write path before the direct shard writer),
  beside a bare loop over the same M images.

Results go to ``--json`` after every phase (a run cut off by a time limit keeps what it has),
and a line per ``--log-every`` batches gives the rate while extraction runs.

    python benchmarks/bench_gpu_extract.py --images 384 --compare-zarr 128 --json out.json
    python benchmarks/bench_gpu_extract.py --images 32 --compare-zarr 16 --lm-layers 2 \
        --vision-layers 2 --device cpu --batch-size 8
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


def disk_ceiling(work: Path, n_batches: int, batch_size: int, sites: int, image_tokens: int,
                 seq: int, hidden: int) -> dict:
    """np.save of what a batch stores (one (batch, image_tokens, hidden) array and ``sites``
    (batch, seq, hidden) arrays, float16, one file each), ``n_batches`` times, then sync: what
    the disk takes with no store in the way."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch_size, seq, hidden), dtype=np.float32).astype(np.float16)
    d = work / "disk_probe"
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for b in range(n_batches):
        np.save(d / f"{b}.projector.npy", a[:, :image_tokens])
        for li in range(sites):
            np.save(d / f"{b}.{li}.npy", a)
    t_cache = time.perf_counter() - t
    os.sync()
    t_all = time.perf_counter() - t
    nbytes = sum(p.stat().st_size for p in d.iterdir())
    shutil.rmtree(d)
    os.sync()
    return {"bytes": nbytes, "write_s": t_cache, "durable_s": t_all,
            "mb_s": nbytes / t_all / 1e6, "to_cache_mb_s": nbytes / t_cache / 1e6}


class _RateLog:
    """``run_extract``'s per-batch callback: a plain line with the rate every ``every`` batches
    (a log file gets no progress bar)."""

    def __init__(self, log, total: int, every: int):
        self.log, self.total, self.every = log, total, every
        self.n = self.batches = 0
        self.t0 = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.n += n
        self.batches += 1
        if self.batches % self.every == 0 or self.n >= self.total:
            dt_ = time.perf_counter() - self.t0
            self.log(f"  extract {self.n}/{self.total} images, {dt_:.1f} s, "
                     f"{self.n / max(dt_, 1e-9):.2f} img/s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=384,
                    help="images of both loops (shrunk to fit --disk-fraction of the free disk)")
    ap.add_argument("--compare-zarr", type=int, default=128,
                    help="also extract the first M images through zarr's writer (0: skip)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lm-layers", type=int, default=28)
    ap.add_argument("--vision-layers", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--disk-fraction", type=float, default=0.5,
                    help="share of the free disk the store may take")
    ap.add_argument("--disk-probe-batches", type=int, default=2,
                    help="batches of np.save for the disk's ceiling (0: skip)")
    ap.add_argument("--log-every", type=int, default=4, help="batches between rate lines")
    ap.add_argument("--work", default=None, help="working folder (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from actstore import open_store
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.extract import WRITES_IN_FLIGHT, ExtractConfig, choose_prompt, run_extract

    res: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "device": args.device, "batch_size": args.batch_size,
                 "lm_layers": args.lm_layers, "vision_layers": args.vision_layers,
                 "writes_in_flight": WRITES_IN_FLIGHT}
    if args.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(0)
    import transformers
    import zarr
    res["transformers"], res["zarr_version"] = transformers.__version__, zarr.__version__
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))

    def extract(sub: Path, store: Path, n: int, **write_options) -> tuple[float, dict]:
        torch.cuda.reset_peak_memory_stats() if args.device.startswith("cuda") else None
        t = time.perf_counter()
        r = run_extract(ExtractConfig(model="qwen2-vl-7b-random", data=str(sub),
                                      store=str(store), sites=("projector", "lm.resid"),
                                      batch_size=args.batch_size, store_dtype="float16",
                                      device=args.device),
                        progress=False, adapter=ad, echo=log, write_options=write_options,
                        on_batch=_RateLog(log, n, args.log_every))
        os.sync()  # the store is on the disk before the clock stops
        return time.perf_counter() - t, r

    try:
        t = time.perf_counter()
        ad = build(args.device, args.lm_layers, args.vision_layers)
        sync(args.device)
        res["build_s"] = time.perf_counter() - t
        res["params"] = sum(p.numel() for p in ad.model.parameters())
        log(f"built {res['params'] / 1e9:.2f} B params in {res['build_s']:.1f} s")

        # the paper's Squares at 336 px, each base item with its twins; enough base items for
        # the requested images (random layouts past the preset's 480 paper layouts)
        t = time.perf_counter()
        probe_cfg = preset_config("squares-qwen2-vl", n=8)
        generate(probe_cfg, work / "probe_data", progress=False)
        per_base = len(read_dataset(work / "probe_data").stimuli) / 8
        n_base = int(np.ceil(args.images / max(per_base - 0.2, 1.0))) + 1
        from scenegen.presets import preset
        d = preset("squares-qwen2-vl")
        d["n"] = n_base
        if n_base > 480:
            d["flat"] = dict(d["flat"], layout="random")
        from scenegen.config import GenerateConfig
        generate(GenerateConfig.from_dict(d), work / "data", progress=False)
        ds = read_dataset(work / "data")
        stims = list(ds.stimuli)[:args.images]
        res["generate_s"] = time.perf_counter() - t
        log(f"generated {len(ds.stimuli)} images ({n_base} base) in {res['generate_s']:.1f} s")

        b = ad.prepare([ds.image(stims[0])], [choose_prompt(stims[0], "completion") or ""])
        res["image_tokens"] = int(len(b.image_positions[0]))
        res["seq_len"] = int(b.seq_len)

        # how many images the store can hold here (float16 projector + L+1 residual sites;
        # x1.15 for the store's padded token slots and labels)
        free = shutil.disk_usage(work).free
        per_img = int(1.15 * 2 * 3584 * (res["image_tokens"]
                                         + (args.lm_layers + 1) * res["seq_len"]))
        n_fit = int(free * args.disk_fraction // per_img)
        n = min(len(stims), n_fit)
        n = max(n - n % args.batch_size, min(args.batch_size, len(stims)))  # whole batches
        stims = stims[:n]
        res.update(images_requested=args.images, images=n, disk_free_gib=free / 2**30,
                   est_mib_per_image=per_img / 2**20)
        log(f"free disk {free / 2**30:.1f} GiB; store ~{per_img / 2**20:.1f} MiB/image; "
            f"{n} images in both loops")
        save()

        if args.disk_probe_batches:
            res["disk"] = disk_ceiling(work, args.disk_probe_batches, args.batch_size,
                                       args.lm_layers + 1, res["image_tokens"],
                                       res["seq_len"], 3584)
            log(f"disk: np.save {res['disk']['bytes'] / 1e9:.2f} GB in "
                f"{res['disk']['durable_s']:.1f} s with sync = {res['disk']['mb_s']:.0f} MB/s "
                f"({res['disk']['to_cache_mb_s']:.0f} MB/s into the page cache)")
            save()

        sub = work / "data_sub"  # the extraction data folder holds exactly these images
        _subset(ds, stims, sub)
        sds = read_dataset(sub)
        sstims = list(sds.stimuli)
        bare_loop(ad, sds, sstims[:args.batch_size], args.batch_size, args.device)  # warm-up
        bare1 = bare_loop(ad, sds, sstims, args.batch_size, args.device)
        res["bare_s"] = [bare1]
        log(f"bare loop over {n} images: {bare1:.1f} s ({n / bare1:.1f} img/s)")
        save()

        store = work / "store.zarr"
        t_ext, r = extract(sub, store, n)
        disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        res.update(extract_s=t_ext, written=r["written"], store_gib=disk / 2**30,
                   store_mib_per_image=disk / max(n, 1) / 2**20, write_mb_s=disk / t_ext / 1e6,
                   extract_img_s=n / t_ext)
        if args.device.startswith("cuda"):
            res["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        save()
        bare2 = bare_loop(ad, sds, sstims, args.batch_size, args.device)
        res["bare_s"].append(bare2)
        res["ratio"] = t_ext / float(np.mean(res["bare_s"]))
        log(f"extract {n} images: {t_ext:.1f} s ({n / t_ext:.2f} img/s, "
            f"{res['write_mb_s']:.0f} MB/s, store {res['store_gib']:.1f} GiB); bare "
            f"{bare1:.1f} / {bare2:.1f} s; ratio {res['ratio']:.2f}")
        save()

        t = time.perf_counter()
        st = open_store(str(store))
        q = st.select("qwen2-vl-7b-random", f"lm.resid.{args.lm_layers}", role="object").values
        res["query_s"] = time.perf_counter() - t
        res["query_shape"] = list(q.shape)
        del q, st
        log(f"role query lm.resid.{args.lm_layers} object: {res['query_shape']} in "
            f"{res['query_s']:.1f} s")
        shutil.rmtree(store)
        os.sync()
        save()

        m = min(args.compare_zarr, n)
        m = max(m - m % args.batch_size, min(m, args.batch_size))
        if m > 0:
            subm = work / "data_sub_zarr"
            _subset(sds, sstims[:m], subm)
            mds = read_dataset(subm)
            bare_m = bare_loop(ad, mds, list(mds.stimuli), args.batch_size, args.device)
            t_z, _ = extract(subm, work / "store_zarr.zarr", m, direct=False, in_flight=1)
            res["zarr_writer"] = {"images": m, "bare_s": bare_m, "extract_s": t_z,
                                  "extract_img_s": m / t_z, "ratio": t_z / bare_m}
            res["direct_over_zarr_img_s"] = (res["extract_img_s"]
                                             / res["zarr_writer"]["extract_img_s"])
            log(f"zarr writer, {m} images: extract {t_z:.1f} s ({m / t_z:.2f} img/s), bare "
                f"{bare_m:.1f} s, ratio {t_z / bare_m:.2f}; direct writer "
                f"{res['direct_over_zarr_img_s']:.2f}x its images/s")
            shutil.rmtree(work / "store_zarr.zarr")
            save()
        res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    save()
    print(json.dumps(res, indent=1))


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
