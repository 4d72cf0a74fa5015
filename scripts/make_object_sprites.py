"""Render the default Objects-task sprites (``scenegen/data/objects/*.png``) with our own renderer.

The paper's Objects task uses 8 stickpng thumbnails that cannot be downloaded here, so the toolkit
ships 8 objects of its own: the 6 shapes of the ``scene3d`` vocabulary (``scenegen/data/
vocabulary.json``) plus two more trimesh primitives (a square pyramid and a triangular prism, see
:func:`scenegen.render.unit_trimesh`), each in one vocabulary colour, rendered offscreen (pyrender,
EGL or OSMesa) on a transparent background and saved as RGBA PNGs. The alpha channel is the SEG
pass's instance mask (exactly 0 or 255), so the generator's masks are exact.

Run it once after changing the list below (the PNGs are committed; generation never needs GL)::

    PYOPENGL_PLATFORM=egl LP_NUM_THREADS=1 python scripts/make_object_sprites.py [--out DIR]

Renders are 4x supersampled (``RENDER_PX``) and reduced to ``SPRITE_PX`` with a box filter on
premultiplied colour; alpha is re-thresholded at 50 % after reduction.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (file name = object name, mesh shape, vocabulary colour, yaw deg, pitch of camera deg)
OBJECTS = (
    ("cube", "cube", "red", 30.0),
    ("sphere", "sphere", "blue", 0.0),
    ("cylinder", "cylinder", "green", 0.0),
    ("cone", "cone", "yellow", 0.0),
    ("ring", "torus", "purple", 0.0),
    ("capsule", "capsule", "orange", 0.0),
    ("pyramid", "pyramid", "cyan", 30.0),
    ("prism", "prism", "pink", 20.0),
)
SPRITE_PX = 192
RENDER_PX = 4 * SPRITE_PX


def render_sprite(shape: str, rgb, yaw_deg: float) -> np.ndarray:
    """``(RENDER_PX, RENDER_PX, 4)`` uint8: lit object on transparent black, alpha = its mask."""
    from scenegen import render as R
    from scenegen.vocabulary import load_vocabulary

    r = R.get_renderer(RENDER_PX, RENDER_PX)
    import pyrender

    vocab = load_vocabulary()
    height = vocab.shapes[shape].height if shape in vocab.shapes else 1.0
    smooth = vocab.shapes[shape].smooth if shape in vocab.shapes else False
    scene = pyrender.Scene(bg_color=(0, 0, 0, 0), ambient_light=(0.35,) * 3)
    mat = pyrender.MetallicRoughnessMaterial(baseColorFactor=(*[c / 255 for c in rgb], 1.0),
                                             metallicFactor=0.0, roughnessFactor=0.45)
    mesh = pyrender.Mesh.from_trimesh(R.unit_trimesh(shape, height), material=mat, smooth=smooth)
    yaw = np.radians(yaw_deg)
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1.0]])
    node = scene.add(mesh, pose=pose)
    d = np.array((-0.4, -1.0, -0.6))
    scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0),
              pose=R._look_along(d / np.linalg.norm(d)))
    # camera 25 deg above the horizon, looking at the origin; the object fills ~85 % of the frame
    pitch = np.radians(25.0)
    dist = 2.6
    eye = np.array([0.0, np.sin(pitch) * dist, np.cos(pitch) * dist])
    z = eye / np.linalg.norm(eye)
    x = np.cross((0.0, 1.0, 0.0), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    cam_pose = np.eye(4)
    cam_pose[:3, 0], cam_pose[:3, 1], cam_pose[:3, 2], cam_pose[:3, 3] = x, y, z, eye
    scene.add(pyrender.PerspectiveCamera(yfov=np.radians(30.0), aspectRatio=1.0), pose=cam_pose)
    color, _ = r.render(scene, flags=pyrender.RenderFlags.RGBA)
    seg, _ = r.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map={node: (1, 1, 1)})
    alpha = (seg[..., 0] > 0).astype(np.uint8) * 255
    return np.dstack([color[..., :3], alpha])


def reduce(rgba: np.ndarray, px: int) -> np.ndarray:
    """Box-filter ``rgba`` down to ``px`` (premultiplied colour), alpha thresholded at 50 %."""
    f = rgba.shape[0] // px
    a = rgba[..., 3:].astype(np.float64) / 255
    pre = rgba[..., :3].astype(np.float64) * a
    pre = pre.reshape(px, f, px, f, 3).mean((1, 3))
    cov = a.reshape(px, f, px, f, 1).mean((1, 3))
    rgb = np.where(cov > 0, pre / np.maximum(cov, 1e-9), 0)
    alpha = (cov[..., 0] >= 0.5).astype(np.uint8) * 255
    rgb = np.where(alpha[..., None] > 0, np.clip(np.rint(rgb), 0, 255), 0).astype(np.uint8)
    return np.dstack([rgb, alpha])


def crop_square(rgba: np.ndarray, margin: float = 0.04) -> np.ndarray:
    """Centre the object's alpha box in a square crop with ``margin`` on the long side."""
    ys, xs = np.nonzero(rgba[..., 3])
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(max(x1 - x0, y1 - y0) * (1 + 2 * margin))
    side += (-side) % 4
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    out = np.zeros((side, side, 4), np.uint8)
    sx0, sy0 = cx - side // 2, cy - side // 2
    src = rgba[max(sy0, 0):sy0 + side, max(sx0, 0):sx0 + side]
    out[max(-sy0, 0):max(-sy0, 0) + src.shape[0], max(-sx0, 0):max(-sx0, 0) + src.shape[1]] = src
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "scenegen" / "data" / "objects"))
    args = ap.parse_args(argv)
    from scenegen.vocabulary import load_vocabulary

    colors = load_vocabulary().colors
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, shape, color, yaw in OBJECTS:
        big = crop_square(render_sprite(shape, colors[color], yaw))
        big = np.asarray(Image.fromarray(big).resize((RENDER_PX, RENDER_PX), Image.NEAREST))
        sprite = reduce(big, SPRITE_PX)
        Image.fromarray(sprite, "RGBA").save(out / f"{name}.png", optimize=True)
        print(f"{name}: {shape} {color} -> {out / (name + '.png')}")
    (out / "SOURCE.json").write_text(json.dumps({
        "made_by": "scripts/make_object_sprites.py",
        "objects": [{"name": n, "shape": s, "color": c, "yaw_deg": y} for n, s, c, y in OBJECTS],
        "sprite_px": SPRITE_PX, "render_px": RENDER_PX}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
