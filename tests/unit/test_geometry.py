"""Camera-space geometry, vocabulary and Scene3DConfig validation (no GL needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenegen import geometry as geo
from scenegen.errors import ConfigError

# Coordinates on a 1/8 grid: sums and differences are exact in floating point, so properties
# of real numbers (translation invariance) are testable without rounding noise.
def grid(lo, hi):
    return st.integers(lo * 8, hi * 8).map(lambda k: k / 8)


coord = grid(-20, 20)
vec3 = st.tuples(coord, coord, grid(-40, -1))
box = st.builds(geo.CamBox, vec3, st.tuples(*[grid(0, 2)] * 3))
margin = grid(0, 3)
settings.register_profile("geo", max_examples=40, deadline=None)
settings.load_profile("geo")
axis = st.sampled_from(["horizontal", "vertical", "depth"])
PAIRS = [("left", "right"), ("above", "below"), ("front", "behind")]


@given(box, box, margin)
def test_relations_are_converse_pairs(a, b, m):
    for r, inv in PAIRS:
        assert geo.relation_holds(r, a, b, m) == geo.relation_holds(inv, b, a, m)
    # a relation and its converse never both hold for the same ordered pair
    for r, inv in PAIRS:
        assert not (geo.relation_holds(r, a, b, m) and geo.relation_holds(inv, a, b, m))


@given(box, box, margin, vec3)
def test_relations_invariant_to_translating_the_scene(a, b, m, t):
    for r in geo.RELATIONS:
        assert geo.relation_holds(r, a, b, m) == geo.relation_holds(
            r, a.translated(t), b.translated(t), m)


@settings(max_examples=60)
@given(st.lists(vec3, min_size=2, max_size=5), vec3, st.floats(-180, 180), st.floats(5, 60))
def test_world_translation_with_camera_keeps_camera_boxes(points, t, az, el):
    """Moving objects and camera together changes no camera-space coordinate."""
    pose = geo.orbit_pose(distance=10, elevation_deg=el, azimuth_deg=az)
    moved = geo.orbit_pose(distance=10, elevation_deg=el, azimuth_deg=az, target=t)
    for p in points:
        a = geo.camera_box(p, (0.5, 0.5, 0.5), pose)
        b = geo.camera_box(np.add(p, t), (0.5, 0.5, 0.5), moved)
        assert np.allclose(a.center, b.center, atol=1e-6)
        assert np.allclose(a.half, b.half, atol=1e-6)


@given(st.lists(box, min_size=2, max_size=6), axis, margin)
def test_ordinals_consistent_with_relations(boxes, ax, m):
    ords = geo.ordinals(boxes, ax)
    assert sorted(ords) == list(range(len(boxes)))
    rel = geo.first_relation(ax)
    order = sorted(range(len(boxes)), key=lambda i: ords[i])
    ambiguous = geo.ambiguous_pairs(boxes, ax, margin=m, off_axis_ratio=100.0)
    for i, j in zip(order, order[1:]):
        if (i, j) not in ambiguous and m > 0:
            # an unambiguous neighbouring pair holds the ordinal relation with the margin
            assert geo.relation_holds(rel, boxes[i], boxes[j], m)
        # a lower ordinal is never strictly on the far side of a higher one
        assert not geo.relation_holds(
            {"left": "right", "above": "below", "front": "behind"}[rel], boxes[i], boxes[j], 0)


def test_relations_hand_computed():
    a = geo.CamBox((-1.0, 0.0, -10.0))
    b = geo.CamBox((1.0, 0.2, -10.5))
    assert geo.left_of(a, b, 1.9) and not geo.left_of(a, b, 2.1)
    assert geo.above(b, a, 0.1) and not geo.above(b, a, 0.3)
    assert geo.front_of(a, b, 0.5) and not geo.front_of(a, b, 0.6) and geo.behind(b, a)
    assert geo.ordinals([a, b], "horizontal") == [0, 1]
    assert geo.ordinals([a, b], "vertical") == [1, 0]  # b is higher: topmost = 0
    assert geo.ordinals([a, b], "depth") == [0, 1]
    # vertical (0.2) and depth (0.5) offsets are at most 25% of the horizontal one (2.0)
    assert not geo.is_ambiguous(a, b, "horizontal", margin=0.5, off_axis_ratio=0.5)
    # a pair far apart in depth is a diagonal, not cleanly 'left'
    far = geo.CamBox((1.0, 0.0, -14.0))
    assert geo.is_ambiguous(a, far, "horizontal", margin=0.5, off_axis_ratio=0.5)
    # but a diagonal pair is ambiguous for 'above'
    assert geo.is_ambiguous(a, b, "vertical", margin=0.1, off_axis_ratio=0.5)
    assert geo.is_ambiguous(a, b, "horizontal", margin=2.5)


def test_projection_matches_hand_computation_and_rays_invert_it():
    pose = geo.look_at((0, 0, 10), (0, 0, 0))
    yfov, w = math.radians(90), 200
    # a point at depth 10, 5 units right: x_ndc = 5/10 = 0.5 -> pixel 150
    cam = geo.world_to_camera(np.array([5.0, -5.0, 0.0]), pose)
    assert np.allclose(cam, [5, -5, -10])
    assert np.allclose(geo.project(cam, yfov=yfov, width=w, height=w), [150, 150])
    o, d = geo.pixel_ray((150, 150), pose, yfov=yfov, width=w, height=w)
    hit = geo.intersect_plane_y(o, d, -5.0)
    assert np.allclose(hit, [5, -5, 0])


@given(st.floats(-60, 60), st.floats(5, 70), st.tuples(st.floats(-3, 3), st.floats(-3, 3)))
def test_pixel_ray_roundtrip(az, el, px01):
    pose = geo.orbit_pose(distance=9, elevation_deg=el, azimuth_deg=az)
    p = np.array([px01[0], 0.3, px01[1]])
    px = geo.project(geo.world_to_camera(p, pose), yfov=0.7, width=320, height=320)
    o, d = geo.pixel_ray(px, pose, yfov=0.7, width=320, height=320)
    assert np.allclose(geo.intersect_plane_y(o, d, 0.3), p, atol=1e-6)


def test_token_cell_centre():
    assert np.allclose(geo.token_cell_centre((29.0, 0.1), 28), (42, 14))


def test_look_at_rejects_degenerate():
    with pytest.raises(ValueError, match="coincide"):
        geo.look_at((1, 1, 1), (1, 1, 1))


# --------------------------------------------------------------------------- vocabulary
def test_vocabulary_loads_and_validates(tmp_path):
    from scenegen.vocabulary import load_vocabulary

    v = load_vocabulary()
    assert {"cube", "sphere", "cylinder", "cone", "torus", "capsule"} <= set(v.shapes)
    assert {"rubber", "metal"} <= set(v.materials)
    assert v.colors["red"] == (220, 40, 40)
    with pytest.raises(ConfigError, match="Did you mean 'sphere'"):
        v.check("shapes", ["sphre"], "scene3d.shapes")
    bad = tmp_path / "v.json"
    bad.write_text('{"shapes": {"cube": {}}, "colors": {"red": [300, 0, 0]}, '
                   '"materials": {"m": {"metallic": 0, "roughness": 1}}, "sizes": {"s": 1}}')
    with pytest.raises(ConfigError, match="three integers in 0..255"):
        load_vocabulary(str(bad))


# --------------------------------------------------------------------------- config
def test_config_defaults_roundtrip_and_errors():
    from scenegen.scene3d import Scene3DConfig

    c = Scene3DConfig.from_dict({})
    assert c.image_size == 448 and c.n_targets == 3 and not c.shadows
    assert Scene3DConfig.from_dict(c.to_dict()) == c
    cases = [({"colour": ["red"]}, "Did you mean 'colors'"),
             ({"shapes": ["cubes"]}, "Did you mean 'cube'"),
             ({"colors": ["redd"]}, "Did you mean 'red'"),
             ({"backgrounds": ["texture"]}, "Did you mean 'textured'"),
             ({"n_targets": 5}, "n_targets"),
             ({"n_distractors": [3, 1]}, "n_distractors"),
             ({"colors": ["red", "blue"]}, "need 4 distinct"),
             ({"shapes": ["sphere"], "axes": ["vertical"]}, "no stackable shape"),
             ({"gl_backend": "vulkan"}, "GL backend")]
    for d, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            Scene3DConfig.from_dict(d)
    # a floating vertical layout needs no stackable shape
    Scene3DConfig.from_dict({"shapes": ["sphere"], "axes": ["vertical"], "vertical": "floating"})


def test_backend_selection_env_override(monkeypatch):
    from scenegen import render

    monkeypatch.setenv("SPATIALBIND_GL", "bogus")
    with pytest.raises(ConfigError, match="SPATIALBIND_GL"):
        render.select_backend("auto")
    msg = render.no_backend_message(["egl: ImportError: x", "osmesa: ImportError: y"])
    assert "libegl1 libegl-mesa0 libgl1-mesa-dri" in msg and "libosmesa6" in msg
    assert "scripts/setup.sh" in msg and "\n" not in msg


def test_scene3d_splits_follow_fractions_and_groups():
    from scenegen.config import SplitConfig
    from scenegen.scene3d import _split_of

    sp = SplitConfig(by="scene", train=0.7, val=0.2, test=0.1)
    got = [_split_of(f"{i:09d}", 0, sp) for i in range(3000)]
    for name, frac in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        assert abs(got.count(name) / 3000 - frac) < 0.03
    assert got == [_split_of(f"{i:09d}", 0, sp) for i in range(3000)]  # deterministic
    assert got != [_split_of(f"{i:09d}", 1, sp) for i in range(3000)]  # seed matters
