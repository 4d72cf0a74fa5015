"""Stitched What'sUp (the paper's Table 1 variant) from a fixture in the release's layout: the item
count follows the rule for a tokenizer that splits some names, halves equal the resized sources,
regions come from halves or a regions file."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import spatialbind
from scenegen import read_dataset
from scenegen.errors import ConfigError
from scenegen.generate import apply_task_options, build_generator, resolve
from scenegen.config import GenerateConfig
from scenegen.importers.whatsup_stitched import SIDE_OBJECTS, filter_sides, paper_regions_file
from scenegen.presets import preset

# photos present in the fixture, per middle (names from the authors' lists, plus one multi-word)
PRESENT = {"chair": ["plate", "mug", "book", "cap", "toy-cactus", "orange"],
           "table": ["bowl", "lamp", "mug"],
           "armchair": ["apple", "rose", "glove"]}
SINGLE = {"plate", "mug", "book", "bowl", "dog", "apple", "rose", "orange", "lamp"}


class Tok:
    """One token for the names in SINGLE (lower-case and Capitalised), except 'Orange', which
    splits; every other word splits into letters (like a real BPE on rare words)."""

    def tokenize(self, s):
        if s.lower() in SINGLE and s != "Orange":
            return [s]
        return list(s)


def make_release(root, size=(64, 40)):
    """The release layout: ROOT/controlled_images/<obj>_<rel>_<ref>.jpeg, non-square photos."""
    d = root / "controlled_images"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for m, names in PRESENT.items():
        for n in names:
            for rel in ("left_of", "right_of", "on", "under"):
                a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(a).save(d / f"{n}_{rel}_{m}.jpeg", quality=90)
    # a photo with only one side present is dropped as missing
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(d / "dog_left_of_table.jpeg")
    return d


def kept_by_rule():
    """Hand oracle: the authors' candidate order, single-token names with both photos."""
    return {m: [n for n in SIDE_OBJECTS[m] if n in PRESENT[m] and n in SINGLE and n != "orange"]
            for m in ("chair", "table", "armchair")}


def stitched_gen(root, size=336, **extra):
    d = apply_task_options(preset("whatsup-stitched-qwen2-vl"), whatsup=str(root), tokenizer=Tok(),
                           tokenizer_name="test-tok", **extra)
    d["whatsup_stitched"]["size"] = size
    cfg = GenerateConfig.from_dict(d)
    return build_generator(resolve(cfg)), cfg


def test_item_count_follows_the_rule_and_order(tmp_path):
    make_release(tmp_path)
    gen, cfg = stitched_gen(tmp_path)
    kept = kept_by_rule()
    assert kept == {"chair": ["plate", "mug", "book"], "table": ["bowl", "lamp", "mug"],
                    "armchair": ["apple", "rose"]}
    assert cfg.whatsup_stitched["sides"] == kept
    dropped = cfg.whatsup_stitched["dropped"]
    assert dropped["chair"]["orange"].startswith("not one token")
    assert dropped["chair"]["cap"].startswith("not one token")
    assert dropped["table"]["dog"] == "missing image dog_right_of_table.jpeg"
    assert dropped["armchair"]["glove"].startswith("not one token")
    assert len(gen) == 3 * 2 * 2 + 3 * 2 * 2 + 2 * 1 * 2 == 28
    want = [(m, t, d, r) for m in ("chair", "table", "armchair")
            for t, d in itertools.permutations(kept[m], 2) for r in ("left", "right")]
    for i, (m, t, d, r) in enumerate(want):
        st = gen.unit(i)[0].stimulus
        f = st.factors
        assert (f["middle"], f["target"], f["distractor"], f["direction"]) == (m, t, d, r)
        prep = {"left": "to the left of", "right": "to the right of"}[r]
        assert st.prompts[0].text == f"The object on the floor {prep} the {m} is a(n) "
        assert st.prompts[0].answer == t
        assert st.prompts[0].system == "You are a helpful assistant. You respond in one token."
        left, right = (t, d) if r == "left" else (d, t)
        assert f["left_source"] == f"{left}_left_of_{m}.jpeg"
        assert f["right_source"] == f"{right}_right_of_{m}.jpeg"


@pytest.mark.parametrize("size", [336, 896, 512])
def test_halves_pixel_equal_to_resized_sources(tmp_path, size):
    src = make_release(tmp_path)
    gen, _ = stitched_gen(tmp_path, size=size)
    for i in (0, 5, len(gen) - 1):
        r = gen.unit(i)[0]
        f = r.stimulus.factors
        a = np.asarray(Image.open(src / f["left_source"]).convert("RGB").resize(
            (size, size), Image.Resampling.BILINEAR))
        b = np.asarray(Image.open(src / f["right_source"]).convert("RGB").resize(
            (size, size), Image.Resampling.BILINEAR))
        assert r.image.shape == (size, size, 3)
        assert np.array_equal(r.image[:, :size // 2], a[:, :size // 2])
        assert np.array_equal(r.image[:, size // 2:], b[:, size // 2:])
        # default regions: the halves
        ents = {e.mask_id: e for e in r.stimulus.entities}
        assert ents[1].box == (0, 0, size // 2, size) and ents[3].box == (size // 2, 0, size, size)
        assert ents[2].area == 0 and r.stimulus.factors["regions"] == "halves"
        assert (r.mask[:, :size // 2] == 1).all() and (r.mask[:, size // 2:] == 3).all()
        assert [e.ordinal for e in r.stimulus.targets] == [0, 1, 2]


def test_regions_file_paper_boxes_and_per_image_override(tmp_path):
    make_release(tmp_path)
    reg = json.loads(paper_regions_file().read_text())
    # the authors' chair boxes, 64-grid units (probing/src/whatsup.py), as [x0, y0, x1, y1] / 64
    assert reg["boxes"]["chair"]["middle"] == [24 / 64, 16 / 64, 40 / 64, 60 / 64]
    reg["boxes"]["whatsup-stitched-000001"] = {"left": [0, 0, 10, 20]}
    reg["units"] = "fraction"
    bad = dict(reg, boxes={"chair": {"left": [0, 0, 10, 20]}})
    p = tmp_path / "reg.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"boxes\['chair'\]\['left'\].*inside \[0, 1\]"):
        stitched_gen(tmp_path, regions=str(p))[0]
    reg["boxes"]["whatsup-stitched-000001"] = {"left": [0.0, 0.0, 0.25, 0.5]}
    p.write_text(json.dumps(reg))
    gen, _ = stitched_gen(tmp_path, regions=str(p))
    r0 = gen.unit(0)[0]
    e = {x.mask_id: x for x in r0.stimulus.entities}
    assert r0.stimulus.factors["regions"] == "file"
    # 336 px: x0 = int(12/64*336) = 63, y0 = int(48/64*336) = 252, x1 = 126, y1 = 315
    assert e[1].box == (63, 252, 126, 315)
    assert e[2].box == (126, 84, 210, 315)
    r1 = gen.unit(1)[0]
    e1 = {x.mask_id: x for x in r1.stimulus.entities}
    assert e1[1].box == (0, 0, 84, 168) and e1[3].area == 0 and e1[2].area == 0


def test_cli_end_to_end_with_saved_tokenizer(tmp_path):
    make_release(tmp_path / "wu")
    from vlms.qwen2_vl import SPECIAL_TOKENS
    from vlms.tiny import train_tokenizer

    words = ["plate", "mug", "bowl", "lamp", "apple", "rose"]
    tok = train_tokenizer(SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>", vocab_size=600,
                          corpus=[w for n in words for w in (n, n.capitalize())] * 50)
    tok.save_pretrained(tmp_path / "tok")
    kept, _ = filter_sides(tok, tmp_path / "wu")
    n_rule = sum(len(v) * (len(v) - 1) * 2 for v in kept.values())
    assert n_rule > 0 and "cap" not in kept["chair"]
    out = tmp_path / "ds"
    r = CliRunner().invoke(spatialbind, [
        "generate", "--preset", "whatsup-stitched-gemma-3", "--whatsup", str(tmp_path / "wu"),
        "--tokenizer", str(tmp_path / "tok"), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"items: {n_rule} (rule: {n_rule};" in r.output
    ds = read_dataset(out)
    assert len(ds.base()) == n_rule and len(ds) == 2 * n_rule and ds.base()[0].width == 896
    names = json.loads((out / "names.json").read_text())
    assert names["kept"] == kept and names["items_rule"] == n_rule
    assert "cap" in names["dropped"]["chair"]
    # no root: one clear line
    r = CliRunner().invoke(spatialbind, ["generate", "--preset", "whatsup-stitched-qwen2-vl",
                                         "--tokenizer", str(tmp_path / "tok"), "--out",
                                         str(tmp_path / "x")])
    assert r.exit_code == 1 and "pass --whatsup ROOT" in r.output
    r = CliRunner().invoke(spatialbind, ["generate", "--preset", "whatsup-stitched-qwen2-vl",
                                         "--whatsup", str(tmp_path / "nowhere"), "--tokenizer",
                                         str(tmp_path / "tok"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "no such directory" in r.output


def test_crisscross_twin_is_the_exchanged_pair_and_e4_runs(tmp_path):
    """The twin shows the side objects exchanged (pixel-equal to the opposite-direction item of the
    same pair), and E4 criss-cross patching runs on the stitched records with the paper's boxes."""
    make_release(tmp_path)
    gen, _ = stitched_gen(tmp_path, regions=str(paper_regions_file()))
    base, cc = gen.unit(0)
    assert cc.stimulus.counterfactual_of == base.stimulus.id
    assert cc.stimulus.counterfactual_kind == "crisscross"
    other = gen.unit(1)[0]  # same (target, distractor), direction right: stitch(d, m, t)
    assert other.stimulus.factors["direction"] == "right"
    assert np.array_equal(cc.image, other.image)
    names = lambda r: [e.name for e in r.stimulus.targets]  # noqa: E731
    assert names(cc) == names(base)[::-1]
    assert cc.stimulus.prompts[0].text == base.stimulus.prompts[0].text
    assert cc.stimulus.prompts[0].answer == base.stimulus.factors["distractor"]

    import torch

    from interventions.patching import PatchConfig, run_e4
    from scenegen import generate as gen_ds
    from vlms.registry import load_adapter

    torch.set_num_threads(1)
    d = apply_task_options(preset("whatsup-stitched-qwen2-vl"), whatsup=str(tmp_path),
                           regions=str(paper_regions_file()), tokenizer=Tok(),
                           tokenizer_name="test-tok")
    d["n"] = 2
    out = gen_ds(GenerateConfig.from_dict(d), tmp_path / "ds", progress=False)
    ds = read_dataset(out)
    table, summary = run_e4(load_adapter("tiny-qwen2-vl"), ds,
                            PatchConfig(experiment="e4", layers="0", regions=("object",),
                                        limit=1, recipe="robust"), progress=False)
    assert len(table) == 1 and table["region"].tolist() == ["object"]
