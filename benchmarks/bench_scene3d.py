"""Benchmark of the ``scene3d`` generator against a bare pyrender loop of the same scenes.

For each image size (448, 896) and process count (1, 2; ``LP_NUM_THREADS=1`` per process, one
OffscreenRenderer per process), every process renders a disjoint share of the units after a
warm-up, synchronised by a barrier, and we time:

(a) ``write``: the generator writing a dataset through :func:`scenegen.dataset.write_dataset`
    (sampling, geometry, RGB + depth + SEG renders, mask checks, records, PNG/NPY encoding);
(a') ``unit``: the generator alone (``gen.unit(i)``, nothing written);
(b) ``bare``: a bare pyrender loop over exactly the scenes (a) rendered, recorded during (a):
    per image, build a new ``pyrender.Scene`` (``Mesh.from_trimesh`` per object, textured ground,
    backdrop, light, camera), render RGB + depth, render the SEG mask.

Rates are images per second (an image = RGB + depth + instance mask; a unit is a base scene
plus its twins, 7 images with 3 targets and all twin kinds). The ratio is (a)'s time over (b)'s
for the same images (goal <= 1.3).

Usage::

    .venv/bin/python benchmarks/bench_scene3d.py [--units-448 6] [--units-896 3] [--append]

``--append`` adds a section to ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


class _Subset:
    """Units ``k, k + p, k + 2p, ...`` of a generator (one process's share)."""

    def __init__(self, gen, ids):
        self.gen, self.ids = gen, list(ids)

    def __len__(self):
        return len(self.ids)

    def unit(self, i):
        return self.gen.unit(self.ids[i])

    def extras(self):
        return []


def _bare_render(specs, heights):
    """Render ``specs`` with plain pyrender calls; returns seconds."""
    import numpy as np
    import pyrender

    from scenegen import render as R

    r = R.get_renderer(specs[0].size, specs[0].size)
    textures = [R.ground_texture(s.background) for s in specs]  # data prep, not rendering
    t0 = time.perf_counter()
    for spec, tex in zip(specs, textures):
        scene = pyrender.Scene(bg_color=(*np.array(spec.background.sky_top) / 255.0, 1.0),
                               ambient_light=(spec.ambient,) * 3)
        seg = {}
        if tex is None:
            gm = pyrender.MetallicRoughnessMaterial(
                baseColorFactor=(*[c / 255 for c in spec.background.ground_rgb], 1.0))
        else:
            gm = pyrender.MetallicRoughnessMaterial(
                baseColorTexture=pyrender.Texture(source=tex, source_channels="RGB"))
        seg[scene.add(R._quad(40.0, 40.0, gm, horizontal=True))] = (0, 0, 0)
        if spec.background.kind != "plain":
            sm = pyrender.MetallicRoughnessMaterial(baseColorFactor=(0.0, 0.0, 0.0, 1.0),
                                                    emissiveFactor=(1.0, 1.0, 1.0))
            cols = np.array([spec.background.sky_bottom] * 2 + [spec.background.sky_top] * 2,
                            np.float32) / 255
            seg[scene.add(R._quad(60.0, 24.0, sm, horizontal=False, colors=cols),
                          pose=R._translation((0, 10.0, -10.0)))] = (0, 0, 0)
        for o in spec.objects:
            mat = pyrender.MetallicRoughnessMaterial(
                baseColorFactor=(*[c / 255.0 for c in o.rgb], 1.0),
                metallicFactor=o.metallic, roughnessFactor=o.roughness)
            mesh = pyrender.Mesh.from_trimesh(R.unit_trimesh(o.shape, heights.get(o.shape, 1.0)),
                                              material=mat, smooth=o.smooth)
            c, s = np.cos(o.yaw), np.sin(o.yaw)
            pose = np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1.0]])
            pose[:3, :3] *= o.size
            pose[:3, 3] = o.position
            seg[scene.add(mesh, pose=pose)] = (o.mask_id,) * 3
        d = np.asarray(spec.light_dir)
        scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=spec.light_intensity),
                  pose=R._look_along(d / np.linalg.norm(d)))
        scene.add(pyrender.PerspectiveCamera(yfov=spec.yfov, aspectRatio=1.0, znear=0.1,
                                             zfar=100.0), pose=spec.camera_pose)
        r.render(scene)
        r.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map=seg)
    return time.perf_counter() - t0


def _png_level(level: int) -> None:
    """Make write_dataset encode PNGs at zlib ``level`` (what-if; the dataset default is 6)."""
    import io

    from PIL import Image

    from scenegen import dataset

    def png(arr):
        buf = io.BytesIO()
        img = Image.fromarray(arr, mode="I;16") if arr.dtype.name == "uint16" else \
            Image.fromarray(arr)
        img.save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    dataset._png_bytes = png


def _worker(k, procs, size, units, barrier, out_q, tmp, png_level=None):
    os.environ["LP_NUM_THREADS"] = "1"
    import numpy as np  # noqa: F401

    from scenegen import scene3d
    from scenegen.dataset import write_dataset

    if png_level is not None:
        _png_level(png_level)

    cfg = scene3d.Scene3DConfig(image_size=size)
    gen = scene3d.Scene3DGenerator(cfg, seed=123, n=10_000)
    gen.unit(9_999)  # warm-up: GL context, shaders, mesh cache
    specs = []
    real = scene3d.render

    def recording(spec, **kw):
        specs.append(spec)
        return real(spec, **kw)

    ids = range(k, units * procs, procs)
    res = {}
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in ids:
        gen.unit(i)
    res["unit"], res["unit_cpu"] = time.perf_counter() - t0, time.process_time() - c0
    barrier.wait()
    scene3d.render = recording
    sub = _Subset(gen, ids)
    t0, c0 = time.perf_counter(), time.process_time()
    write_dataset(sub, Path(tmp) / f"w{k}", config={"bench": k, "size": size}, progress=False)
    res["write"], res["write_cpu"] = time.perf_counter() - t0, time.process_time() - c0
    res["written"] = len(list((Path(tmp) / f"w{k}" / "images").iterdir()))
    scene3d.render = real
    barrier.wait()
    c0 = time.process_time()
    res["bare"] = _bare_render(specs, gen.sampler.heights)
    res["bare_cpu"] = time.process_time() - c0
    res["images"] = len(specs)
    from scenegen import render

    res["backend"] = f"{render.backend_in_use()} / {render.gl_renderer_string()}"
    out_q.put(res)


def run(size: int, procs: int, units: int, png_level: int | None = None) -> dict:
    """Time (a), (a') and (b) with ``procs`` processes of ``units`` units each."""
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(procs), ctx.Queue()
    tmp = tempfile.mkdtemp(prefix="bench3d-")
    try:
        ps = [ctx.Process(target=_worker, args=(k, procs, size, units, barrier, q, tmp, png_level))
              for k in range(procs)]
        for p in ps:
            p.start()
        rs = [q.get(timeout=1800) for _ in ps]
        for p in ps:
            p.join()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    images = sum(r["written"] for r in rs)  # images in the datasets
    renders = sum(r["images"] for r in rs)  # renders, rejected attempts included
    wall = {key: max(r[key] for r in rs) for key in ("write", "unit", "bare")}  # slowest process
    out = {"size": size, "procs": procs, "images": images, "renders": renders,
           "backend": rs[0]["backend"]}
    out["write"], out["unit"] = images / wall["write"], images / wall["unit"]
    out["bare"] = renders / wall["bare"]
    out["ratio_write"] = wall["write"] / wall["bare"]
    out["ratio_unit"] = wall["unit"] / wall["bare"]
    # CPU seconds (all threads of each process, summed over processes): unlike wall time this
    # does not depend on what else runs on a shared machine
    cpu = {key: sum(r[key + "_cpu"] for r in rs) for key in ("write", "unit", "bare")}
    out["cpu_write"], out["cpu_unit"] = images / cpu["write"], images / cpu["unit"]
    out["cpu_bare"] = renders / cpu["bare"]
    out["cpu_ratio_write"] = cpu["write"] / cpu["bare"]
    out["cpu_ratio_unit"] = cpu["unit"] / cpu["bare"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units-448", type=int, default=6, help="units per process at 448 px")
    ap.add_argument("--units-896", type=int, default=3, help="units per process at 896 px")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--png-level", type=int, default=None,
                    help="what-if: PNG zlib level for (a) (write_dataset's own default is 6)")
    ap.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    rows = []
    for size, units in ((448, a.units_448), (896, a.units_896)):
        for procs in a.procs:
            load = os.getloadavg()[0]
            r = run(size, procs, units, a.png_level)
            r["load"] = load
            rows.append(r)
            print(f"{size}px x{procs}: write {r['write']:.1f}/s  unit {r['unit']:.1f}/s  "
                  f"bare {r['bare']:.1f}/s  ratio {r['ratio_write']:.2f} "
                  f"(unit only {r['ratio_unit']:.2f}); per CPU s: write {r['cpu_write']:.1f} unit "
                  f"{r['cpu_unit']:.1f} bare {r['cpu_bare']:.1f} ratio {r['cpu_ratio_write']:.2f} "
                  f"({r['cpu_ratio_unit']:.2f})  [{r['images']} images, {r['renders']} renders, "
                  f"load {load:.1f}]",
                  flush=True)
    table = ["| size | procs | images (renders) | (a) write_dataset img/s | (a') unit() img/s "
             "| (b) bare img/s | wall (a)/(b) | wall (a')/(b) | img per CPU s (a) / (a') / (b) "
             "| CPU (a)/(b) | CPU (a')/(b) | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['size']}² | {r['procs']} | {r['images']} ({r['renders']}) | "
                     f"{r['write']:.1f} | {r['unit']:.1f} | {r['bare']:.1f} | "
                     f"{r['ratio_write']:.2f} | {r['ratio_unit']:.2f} | "
                     f"{r['cpu_write']:.1f} / {r['cpu_unit']:.1f} / {r['cpu_bare']:.1f} | "
                     f"{r['cpu_ratio_write']:.2f} | {r['cpu_ratio_unit']:.2f} | "
                     f"{r['load']:.1f} |")
    print("\n".join(table))
    if a.append:
        head = "" if RESULTS.exists() else "# Benchmark results\n"
        machine = (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
                   f"no GPU; GL: {rows[0]['backend']}; LP_NUM_THREADS=1 per process")
        section = [head, f"\n## scenegen 3D\n",
                   f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine}. "
                   "Command: `.venv/bin/python benchmarks/bench_scene3d.py --append`. "
                   "An image = RGB + depth + instance mask; default config (3 targets, 0-2 "
                   "distractors, all twins: 7 images per unit, shadows off)"
                   + (f"; PNG level {a.png_level} what-if" if a.png_level is not None else "")
                   + ".\n", *[
                       t + "\n" for t in table]]
        with open(RESULTS, "a") as f:
            f.write("".join(section))


if __name__ == "__main__":
    main()
