"""Model organisms: stimuli/processor equivalence, planted rotary configs, a training smoke run,
save/load round trips, and the mechanism contrast on the shipped checkpoints."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from organisms import data as od
from organisms import trainer as org

from .organism_aux import aux_slot_on

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits():
    return od.make_splits(8, seed=0)


# ----------------------------------------------------------------------------- data

def test_pixels_bit_identical_to_official_processors(splits):
    from PIL import Image
    from transformers import Gemma3ImageProcessorPil, Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    items = od.sample_train_items(rng, splits, 3)
    u8 = od.render(items, jitter=20, rng=np.random.default_rng(1))
    fast = od.render(items, jitter=20, rng=np.random.default_rng(1), normalise=od.QWEN_NORM)
    pils = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in u8]
    ref = Qwen2VLImageProcessorPil()(pils, return_tensors="pt")
    pv, thw = od.qwen_pixels(fast)
    assert torch.equal(ref["image_grid_thw"], thw)
    assert torch.equal(ref["pixel_values"], pv)          # bit-identical, not just close
    assert torch.equal(od.qwen_pixels(u8)[0], pv)
    gref = Gemma3ImageProcessorPil(size={"height": 224, "width": 224})(pils, return_tensors="pt")
    assert torch.equal(gref["pixel_values"], od.gemma_pixels(u8))


def test_render_places_squares_on_token_cells(splits):
    lay = od.Layout("h", 2, 1, 3, 0)
    it = od.Item(("red", "green", "blue"), lay, "left")
    img = od.render([it])[0]
    # square k covers token columns 3k..3k+1 (size 2, gap 1), rows 3..4; 28 px per token
    for k, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        c0 = 28 * 3 * k
        patch = img[:, 28 * 3:28 * 5, c0:c0 + 56]
        assert (patch == torch.tensor(rgb, dtype=torch.uint8)[:, None, None]).all()
    assert (img[:, :28 * 3] == 255).all() and (img[:, 28 * 5:] == 255).all()
    assert it.answer == "red" and od.Item(it.colours, lay, "right").answer == "blue"


def test_splits_hold_out_mirror_pairs_and_layouts(splits):
    held = set(splits.heldout_triples)
    assert len(held) == 24 and len(splits.train_triples) == 96
    assert all((t[2], t[1], t[0]) in held for t in held)
    assert not held & set(splits.train_triples)
    assert set(splits.canonical) <= set(splits.train_layouts)
    assert not set(splits.heldout_layouts) & set(splits.train_layouts)
    assert len(splits.heldout_layouts) == 22
    rng = np.random.default_rng(0)
    for it in od.sample_train_items(rng, splits, 500):
        assert it.colours not in held and it.layout not in splits.heldout_layouts
    # same seed, same split; every layout fits the grid
    assert od.make_splits(8, seed=0) == splits
    for lay in od.layouts(8):
        assert all(0 <= r < 8 and 0 <= c < 8 for s in range(3) for r, c in lay.cells(s))


def test_region_slots_by_hand():
    # canonical horizontal layout: 1-token squares at columns 0, 3, 6 of row 3
    lay = od.canonical(8, "h")
    assert (lay.line, lay.offset, lay.size, lay.gap) == (3, 0, 1, 2)
    obj = od.region_slots(lay, 8, "object").reshape(8, 8)
    assert {(r, c): int(obj[r, c]) for r, c in zip(*np.nonzero(obj >= 0))} == \
        {(3, 0): 0, (3, 3): 1, (3, 6): 2}
    strip = od.region_slots(lay, 8, "strip").reshape(8, 8)
    assert (strip[:, 0] == 0).all() and (strip[:, 3] == 1).all() and (strip[:, 6] == 2).all()
    assert (strip[:, [1, 2, 4, 5, 7]] == -1).all()
    band = od.region_slots(lay, 8, "band").reshape(8, 8)     # midpoints at 1.5 and 4.5
    assert band[0].tolist() == [0, 0, 1, 1, 1, 2, 2, 2] and (band == band[0]).all()
    # vertical, gap 1: squares at rows 0, 2, 4 -> rows 1 and 3 are halfway (no band)
    v = od.region_slots(od.Layout("v", 1, 1, 5, 0), 8, "band").reshape(8, 8)
    assert v[:, 0].tolist() == [0, -1, 1, -1, 2, 2, 2, 2] and (v.T == v[:, 0]).all()
    # 2-token squares: the strip is two columns wide
    s2 = od.region_slots(od.Layout("h", 2, 1, 0, 0), 8, "strip").reshape(8, 8)
    assert s2[5].tolist() == [0, 0, -1, 1, 1, -1, 2, 2]


def _isolated_tokens(model, arch, cols):
    """Projector tokens of ``render_single(cols, 1)`` (one image per entry, None = blank)."""
    from organisms.model import image_tokens

    if arch == "gemma-3":
        img = od.render_single(cols, 1, normalise=od.GEMMA_NORM)
        return image_tokens(model, {"pixel_values": img})
    pv, thw = od.qwen_pixels(od.render_single(cols, 1, normalise=od.QWEN_NORM))
    return image_tokens(model, {"pixel_values": pv, "image_grid_thw": thw})


@pytest.mark.parametrize("arch,mech", [("qwen2-vl", "dual"), ("gemma-3", "vision")])
def test_ablation_tokens_erase_position_and_keep_identity(arch, mech):
    """E5's ablation built from the organism's projector (Qwen2-VL's flat merger output and
    Gemma-3's (B, n, d) one): a square's tokens do not depend on where the square was, the rest
    is the blank canvas's tokens (independent oracle: the projector on the isolated renders)."""
    cfg = _tiny(mech, arch=arch)
    model, proc = org.build(cfg)
    model.eval()
    cols = ("red", "green", "blue")
    a = od.Item(cols, od.Layout("h", 1, 2, 3, 0), "left")
    b = od.Item(cols, od.Layout("h", 1, 1, 6, 2), "right")
    abl = org.ablation_tokens(model, [a, b], 8)
    assert abl.shape == (2, 64, cfg.lm_dim)
    for slot in range(3):
        (ra, ca), = a.layout.cells(slot)
        (rb, cb), = b.layout.cells(slot)
        assert torch.equal(abl[0, ra * 8 + ca], abl[1, rb * 8 + cb])
    with torch.no_grad():
        ref = _isolated_tokens(model, arch, [None, "green"])
    assert torch.allclose(abl[0, 3 * 8 + 3], ref[1, 3 * 8 + 3], atol=1e-5)  # green, centred
    objects = {r * 8 + c for s in range(3) for r, c in a.layout.cells(s)}
    rest = [k for k in range(64) if k not in objects]
    assert torch.allclose(abl[0, rest], ref[0, rest], atol=1e-5)          # blank canvas


def test_curriculum_feeds_the_lm_ablated_or_shuffled_tokens():
    from organisms.model import image_tokens

    cfg = _tiny("dual", p_shuffle=0.0, p_ablate=1.0)
    model, proc = org.build(cfg)
    model.eval()
    items = od.eval_items(od.make_splits(8), "hl", n=3)
    inp = org.Batcher(proc, 8)(items)
    with torch.no_grad():
        plain = image_tokens(model, inp)
    cur = org._Curriculum(model, cfg)
    try:
        cur.prepare(items, np.random.default_rng(0))
        with torch.no_grad():
            got = image_tokens(model, inp)
        assert torch.allclose(got, org.ablation_tokens(model, items, 8), atol=1e-5)
        cur.cfg = _tiny("vision", p_shuffle=1.0)
        cur.prepare(items, np.random.default_rng(0))
        with torch.no_grad():
            got = image_tokens(model, inp)
        assert not torch.equal(got, plain)
        for b in range(3):  # each image's own tokens, permuted
            key = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
            assert key(got[b]) == key(plain[b])
        # object-only ablation: object tokens from the isolated squares, background kept
        cur.cfg = _tiny("vision", p_shuffle=0.0, p_ablate_object=1.0)
        cur.prepare(items, np.random.default_rng(0))
        with torch.no_grad():
            got = image_tokens(model, inp)
        abl = org.ablation_tokens(model, items, 8)
        for b, it in enumerate(items):
            objm = torch.as_tensor(od.region_slots(it.layout, 8, "object") >= 0)
            assert torch.allclose(got[b, objm], abl[b, objm], atol=1e-5)
            assert torch.equal(got[b, ~objm], plain[b, ~objm])
        # shuffled object-only ablation: the same tokens as above, each image's permuted
        cur.cfg = _tiny("vision", p_shuffle=0.0, p_ablate_object=1.0,
                        shuffle_object_ablated=True)
        cur.prepare(items, np.random.default_rng(0))
        with torch.no_grad():
            shuf = image_tokens(model, inp)
        for b in range(3):
            key = lambda x: sorted(map(tuple, x.round(decimals=4).tolist()))  # noqa: E731
            assert key(shuf[b]) == key(got[b])
            assert not torch.allclose(shuf[b], got[b], atol=1e-5)
        cur.active = False
        with torch.no_grad():
            assert torch.equal(image_tokens(model, inp), plain)
    finally:
        cur.remove()


def test_colour_only_aux_loss_equals_a_hand_computation():
    """--aux-colour-weight: cross-entropy of a colour head over the aux-region tokens, times
    the weight, with no slot term; with a slot weight too the old loss is unchanged."""
    from organisms.model import image_tokens

    cfg = _tiny("lm", aux_colour_weight=0.7)
    with aux_slot_on(cfg, 4) as (aux, items, z, model, proc):
        with torch.no_grad():
            got = aux.loss(items)
            rows, labels = [], []
            for b, it in enumerate(items):
                slots = od.region_slots(it.layout, 8, "object")
                for k in np.flatnonzero(slots >= 0):
                    rows.append(z[b, k])
                    labels.append(od.COLOUR_NAMES.index(it.colours[slots[k]]))
            want = 0.7 * torch.nn.functional.cross_entropy(aux.colour(torch.stack(rows)),
                                                           torch.tensor(labels))
        assert torch.allclose(got, want, atol=1e-6)
        aux.cfg = _tiny("lm", aux_colour_weight=0.0, aux_slot_weight=2.0, aux_colour=True)
        with torch.no_grad():
            image_tokens(model, org.Batcher(proc, 8)(items))
            both = aux.loss(items)
            slot = torch.nn.functional.cross_entropy(
                aux.head(torch.stack(rows)),
                torch.tensor([int(od.region_slots(it.layout, 8, "object")[k])
                              for it in items
                              for k in np.flatnonzero(od.region_slots(it.layout, 8, "object") >= 0)]))
        assert torch.allclose(both, 2.0 * (slot + want / 0.7), atol=1e-5)


def test_tokenizer_is_word_level_and_case_insensitive():
    tok = od.word_tokenizer("qwen2-vl")
    a = tok("The color of the square to the left of the Red square is ").input_ids
    b = tok("the color of the square to the left of the red square is").input_ids
    assert a == b and len(a) == 13
    assert tok.unk_token_id not in a


# ----------------------------------------------------------------------------- model build

def _tiny(mech, **kw):
    base = dict(mechanism=mech, vision_depth=1, vision_dim=32, vision_heads=1, lm_layers=1,
                lm_dim=64, lm_heads=2, steps=40, batch=16, warmup=5, lr=3e-3, eval_every=20,
                eval_items=16)
    base.update(kw)
    return org.OrganismConfig(**base)


def test_template_reproduces_training_sequence():
    model, proc = org.build(_tiny("lm"))
    b = org.Batcher(proc, 8)
    ids = b.prompt_ids(od.prompt_text("above", "gray"))
    tok = proc.tokenizer
    expect = (["<|vision_start|>"] + ["<|image_pad|>"] * 64 + ["<|vision_end|>"]
              + "the color of the square above the gray square is".split())
    assert tok.convert_ids_to_tokens(ids) == expect
    # a plain-string user message gives the same ids; the system message is ignored
    chat = proc.apply_chat_template(org.paper_messages("x"), add_generation_prompt=True, tokenize=False)
    assert "helpful" not in chat and chat.startswith("<|vision_start|><|image_pad|>")


@pytest.mark.parametrize("mech", ["lm", "vision"])
def test_planted_rotary_phase(mech):
    """vision: every image token gets the same rotary cos/sin; lm: they differ by row/column."""
    model, proc = org.build(_tiny(mech))
    b = org.Batcher(proc, 8)
    it = od.Item(("red", "green", "blue"), od.canonical(8, "h"), "left")
    inp = b([it])
    pos, _ = model.model.get_rope_index(inp["input_ids"], mm_token_type_ids=inp["mm_token_type_ids"],
                                        image_grid_thw=inp["image_grid_thw"],
                                        attention_mask=inp["attention_mask"])
    x = torch.zeros(1, 1, 1)
    cos, sin = model.model.language_model.rotary_emb(x, pos)
    img = inp["input_ids"][0] == proc.image_token_id
    cimg, simg = cos[0, img], sin[0, img]
    same = torch.equal(cimg, cimg[:1].expand_as(cimg)) and torch.equal(simg, simg[:1].expand_as(simg))
    assert same == (mech == "vision")
    if mech == "vision":
        assert org.OrganismConfig(mechanism="vision").resolved_mrope_section() == (16, 0, 0)
        # text tokens after the image still get distinct phases
        txt = cos[0, ~img][-5:]
        assert len({tuple(r.tolist()) for r in txt}) == 5


@pytest.mark.parametrize("mech", ["lm", "vision"])
def test_planted_rotary_phase_gemma(mech):
    """Gemma-3 vision: linear scaling 1e9 gives every position the same rotary phase."""
    model, proc = org.build(_tiny(mech, arch="gemma-3"))
    b = org.Batcher(proc, 8)
    inp = b([od.Item(("red", "green", "blue"), od.canonical(8, "v"), "above")])
    img = inp["input_ids"][0] == proc.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert int(img.sum()) == 64 and torch.equal(inp["token_type_ids"][0].bool(), img)
    pos = torch.arange(inp["input_ids"].shape[1])[None]
    rot = model.model.language_model.rotary_emb
    for lt in set(model.config.text_config.layer_types):
        cos, sin = rot(torch.zeros(1, 1, 1), pos, lt)
        spread = (cos[0, img] - cos[0, img][:1]).abs().max()
        assert (spread < 1e-6) == (mech == "vision"), (lt, float(spread))
    # the zero-initialised Gemma-3 projector was re-initialised
    assert model.model.multi_modal_projector.mm_input_projection_weight.abs().sum() > 0


def test_gemma_training_smoke_and_roundtrip(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = _tiny("lm", arch="gemma-3", steps=20, eval_every=20)
    res = org.train(cfg, out=tmp_path / "g", progress=False, final_eval_items=16)
    assert res.log["history"][-1]["loss"] < 3.2
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path / "g").eval()
    proc = AutoProcessor.from_pretrained(tmp_path / "g")
    items = od.eval_items(od.make_splits(8), "hl", n=4)
    b = org.Batcher(proc, 8)
    with torch.no_grad():
        assert torch.equal(org.last_logits(res.model.eval(), b(items)), org.last_logits(plain, b(items)))
    # the processor on a PNG of the canvas gives the training inputs
    from PIL import Image
    pil = Image.fromarray(od.render(items[:1])[0].permute(1, 2, 0).numpy())
    chat = proc.apply_chat_template(org.paper_messages(items[0].text), add_generation_prompt=True,
                                    tokenize=False)
    enc = proc(text=[chat], images=[pil], return_tensors="pt")
    mine = b(items[:1])
    assert enc["input_ids"].tolist() == mine["input_ids"].tolist()
    assert torch.equal(enc["pixel_values"], mine["pixel_values"])


def test_dual_rotary_is_a_weak_positional_backup():
    """dual: image tokens keep (row, column) rotary phases, but only on the 3 lowest frequency
    pairs per axis (lm: 7 each, from higher frequencies)."""
    d, lm = org.OrganismConfig(mechanism="dual"), org.OrganismConfig(mechanism="lm")
    assert d.resolved_mrope_section() == (10, 3, 3) and d.resolved_rope_theta() == 20.0
    assert lm.resolved_mrope_section() == (2, 7, 7)
    inv = 20.0 ** (-np.arange(16) / 16)  # rad per position of each frequency pair
    assert inv[10:].max() < inv[2:].max() / 3       # backup frequencies are much slower
    model, proc = org.build(_tiny("dual", lm_dim=128, lm_heads=4))
    inp = org.Batcher(proc, 8)([od.Item(("red", "green", "blue"), od.canonical(8, "h"), "left")])
    pos, _ = model.model.get_rope_index(inp["input_ids"], mm_token_type_ids=inp["mm_token_type_ids"],
                                        image_grid_thw=inp["image_grid_thw"],
                                        attention_mask=inp["attention_mask"])
    cos, _ = model.model.language_model.rotary_emb(torch.zeros(1, 1, 1), pos)
    img = inp["input_ids"][0] == proc.image_token_id
    c = cos[0, img]
    assert len({tuple(r.tolist()) for r in c}) == 64      # every image token has its own phase


def test_config_validation_errors():
    with pytest.raises(org.OrganismError, match="task"):
        org.OrganismConfig(task="shapes")
    with pytest.raises(org.OrganismError, match="aux_region"):
        org.OrganismConfig(aux_region="edges")
    with pytest.raises(org.OrganismError, match="p_shuffle"):
        org.OrganismConfig(p_shuffle=0.8, p_ablate=0.5)
    with pytest.raises(org.OrganismError, match="rope_factor"):
        org.OrganismConfig(arch="qwen2-vl", mechanism="dual", rope_factor=8.0)
    with pytest.raises(org.OrganismError, match="aux_lm_layer"):
        org.OrganismConfig(aux_lm_weight=1.0, aux_lm_layer=0)
    with pytest.raises(org.OrganismError, match="mrope_section"):
        org.OrganismConfig(mrope_section=(4, 4, 4))
    with pytest.raises(ValueError, match="steps"):
        org.OrganismConfig(steps=0)


def test_training_smoke_and_roundtrip(tmp_path):
    from transformers import AutoModelForImageTextToText

    cfg = _tiny("vision", steps=40)
    res = org.train(cfg, out=tmp_path / "o", progress=False, final_eval_items=16)
    hist = res.log["history"]
    assert [h["step"] for h in hist] == [20, 40]
    assert hist[-1]["loss"] < 3.0 < np.log(len(res.processor.tokenizer))  # below uniform (3.6)
    for f in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
              "train_log.json", "curve.png"):
        assert (tmp_path / "o" / f).exists(), f
    assert "final_shuffled" in res.log
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path / "o").eval()
    assert type(plain).__name__ == "Qwen2VLForConditionalGeneration"
    assert plain.config.text_config.rope_parameters["mrope_section"] == [16, 0, 0]
    m2, p2, log2 = org.load(tmp_path / "o")
    items = od.eval_items(od.make_splits(8), "ht_canon", n=8)
    inp = org.Batcher(p2, 8)(items)
    with torch.no_grad():
        a = org.last_logits(res.model.eval(), inp)
        b = org.last_logits(plain, inp)
    assert torch.equal(a, b)
    assert log2["config"]["mechanism"] == "vision"
    # the toolkit's adapter formats the paper's prompt into exactly the training inputs
    from PIL import Image

    from vlms.registry import load_adapter

    ad = load_adapter(str(tmp_path / "o"))
    it = items[0]
    pil = Image.fromarray(od.render([it])[0].permute(1, 2, 0).numpy())
    got = ad.prepare([pil], [it.text], system="You are a helpful assistant. You respond in one token.")
    mine = org.Batcher(p2, 8)([it])
    assert got.inputs["input_ids"].tolist() == mine["input_ids"].tolist()
    assert torch.equal(got.inputs["pixel_values"], mine["pixel_values"])
    with pytest.raises(org.OrganismError, match="already holds"):
        org.train(cfg, out=tmp_path / "o", progress=False)
    assert (tmp_path / "o" / "model.safetensors").stat().st_size > 0
    # continue training from the saved organism: weights start from it, history continues
    import dataclasses

    cont = dataclasses.replace(cfg, steps=10, eval_every=10, warmup=1, lr=1e-3,
                               init_from=str(tmp_path / "o"))
    res2 = org.train(cont, out=tmp_path / "o2", progress=False, final_eval_items=8)
    assert [h["step"] for h in res2.log["history"]] == [20, 40, 50]
    assert len(res2.log["stages"]) == 2
    cmds = org.reproduce_commands(res2.log, "vlms/organisms/x")
    assert len(cmds) == 2 and "--init vlms/organisms/x-stage1" in cmds[1]
    readme = (tmp_path / "o2" / "README.md").read_text().splitlines()
    assert sum(ln.startswith("spatialbind organism train") for ln in readme) == 2
    with pytest.raises(org.OrganismError, match="lm_dim"):
        org.train(dataclasses.replace(cont, lm_dim=32, lm_heads=1), progress=False)


# ----------------------------------------------------------------------------- shipped organisms

SHIPPED = {"lm": "qwen2-vl-lm", "vision": "qwen2-vl-vision", "dual": "qwen2-vl-dual"}


def _shipped(mech):
    p = org.SHIPPED / SHIPPED[mech]
    if not (p / "model.safetensors").exists():
        pytest.skip(f"{p} not shipped")
    return org.load(p)


@pytest.mark.parametrize("mech", ["lm", "vision", "dual"])
def test_shipped_loads_with_plain_transformers_and_answers(mech, splits):
    """64 held-out items (held-out colour triples, held-out layouts) with plain transformers:
    issue 11 asks >= 0.95 on both."""
    from transformers import AutoModelForImageTextToText

    _, proc, log = _shipped(mech)
    model = AutoModelForImageTextToText.from_pretrained(org.SHIPPED / SHIPPED[mech]).eval()
    items = od.eval_items(splits, "ht_rand", n=32, seed=7) + od.eval_items(splits, "hl", n=32, seed=7)
    acc = org.accuracy(model, org.Batcher(proc, 8), items)
    recorded = log["final"]["heldout"]
    assert acc >= 0.95, (acc, recorded)
    assert log["final"]["heldout"] >= 0.95 and log["final"]["hl"] >= 0.95, log["final"]
    assert log["config"]["mechanism"] == mech


@pytest.fixture(scope="module")
def shipped_checks(splits):
    from organisms.probe import ablation_test, crisscross_test, e6_test, shuffle_test, slot_probe

    out = {}
    for mech in SHIPPED:
        if not (org.SHIPPED / SHIPPED[mech] / "model.safetensors").exists():
            continue
        model, proc, _ = _shipped(mech)
        b = org.Batcher(proc, 8)
        out[mech] = {"probe": slot_probe(model, b, splits, n_images=60)["mean_test"],
                     "probe_band": slot_probe(model, b, splits, n_images=16,
                                              region="band")["mean_test"],
                     "shuffle": shuffle_test(model, b, splits, n=64, seeds=(5,)),
                     "ablation": ablation_test(model, b, splits, n=48),
                     "crisscross": crisscross_test(model, b, splits, n=48,
                                                   regions=("object", "band"))}
        if mech == "dual":
            out[mech]["e6"] = e6_test(model, b, splits, n=48)
    return out


def _need(checks, *mechs):
    for m in mechs:
        if m not in checks:
            pytest.skip(f"{SHIPPED[m]} not shipped")


def test_shipped_dual_e6_cannot_flip_at_the_lm_input_or_output(shipped_checks):
    """E6's object criss-cross under the ablation swaps tokens of the same isolated square at
    the LM input (identical content), and after the last LM layer nothing reads the object
    tokens any more: neither site can flip an item (a check on the patching, any weights)."""
    _need(shipped_checks, "dual")
    e6 = shipped_checks["dual"]["e6"]
    assert e6["kept_right_under_ablation"] > 0, e6
    rates = e6["flip_rate"]
    assert rates[0] == 0 and rates[max(rates)] == 0, e6


def test_shipped_shuffle_contrast(shipped_checks):
    """Shuffling image tokens at the LM input breaks the lm organism (it reads positions) and
    leaves the vision organism unchanged (all image tokens share one rotary phase and it was
    trained order-invariant)."""
    _need(shipped_checks, "lm", "vision")
    assert shipped_checks["lm"]["shuffle"]["drop"] >= 0.2
    assert abs(shipped_checks["vision"]["shuffle"]["drop"]) <= 0.1


def test_shipped_lm_has_no_projector_slot_code(shipped_checks):
    _need(shipped_checks, "lm")
    p = shipped_checks["lm"]["probe"]
    assert p["trained"] <= 0.5          # chance 1/3; the ordering is computed in the LM
    assert p["position_only"] >= 0.75   # the control shows position alone would decode slot


def test_shipped_vision_has_projector_slot_code(shipped_checks):
    _need(shipped_checks, "lm", "vision")
    v, l_ = shipped_checks["vision"]["probe"], shipped_checks["lm"]["probe"]
    assert v["trained"] >= 0.85 and v["trained"] - l_["trained"] >= 0.3


#: Criteria (organisms.criteria) that a small sample (48 items for E4/E5, 60/16 images for the
#: probes) resolves, per mechanism, on the organism's own held-out items. The vision organism's strip probe is
#: close to its 0.9 threshold too (0.916 at 50 images per axis in its check, 0.908 in the
#: 16-item demo, 0.859 at 16 images here), so its criterion 1 is left to the full check.
#: The dual, rebuilt 2026-11-30 from the vision chain's stage 3 (object slots scrambled, colour
#: on the strips; see vlms/organisms/README.md), measured here: probe 0.941 / band 0.941;
#: criss-cross flips object 0.06, band 0.88; E5 0.92 -> 0.65 (range [0.48, 0.77]) and E6 flips
#: 0.56 at lm.resid.1 (16 items right under the ablation on both runs). Its criterion 2 was a
#: strict xfail before (object flip 0.95: the LM read the order from the object tokens). The
#: vision organism's criterion 2 holds since its 2026-11-30 retraining (object flip 0.00, band
#: 0.95 at 128 items).
SMALL_CRITERIA = {"vision": (2, 3), "dual": (1, 2, 3), "lm": (1, 2, 3)}


@pytest.mark.parametrize("mech,crit", [(m, c) for m, cs in SMALL_CRITERIA.items() for c in cs])
def test_shipped_criteria_on_a_small_sample(mech, crit, shipped_checks):
    """Criteria of issue 11 (thresholds from organisms.criteria, fixed before measuring) on
    held-out items; criterion 4 (E7) and E6 need the demo (tests/e2e/test_demo.py)."""
    from organisms import criteria as C

    _need(shipped_checks, mech)
    ch = shipped_checks[mech]
    got = {1: lambda: C.criterion_probe(mech, ch["probe"]["trained"], ch["probe_band"]["trained"]),
           2: lambda: C.criterion_crisscross(mech, ch["crisscross"]["object"],
                                             ch["crisscross"]["band"]),
           3: lambda: C.criterion_ablation(mech, ch["ablation"]["base"], ch["ablation"]["ablated"],
                                           ch["e6"]["flip_layers"] if "e6" in ch else None)}
    r = got[crit]()
    assert r["holds"], r


@pytest.mark.parametrize("kw", [
    dict(mechanism="vision", vision_depth=3, vision_dim=128, aux_slot_weight=2.0,
         aux_region="band", aux_colour=True, p_shuffle=0.5, p_ablate_object=0.5,
         shuffle_object_ablated=True, lr=5e-4, warmup=20),
    dict(mechanism="lm", aux_colour_weight=1.0, steps=3000),
    dict(mechanism="vision", arch="gemma-3", vision_pos_init="sincos", aux_slot_weight=2.0,
         aux_region="object", aux_colour=False, aux_slot_code=2.0, p_noise=0.3,
         noise_code_drop=0.9, noise_task_loss=False),
    dict(arch="gemma-3", mechanism="lm", vision_pos_init="zero", aux_lm_weight=1.0,
         aux_lm_layer=1, aux_colour_weight=1.0, rope_theta=1000.0),
    dict(arch="gemma-3", mechanism="dual", vision_pos_init="sincos", rope_factor=8.0,
         aux_slot_weight=2.0, aux_region="band", aux_colour=True, p_shuffle=0.3, p_ablate=0.3,
         aux_lm_weight=1.0, vision_depth=2, vision_dim=64),
    dict(arch="gemma-3", mechanism="dual", aux_slot_weight=0.0),
    dict(mechanism="dual", aux_slot_weight=2.0, aux_region="strip", aux_colour=True,
         aux_colour_region="band", aux_lm_slot_weight=1.0, aux_lm_layer=1, p_shuffle=0.3,
         p_ablate=0.4, p_scramble_object=0.3, shuffle_object_ablated=True),
    dict(mechanism="vision", aux_slot_weight=2.0, aux_region="band", aux_colour=True,
         aux_colour_region="strip", aux_colour_weight=4.0, aux_colour_none_weight=2.0,
         p_shuffle=0.1, p_scramble_object=0.9, shuffle_object_ablated=True),
    dict(mechanism="vision", arch="gemma-3", vision_pos_init="sincos", aux_slot_weight=2.0,
         aux_region="band", aux_colour=True, aux_colour_region="strip", aux_colour_weight=4.0,
         aux_colour_none_weight=2.0, aux_slot_code=3.0, aux_slot_code_start=12.0,
         aux_slot_code_steps=300, p_noise=0.3, noise_code_drop=0.9, noise_task_loss=False,
         p_scramble_object=0.9, scramble_outside_strips=True, shuffle_object_ablated=True),
    dict(mechanism="vision", aux_slot_weight=2.0, portable_math=True),
])
def test_reproduce_command_parses_back_to_the_config(kw):
    """The README's command, parsed by the CLI itself, gives back the options it was made from."""
    import shlex

    from organisms.commands import train

    cfg = org.OrganismConfig(**kw)
    args = shlex.split(org.command_line(cfg.to_json(), "out/x"))[3:]
    params = train.make_context("train", args).params
    defaults = org.mechanism_defaults(kw["mechanism"], kw.get("arch", "qwen2-vl"))  # CLI's None
    for k, v in kw.items():
        got = params[k] if params[k] is not None else defaults[k]
        assert got == v, (k, got, v)


def test_readme_names_wall_time_stages_and_their_estimate():
    log = {"stages": [{"config": {}, "train_time_s": 1211.7},
                      {"config": {}, "train_time_s": 700.0, "cpu_time_s": 210.6}]}
    assert org._cpu_notes(log) == ["", "Stage 1 recorded wall time only (20.2 min, counted in the "
                                   "CPU total above as an upper bound)."]
    log["stages"][0].update(cpu_time_s_estimate=870.0, cpu_time_estimate_method="m")
    assert org._cpu_notes(log)[1].endswith("estimated at the measured rate is 14.5 min (m).")


@pytest.mark.parametrize("arch,outside", [("qwen2-vl", False), ("gemma-3", False),
                                          ("gemma-3", True)])
def test_object_scramble_gives_each_square_its_colour_with_another_slot(arch, outside):
    """--p-scramble-object: every object token <- the token at the same place of the
    same-coloured square in a render of the item with its colours in a random order (found here
    by colour, independently of the code's index map); background tokens and order kept. The
    re-coloured render goes through the organism's own batcher here (Qwen2-VL's flattened
    patches, Gemma-3's pixel tensor), independently of the code's own rendering. With
    --scramble-outside-strips every token outside the strips <- the re-coloured render's token
    at the same cell, and only the strips' background keeps the item's own tokens."""
    from organisms.model import image_tokens

    if outside:  # it edits the scrambled items, so it needs some
        with pytest.raises(org.OrganismError, match="scramble_outside_strips"):
            _tiny("vision", arch=arch, scramble_outside_strips=True)
    cfg = _tiny("vision", arch=arch, p_shuffle=0.0, p_scramble_object=1.0,
                scramble_outside_strips=outside)
    model, proc = org.build(cfg)
    model.eval()
    items = od.eval_items(od.make_splits(8), "hl", n=6)
    b = org.Batcher(proc, 8)
    inp = b(items)
    with torch.no_grad():
        plain = image_tokens(model, inp)
    cur = org._Curriculum(model, cfg)
    try:
        cur.prepare(items, np.random.default_rng(3))
        with torch.no_grad():
            got = image_tokens(model, inp)
    finally:
        cur.remove()
    rng = np.random.default_rng(3)
    rng.random(len(items))  # the curriculum's draw of modes comes first
    moved = 0
    for i, it in enumerate(items):
        p = rng.permutation(3)
        src = od.Item(tuple(it.colours[k] for k in p), it.layout, it.direction)
        with torch.no_grad():
            zs = image_tokens(model, b([src]))[0]
        objm = od.region_slots(it.layout, 8, "object")
        strip = od.region_slots(it.layout, 8, "strip") >= 0
        own = torch.as_tensor((objm < 0) & (strip if outside else True))
        assert torch.equal(got[i, own], plain[i, own])
        if outside:
            out = torch.as_tensor(~strip)
            assert bool(out.any())
            assert torch.allclose(got[i, out], zs[out], atol=1e-5)
            assert not torch.allclose(got[i, out], plain[i, out], atol=1e-3) or \
                src.colours == it.colours
        for slot in range(3):
            j = src.colours.index(it.colours[slot])
            for a, c in zip(it.layout.cells(slot), it.layout.cells(j)):
                assert torch.allclose(got[i, a[0] * 8 + a[1]], zs[c[0] * 8 + c[1]], atol=1e-5)
            moved += j != slot
    assert moved > 0


def test_colour_region_aux_loss_equals_a_hand_computation():
    """--aux-colour-region: the slot part of the aux loss over the --aux-region tokens, the
    colour part over the colour-region tokens (here band and strip, which differ)."""
    cfg = _tiny("vision", aux_slot_weight=1.5, aux_region="band", aux_colour=True,
                aux_colour_region="strip")
    with aux_slot_on(cfg, 4) as (aux, items, z, _, _):
        with torch.no_grad():
            got = aux.loss(items)

            def rows(region, colour):
                x, y = [], []
                for b, it in enumerate(items):
                    lab = od.region_slots(it.layout, 8, region)
                    for k in np.flatnonzero(lab >= 0):
                        x.append(z[b, k])
                        y.append(od.COLOUR_NAMES.index(it.colours[lab[k]]) if colour else lab[k])
                return torch.stack(x), torch.tensor(y)

            xs, ys = rows("band", False)
            xc, yc = rows("strip", True)
            assert len(xs) > len(xc)  # the regions differ
            want = 1.5 * (torch.nn.functional.cross_entropy(aux.head(xs), ys)
                          + torch.nn.functional.cross_entropy(aux.colour(xc), yc))
        assert torch.allclose(got, want, atol=1e-6)


def test_colour_none_aux_loss_equals_a_hand_computation():
    """--aux-colour-none-weight: on top of the slot (band) and colour (strip) parts, every token
    outside the colour region is asked the extra 'no square' class (index 16) of the colour
    head, times its weight; off by default (16 colour classes, as before)."""
    plain = _tiny("vision", aux_slot_weight=1.0, aux_colour=True)
    aux0 = org._AuxSlot(org.build(plain)[0], plain)
    aux0.remove()
    assert aux0.colour.out_features == len(od.COLOUR_NAMES)
    cfg = _tiny("vision", aux_slot_weight=1.5, aux_region="band", aux_colour=True,
                aux_colour_region="strip", aux_colour_none_weight=0.7)
    with aux_slot_on(cfg, 4) as (aux, items, z, _, _):
        assert aux.colour.out_features == len(od.COLOUR_NAMES) + 1
        with torch.no_grad():
            got = aux.loss(items)
            xs, ys, xc, yc, xn = [], [], [], [], []
            for b, it in enumerate(items):
                band = od.region_slots(it.layout, 8, "band")
                strip = od.region_slots(it.layout, 8, "strip")
                for k in range(64):
                    if band[k] >= 0:
                        xs.append(z[b, k])
                        ys.append(int(band[k]))
                    if strip[k] >= 0:
                        xc.append(z[b, k])
                        yc.append(od.COLOUR_NAMES.index(it.colours[strip[k]]))
                    else:
                        xn.append(z[b, k])
            ce = torch.nn.functional.cross_entropy
            xn = torch.stack(xn)
            assert 0 < len(xn) < 4 * 64
            want = (1.5 * (ce(aux.head(torch.stack(xs)), torch.tensor(ys))
                           + ce(aux.colour(torch.stack(xc)), torch.tensor(yc)))
                    + 0.7 * ce(aux.colour(xn), torch.full((len(xn),), 16)))
        assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(org.OrganismError, match="aux_colour_none_weight"):
        _tiny("vision", aux_slot_weight=1.0, aux_colour=False, aux_colour_none_weight=1.0)


def test_lm_aux_slot_loss_reads_object_tokens_of_ablated_items():
    """--aux-lm-slot-weight: cross-entropy of the projector aux loss's slot head on the LM
    residual after layer 0 (the model's own hidden_states[1]) at the object tokens of the
    E5-ablated items only, times the weight."""
    cfg = _tiny("dual", lm_layers=2, aux_slot_weight=1.0, aux_lm_slot_weight=0.5,
                p_shuffle=0.0, p_ablate=0.5)
    model, proc = org.build(cfg)
    model.eval()
    items = od.eval_items(od.make_splits(8), "hl", n=8)
    b = org.Batcher(proc, 8)
    inp = b(items)
    aux = org._AuxSlot(model, cfg)
    lm = org._AuxLMSlotAblated(model, cfg, aux.head)
    cur = org._Curriculum(model, cfg)
    try:
        cur.prepare(items, np.random.default_rng(1))
        abl = cur.ablated.copy()
        assert 0 < abl.sum() < len(items)
        with torch.no_grad():
            hs = model(**inp, output_hidden_states=True).hidden_states[1]
            got = lm.loss(items, inp, abl)
            x, y = [], []
            for i, it in enumerate(items):
                if not abl[i]:
                    continue
                pos = torch.nonzero(inp["input_ids"][i] == b.image_token_id).flatten()
                for (r, c) in sorted(c for s in range(3) for c in it.layout.cells(s)):
                    x.append(hs[i, pos[r * 8 + c]])
                    y.append(next(s for s in range(3) if (r, c) in it.layout.cells(s)))
            want = 0.5 * torch.nn.functional.cross_entropy(aux.head(torch.stack(x)),
                                                           torch.tensor(y))
        assert torch.allclose(got, want, atol=1e-6)
    finally:
        cur.remove()
        lm.remove()
        aux.remove()
    with pytest.raises(org.OrganismError, match="aux_lm_layer"):
        _tiny("dual", lm_layers=1, aux_slot_weight=1.0, aux_lm_slot_weight=0.5, p_ablate=0.5)
