"""The Objects task: the paper's enumeration and prompt, sprites drawn on the model's grid cells,
labels that agree with the masks, user sprite folders validated, single-token names reported."""
from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import spatialbind
from scenegen import generate, read_dataset
from scenegen.config import FlatConfig, GenerateConfig, GridConfig
from scenegen.errors import ConfigError
from scenegen.flat import FlatGenerator
from scenegen.generate import build_generator, resolve
from scenegen.objects import DEFAULT_OBJECTS, default_dir, load_objects, token_report
from scenegen.presets import preset_config

# the paper's facts, written here (PAPER-NOTES 1.3 / 1.4; the authors' objects.py and palette.py)
DIRS = ("left", "right", "above", "below")
PREP = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
GEOM = {"objects-qwen2-vl": (12, 28, 2, 2), "objects-gemma-3": (16, 56, 3, 3)}


def slot_cells(n, s, sp, horizontal):
    """Token boxes [x0, y0, x1, y1] of the three slots (the authors' three_entity_offsets)."""
    if horizontal:
        y, x0 = (n - s) // 2, (n - (3 * s + 2 * sp)) // 2
        return [[x0 + i * (s + sp), y, x0 + i * (s + sp) + s, y + s] for i in range(3)]
    x, y0 = (n - s) // 2, (n - (3 * s + 2 * sp)) // 2
    return [[x, y0 + i * (s + sp), x + s, y0 + i * (s + sp) + s] for i in range(3)]


def base_gen(name, **kw):
    cfg = preset_config(name, twins=[], **kw)
    return build_generator(resolve(cfg))


@pytest.mark.parametrize("name", ["objects-qwen2-vl", "objects-gemma-3"])
def test_1344_items_in_the_authors_order_with_their_prompt(name):
    gen = base_gen(name)
    assert len(gen) == 1344  # P(8, 3) x 4
    names = DEFAULT_OBJECTS
    order = [(t, d) for t in itertools.permutations(names, 3) for d in DIRS]
    n, px, s, sp = GEOM[name]
    for i in list(range(0, 1344, 37)) + [1343]:
        (triple, direction) = order[i]
        r = gen.unit(i)[0]
        st = r.stimulus
        assert st.relation == direction and st.factors["objects"] == list(triple)
        p = st.prompts[0]
        assert p.kind == "completion"
        assert p.text == f"The object {PREP[direction]} the {triple[1]} is a(n) "
        assert p.system == "You are a helpful assistant. You respond in one token."
        assert p.answer == (triple[0] if direction in ("left", "above") else triple[2])
        # regions are the layout cells, as for Squares/Shapes
        cells = slot_cells(n, s, sp, direction in ("left", "right"))
        assert st.factors["layout"]["cells"] == cells
        assert st.width == n * px


def test_labels_agree_with_mask_centroids_and_pixels():
    gen = base_gen("objects-qwen2-vl")
    sprites = {nm: np.asarray(Image.open(default_dir() / f"{nm}.png").convert("RGBA"))
               for nm in DEFAULT_OBJECTS}
    for i in range(0, 1344, 11):
        r = gen.unit(i)[0]
        st, mask, img = r.stimulus, r.mask, r.image
        along = 0 if st.axis == "horizontal" else 1
        ents = sorted(st.entities, key=lambda e: e.mask_id)
        for e in ents:
            ys, xs = np.nonzero(mask == e.mask_id)
            assert e.area == len(xs) > 0
            assert e.centroid == pytest.approx((xs.mean() + 0.5, ys.mean() + 0.5))
            # the object stays inside its slot's cells
            x0, y0, x1, y1 = (v * 28 for v in st.factors["layout"]["cells"][e.ordinal])
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            # the mask is the sprite's alpha resized to the cell block (independent resize)
            side = x1 - x0
            a = np.asarray(Image.fromarray(sprites[e.kind]).resize((side, side),
                                                                   Image.BILINEAR))
            assert np.array_equal(mask[y0:y1, x0:x1] == e.mask_id, a[..., 3] >= 128)
            assert np.array_equal(img[y0:y1, x0:x1][a[..., 3] >= 128], a[..., :3][a[..., 3] >= 128])
        # every non-white pixel belongs to an object; background pixels are white
        assert (img[mask == 0] == 255).all()
        ranked = sorted(ents, key=lambda e: e.centroid[along])
        assert [e.ordinal for e in ranked] == [0, 1, 2]
        assert [e.kind for e in ranked] == st.factors["objects"]
        want = ranked[0] if st.relation in ("left", "above") else ranked[2]
        assert st.prompts[0].answer == want.name == want.kind


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "parts" not in p.parts}


def test_byte_deterministic_across_runs_and_workers(tmp_path):
    cfg = preset_config("objects-gemma-3", n=6, seed=3)
    a = generate(cfg, tmp_path / "a", workers=1, progress=False)
    b = generate(cfg, tmp_path / "b", workers=2, progress=False)
    c = generate(cfg, tmp_path / "c", workers=1, progress=False)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db == dc and len(da) > 6 * 6


def _sprite(path, rgb=(200, 30, 30), alpha=True, full=False):
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., :3] = rgb
    if full:
        a[..., 3] = 255
    else:
        a[8:32, 10:30, 3] = 255
    Image.fromarray(a if alpha else a[..., :3]).save(path)


def _folder(tmp_path, names=("apple", "bell", "key")):
    d = tmp_path / "objs"
    d.mkdir()
    for i, n in enumerate(names):
        _sprite(d / f"{n}.png", rgb=(40 * i, 100, 200 - 40 * i))
    return d


def test_user_folder_names_from_files(tmp_path):
    d = _folder(tmp_path, ("key", "apple", "bell", "rose"))
    cfg = GenerateConfig(flat=FlatConfig(task="objects", objects_dir=str(d)), twins=())
    gen = build_generator(resolve(cfg))
    assert gen.items == ("apple", "bell", "key", "rose")  # file-name order
    assert len(gen) == 4 * 3 * 2 * 4
    st = gen.unit(0)[0].stimulus
    assert st.prompts[0].text == "The object to the left of the bell is a(n) "
    # explicit names choose and order
    cfg = GenerateConfig(flat=FlatConfig(task="objects", objects_dir=str(d),
                                         objects=("rose", "key", "apple")), twins=())
    assert build_generator(resolve(cfg)).items == ("rose", "key", "apple")


@pytest.mark.parametrize("setup,needle", [
    (lambda d: (d / "bell.png").unlink(), "holds 2 usable sprite(s)"),
    (lambda d: _sprite(d / "bell.png", alpha=False), "has no alpha channel"),
    (lambda d: _sprite(d / "bell.png", full=True), "is fully opaque"),
    (lambda d: (d / "Big Bell.png").write_bytes(b"x"), "rename it to a lower-case word"),
    (lambda d: (d / "bell.png").write_bytes(b"not a png"), "is not a readable image"),
])
def test_bad_user_folders_one_line(tmp_path, setup, needle):
    d = _folder(tmp_path)
    setup(d)
    r = CliRunner().invoke(spatialbind, ["generate", "--preset", "objects-qwen2-vl", "--objects",
                                         str(d), "--out", str(tmp_path / "out"),
                                         "--no-progress"])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.output
    assert not (tmp_path / "out").exists()


def test_missing_folder_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        load_objects(tmp_path / "nope")
    d = _folder(tmp_path)
    with pytest.raises(ConfigError, match=r"no sprite file for object\(s\) \['pot'\]"):
        load_objects(d, ("apple", "pot", "key"))
    with pytest.raises(ConfigError, match="options of task 'objects'"):
        FlatConfig(task="squares", objects_dir=str(d))


def test_changed_sprites_refuse_resume(tmp_path):
    d = _folder(tmp_path)
    cfg = GenerateConfig(flat=FlatConfig(task="objects", objects_dir=str(d)), n=2)
    generate(cfg, tmp_path / "ds", progress=False)
    _sprite(d / "key.png", rgb=(1, 2, 3))
    with pytest.raises(ConfigError, match="sprite files changed"):
        build_generator(read_dataset(tmp_path / "ds").config)


class SplitTokenizer:
    """Splits names longer than 4 letters into 2 pieces, and any Capitalised 'Key'."""

    def tokenize(self, s):
        if len(s) > 4 or s == "Key":
            return [s[:2], s[2:]]
        return [s]


def test_token_report_and_cli_names_json(tmp_path):
    rep = token_report(SplitTokenizer(), ["apple", "bell", "key", "rose"])
    assert rep["single"] == ["bell", "rose"]
    assert rep["split"] == ["apple (ap|ple / Ap|ple)", "key (key / Ke|y)"]
    # through the CLI with a real (tiny, locally trained) tokenizer saved to a directory
    from vlms.qwen2_vl import SPECIAL_TOKENS
    from vlms.tiny import train_tokenizer

    tok = train_tokenizer(SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>", vocab_size=400,
                          corpus=["cube", "Cube", "cone", "Cone"] * 40)
    tok.save_pretrained(tmp_path / "tok")
    want_split = [n for n in DEFAULT_OBJECTS
                  if len(tok.tokenize(n)) != 1 or len(tok.tokenize(n.capitalize())) != 1]
    assert "cube" not in want_split and "prism" in want_split
    out = tmp_path / "ds"
    r = CliRunner().invoke(spatialbind, ["generate", "--preset", "objects-qwen2-vl", "--n", "2",
                                         "--tokenizer", str(tmp_path / "tok"), "--out", str(out),
                                         "--no-progress"])
    assert r.exit_code == 0, r.output
    import json

    names = json.loads((out / "names.json").read_text())
    assert [x.split(" ")[0] for x in names["not_single_token"]] == want_split
    assert f"{8 - len(want_split)}/8 single-token" in r.output


def test_random_layout_objects_any_grid():
    cfg = FlatConfig(task="objects", grid=GridConfig(num_tokens=10, token_px=20, size=2,
                                                     spacing=1),
                     layout="random", sizes=(1, 2), spacings=(0, 1))
    gen = FlatGenerator(cfg, seed=1, n=20, twins=("swap",))
    for i in range(20):
        base, swap = gen.unit(i)
        st = base.stimulus
        for e in st.entities:
            x0, y0, x1, y1 = (v * 20 for v in st.factors["layout"]["cells"][e.ordinal])
            ys, xs = np.nonzero(base.mask == e.mask_id)
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert swap.stimulus.factors["objects"] == st.factors["objects"][::-1]
