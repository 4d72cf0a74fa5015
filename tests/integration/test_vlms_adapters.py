"""Adapter conformance on every tiny family: sites vs the model's own outputs, geometry, roles,
batching, scoring, save/load. Oracles are the model's own hidden states, direct module calls and
hand computations (never the code under test); geometry facts are the published ones, written
here per family."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vlms
from tests.helpers_vlms import squares
from vlms.roles import image_roles, sequence_roles

FAMILIES = ["tiny-qwen2-vl", "tiny-gemma-3", "tiny-pixtral", "tiny-llava", "tiny-qwen2.5-vl"]

#: per family: a square test canvas (px) and token cell (px) whose grid is 16x16 (LLaVA-1.5:
#: always 24x24), the LM image tokens and vision-block rows of it
GEOM = {
    "qwen2-vl": dict(size=448, cell=28, n_img=256, n_patch=1024),     # 14-px patches, 2x2 merge
    "qwen2.5-vl": dict(size=448, cell=28, n_img=256, n_patch=1024),   # same, window-ordered
    "gemma-3": dict(size=448, cell=28, n_img=256, n_patch=4096),      # 896 px, 64x64 -> 16x16
    "pixtral": dict(size=256, cell=16, n_img=256, n_patch=256),       # 16-px patches, no merge
    "llava": dict(size=336, cell=14, n_img=576, n_patch=576),         # 336 px, 14 px, CLS dropped
}


def expected_grid(family: str, w: int, h: int) -> tuple[int, int]:
    """Published token geometry (hand-written, not the adapter's code)."""
    if family in ("qwen2-vl", "qwen2.5-vl"):
        return h // 28, w // 28            # smart_resize keeps multiples of 28
    if family == "gemma-3":
        return 16, 16                      # always squashed to 896 px
    if family == "pixtral":
        return -(-h // 16), -(-w // 16)    # own size (<= 1024), whole 16-px patches
    return 24, 24                          # llava-1.5: 336 px crop, 14-px patches


def sq(ad, idx=0, **kw):
    g = GEOM[ad.family]
    return squares(idx, size=g["size"], cell=g["cell"], **kw)


@pytest.fixture(scope="module", params=FAMILIES)
def ad(request):
    torch.set_num_threads(1)
    return vlms.build_tiny(request.param, seed=0)


def test_sites_resolve_and_fire_with_declared_shapes(ad):
    r = sq(ad, 0)
    b = ad.prepare([r.image], [r.stimulus.prompts[0]])
    g = GEOM[ad.family]
    n_img, n_patch = g["n_img"], g["n_patch"]
    for k in ad.mm_input_keys:  # image_grid_thw + mm_token_type_ids / token_type_ids / sizes
        assert k in b.inputs
        if k.endswith("type_ids"):
            ids = b.inputs[k][0]
            assert int(ids.sum()) == n_img and bool(ids[b.image_positions[0]].all())
    assert b.image_positions.shape == (1, n_img)
    sites = ad.sites()
    assert sites[0] == "vision.blocks.0" and sites[-1] == f"lm.resid.{ad.n_lm_layers}"
    _, acts = ad.capture(b, sites)
    for s in sites:
        a = acts[s]
        if s.startswith("vision."):
            assert tuple(a.shape) == (1, n_patch, ad.d_vision)
        elif s == "projector":
            assert tuple(a.shape) == (1, n_img, ad.d_lm)
        else:
            assert tuple(a.shape) == (1, b.seq_len, ad.d_lm)


def test_lm_resid_equals_output_hidden_states(ad):
    r = sq(ad, 1, axis="vertical")
    b = ad.prepare([r.image], [r.stimulus.prompts[0]])
    n = ad.n_lm_layers
    out, acts = ad.capture(b, [f"lm.resid.{i}" for i in range(n + 1)], output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == n + 1
    for i in range(n):
        torch.testing.assert_close(acts[f"lm.resid.{i}"], hs[i], rtol=0, atol=0)
    # the last hidden state is after the final norm; lm.resid.n is before it
    norm = ad._resolve(ad.final_norm_paths, "final norm")
    torch.testing.assert_close(norm(acts[f"lm.resid.{n}"]), hs[n], rtol=1e-6, atol=1e-6)


def test_projector_and_vision_equal_direct_module_calls(ad):
    r = sq(ad, 2)
    b = ad.prepare([r.image], [r.stimulus.prompts[0]])
    sites = ["projector"] + [f"vision.blocks.{i}" for i in range(ad.n_vision_blocks)]
    out, acts = ad.capture(b, sites, output_hidden_states=True)
    inner = ad.model.model
    x = b.inputs["pixel_values"]
    with torch.no_grad():
        if ad.family in ("qwen2-vl", "qwen2.5-vl"):
            feats = inner.get_image_features(x, b.inputs["image_grid_thw"])
            proj = torch.cat(list(feats.pooler_output))[None]
            vis = inner.visual(x, grid_thw=b.inputs["image_grid_thw"],
                               output_hidden_states=True)
            blocks = [h[None] for h in vis.hidden_states[1:]]
        elif ad.family == "gemma-3":
            feats = inner.get_image_features(x)
            proj = feats.pooler_output
            vis = inner.vision_tower(pixel_values=x, output_hidden_states=True)
            blocks = list(vis.hidden_states[1:])
        elif ad.family == "pixtral":
            sizes = b.inputs["image_sizes"]
            feats = inner.get_image_features(x, image_sizes=sizes)
            proj = torch.cat(list(feats.pooler_output))[None]
            vis = inner.vision_tower(x, image_sizes=sizes, output_hidden_states=True)
            blocks = list(vis.hidden_states[1:])
        else:  # llava: CLIP hidden states carry the CLS row first; the sites drop it
            feats = inner.get_image_features(x)
            proj = torch.cat(list(feats.pooler_output))[None]
            vis = inner.vision_tower(x, output_hidden_states=True)
            blocks = [h[:, 1:] for h in vis.hidden_states[1:]]
            assert vis.hidden_states[0].shape[1] == 577  # 24*24 patches + CLS
    assert len(blocks) == ad.n_vision_blocks
    torch.testing.assert_close(acts["projector"], proj.reshape(acts["projector"].shape))
    for i, blk in enumerate(blocks):
        torch.testing.assert_close(acts[f"vision.blocks.{i}"], blk)
    # the LM input at image positions is the projector output, row by row
    pos = torch.as_tensor(b.image_positions[0])
    torch.testing.assert_close(out.hidden_states[0][0, pos], acts["projector"][0], rtol=0, atol=0)


def _patch_embed(ad, b):
    """Per-patch embeddings (no position information) in the family's native patch order of
    the vision blocks (Qwen2.5-VL: the window order, i.e. the input of block 0)."""
    got = {}
    inner = ad.model.model
    if ad.family == "qwen2.5-vl":
        h = inner.visual.blocks[0].register_forward_pre_hook(
            lambda m, a, k: got.__setitem__("x", (a[0] if a else k["hidden_states"]).detach()),
            with_kwargs=True)
    else:
        mod = {"qwen2-vl": lambda: inner.visual.patch_embed,
               "gemma-3": lambda: inner.vision_tower.embeddings.patch_embedding,
               "llava": lambda: inner.vision_tower.embeddings.patch_embedding,
               "pixtral": lambda: inner.vision_tower.patch_conv}[ad.family]()
        h = mod.register_forward_hook(lambda m, a, o: got.__setitem__("x", o.detach()))
    try:
        ad.run(b)
    finally:
        h.remove()
    x = got["x"]
    if x.ndim == 2:  # qwen: (patches, d), no batch dim
        return x.reshape(len(b), -1, x.shape[-1])
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("size", [(448, 448), (448, 336)])
def test_token_geometry_quadrants(ad, size):
    """Quadrants of four colours land on the tokens whose pixel boxes the geometry gives."""
    w, h = size
    if ad.family == "pixtral" and h == 336:  # 21 rows of 16 px: the middle row would be split
        h = 320
    if ad.family == "llava" and w != h:  # centre crop would cut the sides: refused
        with pytest.raises(vlms.InputError, match="centre-crops non-square images"):
            ad.prepare([np.zeros((h, w, 3), np.uint8)], ["x"])
        return
    cols = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2:] = cols[0], cols[1]
    img[h // 2:, : w // 2], img[h // 2:, w // 2:] = cols[2], cols[3]
    b = ad.prepare([img], ["Which colour?"])
    grid = b.grids[0]
    tok = ad.pool_vision(_patch_embed(ad, b), grid)[0]
    refs = []
    for c in cols:
        u = np.zeros((h, w, 3), np.uint8) + np.array(c, np.uint8)
        refs.append(ad.pool_vision(_patch_embed(ad, ad.prepare([u], ["x"])), grid)[0, 0])
    refs = torch.stack(refs)
    nearest = torch.cdist(tok, refs).argmin(1).numpy()
    boxes = ad.token_boxes(w, h)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    expect = (cy >= h / 2).astype(int) * 2 + (cx >= w / 2).astype(int)
    assert len(expect) == grid[0] * grid[1] == tok.shape[0]
    np.testing.assert_array_equal(nearest, expect)
    assert grid == expected_grid(ad.family, w, h)


def test_roles_partition_and_objects_inside_masks(ad):
    r = sq(ad, 3)
    stim = r.stimulus
    b = ad.prepare([r.image], [stim.prompts[0]])
    ir = image_roles(stim, r.mask, b.grids[0], object_fraction=0.5)
    seq = sequence_roles(b, 0, ir)
    assert len(seq) == b.seq_len
    counts = {k: int((seq == k).sum()) for k in set(seq)}
    assert sum(counts.values()) == b.seq_len
    assert counts["object"] == 12 and counts["distractor"] == 1  # three 2x2 squares, one 1x1
    rows = b.grids[0][0]
    assert counts["strip"] == 3 * 2 * rows - 12  # the targets' columns, all rows, minus objects
    assert counts["last"] == 1 and seq[-1] == "last"
    pos = np.asarray(b.image_positions[0])
    assert set(seq[pos]) <= {"object", "strip", "distractor", "background"}
    # every object token's pixel box lies inside its entity's mask box
    boxes = ad.token_boxes(r.image.shape[1], r.image.shape[0])
    ents = {e.mask_id: e for e in stim.entities}
    for k in np.nonzero(ir.role == "object")[0]:
        x0, y0, x1, y1 = ents[int(ir.entity[k])].box
        bx = boxes[k]
        assert x0 <= bx[0] and bx[2] <= x1 and y0 <= bx[1] and bx[3] <= y1
        assert ir.slot[k] == ents[int(ir.entity[k])].ordinal
    ids = b.inputs["input_ids"][0]
    for role, word in (("relation", "left"), ("reference", "green")):
        text = ad.tokenizer.decode(ids[torch.as_tensor(np.nonzero(seq == role)[0])])
        assert word in text


def test_batching_with_padding_equals_single_items(ad):
    a, c = sq(ad, 4), sq(ad, 5, axis="vertical", colours=("blue", "red", "yellow"))
    prompts = [a.stimulus.prompts[0], "Is the blue square above or below the red one? Answer "
               "with one word, please, as briefly as you can."]
    sites = ["projector", "lm.resid.1", f"lm.resid.{ad.n_lm_layers}"]
    both = ad.prepare([a.image, c.image], prompts)
    assert max(both.n_pad) > 0 and min(both.n_pad) == 0
    out2, acts2 = ad.capture(both, sites)
    for i, (img, p) in enumerate(zip([a.image, c.image], prompts)):
        one = ad.prepare([img], [p])
        out1, acts1 = ad.capture(one, sites)
        torch.testing.assert_close(acts2["projector"][i], acts1["projector"][0],
                                   rtol=1e-5, atol=1e-5)
        for s in sites[1:]:
            torch.testing.assert_close(acts2[s][i, both.n_pad[i]:], acts1[s][0],
                                       rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out2.logits[i, -1], out1.logits[0, -1], rtol=1e-4, atol=1e-4)


def test_score_options_matches_manual_softmax(ad):
    r = sq(ad, 6)
    p = r.stimulus.prompts[0]
    got = ad.score_options([r.image, r.image], [p, p.text], [["red", "Green"], ["blue"]])
    b = ad.prepare([r.image], [p])
    logp = torch.log_softmax(ad.run(b).logits[0, -1], -1)
    tok = ad.tokenizer
    manual = []
    for opt in ("red", "green"):
        ids = {tok(v, add_special_tokens=False)["input_ids"][0]
               for v in (opt, " " + opt, opt.capitalize(), " " + opt.capitalize(), opt.upper(),
                         " " + opt.upper())}
        manual.append(max(float(logp[i]) for i in ids))
    np.testing.assert_allclose(got[0], manual, rtol=1e-5)
    assert got[1].shape == (1,) and got[1][0] < 0


def test_caption_logprob_matches_manual_sum(ad):
    r = sq(ad, 7)
    caps = ["The red square is left of the green square.", "A blue cube."]
    got = ad.caption_logprob([r.image], [caps])
    assert got[0].shape == (2,)
    # oracle: full forward of prompt + caption, sum of log-probs of the caption's tokens
    base = ad.prepare([r.image], [""])
    full = ad.prepare([r.image], [""], suffixes=[caps[1]])
    logp = torch.log_softmax(ad.run(full).logits[0].float(), -1)
    ids = full.inputs["input_ids"][0]
    start = base.seq_len
    manual = sum(float(logp[t - 1, ids[t]]) for t in range(start, full.seq_len))
    assert got[0][1] == pytest.approx(manual, rel=1e-5)


def test_bad_site_and_layer_errors(ad):
    with pytest.raises(vlms.SiteError, match="lm.resid.0 .. lm.resid.2"):
        ad.check_site("lm.resid.7")
    with pytest.raises(vlms.SiteError, match="Did you mean 'vision.blocks.1'"):
        ad.check_site("vision.block.1")
    with pytest.raises(vlms.SiteError, match="vision blocks"):
        ad.check_site(f"vision.blocks.{ad.n_vision_blocks}")


def test_tiny_build_is_deterministic(ad):
    again = vlms.build_tiny(ad.name, seed=0)
    other = vlms.build_tiny(ad.name, seed=1)
    sa, sb, sc = ad.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert ad.tokenizer.get_vocab() == again.tokenizer.get_vocab()
    if ad.family == "gemma-3":  # the zero projector was re-initialised
        assert ad.model.model.multi_modal_projector.mm_input_projection_weight.abs().sum() > 0
