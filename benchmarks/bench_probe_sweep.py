"""Probe sweep at the paper's width: the torch engine on a synthetic site of the real shape.

Default shape = Qwen2-VL-7B's LM side at the paper's scale: 28,800 object-token rows x 3584
hidden x 29 layers, 3 classes (ordinal), 5 grouped folds, with the control task and the
position baseline. The rows come through the store query API (``select`` -> ``probes.dataset``)
of :class:`SyntheticSite`, which generates each layer's activations when asked (a planted
ordinal direction whose gain grows with depth, grid-position nuisance signals, unit noise), so
memory holds one layer's rows, as with a real store.

    python benchmarks/bench_probe_sweep.py                      # full shape (minutes)
    python benchmarks/bench_probe_sweep.py --layers 2 --rows 2880 --hidden 512   # quick look
    python benchmarks/bench_probe_sweep.py --sklearn-layers 1 --rows 1920        # + sklearn side by side

Prints a markdown table row per layer and a summary (wall time, peak RSS, load average).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLE_NAMES = ("pad", "object", "strip", "distractor", "background",
              "subject", "reference", "relation", "last", "text")


class SyntheticSite:
    """Store-like source of one site's object tokens (``select`` / ``labels`` / ``layers``)."""

    def __init__(self, *, rows: int, hidden: int, layers: int, tokens_per_sample: int = 40,
                 grid: int = 16, strength: float = 0.6, seed: int = 0):
        self.n_samples = rows // tokens_per_sample
        self.T, self.hidden, self.n_layers, self.grid = tokens_per_sample, hidden, layers, grid
        self.strength, self.seed = strength, seed
        rng = np.random.default_rng(seed)
        d = rng.normal(size=hidden)
        self.direction = (d / np.linalg.norm(d)).astype(np.float32)
        pos = rng.normal(size=(grid * grid, hidden)) * 0.5
        self.pos_vec = (pos - np.outer(pos @ self.direction, self.direction)).astype(np.float32)
        cells = np.stack([np.sort(rng.choice(grid * grid, self.T, replace=False))
                          for _ in range(self.n_samples)])
        self.row, self.col = np.divmod(cells, grid)
        rank = np.argsort(np.argsort(self.col + self.row * 1e-3, axis=1), axis=1)
        self.ordinal = np.minimum(rank * 3 // self.T, 2).astype(np.int8)
        self.cells = cells
        self.sample_id = np.array([f"s{i:06d}" for i in range(self.n_samples)])
        self.scene_id = np.array([f"scene{i // 2:06d}" for i in range(self.n_samples)])

    models = property(lambda self: ["synthetic"])
    roles = property(lambda self: dict(enumerate(ROLE_NAMES)))

    def layers(self, model=None, site=None):
        return list(range(self.n_layers))

    def labels(self, model=None):
        import pandas as pd

        return pd.DataFrame({"sample_id": self.sample_id, "scene_id": self.scene_id})

    def select(self, model=None, site="lm.resid", layer=0, role="object", where=None):
        rng = np.random.default_rng([self.seed, layer])
        x = rng.standard_normal((self.n_samples, self.T, self.hidden), dtype=np.float32)
        gain = self.strength * (layer + 1) / self.n_layers
        x += (gain * (self.ordinal.astype(np.float32) - 1))[..., None] * self.direction
        x += self.pos_vec[self.cells]
        tok = ("sample", "token")
        return xr.DataArray(
            x, dims=("sample", "token", "hidden"),
            coords={"sample": np.arange(self.n_samples), "sample_id": ("sample", self.sample_id),
                    "scene_id": ("sample", self.scene_id),
                    "row": (tok, self.row.astype(np.int16)), "col": (tok, self.col.astype(np.int16)),
                    "ordinal": (tok, self.ordinal), "entity": (tok, (self.ordinal + 1).astype(np.int16)),
                    "role": (tok, np.ones(self.ordinal.shape, np.int8)),
                    "pad": (tok, np.zeros(self.ordinal.shape, bool))},
            attrs={"model": "synthetic", "site": site, "layer": layer})


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=28_800)
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--layers", type=int, default=29)
    ap.add_argument("--run-layers", type=int, default=None,
                    help="fit only the last N of the --layers (a quick per-layer timing)")
    ap.add_argument("--strength", type=float, default=2.0, help="planted signal at the last layer")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--device", default=None)
    ap.add_argument("--warm", action="store_true",
                    help="start each layer from the previous layer's weights (default: from zero)")
    ap.add_argument("--sklearn-layers", type=int, default=0,
                    help="also fit this many layers (the last ones) with the sklearn engine")
    a = ap.parse_args(argv)

    from probes.config import ProbeConfig, SweepConfig
    from probes.sweep import sweep

    site = SyntheticSite(rows=a.rows, hidden=a.hidden, layers=a.layers, strength=a.strength)
    run = tuple(range(a.layers))[-(a.run_layers or a.layers):]
    load0 = _load()
    cfg = SweepConfig(model="synthetic", site="lm.resid", layers=run,
                      roles=("object",), scheduler="serial", engine="torch",
                      layers_per_block=a.layers_per_block, threads=a.threads,
                      max_iter=a.max_iter, device=a.device, warm_start=a.warm)
    t0, c0 = time.perf_counter(), time.process_time()
    table = sweep(site, cfg, ProbeConfig(), progress=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
          f"{os.cpu_count()} cores, threads={a.threads}, load avg before {load0}, after {_load()}")
    print(f"shape: {site.n_samples * site.T} rows x {a.hidden} x {a.layers} layers, 3 classes, "
          f"5 grouped folds, control task + position baseline; torch engine, "
          f"layers_per_block={a.layers_per_block}, max_iter={a.max_iter}, "
          f"warm start={'yes' if a.warm else 'no'}")
    print(f"wall {wall:.1f} s ({wall / len(run):.1f} s/layer over {len(run)} layers), CPU "
          f"{cpu:.1f} s ({cpu / len(run):.1f} s/layer), peak RSS {rss:.0f} MiB")
    print("| layer | accuracy | control | selectivity | position | L-BFGS iterations (max over "
          "models) | passes over rows | all converged | wall s | CPU s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for _, r in table.iterrows():
        print(f"| {r['layer']} | {r['accuracy']:.3f} | {r['control_accuracy']:.3f} | "
              f"{r['selectivity']:.3f} | {r['position_accuracy']:.3f} | {r['n_iter']} | "
              f"{r['n_eval']} | {r['converged']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |")
    if a.sklearn_layers:
        import dataclasses

        ls = tuple(range(a.layers - a.sklearn_layers, a.layers))
        t1 = time.perf_counter()
        sk = sweep(site, dataclasses.replace(cfg, engine="sklearn", layers=ls), ProbeConfig(),
                   progress=True)
        t_sk = time.perf_counter() - t1
        tt = table.set_index("layer")
        print(f"sklearn, {len(ls)} layer(s): {t_sk:.1f} s ({t_sk / len(ls):.1f} s/layer)")
        for _, r in sk.iterrows():
            print(f"  layer {r['layer']}: sklearn accuracy {r['accuracy']:.4f} vs torch "
                  f"{tt.loc[r['layer'], 'accuracy']:.4f}; control {r['control_accuracy']:.4f} vs "
                  f"{tt.loc[r['layer'], 'control_accuracy']:.4f}")


if __name__ == "__main__":
    main()
