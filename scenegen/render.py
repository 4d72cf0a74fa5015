"""Offscreen rendering of 3D scene descriptions with pyrender: RGB, depth and instance masks.

``scene3d`` describes a scene as plain data (:class:`SceneSpec`: objects, background, light,
camera); this module turns it into a pyrender scene and renders it with one cached
``OffscreenRenderer`` per process (its viewport is resized when the image size changes,
because a pyrender mesh binds to one GL context; see ``reference/RENDER.md``).

Backend selection (:func:`select_backend`): the env var ``SPATIALBIND_GL=egl|osmesa`` wins,
then the config's ``gl_backend``; ``auto`` tries EGL first (Mesa llvmpipe on a CPU machine, the
GPU driver on a GPU machine) and then OSMesa. ``PYOPENGL_PLATFORM`` must be set before the first
``import OpenGL``, so the backend is fixed for the life of a process.

Masks come from a second pass with ``RenderFlags.SEG`` and a ``seg_node_map`` holding every node
(ground and backdrop map to 0), so occlusion is exact and no anti-aliased edge values appear.
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import SceneGenError

BACKENDS = ("auto", "egl", "osmesa")
_INSTALL_HINT = (
    "install the Debian packages 'libegl1 libegl-mesa0 libgl1-mesa-dri' (EGL) or 'libosmesa6' "
    "(OSMesa), or run 'bash scripts/setup.sh'")


class RenderError(SceneGenError):
    """No offscreen GL backend works, or a render failed."""


# --------------------------------------------------------------------------- scene description
@dataclass(frozen=True, kw_only=True)
class ObjectSpec:
    """One object to draw: a vocabulary shape scaled to ``size`` world units."""

    mask_id: int
    shape: str
    rgb: tuple[int, int, int]
    metallic: float
    roughness: float
    size: float
    position: tuple[float, float, float]
    """World centre of the object's bounding box."""
    yaw: float = 0.0
    """Rotation about world y, radians."""
    smooth: bool = False


@dataclass(frozen=True, kw_only=True)
class BackgroundSpec:
    """Ground and sky. ``kind``: plain, gradient, textured or procedural."""

    kind: str = "plain"
    ground_rgb: tuple[int, int, int] = (150, 150, 150)
    sky_top: tuple[int, int, int] = (235, 235, 235)
    sky_bottom: tuple[int, int, int] = (235, 235, 235)
    texture_seed: int = 0
    """Seed of the procedural ground texture (``textured``: checker size, ``procedural``: noise)."""


@dataclass(frozen=True, kw_only=True)
class SceneSpec:
    """Everything needed to render one image."""

    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec
    camera_pose: np.ndarray = field(compare=False)
    yfov: float
    size: int
    light_dir: tuple[float, float, float] = (-0.4, -1.0, -0.6)
    light_intensity: float = 3.0
    ambient: float = 0.35
    shadows: bool = False


@dataclass(frozen=True)
class RenderOutput:
    rgb: np.ndarray
    """``(H, W, 3)`` uint8."""
    depth: np.ndarray
    """``(H, W)`` float32, distance along the view axis, 0 where nothing was hit."""
    mask: np.ndarray
    """``(H, W)`` uint8 instance ids (the ``mask_id`` of each object, 0 elsewhere)."""


# --------------------------------------------------------------------------- backend
def select_backend(preferred: str = "auto") -> str:
    """Resolve the GL backend name to use in this process (``egl`` or ``osmesa``, or ``auto``).

    ``SPATIALBIND_GL`` overrides ``preferred``; a backend already fixed by an earlier import of
    PyOpenGL in this process wins over both.

    Raises
    ------
    scenegen.errors.ConfigError
        For a name other than ``auto``, ``egl`` or ``osmesa``.
    """
    from .errors import unknown

    env = os.environ.get("SPATIALBIND_GL", "").strip().lower()
    choice = env or (preferred or "auto").lower()
    if choice not in BACKENDS:
        where = "env SPATIALBIND_GL" if env else "config gl_backend"
        raise unknown("GL backend", choice, BACKENDS, where)
    if "OpenGL" in sys.modules and os.environ.get("PYOPENGL_PLATFORM") in ("egl", "osmesa"):
        return os.environ["PYOPENGL_PLATFORM"]
    return choice


def _purge_gl_modules() -> None:
    for name in list(sys.modules):
        if name == "OpenGL" or name.startswith(("OpenGL.", "pyrender")):
            del sys.modules[name]


def _try_backend(name: str, width: int, height: int):
    os.environ["PYOPENGL_PLATFORM"] = name
    if not hasattr(np, "infty"):  # pyrender 0.1.45 uses np.infty, removed in NumPy 2
        np.infty = np.inf
    import pyrender

    return pyrender.OffscreenRenderer(width, height)


class _State:
    renderer: Any = None
    backend: str | None = None
    pid: int | None = None


def _delete_renderer() -> None:
    if _State.renderer is not None and _State.pid == os.getpid():
        try:
            _State.renderer.delete()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
    _State.renderer = None


def get_renderer(width: int, height: int, backend: str = "auto"):
    """The process's cached ``OffscreenRenderer``, sized ``width`` x ``height``.

    Raises
    ------
    RenderError
        When no backend can create a GL context (the message names the packages to install).
    """
    if _State.renderer is not None and _State.pid == os.getpid():
        r = _State.renderer
        if (r.viewport_width, r.viewport_height) != (width, height):
            r.viewport_width, r.viewport_height = width, height
        return r
    choice = select_backend(backend)
    order = ["egl", "osmesa"] if choice == "auto" else [choice]
    errors = []
    for i, name in enumerate(order):
        try:
            if i > 0:
                _purge_gl_modules()
            r = _try_backend(name, width, height)
        except Exception as e:  # noqa: BLE001 - GL stacks raise many exception types
            errors.append(f"{name}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        _State.renderer, _State.backend, _State.pid = r, name, os.getpid()
        atexit.register(_delete_renderer)
        return r
    raise RenderError(no_backend_message(errors))


def no_backend_message(errors: list[str]) -> str:
    """One-line error for 'no offscreen GL backend works' listing what each attempt said."""
    return ("no offscreen OpenGL backend works (" + "; ".join(errors) + "); " + _INSTALL_HINT
            + ", or pick one with SPATIALBIND_GL=egl|osmesa")


def backend_in_use() -> str | None:
    """Name of the backend the cached renderer uses (None before the first render)."""
    return _State.backend


def gl_renderer_string() -> str:
    """``GL_RENDERER`` of the current context (e.g. ``llvmpipe (LLVM 15...)``), for reports."""
    r = _State.renderer
    if r is None:
        return "none"
    from OpenGL.GL import GL_RENDERER, glGetString

    r._platform.make_current()
    try:
        s = glGetString(GL_RENDERER)
        return s.decode() if isinstance(s, bytes) else str(s)
    finally:
        r._platform.make_uncurrent()


# --------------------------------------------------------------------------- meshes
@lru_cache(maxsize=None)
def unit_trimesh(shape: str, height: float = 1.0):
    """A unit trimesh primitive: bounding box 1 x ``height`` x 1 centred at the origin (y up)."""
    import trimesh

    c = trimesh.creation
    if shape == "cube":
        m = c.box(extents=(1.0, 1.0, 1.0))
    elif shape == "sphere":
        m = c.icosphere(subdivisions=3, radius=0.5)
    elif shape == "cylinder":
        m = c.cylinder(radius=0.5, height=1.0, sections=32)
    elif shape == "cone":
        m = c.cone(radius=0.5, height=1.0, sections=32)
        m.apply_translation((0, 0, -0.5))
    elif shape == "torus":
        m = c.torus(major_radius=0.5 - height / 2, minor_radius=height / 2,
                    major_sections=40, minor_sections=16)
    elif shape == "pyramid":  # square pyramid (sprites of the Objects task only)
        m = c.cone(radius=0.5 * np.sqrt(2), height=1.0, sections=4)
        m.apply_translation((0, 0, -0.5))
        m.apply_transform(trimesh_rotation_z(np.pi / 4))
        m.apply_scale((1 / m.extents[0], 1 / m.extents[1], 1.0))
    elif shape == "prism":  # triangular prism (sprites of the Objects task only)
        m = c.cylinder(radius=0.5, height=1.0, sections=3)
        m.apply_scale((1 / m.extents[0], 1 / m.extents[1], 1.0))
    elif shape == "capsule":
        m = c.capsule(height=0.4, radius=0.3, count=(16, 16))
        m.apply_scale(1.0 / float(m.extents[2]))  # 1 tall, 0.6 wide whatever trimesh's convention
    else:
        raise RenderError(f"no mesh for shape {shape!r}; add a branch to "
                          "scenegen.render.unit_trimesh or remove it from the vocabulary")
    if shape != "cube":  # trimesh primitives have z as their axis; ours is y (up)
        m.apply_transform(np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]]))
    lo, hi = m.bounds
    m.apply_translation(-(lo + hi) / 2)
    return m


def trimesh_rotation_z(angle: float) -> np.ndarray:
    """4x4 rotation about z by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


_MESHES: dict[tuple, Any] = {}


def _mesh(o: ObjectSpec, height: float):
    import pyrender

    key = (o.shape, height, o.rgb, o.metallic, o.roughness, o.smooth)
    m = _MESHES.get(key)
    if m is None:
        mat = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=(*[c / 255.0 for c in o.rgb], 1.0),
            metallicFactor=o.metallic, roughnessFactor=o.roughness)
        m = pyrender.Mesh.from_trimesh(unit_trimesh(o.shape, height), material=mat,
                                       smooth=o.smooth)
        _MESHES[key] = m
    return m


def _quad(width: float, height: float, material, *, horizontal: bool, colors=None):
    import pyrender

    w, h = width / 2, height / 2
    if horizontal:  # ground: XZ plane facing +y; texture repeats every 4 world units
        v = np.array([[-w, 0, -h], [w, 0, -h], [w, 0, h], [-w, 0, h]], float)
        uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], float) * np.array([[width / 4, height / 4]])
        faces = np.array([[0, 2, 1], [0, 3, 2]])
        normal = (0.0, 1.0, 0.0)
    else:  # backdrop: XY plane facing +z
        v = np.array([[-w, -h, 0], [w, -h, 0], [w, h, 0], [-w, h, 0]], float)
        uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
        faces = np.array([[0, 1, 2], [0, 2, 3]])
        normal = (0.0, 0.0, 1.0)
    prim = pyrender.Primitive(positions=v.astype(np.float32),
                              normals=np.tile(np.array(normal, np.float32), (4, 1)),
                              texcoord_0=uv.astype(np.float32), indices=faces,
                              color_0=colors, material=material)
    return pyrender.Mesh([prim])


@lru_cache(maxsize=16)
def background_meshes(bg: BackgroundSpec):
    """``(ground, backdrop or None)`` pyrender meshes of ``bg``, cached so that a unit's twins
    share them (no texture rebuild or re-upload between the items of a unit)."""
    import pyrender

    tex = ground_texture(bg)
    if tex is None:
        gmat = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=(*[c / 255 for c in bg.ground_rgb], 1.0), metallicFactor=0.0,
            roughnessFactor=1.0)
    else:
        gmat = pyrender.MetallicRoughnessMaterial(
            baseColorTexture=pyrender.Texture(source=tex, source_channels="RGB"),
            metallicFactor=0.0, roughnessFactor=1.0)
    ground = _quad(40.0, 40.0, gmat, horizontal=True)
    if bg.kind == "plain":
        return ground, None
    # Unlit gradient backdrop acting as a sky. Float factors matter: pyrender reads integer
    # colour tuples as 0..255. The gradient comes from vertex colours multiplying a pure
    # emissive (unlit) material.
    smat = pyrender.MetallicRoughnessMaterial(baseColorFactor=(0.0, 0.0, 0.0, 1.0),
                                              emissiveFactor=(1.0, 1.0, 1.0))
    lo, hi = (np.array(c, np.float32) / 255 for c in (bg.sky_bottom, bg.sky_top))
    cols = np.array([lo, lo, hi, hi], np.float32)
    return ground, _quad(60.0, 24.0, smat, horizontal=False, colors=cols)


def ground_texture(bg: BackgroundSpec, px: int = 256) -> np.ndarray | None:
    """RGB texture of the ground for ``bg`` (None for an untextured plain ground)."""
    if bg.kind in ("plain", "gradient"):
        return None
    rng = np.random.default_rng(bg.texture_seed)
    base = np.array(bg.ground_rgb, float)
    if bg.kind == "textured":  # checkerboard, 4 world units per texture repeat
        n = int(rng.choice([2, 4, 8]))
        yy, xx = np.mgrid[:px, :px] // (px // n)
        chk = ((xx + yy) % 2).astype(float)[..., None]
        img = base * (0.8 + 0.35 * chk)
    else:  # procedural: smooth colour noise from a few random sinusoids
        yy, xx = np.mgrid[:px, :px] / px * 2 * np.pi
        img = np.zeros((px, px, 3))
        for _ in range(4):
            fx, fy = rng.integers(1, 4, size=2)
            ph = rng.uniform(0, 2 * np.pi)
            col = rng.uniform(-40, 40, size=3)
            img += np.sin(fx * xx + fy * yy + ph)[..., None] * col / 4
        img = base + img
    return np.clip(img, 0, 255).astype(np.uint8)


def build_scene(spec: SceneSpec, heights: dict[str, float]):
    """The pyrender ``Scene`` for ``spec`` and its ``seg_node_map`` (every node mapped)."""
    import pyrender

    sky = np.array(spec.background.sky_top, float) / 255.0
    scene = pyrender.Scene(bg_color=(*sky, 1.0), ambient_light=(spec.ambient,) * 3)
    seg: dict = {}
    ground, backdrop = background_meshes(spec.background)
    seg[scene.add(ground)] = (0, 0, 0)
    if backdrop is not None:
        seg[scene.add(backdrop, pose=_translation((0, 10.0, -10.0)))] = (0, 0, 0)
    for o in spec.objects:
        c, s = np.cos(o.yaw), np.sin(o.yaw)
        pose = np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1.0]])
        pose[:3, :3] *= o.size
        pose[:3, 3] = o.position
        node = scene.add(_mesh(o, heights.get(o.shape, 1.0)), pose=pose)
        seg[node] = (o.mask_id,) * 3
    d = np.asarray(spec.light_dir, float)
    light_pose = _look_along(d / np.linalg.norm(d))
    scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=spec.light_intensity),
              pose=light_pose)
    cam = pyrender.PerspectiveCamera(yfov=spec.yfov, aspectRatio=1.0, znear=0.1, zfar=100.0)
    scene.add(cam, pose=spec.camera_pose)
    return scene, seg


def _translation(t) -> np.ndarray:
    p = np.eye(4)
    p[:3, 3] = t
    return p


def _look_along(d: np.ndarray) -> np.ndarray:
    """Pose whose -z axis points along ``d`` (directional lights shine along their -z)."""
    z = -d
    x = np.cross((0.0, 1.0, 0.0), z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    p = np.eye(4)
    p[:3, 0], p[:3, 1], p[:3, 2] = x, y, z
    return p


def render(spec: SceneSpec, *, heights: dict[str, float] | None = None,
           backend: str = "auto") -> RenderOutput:
    """Render ``spec``: RGB + depth in one pass, then the instance mask in a SEG pass.

    Parameters
    ----------
    spec
        The scene description.
    heights
        Relative height of each shape (from the vocabulary; default 1).
    backend
        ``auto``, ``egl`` or ``osmesa`` (``SPATIALBIND_GL`` overrides it).
    """
    r = get_renderer(spec.size, spec.size, backend)  # fixes PYOPENGL_PLATFORM: before pyrender
    import pyrender

    scene, seg = build_scene(spec, heights or {})
    flags = pyrender.RenderFlags.NONE
    if spec.shadows:
        flags |= pyrender.RenderFlags.SHADOWS_DIRECTIONAL
    color, _ = r.render(scene, flags=flags)
    # depth from the SEG pass: it has no multisampling, so at silhouettes the depth belongs to
    # the same surface as the mask id (the colour pass's resolved depth may not)
    segim, depth = r.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map=seg)
    return RenderOutput(rgb=np.ascontiguousarray(color[..., :3]),
                        depth=np.asarray(depth, np.float32),
                        mask=np.ascontiguousarray(segim[..., 0]).astype(np.uint8))
