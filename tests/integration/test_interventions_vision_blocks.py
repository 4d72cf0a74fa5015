"""Patching, ablating and amplifying at ``vision.blocks.<i>`` on tiny random Qwen2-VL and Gemma-3
builds (one vision block, 4x4 LM image tokens).

Oracles: the models' own runs (patching every patch from a source run reproduces the source's
logits; patching none leaves the clean run bit-identical), the projector's locality (after the
last vision block, an LM image token depends only on its own patches: Qwen2-VL's merger
concatenates a 2x2 merge block, Gemma-3 average-pools a 4x4 patch block), the patch order
written down in MODELS.md (Qwen2-VL: merge-block order, token k = patches 4k..4k+3; Gemma-3:
row-major over the 16x16 patch grid), and a hand computation of the amplification formula.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.errors import InterventionError
from interventions.hooks import Ablate, Amplify, Interchange, Patch, adapter, pairs, run
from interventions.sweeps import Edit, SourceRun, run_edits, sweep

from .interventions_tiny import gemma_inputs, qwen_inputs, tiny_gemma, tiny_qwen

FAMILIES = {"qwen2-vl": (tiny_qwen, qwen_inputs), "gemma-3": (tiny_gemma, gemma_inputs)}
SITE = "vision.blocks.0"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fam(request):
    torch.set_num_threads(1)
    build, mk = FAMILIES[request.param]
    model = build(layers=2)
    a = mk(0)
    b = dict(a, pixel_values=mk(1)["pixel_values"])  # same prompt, another image
    return request.param, model, a, b


def _hand_patches(family: str, token: int) -> list[int]:
    """Native patch indices of LM image token ``token`` (4x4 token grid), from MODELS.md."""
    if family == "qwen2-vl":  # 2x2 merge blocks, one block per token, in token order
        return [4 * token + q for q in range(4)]
    i, j = divmod(token, 4)  # Gemma-3: 16x16 patches row-major, 4x4 average pool per token
    return [r * 16 + c for r in range(4 * i, 4 * i + 4) for c in range(4 * j, 4 * j + 4)]


def test_site_tokens_map_image_tokens_to_their_patches(fam):
    family, model, a, _ = fam
    ad = adapter(model)
    grid = ad.image_grid(a)
    assert grid == (4, 4)
    for k in (0, 1, 5, 15):
        assert ad.site_tokens(SITE, [k], grid).tolist() == _hand_patches(family, k)
    both = ad.site_tokens(SITE, [6, 2], grid).tolist()
    assert both == _hand_patches(family, 6) + _hand_patches(family, 2)
    n_patches = 64 if family == "qwen2-vl" else 256
    assert sorted(ad.site_tokens(SITE, None, grid).tolist()) == list(range(n_patches))
    assert ad.site_tokens("projector", [3, 1], grid).tolist() == [3, 1]


def test_patching_every_patch_reproduces_the_source_and_none_changes_nothing(fam):
    _, model, a, b = fam
    src = run(model, b, capture=[SITE, "projector"])
    clean = run(model, a, capture=[SITE])
    n = src.acts[SITE].shape[1]
    assert src.acts[SITE].shape[0] == 1  # viewed per image even where the block has no batch dim
    every = run(model, a, patches=[Patch(site=SITE, intervention=Interchange(),
                                         index=pairs(0, range(n)), source=src.acts[SITE][0])])
    assert torch.equal(every.logits, src.logits)
    assert not torch.equal(clean.logits, src.logits)
    none = run(model, a, patches=[Patch(site=SITE, intervention=Interchange(),
                                        index=torch.zeros((0, 2), dtype=torch.long),
                                        source=torch.zeros((0, src.acts[SITE].shape[-1])))])
    assert torch.equal(none.logits, clean.logits)


def test_patching_one_tokens_patches_changes_only_that_token_downstream(fam):
    family, model, a, b = fam
    k = 5
    src = run(model, b, capture=[SITE, "projector"])
    clean = run(model, a, capture=["projector"])
    patches = _hand_patches(family, k)  # the independent oracle's patch set
    got = run(model, a, capture=["projector"], patches=[
        Patch(site=SITE, intervention=Interchange(), index=pairs(0, patches),
              source=src.acts[SITE][0, patches])])
    proj, proj_clean, proj_src = got.acts["projector"][0], clean.acts["projector"][0], \
        src.acts["projector"][0]
    others = [t for t in range(proj.shape[0]) if t != k]
    assert torch.equal(proj[others], proj_clean[others])
    assert torch.allclose(proj[k], proj_src[k], atol=1e-6)
    assert not torch.allclose(proj[k], proj_clean[k], atol=1e-4)
    # the same edit through the sweep engine (image-token indices, mapped by the adapter)
    via = run_edits(model, a, [Edit(site=SITE, intervention=Interchange(), tokens=[k],
                                    source="cf")],
                    sources={"cf": SourceRun(inputs=b)}, capture=["projector"])
    assert torch.equal(via.acts["projector"], got.acts["projector"])
    assert torch.equal(via.logits, got.logits)


def test_cross_token_interchange_pairs_patches_in_place(fam):
    # base token 2 <- source token 9: the merged row equals the source's row 9 only if every
    # patch lands at the same place inside the token (Qwen2-VL's merger concatenates them)
    _, model, a, b = fam
    src = run(model, b, capture=["projector"])
    got = run_edits(model, a, [Edit(site=SITE, intervention=Interchange(), tokens=[2],
                                    source="cf", source_tokens=[9])],
                    sources={"cf": SourceRun(inputs=b)}, capture=["projector"])
    assert torch.allclose(got.acts["projector"][0, 2], src.acts["projector"][0, 9], atol=1e-6)


def test_batched_sweep_rows_equal_single_runs(fam):
    _, model, a, b = fam
    rows = [[Edit(site=SITE, intervention=Interchange(), tokens=[t], source="cf")]
            for t in (0, 7, 12)]
    res = sweep(model, a, rows, sources={"cf": SourceRun(inputs=b)}, batch_size=2)
    for r, t in enumerate((0, 7, 12)):
        one = run_edits(model, a, rows[r], sources={"cf": SourceRun(inputs=b)})
        assert torch.allclose(res.row_logits[r], one.logits[0, -1], atol=1e-5)
    assert res.counter.forwards == 2 + 2  # base, source, two batches (no cached vision reuse)


def test_ablate_and_amplify_at_vision_blocks(fam):
    family, model, a, b = fam
    k = 3
    patches = _hand_patches(family, k)
    # ablation: the token's patches from a reference run (here: the other image)
    ref = run(model, b, capture=[SITE])
    abl = run(model, a, capture=[SITE], patches=[
        Patch(site=SITE, intervention=Ablate(), index=pairs(0, patches),
              source=ref.acts[SITE][0, patches])])
    assert torch.equal(abl.acts[SITE][0, patches], ref.acts[SITE][0, patches])
    # amplification: h + alpha * sum_k (h.w_k/|w_k|^2) w_k on the token's patches only
    h0 = run(model, a, capture=[SITE]).acts[SITE][0].double()
    w = torch.randn(2, h0.shape[-1], generator=torch.Generator().manual_seed(5)).double()
    alpha = 3.0
    got = run(model, a, capture=[SITE], patches=[
        Patch(site=SITE, intervention=Amplify(w.float(), alpha), index=pairs(0, patches))]
    ).acts[SITE][0].double()
    expect = h0.clone()
    for p in patches:
        expect[p] = h0[p] + alpha * sum((h0[p] @ wk) / (wk @ wk) * wk for wk in w)
    assert torch.allclose(got, expect, rtol=1e-5, atol=1e-5)
    rest = [p for p in range(h0.shape[0]) if p not in patches]
    assert torch.equal(got[rest].float(), h0[rest].float())


def test_vision_block_patch_refuses_precomputed_features_and_bad_indices(fam):
    _, model, a, _ = fam
    r = run(model, a, capture=["projector", SITE])
    with pytest.raises(InterventionError, match="vision-block"):
        run(model, a, features=r.acts["projector"],
            patches=[Patch(site=SITE, intervention=Amplify(torch.ones(1, r.acts[SITE].shape[-1]),
                                                           1.0))])
    with pytest.raises(InterventionError, match="out of range"):
        run(model, a, capture=["vision.blocks.1"])
    with pytest.raises(InterventionError, match="outside the 4x4 token grid"):
        run_edits(model, a, [Edit(site=SITE, intervention=Amplify(np.ones((1, 4)), 1.0),
                                  tokens=[16])])
