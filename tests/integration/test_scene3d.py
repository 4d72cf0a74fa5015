"""scene3d end to end on the real offscreen renderer (small 128-192 px scenes).

Oracles are independent of the labelling code: mask centroids and the depth buffer for the
relations, pixel differences for the twins, the camera projection for token snapping.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

pytestmark = pytest.mark.gl

from scenegen import geometry as geo  # noqa: E402
from scenegen.dataset import read_dataset, write_dataset  # noqa: E402
from scenegen.errors import PlacementError  # noqa: E402
from scenegen.scene3d import Scene3DConfig, Scene3DGenerator, make_generator  # noqa: E402

SIZE = 160
CFG = {"image_size": SIZE, "n_distractors": [1, 2]}
FLOAT2 = {"image_size": 128, "n_targets": 2, "vertical": "floating", "n_distractors": [0, 1],
          "axes": ["vertical", "depth", "horizontal"]}


def _write(root, cfg, n, seed=0, workers=1):
    gen = Scene3DGenerator(Scene3DConfig.from_dict(cfg), seed=seed, n=n)
    factory = functools.partial(make_generator, cfg, seed, n=n)
    return write_dataset(gen, root, config={"scene3d": cfg, "seed": seed, "n": n},
                         factory=factory, workers=workers, progress=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3d")
    a = read_dataset(_write(root / "a", CFG, n=6, seed=1))
    b = read_dataset(_write(root / "b", FLOAT2, n=4, seed=2))
    return a, b


def _relational(ds):
    return [s for s in ds if s.counterfactual_kind in (None, "swap", "crisscross")]


def test_every_item_relation_agrees_with_masks_and_depth(datasets):
    seen_axes = set()
    for ds in datasets:
        for s in _relational(ds):
            seen_axes.add((s.axis, s.factors["vertical_mode"]))
            mask, depth = ds.mask(s), ds.depth(s)
            ts = s.targets
            assert [t.ordinal for t in ts] == list(range(len(ts)))
            for a, b in zip(ts, ts[1:]):  # a has the lower ordinal
                if s.axis == "horizontal":
                    assert a.centroid[0] < b.centroid[0], s.id
                elif s.axis == "vertical":
                    assert a.centroid[1] < b.centroid[1], s.id  # image y grows downwards
                else:
                    da = np.median(depth[mask == a.mask_id])
                    db = np.median(depth[mask == b.mask_id])
                    assert da < db, s.id
            # the completion answer, recomputed from the masks alone
            p = next(p for p in s.prompts if p.kind == "completion")
            ref = next(t for t in ts if t.name in p.text)
            k = ts.index(ref) + (-1 if s.relation in ("left", "above", "front") else 1)
            assert p.answer == ts[k].color, s.id
            assert p.text[slice(*p.spans["reference"])] == ref.name
            yn = next(p for p in s.prompts if p.kind == "yesno")
            subj = next(t for t in ts if yn.text.startswith(f"Is the {t.name} "))
            rel = yn.text[slice(*yn.spans["relation"])]
            before = ts.index(subj) < ts.index(ref)
            want = before == (rel in ("to the left of", "above", "in front of"))
            assert yn.answer == ("yes" if want else "no"), s.id
    assert {a for a, _ in seen_axes} == {"horizontal", "vertical", "depth"}
    assert ("vertical", "floating") in seen_axes


def test_masks_hold_only_scene_ids_and_match_depth(datasets):
    for ds in datasets:
        for s in ds:
            mask, depth = ds.mask(s), ds.depth(s)
            ids = {e.mask_id for e in s.entities}
            assert set(np.unique(mask)) <= {0} | ids
            assert len(ids) == len(s.entities)
            for e in s.entities:
                assert e.area == int((mask == e.mask_id).sum())
                if e.role == "target":
                    assert e.area >= Scene3DConfig.from_dict({"image_size": s.width}).min_visible()
                # every mask pixel lies on the object: its depth is within the object's
                # bounding sphere around the object's centre depth (independent oracle)
                f = s.factors["camera"]
                pose = geo.orbit_pose(distance=f["distance"], elevation_deg=f["elevation"],
                                      azimuth_deg=f["azimuth"], target=f["look_at"])
                cdepth = geo.depth_of(geo.world_to_camera(np.array(e.position_3d), pose))
                d = depth[mask == e.mask_id]
                assert np.all(np.abs(d - cdepth) <= 0.9 * e.size + 0.05), (s.id, e.name)
            if s.counterfactual_kind == "blank":
                assert not mask.any() and not s.entities


def _changed(ds, a, b):
    return np.any(ds.image(a) != ds.image(b), axis=-1)


def _union_of_boxes(shape, boxes, pad=2):
    keep = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        keep[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = True
    return keep


def test_swap_and_crisscross_differ_only_where_outer_targets_are(datasets):
    checked = 0
    for ds in datasets:
        for base in ds.base():
            outer = {base.targets[0].mask_id, base.targets[-1].mask_id}
            for kind in ("swap", "crisscross"):
                (tw,) = ds.twins(base.id, kind)
                changed = _changed(ds, base, tw)
                assert changed.any(), tw.id
                boxes = [e.box for st in (base, tw) for e in st.entities if e.mask_id in outer]
                inside = _union_of_boxes(changed.shape, boxes)
                assert not (changed & ~inside).any(), tw.id
                # nothing else moved: distractors and the middle target keep their records
                same = {e.mask_id: e for e in base.entities if e.mask_id not in outer}
                for e in tw.entities:
                    if e.mask_id in same and e.role == "distractor":
                        assert e.position_3d == same[e.mask_id].position_3d
                checked += 1
            sw = ds.twins(base.id, "swap")[0]
            pos = {e.mask_id: e.position_3d for e in base.entities}
            for e in sw.targets:  # in a swap the object (mask id) changes slot ...
                if e.mask_id in outer:
                    assert e.ordinal != next(t.ordinal for t in base.targets
                                             if t.mask_id == e.mask_id)
            cc = ds.twins(base.id, "crisscross")[0]
            for e in cc.entities:  # ... in a criss-cross the position keeps its mask id
                assert e.position_3d[0::2] == pos[e.mask_id][0::2]
            cols = [t.color for t in base.targets]
            assert [t.color for t in cc.targets] == [cols[-1], *cols[1:-1], cols[0]]
    assert checked >= 20


def test_isolated_and_blank_twins(datasets):
    ds = datasets[0]
    for base in ds.base():
        isos = ds.twins(base.id, "isolated")
        assert sorted(t.isolates for t in isos) == sorted(e.mask_id for e in base.targets)
        for t in isos:
            (e,) = t.entities
            assert e.mask_id == t.isolates and e.role == "target"
            src = next(b for b in base.entities if b.mask_id == e.mask_id)
            assert (e.color, e.kind, e.size) == (src.color, src.kind, src.size)
            # centred: near the image centre (the camera looks at it)
            assert abs(e.centroid[0] - SIZE / 2) < 0.12 * SIZE
            assert abs(e.centroid[1] - SIZE / 2) < 0.15 * SIZE
        (blank,) = ds.twins(base.id, "blank")
        # same background: identical pixels wherever the base shows no object
        objs = _union_of_boxes((SIZE, SIZE), [e.box for e in base.entities if e.area])
        assert not (_changed(ds, base, blank) & ~objs).any()


def test_same_seed_gives_identical_bytes_any_worker_count(tmp_path, datasets):
    cfg = dict(CFG, image_size=128)
    one = _write(tmp_path / "one", cfg, n=2, seed=5)
    two = _write(tmp_path / "two", cfg, n=2, seed=5, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file()
                   and p.parts[-2] in ("images", "masks", "depth"))
    assert len(files) == 2 * 3 * 7
    for f in files + [__import__("pathlib").Path("metadata.jsonl")]:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    other = _write(tmp_path / "other", cfg, n=2, seed=6)
    assert (one / files[0]).read_bytes() != (other / files[0]).read_bytes()


def test_snap_puts_target_centres_on_token_cells():
    cfg = Scene3DConfig.from_dict({"image_size": 128, "snap_token_px": 16, "n_targets": 2,
                                   "axes": ["horizontal", "depth"], "n_distractors": [0, 0]})
    gen = Scene3DGenerator(cfg, seed=3, n=3)
    for i in range(3):
        items = gen.unit(i)
        s = items[0].stimulus
        f = s.factors["camera"]
        pose = geo.orbit_pose(distance=f["distance"], elevation_deg=f["elevation"],
                              azimuth_deg=f["azimuth"], target=f["look_at"])
        for e in s.targets:
            px = geo.project(geo.world_to_camera(np.array(e.position_3d), pose),
                             yfov=cfg.yfov, width=128, height=128)
            assert np.allclose(px % 16, 8, atol=0.05), (s.id, px)
            # the visible mask's centroid stays inside that token cell
            assert np.all(np.floor(np.array(e.centroid) / 16) == np.floor(px / 16)), s.id


def test_ambiguous_or_hidden_configs_fail_with_bounded_retries():
    gen = Scene3DGenerator(Scene3DConfig(image_size=128, margin=6.0, max_attempts=7), n=1)
    with pytest.raises(PlacementError, match=r"placed \d/3 targets after 7 attempts "
                                             r"\(ambiguous: 7\)"):
        gen.unit(0)
    gen = Scene3DGenerator(Scene3DConfig(image_size=128, min_visible_px=10_000,
                                         n_distractors=(0, 0), max_attempts=3), n=1)
    with pytest.raises(PlacementError, match="target hidden: 3"):
        gen.unit(0)


def test_projection_matches_rendered_sphere():
    from scenegen import render

    pose = geo.orbit_pose(distance=9, elevation_deg=20, azimuth_deg=10)
    objs = tuple(render.ObjectSpec(mask_id=i + 1, shape="sphere", rgb=(200, 50, 50),
                                   metallic=0.0, roughness=0.9, size=0.6, smooth=True,
                                   position=p)
                 for i, p in enumerate([(-2.0, 0.3, 0.0), (1.5, 1.2, -1.0)]))
    spec = render.SceneSpec(objects=objs, background=render.BackgroundSpec(),
                            camera_pose=pose, yfov=np.deg2rad(40), size=192)
    out = render.render(spec)
    assert out.rgb.shape == (192, 192, 3) and out.depth.dtype == np.float32
    for o in objs:
        ys, xs = np.nonzero(out.mask == o.mask_id)
        cam = geo.world_to_camera(np.array(o.position), pose)
        px = geo.project(cam, yfov=np.deg2rad(40), width=192, height=192)
        assert np.allclose([xs.mean() + 0.5, ys.mean() + 0.5], px, atol=1.0)
        # depth at the sphere's centre pixel = centre depth minus the radius
        d = out.depth[int(px[1]), int(px[0])]
        assert abs(d - (geo.depth_of(cam) - 0.3)) < 0.02


def test_cli_generate_scene3d_with_degradation(tmp_path):
    from click.testing import CliRunner

    from cli import spatialbind

    cfg = {"generator": "scene3d", "seed": 0, "n": 1, "twins": ["swap"],
           "degradations": [{"kind": "noise", "strength": 0.5}],
           "scene3d": {"image_size": 128, "n_distractors": [0, 0]}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "ds"
    res = CliRunner().invoke(spatialbind, ["generate", "--config", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = read_dataset(out)
    assert [s.counterfactual_kind for s in ds] == [None, "swap"]
    assert all(s.degradation and s.degradation["kind"] == "noise" for s in ds)
    assert ds.depth(ds[0]).shape == (128, 128)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(cfg, scene3d={"shapes": ["cubee"]})))
    res = CliRunner().invoke(spatialbind, ["generate", "--config", str(bad), "--out",
                                           str(tmp_path / "x")])
    assert res.exit_code == 1 and "Did you mean 'cube'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    amb = tmp_path / "amb.json"
    amb.write_text(json.dumps(dict(cfg, scene3d={"image_size": 64, "margin": 6.0,
                                                 "max_attempts": 5})))
    res = CliRunner().invoke(spatialbind, ["generate", "--config", str(amb), "--out",
                                           str(tmp_path / "amb")])
    assert res.exit_code == 1
    assert "placed 1/3 targets after 5 attempts (ambiguous: 5)" in res.output


_BACKEND_SCRIPT = r'''
import os, sys, numpy as np
from scenegen import render
real = render._try_backend
fail = {"egl", "osmesa"}
def fake(name, w, h):
    if name in fail:  # import the GL stack as a broken backend would, then fail
        os.environ["PYOPENGL_PLATFORM"] = name
        np.infty = np.inf
        import pyrender  # noqa: F401
        raise ImportError(f"Unable to load {name} library")
    return real(name, w, h)
render._try_backend = fake
try:
    render.get_renderer(32, 32, "auto")
except render.RenderError as e:
    print("ERROR:", e)
fail = {"egl"}
sys.path.insert(0, sys.argv[2])
from test_scene3d import _tiny_spec
out = render.render(_tiny_spec())
print("BACKEND:", render.backend_in_use())
np.save(sys.argv[1], out.mask)
'''


def _tiny_spec():
    from scenegen import render

    objs = (render.ObjectSpec(mask_id=1, shape="cube", rgb=(200, 50, 50), metallic=0.0,
                              roughness=0.9, size=1.0, position=(-1.0, 0.5, 0.0), yaw=0.4),
            render.ObjectSpec(mask_id=2, shape="torus", rgb=(50, 50, 200), metallic=0.7,
                              roughness=0.3, size=1.0, position=(1.2, 0.2, -0.5), smooth=True))
    return render.SceneSpec(objects=objs, background=render.BackgroundSpec(kind="textured"),
                            camera_pose=geo.orbit_pose(distance=8, elevation_deg=25,
                                                       azimuth_deg=5),
                            yfov=np.deg2rad(40), size=96)


def test_backend_fallback_to_osmesa_and_masks_identical_to_egl(tmp_path):
    """``auto`` falls back from a broken EGL to OSMesa in the same process; both give the same
    instance mask; with no backend the error is one line naming the packages to install."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from scenegen import render

    env = {k: v for k, v in os.environ.items() if k not in ("SPATIALBIND_GL",
                                                           "PYOPENGL_PLATFORM")}
    res = subprocess.run([sys.executable, "-c", _BACKEND_SCRIPT, str(tmp_path / "m.npy"),
                          str(Path(__file__).parent)], env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    err = next(l for l in res.stdout.splitlines() if l.startswith("ERROR:"))
    assert "egl: ImportError" in err and "osmesa: ImportError" in err
    assert "libegl1 libegl-mesa0 libgl1-mesa-dri" in err and "libosmesa6" in err
    assert "BACKEND: osmesa" in res.stdout
    here = render.render(_tiny_spec())
    assert set(np.unique(here.mask)) == {0, 1, 2}
    assert np.array_equal(np.load(tmp_path / "m.npy"), here.mask)


def test_shadows_darken_the_image_and_leave_masks_alone():
    cfg = {"image_size": 128, "n_distractors": [0, 0]}
    plain = Scene3DGenerator(Scene3DConfig.from_dict(cfg), seed=1, n=1, twins=()).unit(0)[0]
    shadow = Scene3DGenerator(Scene3DConfig.from_dict(dict(cfg, shadows=True)), seed=1, n=1,
                              twins=()).unit(0)[0]
    assert np.array_equal(plain.mask, shadow.mask)
    changed = np.any(plain.image != shadow.image, axis=-1)
    assert changed.mean() > 0.002
    lum = lambda im: im[changed].astype(float).sum(-1)  # noqa: E731
    assert lum(shadow.image).mean() < lum(plain.image).mean()
