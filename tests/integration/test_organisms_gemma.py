"""Gemma-3 organisms: the Gemma paths of the organism code (ablation tokens, the training-time
curriculum on Gemma's (B, n, d) projector output, the attention scalar) and the shipped Gemma-3
checkpoints (plain-transformers load and held-out accuracy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from organisms import data as od
from organisms import trainer as org

torch.set_num_threads(1)

#: shipped Gemma-3 organisms, by mechanism
GEMMA = {"vision": "gemma-3-vision", "lm": "gemma-3-lm", "dual": "gemma-3-dual"}


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


def test_gemma_ablation_tokens_erase_position_and_keep_identity():
    """E5's ablation from a Gemma-3 projector: a square's tokens do not depend on where it was;
    the rest is the blank canvas's tokens (independent oracle: the projector on the isolated
    renders)."""
    from organisms.model import image_tokens

    cfg = _tiny("vision")
    model, _ = org.build(cfg)
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
    img = od.render_single([None, "green"], 1, normalise=od.GEMMA_NORM)
    with torch.no_grad():
        ref = image_tokens(model, {"pixel_values": img})
    assert torch.allclose(abl[0, 3 * 8 + 3], ref[1, 3 * 8 + 3], atol=1e-5)  # green, centred
    objects = {r * 8 + c for s in range(3) for r, c in a.layout.cells(s)}
    rest = [k for k in range(64) if k not in objects]
    assert torch.allclose(abl[0, rest], ref[0, rest], atol=1e-5)          # blank canvas


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
    assert acc >= 0.9, (acc, log["final"])


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
