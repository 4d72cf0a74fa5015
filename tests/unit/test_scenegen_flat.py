"""The flat generator reproduces the paper's stimuli: labels, geometry, masks, twins, splits."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image, ImageDraw

from scenegen.config import FlatConfig, GridConfig, SplitConfig
from scenegen.errors import ConfigError
from scenegen.flat import SYSTEM, FlatGenerator, all_layouts, centred_layout
from scenegen.presets import preset_config

WHITE = np.array([255, 255, 255])
_Y, _X = np.mgrid[0:336, 0:336]
XX, YY = _X.ravel().astype(float), _Y.ravel().astype(float)


def gen_of(name, **kw):
    cfg = preset_config(name, **kw)
    return FlatGenerator(cfg.flat, seed=cfg.seed, n=cfg.n, twins=cfg.twins, splits=cfg.splits)


def check_labels_against_centroids(stim):
    """Oracle: derive ordinals and the answer from mask centroids alone."""
    along = 0 if stim.axis == "horizontal" else 1
    targets = [e for e in stim.entities if e.role == "target"]
    ranked = sorted(targets, key=lambda e: e.centroid[along])
    assert [e.ordinal for e in ranked] == [0, 1, 2], stim.id
    # the axis really is the layout axis: the other coordinate is shared
    assert len({e.centroid[1 - along] for e in targets}) == 1 or stim.task == "shapes"
    p = next(p for p in stim.prompts if p.kind == "completion")
    ref_name = p.text[slice(*p.spans["reference"])]
    ref = next(e for e in targets if e.name == ref_name)
    sign = -1 if stim.relation in ("left", "above") else 1
    side = [e for e in targets if e is not ref
            and sign * (e.centroid[along] - ref.centroid[along]) > 0]
    assert len(side) == 1, stim.id
    # with three in a line, the relation names the one neighbour on that side
    assert p.answer == side[0].color, stim.id
    yn = next(p for p in stim.prompts if p.kind == "yesno")
    subj = next(e for e in targets if e.name == yn.text[slice(*yn.spans["subject"])])
    assert yn.answer == ("yes" if subj is side[0] else "no")


@pytest.mark.parametrize("name", ["squares-qwen2-vl", "shapes-qwen2-vl"])
def test_all_480_labels_agree_with_mask_centroids(name):
    gen = gen_of(name)
    assert len(gen) == 480
    seen = set()
    for i in range(len(gen)):
        for r in gen.unit(i):
            s = r.stimulus
            if s.counterfactual_kind == "isolated":
                continue
            # centroids recorded == centroids of the actual mask pixels (one bincount pass)
            m = r.mask.ravel().astype(np.int64)
            area = np.bincount(m, minlength=4)
            sx = np.bincount(m, weights=XX, minlength=4)
            sy = np.bincount(m, weights=YY, minlength=4)
            for e in s.entities:
                k = e.mask_id
                assert e.area == area[k]
                assert e.centroid == pytest.approx((sx[k] / area[k] + 0.5, sy[k] / area[k] + 0.5))
            check_labels_against_centroids(s)
        s = gen.unit(i)[0].stimulus
        seen.add((tuple(s.factors["triple"]), s.relation))
    assert len(seen) == 480  # every ordered triple x direction exactly once


@pytest.mark.parametrize("name", ["squares-gemma-3", "shapes-gemma-3"])
def test_gemma_presets_labels_subset(name):
    gen = gen_of(name, n=24)
    for i in range(len(gen)):
        for r in gen.unit(i)[:3]:
            check_labels_against_centroids(r.stimulus)


@pytest.mark.parametrize("name,tok,px,size", [("squares-qwen2-vl", 12, 28, 2),
                                              ("squares-gemma-3", 16, 56, 3),
                                              ("squares-pixtral", 15, 16, 2)])
def test_square_boxes_fall_exactly_on_token_cells(name, tok, px, size):
    gen = gen_of(name, n=40)
    for i in range(len(gen)):
        r = gen.unit(i)[0]
        s = r.stimulus
        assert r.image.shape == (tok * px, tok * px, 3) and r.mask.shape == (tok * px, tok * px)
        cells = s.factors["layout"]["cells"]
        for e in s.entities:
            x0, y0, x1, y1 = e.box
            assert all(v % px == 0 for v in e.box), e.box
            assert (x1 - x0, y1 - y0) == (size * px, size * px)
            assert [v // px for v in e.box] == cells[e.ordinal]
            assert e.area == (size * px) ** 2
        # the paper's slot formula, recomputed by hand
        n, S, sp = tok, size, size if tok == 16 else 2
        for e in s.entities:
            if s.axis == "horizontal":
                assert e.box[1] == (n - S) // 2 * px
                assert e.box[0] == ((n - (3 * S + 2 * sp)) // 2 + e.ordinal * (S + sp)) * px
            else:
                assert e.box[0] == (n - S) // 2 * px
                assert e.box[1] == ((n - (3 * S + 2 * sp)) // 2 + e.ordinal * (S + sp)) * px


def test_mask_and_rgb_agree_exactly():
    for name in ("squares-qwen2-vl", "shapes-gemma-3"):
        gen = gen_of(name, n=6)
        for i in range(len(gen)):
            for r in gen.unit(i):
                assert (r.image[r.mask == 0] == WHITE).all()
                for e in r.stimulus.entities:
                    assert (r.image[r.mask == e.mask_id] == np.array(e.rgb)).all()
                if r.stimulus.task == "shapes":
                    # shapes stay inside their token cells
                    for e in r.stimulus.entities:
                        if r.stimulus.counterfactual_kind != "isolated":
                            c = [v * 56 for v in r.stimulus.factors["layout"]["cells"][e.ordinal]]
                            assert c[0] <= e.box[0] and c[1] <= e.box[1]
                            assert e.box[2] <= c[2] and e.box[3] <= c[3]


def _paper_composite(shape, side, rgb):
    """Independent oracle: the paper's way (draw on an RGBA sprite, paste with its alpha)."""
    sprite = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(sprite)
    if shape == "square":
        s = 0.8 * side; o = (side - s) / 2
        d.rectangle([o, o, o + s - 1, o + s - 1], fill=rgb)
    elif shape == "circle":
        s = 0.9 * side; o = (side - s) / 2
        d.ellipse([o, o, o + s - 1, o + s - 1], fill=rgb)
    elif shape == "triangle":
        d.polygon([(side / 2, 0), (0, side * math.sqrt(3) / 2), (side - 1, side * math.sqrt(3) / 2)],
                  fill=rgb)
    elif shape == "cross":
        w = side // 3; o = (side - w) / 2
        d.rectangle([o, 0, o + w - 1, side - 1], fill=rgb)
        d.rectangle([0, o, side - 1, o + w - 1], fill=rgb)
    elif shape == "star":
        c = (side - 1) / 2
        pts = [(math.cos(i * math.pi / 5 - math.pi / 2) * (1 if i % 2 == 0 else 0.381966),
                math.sin(i * math.pi / 5 - math.pi / 2) * (1 if i % 2 == 0 else 0.381966))
               for i in range(10)]
        k = 1 / max(abs(x) for x, _ in pts)
        d.polygon([(c + x * c * k, c + y * c) for x, y in pts], fill=rgb)
    elif shape == "heart":
        xs, ys = [], []
        for i in range(100):
            t = 2 * math.pi * i / 100
            xs.append(16 * math.sin(t) ** 3)
            ys.append(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts = [((x - min(xs)) / (max(xs) - min(xs)) * (side - 1),
                (1 - (y - min(ys)) / (max(ys) - min(ys))) * (side - 1)) for x, y in zip(xs, ys)]
        d.polygon(pts, fill=rgb)
    return sprite


def test_shapes_match_paper_compositing():
    gen = gen_of("shapes-gemma-3")
    # units 0..: permutations of (square,circle,triangle,star,cross,heart); pick triples covering all
    wanted = {"square", "circle", "triangle", "star", "cross", "heart"}
    for i in range(0, 480, 4):
        r = gen.unit(i)[0]
        s = r.stimulus
        canvas = Image.new("RGB", (896, 896), (255, 255, 255))
        for e in s.entities:
            c = s.factors["layout"]["cells"][e.ordinal]
            sp = _paper_composite(e.kind, 3 * 56, e.rgb)
            canvas.paste(sp, (c[0] * 56, c[1] * 56), mask=sp.split()[3])
        assert (np.asarray(canvas) == r.image).all(), s.id
        wanted -= {e.kind for e in s.entities}
        if not wanted:
            break
    assert not wanted


def test_paper_prompts_exact():
    r = gen_of("squares-qwen2-vl").unit(0)[0]
    p = r.stimulus.prompts[0]
    assert p.kind == "completion" and p.system == SYSTEM == (
        "You are a helpful assistant. You respond in one token.")
    assert p.text == "The color of the square to the left of the green square is "
    assert p.answer == "red"
    assert {k: p.text[a:b] for k, (a, b) in p.spans.items()} == {
        "subject": "square", "relation": "to the left of", "reference": "green square"}
    r = gen_of("shapes-qwen2-vl").unit(3)[0]  # (square, circle, triangle), below
    p = r.stimulus.prompts[0]
    assert p.text == "The color of the shape below the green circle is " and p.answer == "blue"
    c = r.stimulus.prompts[2]
    assert c.kind == "choice" and set(c.options) == {"red", "blue"} and c.answer == "blue"
    assert c.text[slice(*c.spans["relation"])] == "below"


def test_twins():
    gen = gen_of("shapes-qwen2-vl", n=30)
    for i in range(len(gen)):
        items = {r.stimulus.id: r for r in gen.unit(i)}
        base = next(iter(items.values()))
        b = base.stimulus
        assert b.counterfactual_of is None
        sw, cc = items[f"{b.id}-swap"], items[f"{b.id}-cc"]
        for t in items.values():
            assert t.stimulus.scene_id == b.id and t.stimulus.split == b.split
            if t is not base:
                assert t.stimulus.counterfactual_of == b.id
        # swap: pixels differ only where the two outer targets are (in either image)
        diff = (base.image != sw.image).any(-1) | (base.mask != sw.mask)
        allowed = np.zeros_like(diff)
        for e in b.entities + sw.stimulus.entities:
            if e.ordinal in (0, 2):
                x0, y0, x1, y1 = e.box
                allowed[y0:y1, x0:x1] = True
        assert diff.any() and not (diff & ~allowed).any()
        # same entity keeps its mask id and moves to the mirrored slot
        by_id = {e.mask_id: e for e in sw.stimulus.entities}
        for e in b.entities:
            assert by_id[e.mask_id].color == e.color
            assert by_id[e.mask_id].ordinal == 2 - e.ordinal
        # criss-cross: attributes reversed along the axis; same prompt text, answer follows
        assert [e.color for e in sorted(cc.stimulus.entities, key=lambda e: e.ordinal)] == [
            e.color for e in sorted(b.entities, key=lambda e: -e.ordinal)]
        assert cc.stimulus.prompts[0].text == b.prompts[0].text
        check_labels_against_centroids(cc.stimulus)
        check_labels_against_centroids(sw.stimulus)
        assert (cc.image == sw.image).all()  # for three entities in a line they coincide
        # isolated: one entity, in the centre cell block, same sprite pixels as in the base
        for k, e in enumerate(sorted(b.entities, key=lambda e: e.ordinal)):
            iso = items[f"{b.id}-iso{k}"]
            s = iso.stimulus
            assert s.counterfactual_kind == "isolated" and s.isolates == e.mask_id
            assert [(x.mask_id, x.ordinal) for x in s.entities] == [(e.mask_id, k)]
            c = (12 - 2) // 2 * 28
            cell_base = b.factors["layout"]["cells"][e.ordinal]
            x, y = cell_base[0] * 28, cell_base[1] * 28
            assert (iso.image[c:c + 56, c:c + 56] == base.image[y:y + 56, x:x + 56]).all()
            assert (iso.mask[c:c + 56, c:c + 56] == base.mask[y:y + 56, x:x + 56]).all()
            assert iso.mask.sum() == base.mask[y:y + 56, x:x + 56].sum()
    # centre cell == the paper's middle slot
    lay = centred_layout(12, 2, 2, "horizontal")
    assert lay.origin(1) == ((12 - 2) // 2, (12 - 2) // 2)
    blank = gen.extras()
    assert len(blank) == 1 and blank[0].stimulus.counterfactual_kind == "blank"
    assert (blank[0].image == 255).all() and not blank[0].mask.any()


def test_twins_configurable():
    g = FlatGenerator(FlatConfig(), twins=("isolated",))
    assert [r.stimulus.counterfactual_kind for r in g.unit(0)] == [None] + ["isolated"] * 3
    assert g.extras() == []


def test_subset_deterministic_and_bounded():
    a = FlatGenerator(FlatConfig(), seed=1, n=20)
    b = FlatGenerator(FlatConfig(), seed=1, n=20)
    c = FlatGenerator(FlatConfig(), seed=2, n=20)
    assert a.chosen == b.chosen == sorted(set(a.chosen)) and a.chosen != c.chosen
    assert (a.unit(7)[0].image == b.unit(7)[0].image).all()
    with pytest.raises(ConfigError, match="n=481 exceeds the 480 distinct squares items"):
        FlatGenerator(FlatConfig(), n=481)
    g = FlatGenerator(FlatConfig(colors=("red", "green", "blue"), directions=("left",)))
    assert len(g) == 6


def test_random_layouts_on_grid_and_labelled():
    cfg = FlatConfig(grid=GridConfig(num_tokens=8, token_px=28, size=1, spacing=2),
                     layout="random", sizes=(1, 2), spacings=(1, 2), jitter=20)
    g = FlatGenerator(cfg, seed=0, n=60)
    layouts = set()
    for i in range(len(g)):
        for r in g.unit(i)[:3]:
            s = r.stimulus
            check_labels_against_centroids(s)
            lay = s.factors["layout"]
            layouts.add((lay["size"], lay["spacing"], lay["cross"], lay["offset"]))
            for e in s.entities:
                assert all(v % 28 == 0 for v in e.box) and 0 <= min(e.box) and max(e.box) <= 224
                base = np.array(dict(red=(255, 0, 0), green=(0, 255, 0), blue=(0, 0, 255),
                                     black=(0, 0, 0), brown=(150, 75, 0),
                                     gray=(128, 128, 128))[e.color])
                assert np.abs(np.array(e.rgb) - base).max() <= 20
                assert (r.image[r.mask == e.mask_id] == np.array(e.rgb)).all()
    assert len(layouts) > 20
    # the organism's layout space (ORGANISM.md): N=8, S in {1,2}, sp in {1,2} -> 55 per axis
    assert len(all_layouts(8, (1, 2), (1, 2), "vertical")) == 55
    assert len(FlatGenerator(cfg, n=1000)) == 1000  # any n with random layouts


def test_splits_keep_mirror_pairs_together_with_exact_fractions():
    g = FlatGenerator(FlatConfig(), twins=())  # the squares-qwen2-vl enumeration, no twins
    split_of_triple = {}
    counts = defaultdict(set)
    for i in range(len(g)):
        s = g.unit(i)[0].stimulus
        t = tuple(s.factors["triple"])
        split_of_triple[t] = s.split
        counts[s.split].add("|".join(min(t, t[::-1])))
    for t, sp in split_of_triple.items():
        assert split_of_triple[t[::-1]] == sp
    assert {k: len(v) for k, v in counts.items()} == {"train": 48, "val": 6, "test": 6}
    g2 = FlatGenerator(FlatConfig(), twins=(), splits=SplitConfig(by="colorset", train=0.5, val=0.25,
                                                        test=0.25))
    sets = defaultdict(set)
    for i in range(0, 480, 3):
        s = g2.unit(i)[0].stimulus
        sets[frozenset(s.factors["triple"])].add(s.split)
    assert all(len(v) == 1 for v in sets.values())


@pytest.mark.parametrize("name", ["squares-pixtral", "shapes-pixtral"])
def test_pixtral_presets_orange_for_brown(name):
    """The authors' Pixtral stimuli: 240 px, Orange (255,165,0) wherever the paper has Brown."""
    gen = gen_of(name, n=480 if name.startswith("squares") else 24)
    colours = set()
    for i in range(len(gen)):
        r = gen.unit(i)[0]
        assert r.image.shape == (240, 240, 3)
        for e in r.stimulus.entities:
            colours.add(e.color)
            if e.color == "orange":
                assert tuple(e.rgb) == (255, 165, 0)
    assert "brown" not in colours
    if name.startswith("squares"):
        assert colours == {"red", "green", "blue", "black", "orange", "gray"}
    else:
        assert "orange" in colours
