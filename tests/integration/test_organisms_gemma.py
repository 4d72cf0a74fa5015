"""Gemma-3 organisms: the Gemma paths of the organism code (the training-time curriculum on
Gemma's (B, n, d) projector output, the attention scalar, the position-free vision tower, the
LM-side slot loss; the ablation tokens are tested for both families in test_organisms.py) and
the shipped Gemma-3 checkpoints (plain-transformers load and held-out accuracy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from organisms import data as od
from organisms import trainer as org

torch.set_num_threads(1)

#: shipped Gemma-3 organisms, by mechanism
GEMMA = {"vision": "gemma-3-vision", "lm": "gemma-3-lm", "dual": "gemma-3-dual"}
#: held-out accuracy each must reach on the 64 test items (issue 11 asks 0.95; the vision
#: organism retrained on 2026-11-30 for E7 reaches it too: 0.995 / 0.990 in its final evaluation)
MIN_ACCURACY = {"vision": 0.95, "lm": 0.95, "dual": 0.95}


def _tiny(mech, **kw):
    base = dict(arch="gemma-3", mechanism=mech, vision_depth=1, vision_dim=32, vision_heads=1,
                lm_layers=1, lm_dim=64, lm_heads=2, steps=40, batch=16, warmup=5, lr=3e-3,
                eval_every=20, eval_items=16)
    base.update(kw)
    return org.OrganismConfig(**base)


def test_attn_scalar_is_saved_and_scales_the_logits():
    """attn_scalar is Gemma-3's query_pre_attn_scalar (default head_dim); it changes the
    attention temperature, so the same weights give other logits."""
    a, _ = org.build(_tiny("lm"))
    b, proc = org.build(_tiny("lm", attn_scalar=4))
    assert a.config.text_config.query_pre_attn_scalar == 32
    assert b.config.text_config.query_pre_attn_scalar == 4
    b.load_state_dict(a.state_dict())
    items = od.eval_items(od.make_splits(8), "hl", n=2)
    inp = org.Batcher(proc, 8)(items)
    with torch.no_grad():
        la, lb = org.last_logits(a.eval(), inp), org.last_logits(b.eval(), inp)
    assert not torch.allclose(la, lb, atol=1e-4)
    with pytest.raises(org.OrganismError, match="attn_scalar"):
        org.OrganismConfig(arch="qwen2-vl", mechanism="lm", attn_scalar=4)
    with pytest.raises(org.OrganismError, match="attn_scalar"):
        _tiny("lm", attn_scalar=0)


def test_gemma_curriculum_shuffles_and_ablates_per_item():
    """The training-time projector hook on Gemma's (B, n, d) output: shuffling permutes each
    image's own tokens; ablation gives exactly ablation_tokens; off gives the plain tokens."""
    from organisms.model import image_tokens

    cfg = _tiny("vision", p_shuffle=1.0)
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
        assert got.shape == plain.shape and not torch.equal(got, plain)
        for b in range(3):
            key = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
            assert key(got[b]) == key(plain[b])
        cur.cfg = _tiny("vision", p_shuffle=0.0, p_ablate_object=1.0)
        cur.prepare(items, np.random.default_rng(0))
        with torch.no_grad():
            got = image_tokens(model, inp)
        abl = org.ablation_tokens(model, items, 8)
        for b, it in enumerate(items):
            objm = torch.as_tensor(od.region_slots(it.layout, 8, "object") >= 0)
            assert torch.allclose(got[b, objm], abl[b, objm], atol=1e-5)
            assert torch.equal(got[b, ~objm], plain[b, ~objm])
        cur.active = False
        with torch.no_grad():
            assert torch.equal(image_tokens(model, inp), plain)
    finally:
        cur.remove()


# ----------------------------------------------------------------------------- shipped

def _shipped(mech):
    p = org.SHIPPED / GEMMA[mech]
    if not (p / "model.safetensors").exists():
        pytest.skip(f"{p} not shipped")
    return p


@pytest.mark.parametrize("mech", ["vision", "lm", "dual"])
def test_shipped_gemma_loads_with_plain_transformers_and_answers(mech):
    """64 held-out items (held-out colour triples on training and held-out layouts, held-out
    layouts) with plain AutoModelForImageTextToText (trust_remote_code off)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    p = _shipped(mech)
    model = AutoModelForImageTextToText.from_pretrained(p, trust_remote_code=False).eval()
    proc = AutoProcessor.from_pretrained(p, trust_remote_code=False)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    _, _, log = org.load(p)
    assert log["config"]["arch"] == "gemma-3" and log["config"]["mechanism"] == mech
    splits = od.make_splits(8, seed=0)
    items = (od.eval_items(splits, "ht_rand", n=22, seed=7) + od.eval_items(splits, "ht_hl", n=21, seed=7)
             + od.eval_items(splits, "hl", n=21, seed=7))
    assert len(items) == 64
    acc = org.accuracy(model, org.Batcher(proc, 8), items)
    assert acc >= MIN_ACCURACY[mech], (acc, log["final"])
    # issue 11: >= 0.95 on held-out colour triples and held-out layouts
    assert log["final"]["heldout"] >= 0.95 and log["final"]["hl"] >= 0.95, log["final"]


def test_sincos_position_init_is_the_2d_table():
    """--vision-pos-init sincos: SigLIP's position embedding starts as the 2-D sin-cos table
    (hand values: patch (row 1, column 2) of a 16x16 grid at width 8 -> q = 2 frequencies 1 and
    1/100), and stays a learned parameter."""
    import math

    from organisms.model import sincos_2d

    t = sincos_2d(16, 8)
    assert t.shape == (256, 8)
    k = 1 * 16 + 2
    want = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01),
            math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)]
    assert torch.allclose(t[k], torch.tensor(want), atol=1e-6)
    model, _ = org.build(_tiny("vision", vision_pos_init="sincos"))
    pe = model.model.vision_tower.embeddings.position_embedding.weight
    assert pe.requires_grad and torch.allclose(pe, sincos_2d(16, 32))
    rnd, _ = org.build(_tiny("vision"))
    assert not torch.allclose(rnd.model.vision_tower.embeddings.position_embedding.weight, pe)
    with pytest.raises(org.OrganismError, match="vision_pos_init"):
        org.OrganismConfig(arch="qwen2-vl", mechanism="lm", vision_pos_init="sincos")


def test_zero_position_init_is_frozen_and_carries_no_position():
    """--vision-pos-init zero: SigLIP's position embedding is all zeros and stays so through
    training (frozen), so a square's projector tokens do not depend on where it is: the same
    colours on two layouts of one size give the same object tokens (oracle: the projector on
    both renders)."""
    from organisms.model import image_tokens

    cfg = _tiny("lm", vision_pos_init="zero", steps=3, eval_every=3)
    res = org.train(cfg, progress=False, final_eval_items=4)
    pe = org.vision_position_embedding(res.model)
    assert not pe.requires_grad and float(pe.abs().max()) == 0.0
    cols = ("red", "green", "blue")
    a = od.Item(cols, od.Layout("h", 1, 2, 3, 0), "left")
    b = od.Item(cols, od.Layout("v", 1, 1, 6, 1), "above")
    with torch.no_grad():
        z = image_tokens(res.model, org.Batcher(res.processor, 8)([a, b]))
    for slot in range(3):
        (ra, ca), = a.layout.cells(slot)
        (rb, cb), = b.layout.cells(slot)
        assert torch.allclose(z[0, ra * 8 + ca], z[1, rb * 8 + cb], atol=1e-5)
    # with learned (random) position embeddings the same square's tokens differ by place
    rnd, proc = org.build(_tiny("lm"))
    with torch.no_grad():
        zr = image_tokens(rnd.eval(), org.Batcher(proc, 8)([a, b]))
    (ra, ca), (rb, cb) = a.layout.cells(0)[0], b.layout.cells(0)[0]
    assert not torch.allclose(zr[0, ra * 8 + ca], zr[1, rb * 8 + cb], atol=1e-3)


def test_a_stage_from_a_position_free_tower_starts_its_positions_from_sincos(tmp_path):
    """--init an lm organism (zero, frozen vision positions) with --vision-pos-init sincos: the
    stage's SigLIP position embedding starts as the 2-D sin-cos table and is trained (oracle:
    organisms.model.sincos_2d; a tiny learning rate keeps one step's change far below the
    tolerance); continuing with ``zero`` keeps them zero and frozen."""
    from organisms.model import sincos_2d

    org.train(_tiny("lm", vision_pos_init="zero", steps=2, eval_every=2), out=tmp_path / "lm",
              progress=False, final_eval_items=4)
    res = org.train(_tiny("dual", steps=1, eval_every=1, lr=1e-9, warmup=1,
                          init_from=str(tmp_path / "lm"), vision_pos_init="sincos",
                          aux_slot_weight=1.0, p_shuffle=0.5, p_ablate=0.5),
                    progress=False, final_eval_items=4)
    pe = org.vision_position_embedding(res.model)
    assert pe.requires_grad
    assert torch.allclose(pe, sincos_2d(16, 32), atol=1e-5)
    assert float(pe.detach().abs().max()) > 0.5
    same = org.train(_tiny("lm", vision_pos_init="zero", steps=1, eval_every=1,
                           init_from=str(tmp_path / "lm")), progress=False, final_eval_items=4)
    pz = org.vision_position_embedding(same.model)
    assert not pz.requires_grad and float(pz.abs().max()) == 0.0


def test_lm_aux_slot_loss_equals_a_hand_computation():
    """--aux-lm-weight: cross-entropy of a slot head on the LM's residual stream at the object
    tokens (oracle: the model's own output_hidden_states[K] at the image tokens, labels from
    the layout by hand), times the weight; shuffled items are left out."""
    cfg = _tiny("lm", lm_layers=2, aux_lm_weight=0.5, aux_lm_layer=1)
    model, proc = org.build(cfg)
    items = [od.Item(("red", "green", "blue"), od.Layout("h", 1, 2, 3, 0), "left"),
             od.Item(("gray", "black", "brown"), od.Layout("v", 2, 1, 2, 0), "below"),
             od.Item(("blue", "red", "green"), od.Layout("h", 2, 1, 0, 0), "right")]
    inp = org.Batcher(proc, 8)(items)
    aux = org._AuxLMSlot(model, cfg)
    try:
        with torch.no_grad():
            hs = model(**inp, output_hidden_states=True).hidden_states[1]
            got = aux.loss(items, inp)
            got_shuf = aux.loss(items, inp, shuffled=torch.tensor([False, True, False]))
    finally:
        aux.remove()
    # slots by hand: (row, col) cells of each square, raster order
    cells = [{(3, 0): 0, (3, 3): 1, (3, 6): 2},
             {(r, c): s for s, r0 in enumerate((0, 3, 6)) for r in (r0, r0 + 1)
              for c in (2, 3)},
             {(r, c): s for s, c0 in enumerate((0, 3, 6)) for r in (0, 1) for c in (c0, c0 + 1)}]
    rows, labels, keep = [], [], []
    for b in range(3):
        pos = torch.nonzero(inp["input_ids"][b] == proc.tokenizer.convert_tokens_to_ids(
            "<image_soft_token>")).flatten()
        for (r, c), s in sorted(cells[b].items()):
            rows.append(hs[b, pos[r * 8 + c]])
            labels.append(s)
            keep.append(b != 1)
    with torch.no_grad():
        logits = aux.head(torch.stack(rows))
        want = 0.5 * torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
        k = torch.tensor(keep)
        want_shuf = 0.5 * torch.nn.functional.cross_entropy(logits[k], torch.tensor(labels)[k])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got_shuf, want_shuf, atol=1e-6)
    with pytest.raises(org.OrganismError, match="aux_lm_layer"):
        _tiny("lm", aux_lm_weight=1.0, aux_lm_layer=2)  # a 1-layer LM has lm.resid.1 only


@pytest.fixture(scope="module")
def gemma_checks():
    """The organism check's measurements on a small sample (held-out items) for the shipped
    Gemma-3 lm and dual organisms."""
    from organisms.probe import ablation_test, crisscross_test, e6_test, slot_probe

    splits = od.make_splits(8, seed=0)
    out = {}
    for mech in ("lm", "dual"):
        p = org.SHIPPED / GEMMA[mech]
        if not (p / "model.safetensors").exists():
            continue
        model, proc, _ = org.load(p)
        b = org.Batcher(proc, 8)
        out[mech] = {"probe": slot_probe(model, b, splits, n_images=60)["mean_test"],
                     # the strip probe as in the organism check (50 images per axis): at 16
                     # the dual's measured 0.82 against 0.93 at 50
                     "probe_band": slot_probe(model, b, splits, n_images=50,
                                              region="band")["mean_test"],
                     "ablation": ablation_test(model, b, splits, n=48),
                     "crisscross": crisscross_test(model, b, splits, n=48,
                                                   regions=("object", "band")),
                     "e6": e6_test(model, b, splits, n=48) if mech == "dual" else None}
    return out


#: criteria (organisms.criteria) a small sample resolves for the Gemma-3 lm and dual organisms
SMALL_CRITERIA_GEMMA = {"lm": (1, 2, 3), "dual": (1, 2, 3)}
#: measured to fail (reported as found, issue 11): the dual's strip criss-cross flips too few
#: answers (band 0.70 < 0.8 at 128 items; object-only 0.07 does stay under 0.2: its LM decides an
#: object-token conflict by its own positional code). Criterion 3 holds since the dual was rebuilt
#: from gemma-3-lm on 2026-11-30 (E5 1.00 -> 0.77, E6 flips 1.00 at lm.resid.1, 0 at 0 and 2).
#: The dual retrained later on 2026-11-30 with a mixed answer target on noisy items (criterion 4)
#: measures the same way in `organism check` (128 items): band 0.70, object 0.00, E5 1.00 -> 0.81,
#: E6 flips 1.00 at lm.resid.1 (0 at 0 and 2); the demo's own E4 regions give band 0.97. With
#: its last stage's mix 0.2 and code drop 0.25 ("`gemma-3-dual` on both sets"): band 0.71,
#: object 0.00, E5 1.00 -> 0.82, E6 flips 1.00 at lm.resid.1; the demo's E4 band 0.98.
KNOWN_FAILURES_GEMMA = {("dual", 2)}


@pytest.mark.parametrize("mech,crit", [(m, c) for m, cs in SMALL_CRITERIA_GEMMA.items()
                                       for c in cs])
def test_shipped_gemma_criteria_on_a_small_sample(mech, crit, gemma_checks, request):
    """Criteria of issue 11 (thresholds from organisms.criteria, fixed before measuring) on 48
    held-out items and 60 / 50 probe images per axis; the dual's criterion 3 takes its E6 flip
    layers from the organism-level E6 (object criss-cross of the ablated runs per LM site)."""
    from organisms import criteria as C

    if (mech, crit) in KNOWN_FAILURES_GEMMA:
        request.applymarker(pytest.mark.xfail(strict=True, reason="measured to fail; see "
                                              "vlms/organisms/README.md"))
    if mech not in gemma_checks:
        pytest.skip(f"{GEMMA[mech]} not shipped")
    ch = gemma_checks[mech]
    if crit == 1:
        r = C.criterion_probe(mech, ch["probe"]["trained"], ch["probe_band"]["trained"])
    elif crit == 2:
        r = C.criterion_crisscross(mech, ch["crisscross"]["object"], ch["crisscross"]["band"])
    else:
        e6 = ch["e6"]["flip_layers"] if ch["e6"] is not None else None
        r = C.criterion_ablation(mech, ch["ablation"]["base"], ch["ablation"]["ablated"], e6)
    assert r["holds"], r


def test_stage_cpu_time_adds_a_one_stage_organisms_cpu_time(tmp_path):
    """A curriculum stage from a one-stage organism (``--init``) counts that organism's recorded
    CPU time (not its wall time) in ``total_cpu_time_s``."""
    first = org.train(_tiny("vision", steps=2, eval_every=2), out=tmp_path / "a", progress=False,
                      final_eval_items=4)
    second = org.train(_tiny("dual", steps=2, eval_every=2, init_from=str(tmp_path / "a"),
                             aux_slot_weight=1.0, p_shuffle=0.5, p_ablate=0.5,
                             aux_lm_weight=1.0, rope_factor=4.0),
                       progress=False, final_eval_items=4)
    st = second.log["stages"]
    assert [s["config"]["mechanism"] for s in st] == ["vision", "dual"]
    assert st[0]["cpu_time_s"] == first.log["cpu_time_s"]
    assert second.log["total_cpu_time_s"] == first.log["cpu_time_s"] + second.log["cpu_time_s"]


def test_shipped_gemma_dual_ablation_is_between_chance_and_base(gemma_checks):
    """The dual's positional backup: with vision ordering ablated it stays clearly above chance
    and clearly below base (criterion 3's interval, also asserted with its E6 part above)."""
    from organisms import criteria as C

    if "dual" not in gemma_checks:
        pytest.skip("gemma-3-dual not shipped")
    a = gemma_checks["dual"]["ablation"]
    m = C.THRESHOLDS["dual_margin"]
    assert C.CHANCE + m <= a["ablated"] <= a["base"] - m, a


def test_e6_on_the_lm_organism_flips_where_its_lm_writes_the_slot():
    """organisms.probe.e6_test on gemma-3-lm. At site 0 the swap exchanges two ablated tokens of
    the same colour (identical: a no-op), so its flip rate must equal the share of plain ablated
    runs that name the source's answer (computed here without any patching). The LM slot loss
    at lm.resid.1 put the slot into the object tokens, so swapping them there flips the answer;
    after the last layer (site 2) the object tokens no longer matter."""
    from organisms.probe import _check_items, _predict_with_tokens, e6_test

    p = _shipped("lm")
    model, proc, _ = org.load(p)
    b = org.Batcher(proc, 8)
    splits = od.make_splits(8, seed=0)
    r = e6_test(model, b, splits, n=32)
    items = _check_items(splits, 32)
    src = [od.Item(it.colours[::-1], it.layout, it.direction) for it in items]
    pred = _predict_with_tokens(model, b, items, org.ablation_tokens(model, items, 8))
    assert r["flip_rate_all"][0] == float((pred == b.answer_ids(src)).float().mean())
    assert r["flip_rate"][1] >= 0.9 and r["flip_rate"][2] <= 0.1 and r["flip_layers"] == [1]
