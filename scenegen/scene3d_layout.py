"""Sampling and arranging the objects of one ``scene3d`` scene (pure numpy; no GL).

:class:`Sampler` draws a :class:`Scene` (targets, distractors, background, light, camera) from a
``numpy.random.Generator`` and checks it in camera space with :mod:`scenegen.geometry`; it also
derives the twins' object lists (outer targets swapped, attributes criss-crossed, one target
centred). :mod:`scenegen.scene3d` renders and labels what this module places.

World frame: x right, y up, z towards the default camera; ground plane ``y = 0``. A target's
*slot* is its intended place along the axis (0 = leftmost / topmost / nearest); a scene is kept
only if the geometric ordinals equal the slots and no neighbouring pair is ambiguous.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import geometry as geo
from .render import BackgroundSpec, ObjectSpec, SceneSpec
from .vocabulary import load_vocabulary


@dataclass
class Placed3D:
    """One object placed in the world."""

    mask_id: int
    role: str
    shape: str
    color: str
    rgb: tuple[int, int, int]
    material: str
    metallic: float
    roughness: float
    smooth: bool
    height: float
    """Relative height of the shape (vocabulary); the object is ``size * height`` tall."""
    size: float
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    yaw: float = 0.0
    slot: int | None = None
    base_ordinal: int | None = None

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def radius(self) -> float:
        """Radius of the ground footprint (bounding circle)."""
        return 0.5 * self.size * (np.sqrt(2.0) if self.shape == "cube" else 1.0)

    @property
    def half(self) -> tuple[float, float, float]:
        r = self.radius
        return (r, 0.5 * self.size * self.height, r)

    def cam_box(self, pose: np.ndarray) -> geo.CamBox:
        return geo.camera_box(self.position, self.half, pose)

    def copy(self, **kw) -> "Placed3D":
        kw.setdefault("position", np.array(self.position, dtype=float))
        return dataclasses.replace(self, **kw)


ATTRS = ("shape", "color", "rgb", "material", "metallic", "roughness", "smooth", "height")


@dataclass
class Scene:
    """A sampled scene: everything a unit's items share."""

    axis: str
    vertical_mode: str | None
    targets: list[Placed3D]
    distractors: list[Placed3D]
    background: BackgroundSpec
    camera_pose: np.ndarray
    camera: dict[str, float]
    look_at: np.ndarray
    light_dir: tuple[float, float, float]
    light_intensity: float
    anchors: list[tuple[float, float]]
    """(x, z) of each slot (horizontal / depth) or of the column (vertical, one entry)."""
    gaps: list[float]
    """Vertical gaps between neighbouring targets of a column, bottom to top."""

    def factors(self, *, attempt: int, token_px: int | None) -> dict[str, Any]:
        return {
            "layout": self.axis,
            "vertical_mode": self.vertical_mode,
            "background": self.background.kind,
            "light": {"direction": [round(v, 4) for v in self.light_dir],
                      "intensity": round(self.light_intensity, 4)},
            "camera": {**{k: round(v, 6) for k, v in self.camera.items()},
                       "look_at": [round(float(v), 6) for v in self.look_at]},
            "n_targets": len(self.targets),
            "n_distractors": len(self.distractors),
            "colors": [t.color for t in sorted(self.targets, key=lambda t: t.slot)],
            "snap_token_px": token_px,
            "attempts": attempt,
        }


class Sampler:
    """Draws scenes for a :class:`~scenegen.scene3d.Scene3DConfig`."""

    def __init__(self, config):
        self.cfg = config
        self.vocab = load_vocabulary(config.vocabulary)
        self.heights = {k: s.height for k, s in self.vocab.shapes.items()}
        v, c = self.vocab, config
        self.shapes = v.check("shapes", c.shapes, "scene3d.shapes")
        self.colors = v.check("colors", c.colors, "scene3d.colors")
        self.materials = v.check("materials", c.materials, "scene3d.materials")
        self.sizes = v.check("sizes", c.sizes, "scene3d.sizes")
        self.stackable = tuple(s for s in self.shapes if v.shapes[s].stackable)

    # ------------------------------------------------------------------ objects
    def _object(self, rng, *, mask_id: int, role: str, color: str, shapes) -> Placed3D:
        v = self.vocab
        shape = str(shapes[int(rng.integers(len(shapes)))])
        mat = str(self.materials[int(rng.integers(len(self.materials)))])
        size = v.sizes[str(self.sizes[int(rng.integers(len(self.sizes)))])]
        return Placed3D(mask_id=mask_id, role=role, shape=shape, color=color,
                        rgb=tuple(v.colors[color]), material=mat,
                        metallic=v.materials[mat].metallic, roughness=v.materials[mat].roughness,
                        smooth=v.shapes[shape].smooth, height=v.shapes[shape].height,
                        size=float(size), yaw=float(rng.uniform(0, 2 * np.pi)))

    # ------------------------------------------------------------------ scene
    def sample(self, rng) -> tuple[Scene | None, int, str]:
        """One attempt: ``(scene, targets placed, '')`` or ``(None, targets placed, reason)``."""
        c = self.cfg
        axis = str(c.axes[int(rng.integers(len(c.axes)))])
        vmode = c.vertical if axis == "vertical" else None
        shapes = self.stackable if vmode == "stacked" else self.shapes
        cols = [str(x) for x in rng.permutation(np.array(self.colors))[: c.n_targets]]
        targets = [self._object(rng, mask_id=k + 1, role="target", color=cols[k], shapes=shapes)
                   for k in range(c.n_targets)]
        for k, t in enumerate(targets):
            t.slot = t.base_ordinal = k
            if axis == "vertical":  # one size per column, so a swap re-stacks nothing else
                t.size = targets[0].size
        j = c.camera_jitter
        cam = {"azimuth": float(rng.uniform(-8, 8) * j),
               "elevation": float(c.camera_elevation + rng.uniform(-4, 4) * j),
               "distance": float(c.camera_distance * (1 + rng.uniform(-0.08, 0.08) * j))}
        look = np.array([rng.uniform(-0.3, 0.3) * j, 0.5, rng.uniform(-0.3, 0.3) * j])
        pose = geo.orbit_pose(distance=cam["distance"], elevation_deg=cam["elevation"],
                              azimuth_deg=cam["azimuth"], target=look)
        ld = np.array([-0.4, -1.0, -0.6])
        if c.light_jitter:
            ld = ld + np.array([rng.uniform(-0.3, 0.3), 0.0, rng.uniform(-0.3, 0.3)])
        ld = tuple(float(x) for x in ld / np.linalg.norm(ld))
        intensity = float(3.0 * (rng.uniform(0.8, 1.2) if c.light_jitter else 1.0))
        background = self._background(rng)
        s = c.spacing * (1 + rng.uniform(-1, 1) * c.spacing_jitter)
        n = c.n_targets
        if axis == "horizontal":
            anchors = [((k - (n - 1) / 2) * s + rng.uniform(-0.1, 0.1), rng.uniform(-0.25, 0.25))
                       for k in range(n)]
            gaps: list[float] = []
        elif axis == "depth":
            dx = float(rng.choice([-1, 1]) * rng.uniform(0.45, 0.7))
            anchors = [((k - (n - 1) / 2) * dx, ((n - 1) / 2 - k) * s) for k in range(n)]
            gaps = []
        else:
            anchors = [(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5))]
            gaps = [0.0 if vmode == "stacked" else float(c.float_gap * rng.uniform(0.7, 1.3))
                    for _ in range(n - 1)]
        scene = Scene(axis=axis, vertical_mode=vmode, targets=targets, distractors=[],
                      background=background, camera_pose=pose, camera=cam, look_at=look,
                      light_dir=ld, light_intensity=intensity, anchors=anchors, gaps=gaps)
        self.arrange(scene, targets)
        if c.snap_token_px:
            self._snap(scene)
        placed, why = self._check_targets(scene)
        if why:
            return None, placed, why
        if not self._add_distractors(scene, rng):
            return None, placed, "no room for distractors"
        return scene, placed, ""

    def _background(self, rng) -> BackgroundSpec:
        kind = str(self.cfg.backgrounds[int(rng.integers(len(self.cfg.backgrounds)))])
        g = int(rng.integers(120, 181))
        ground = (g, g, g)
        if kind == "procedural":
            ground = tuple(int(x) for x in rng.integers(90, 200, size=3))
        top = tuple(int(x) for x in (rng.integers(120, 200), rng.integers(160, 220),
                                     rng.integers(210, 256)))
        bottom = tuple(int(x) for x in rng.integers(215, 250, size=3))
        if kind == "plain":
            top = bottom = tuple(int(x) for x in rng.integers(200, 250, size=3))
        return BackgroundSpec(kind=kind, ground_rgb=ground, sky_top=top, sky_bottom=bottom,
                              texture_seed=int(rng.integers(2**31)))

    # ------------------------------------------------------------------ arrangement
    def arrange(self, scene: Scene, targets: list[Placed3D]) -> None:
        """Set positions of ``targets`` from their slots and the scene's anchors / gaps."""
        if scene.axis in ("horizontal", "depth"):
            for t in targets:
                x, z = scene.anchors[t.slot]
                t.position = np.array([x, 0.5 * t.size * t.height, z])
            return
        x, z = scene.anchors[0]
        y = 0.0
        for i, t in enumerate(sorted(targets, key=lambda t: -t.slot)):  # bottom (last slot) up
            if i:
                y += scene.gaps[i - 1]
            h = t.size * t.height
            t.position = np.array([x, y + h / 2, z])
            y += h

    def swapped(self, scene: Scene) -> list[Placed3D]:
        """Targets with the outer two exchanging places (whole objects; mask ids follow them)."""
        ts = [t.copy() for t in scene.targets]
        last = len(ts) - 1
        for t in ts:
            t.slot = {0: last, last: 0}.get(t.slot, t.slot)
        self.arrange(scene, ts)
        return ts

    def crisscrossed(self, scene: Scene) -> list[Placed3D]:
        """Targets with the outer two exchanging colour, shape and material (not position)."""
        ts = sorted((t.copy() for t in scene.targets), key=lambda t: t.slot)
        a, b = ts[0], ts[-1]
        attrs_a = {k: getattr(a, k) for k in ATTRS}
        attrs_b = {k: getattr(b, k) for k in ATTRS}
        ts[0], ts[-1] = a.copy(**attrs_b), b.copy(**attrs_a)
        self.arrange(scene, ts)
        return ts

    def centred(self, scene: Scene, t: Placed3D) -> Placed3D:
        """``t`` alone on the ground under the camera's look-at point (the image centre)."""
        x, _, z = scene.look_at
        out = t.copy(position=np.array([x, 0.5 * t.size * t.height, z]))
        if self.cfg.snap_token_px:
            self._snap_object(scene, out)
        return out

    # ------------------------------------------------------------------ snapping
    def _snap_object(self, scene: Scene, t: Placed3D) -> np.ndarray:
        """Move ``t`` in its horizontal plane so its centre projects onto a token-cell centre."""
        c = self.cfg
        px = self._project(scene, t.position)
        cell = geo.token_cell_centre(px, c.snap_token_px)
        o, d = geo.pixel_ray(cell, scene.camera_pose, yfov=c.yfov, width=c.image_size,
                             height=c.image_size)
        hit = geo.intersect_plane_y(o, d, float(t.position[1]))
        delta = np.zeros(3) if hit is None else hit - t.position
        t.position = t.position + delta
        return delta

    def _snap(self, scene: Scene) -> None:
        if scene.axis in ("horizontal", "depth"):
            for t in scene.targets:
                d = self._snap_object(scene, t)
                x, z = scene.anchors[t.slot]
                scene.anchors[t.slot] = (x + d[0], z + d[2])
        else:  # move the whole column with its bottom object
            bottom = max(scene.targets, key=lambda t: t.slot)
            d = self._snap_object(scene, bottom)
            x, z = scene.anchors[0]
            scene.anchors[0] = (x + d[0], z + d[2])
            self.arrange(scene, scene.targets)

    def _project(self, scene: Scene, pts) -> np.ndarray:
        c = self.cfg
        return geo.project(geo.world_to_camera(np.asarray(pts, float), scene.camera_pose),
                           yfov=c.yfov, width=c.image_size, height=c.image_size)

    # ------------------------------------------------------------------ checks
    def in_view(self, scene: Scene, t: Placed3D, border: float = 2.0) -> bool:
        h = np.array(t.half)
        corners = t.position + h * np.array([[a, b, e] for a in (-1, 1) for b in (-1, 1)
                                             for e in (-1, 1)])
        cam = geo.world_to_camera(corners, scene.camera_pose)
        if np.any(geo.depth_of(cam) <= 0.2):
            return False
        px = self._project(scene, corners)
        size = self.cfg.image_size
        return bool(np.all(px >= border) and np.all(px <= size - border))

    def _check_targets(self, scene: Scene) -> tuple[int, str]:
        c = self.cfg
        ts = sorted(scene.targets, key=lambda t: t.slot)
        for k, t in enumerate(ts):
            if not self.in_view(scene, t):
                return k, "target out of view"
        boxes = [t.cam_box(scene.camera_pose) for t in ts]
        if geo.ordinals(boxes, scene.axis) != list(range(len(ts))):
            return 1, "ambiguous"
        for k in range(len(ts) - 1):
            if geo.is_ambiguous(boxes[k], boxes[k + 1], scene.axis, margin=c.margin,
                                off_axis_ratio=c.off_axis_ratio):
                return k + 1, "ambiguous"
        if c.snap_token_px:
            cells = {tuple(geo.token_cell_centre(self._project(scene, t.position),
                                                 c.snap_token_px)) for t in ts}
            if len(cells) < len(ts):
                return len(cells), "ambiguous"
        return len(ts), ""

    def _add_distractors(self, scene: Scene, rng) -> bool:
        c = self.cfg
        lo, hi = c.n_distractors
        k = int(rng.integers(lo, hi + 1))
        ts = scene.targets
        used = {t.color for t in ts}
        free = [x for x in self.colors if x not in used] or list(self.colors)
        xs = [t.position[0] for t in ts]
        zs = [t.position[2] for t in ts]
        placed = list(ts)
        zmid = float(np.median(zs))
        for i in range(k):
            d = self._object(rng, mask_id=len(ts) + i + 1, role="distractor",
                             color=str(free[int(rng.integers(len(free)))]), shapes=self.shapes)
            for _ in range(c.max_attempts):
                if scene.axis == "depth":  # beside the file of targets, never in it
                    side = rng.choice([-1.0, 1.0])
                    x = side * (max(abs(v) for v in xs) + rng.uniform(1.4, 2.6))
                    # with 3 targets, level with the middle one (the prompts' reference),
                    # so the distractor is neither in front of nor behind it
                    z = (rng.uniform(zmid - c.margin / 2, zmid + c.margin / 2)
                         if len(ts) == 3 else rng.uniform(min(zs), max(zs)))
                else:  # behind the row / column, so the asked relation stays among targets
                    x = rng.uniform(-4.5, 4.5)
                    z = min(zs) - rng.uniform(1.6, 4.5)
                d.position = np.array([x, 0.5 * d.size * d.height, z])
                ok = all(np.hypot(x - p.position[0], z - p.position[2])
                         >= d.radius + p.radius + 0.3 for p in placed)
                if ok and self.in_view(scene, d):
                    placed.append(d)
                    scene.distractors.append(d)
                    break
            else:
                return False
        return True

    # ------------------------------------------------------------------ rendering
    def scene_spec(self, scene: Scene, objects: list[Placed3D]) -> SceneSpec:
        """The renderer's description of ``scene`` holding ``objects``."""
        c = self.cfg
        objs = tuple(ObjectSpec(mask_id=o.mask_id, shape=o.shape, rgb=o.rgb,
                                metallic=o.metallic, roughness=o.roughness, size=o.size,
                                position=tuple(float(v) for v in o.position), yaw=o.yaw,
                                smooth=o.smooth) for o in objects)
        return SceneSpec(objects=objs, background=scene.background,
                         camera_pose=scene.camera_pose, yfov=c.yfov, size=c.image_size,
                         light_dir=scene.light_dir, light_intensity=scene.light_intensity,
                         shadows=c.shadows)
