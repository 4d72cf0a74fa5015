"""Pure camera-space geometry for 3D scenes: projection and spatial relations (no GL).

The ``scene3d`` generator places objects in a world frame (x right, y up, z towards the
default camera, ground plane ``y = 0``) and labels them here, from coordinates alone, so the
labels are testable without a renderer (STYLE.md R13).

Conventions
-----------
- Camera frame is OpenGL's (as pyrender uses): x right, y up, the camera looks down ``-z``.
  *Depth* is the distance along the view axis, ``-z_cam`` (what pyrender's depth buffer holds).
- Pixels: x to the right, y *down*, pixel ``(0, 0)`` has its centre at ``(0.5, 0.5)``.
- Relations compare **camera-space centres** of two objects along one axis with an explicit
  ``margin`` (world units):

  ==========  ====================================================
  left_of     ``b.x - a.x >= margin``       (camera x)
  above       ``a.y - b.y >= margin``       (camera y; stacked or floating)
  front_of    ``depth(b) - depth(a) >= margin``  (camera depth)
  ==========  ====================================================

  A pair is *ambiguous* along an axis when neither order clears the margin, or when the
  displacement along another axis is larger than ``off_axis_ratio`` times the displacement
  along the asked axis (a diagonal pair is neither cleanly "left" nor "above").
  Whether a vertical pair is stacked (touching) or floating is a layout fact the generator
  records; the relation itself only looks at camera y, so it holds for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

AXIS_INDEX = {"horizontal": 0, "vertical": 1, "depth": 2}
# Sign that turns "coordinate grows" into "ordinal grows" (ordinal 0 = leftmost / topmost / nearest).
# camera x grows to the right (+), camera y grows upwards (-), depth grows away from the camera (+).
_ORDER_SIGN = {"horizontal": 1.0, "vertical": -1.0, "depth": 1.0}
RELATION_AXIS = {"left": "horizontal", "right": "horizontal", "above": "vertical",
                 "below": "vertical", "front": "depth", "behind": "depth"}


# --------------------------------------------------------------------------- camera
def look_at(eye: Sequence[float], target: Sequence[float],
            up: Sequence[float] = (0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world pose (4x4) of a camera at ``eye`` looking at ``target`` (OpenGL frame).

    Parameters
    ----------
    eye, target
        World positions of the camera and the point it looks at.
    up
        World direction that should appear upwards in the image.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64 pose; its columns are the camera's x, y, z axes and position.
    """
    eye = np.asarray(eye, dtype=float)
    fwd = np.asarray(target, dtype=float) - eye
    n = np.linalg.norm(fwd)
    if n == 0:
        raise ValueError("look_at: eye and target coincide; move the camera away from its target")
    fwd /= n
    right = np.cross(fwd, np.asarray(up, dtype=float))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: view direction is parallel to 'up'; tilt the camera")
    right /= np.linalg.norm(right)
    true_up = np.cross(right, fwd)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, true_up, -fwd, eye
    return pose


def orbit_pose(*, distance: float, elevation_deg: float, azimuth_deg: float,
               target: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Pose of a camera on a sphere around ``target`` (azimuth 0 looks along world ``-z``)."""
    el, az = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
    offset = distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    return look_at(np.asarray(target, float) + offset, target)


def world_to_camera(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Map ``(..., 3)`` world points into the camera frame of ``pose`` (camera-to-world)."""
    pts = np.asarray(points, dtype=float)
    rot, t = pose[:3, :3], pose[:3, 3]
    return (pts - t) @ rot


def depth_of(points_cam: np.ndarray) -> np.ndarray:
    """Distance along the view axis (``-z``) of camera-frame points."""
    return -np.asarray(points_cam, dtype=float)[..., 2]


def project(points_cam: np.ndarray, *, yfov: float, width: int, height: int) -> np.ndarray:
    """Pixel coordinates ``(..., 2)`` (x right, y down) of camera-frame points.

    Matches pyrender's ``PerspectiveCamera(yfov, aspectRatio=width/height)``; ``yfov`` in radians.
    Points behind the camera give meaningless values; check ``depth_of(...) > 0`` first.
    """
    p = np.asarray(points_cam, dtype=float)
    f = 1.0 / np.tan(yfov / 2.0)
    aspect = width / height
    d = -p[..., 2]
    x_ndc = (f / aspect) * p[..., 0] / d
    y_ndc = f * p[..., 1] / d
    return np.stack([(x_ndc + 1.0) * 0.5 * width, (1.0 - y_ndc) * 0.5 * height], axis=-1)


def pixel_ray(px: Sequence[float], pose: np.ndarray, *, yfov: float, width: int,
              height: int) -> tuple[np.ndarray, np.ndarray]:
    """World-space ray ``(origin, unit direction)`` through pixel position ``px = (x, y)``."""
    f = 1.0 / np.tan(yfov / 2.0)
    aspect = width / height
    x_ndc = 2.0 * px[0] / width - 1.0
    y_ndc = 1.0 - 2.0 * px[1] / height
    d_cam = np.array([x_ndc * aspect / f, y_ndc / f, -1.0])
    d = pose[:3, :3] @ d_cam
    return pose[:3, 3].copy(), d / np.linalg.norm(d)


def intersect_plane_y(origin: np.ndarray, direction: np.ndarray, y: float) -> np.ndarray | None:
    """Where a ray meets the horizontal plane ``Y = y`` (None if parallel or behind)."""
    if abs(direction[1]) < 1e-12:
        return None
    t = (y - origin[1]) / direction[1]
    return None if t <= 0 else origin + t * direction


def token_cell_centre(px: Sequence[float], token_px: int) -> np.ndarray:
    """Centre of the ``token_px``-sized grid cell that holds pixel position ``px``."""
    p = np.asarray(px, dtype=float)
    return (np.floor(p / token_px) + 0.5) * token_px


# --------------------------------------------------------------------------- boxes
@dataclass(frozen=True)
class CamBox:
    """An object's camera-frame centre and the half-extents of its camera-aligned bounding box."""

    center: tuple[float, float, float]
    half: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def depth(self) -> float:
        return -self.center[2]

    def translated(self, t: Sequence[float]) -> "CamBox":
        return CamBox(tuple(float(c + d) for c, d in zip(self.center, t)), self.half)


def camera_box(center_world: Sequence[float], half_world: Sequence[float],
               pose: np.ndarray) -> CamBox:
    """Camera-frame :class:`CamBox` of a world axis-aligned box (its 8 corners, transformed)."""
    c = np.asarray(center_world, dtype=float)
    h = np.asarray(half_world, dtype=float)
    corners = c + h * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    cam = world_to_camera(corners, pose)
    center = world_to_camera(c, pose)
    half = (cam.max(0) - cam.min(0)) / 2.0
    return CamBox(tuple(map(float, center)), tuple(map(float, half)))


# --------------------------------------------------------------------------- relations
def _delta(a: CamBox, b: CamBox) -> np.ndarray:
    """``b - a`` in (camera x, camera y, depth)."""
    return np.array([b.center[0] - a.center[0], b.center[1] - a.center[1], b.depth - a.depth])


def left_of(a: CamBox, b: CamBox, margin: float = 0.0) -> bool:
    """``a`` is left of ``b``: camera x of ``b`` exceeds that of ``a`` by at least ``margin``."""
    return bool(_delta(a, b)[0] >= margin and _delta(a, b)[0] > 0)


def right_of(a: CamBox, b: CamBox, margin: float = 0.0) -> bool:
    """``a`` is right of ``b`` (same as ``left_of(b, a)``)."""
    return left_of(b, a, margin)


def above(a: CamBox, b: CamBox, margin: float = 0.0) -> bool:
    """``a`` is above ``b``: camera y of ``a`` exceeds that of ``b`` by at least ``margin``."""
    d = -_delta(a, b)[1]
    return bool(d >= margin and d > 0)


def below(a: CamBox, b: CamBox, margin: float = 0.0) -> bool:
    """``a`` is below ``b`` (same as ``above(b, a)``)."""
    return above(b, a, margin)


def front_of(a: CamBox, b: CamBox, margin: float = 0.0) -> bool:
    """``a`` is in front of ``b``: ``a`` is nearer to the camera by at least ``margin``."""
    d = _delta(a, b)[2]
    return bool(d >= margin and d > 0)


def behind(a: CamBox, b: CamBox, margin: float = 0.0) -> bool:
    """``a`` is behind ``b`` (same as ``front_of(b, a)``)."""
    return front_of(b, a, margin)


RELATIONS = {"left": left_of, "right": right_of, "above": above, "below": below,
             "front": front_of, "behind": behind}


def relation_holds(relation: str, a: CamBox, b: CamBox, margin: float = 0.0) -> bool:
    """``relation(a, b)`` for a relation name in ``left, right, above, below, front, behind``."""
    try:
        return RELATIONS[relation](a, b, margin)
    except KeyError:
        raise ValueError(f"unknown relation {relation!r}; use one of {sorted(RELATIONS)}") from None


def is_ambiguous(a: CamBox, b: CamBox, axis: str, *, margin: float,
                 off_axis_ratio: float = 1.0) -> bool:
    """Whether the relation between ``a`` and ``b`` along ``axis`` is unclear.

    True when the centres are closer than ``margin`` along ``axis``, or when the displacement
    along one of the other two axes exceeds ``off_axis_ratio`` times the displacement along
    ``axis``. For ``depth`` only the image-plane axis that would compete in the picture
    (horizontal) is checked against the ratio, because depth pairs seen from above always
    differ in camera y.
    """
    d = np.abs(_delta(a, b))
    k = AXIS_INDEX[axis]
    if d[k] < margin:
        return True
    others = [0] if axis == "depth" else [i for i in range(3) if i != k]
    return bool(any(d[i] > off_axis_ratio * d[k] for i in others))


def ordinals(boxes: Sequence[CamBox], axis: str) -> list[int]:
    """Slot of each box along ``axis``: 0 = leftmost / topmost / nearest to the camera."""
    k = AXIS_INDEX[axis]
    key = [(_ORDER_SIGN[axis] * (b.center[k] if k < 2 else b.depth)) for b in boxes]
    order = sorted(range(len(boxes)), key=lambda i: (key[i], i))
    out = [0] * len(boxes)
    for slot, i in enumerate(order):
        out[i] = slot
    return out


def first_relation(axis: str) -> str:
    """The relation that holds from a lower ordinal to a higher one: left, above or front."""
    return {"horizontal": "left", "vertical": "above", "depth": "front"}[axis]


def ambiguous_pairs(boxes: Sequence[CamBox], axis: str, *, margin: float,
                    off_axis_ratio: float = 1.0) -> list[tuple[int, int]]:
    """Neighbouring pairs (in ordinal order) whose relation along ``axis`` is ambiguous."""
    ords = ordinals(boxes, axis)
    order = sorted(range(len(boxes)), key=lambda i: ords[i])
    return [(i, j) for i, j in zip(order, order[1:])
            if is_ambiguous(boxes[i], boxes[j], axis, margin=margin, off_axis_ratio=off_axis_ratio)]
