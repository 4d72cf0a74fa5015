"""The hook mechanism on tiny random Qwen2-VL and Gemma-3 builds (raw tensors, 4x4 image grids):
identities, exact interchange, layer locality, the amplification formula and the batched sweep,
each checked against the model's own runs or a hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from interventions.errors import InterventionError
from interventions.hooks import (AddDirection, Amplify, Interchange, Patch, Scale, hooked, pairs,
                                 run, tile_inputs)
from interventions.sweeps import Edit, SourceRun, sweep

from .interventions_tiny import IMG, gemma_inputs, qwen_inputs, tiny_gemma, tiny_qwen

FAMILIES = {"qwen2-vl": (tiny_qwen, qwen_inputs), "gemma-3": (tiny_gemma, gemma_inputs)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fam(request):
    torch.set_num_threads(1)
    build, mk = FAMILIES[request.param]
    model = build(layers=3)
    a = mk(0)
    b = dict(a, pixel_values=mk(1)["pixel_values"])  # same prompt, another image
    return model, a, b


def _img_pos(inputs):
    return torch.nonzero(inputs["input_ids"][0] == IMG).flatten().tolist()


def test_identities_change_no_logit(fam):
    model, a, _ = fam
    plain = run(model, a).logits
    img = _img_pos(a)
    base0 = run(model, a, capture=["lm.resid.0", "lm.resid.2"])
    w = torch.randn(2, base0.acts["lm.resid.0"].shape[-1])
    cases = [
        [Patch(site="lm.resid.0", intervention=Amplify(w, 0.0), index=pairs(0, img))],
        [Patch(site="projector", intervention=AddDirection(w, 0.0))],
        [Patch(site="lm.resid.2", intervention=Scale(1.0))],
        # interchange with source == base
        [Patch(site="lm.resid.2", intervention=Interchange(), index=pairs(0, img),
               source=base0.acts["lm.resid.2"][0, img])],
    ]
    for patches in cases:
        assert torch.equal(run(model, a, patches=patches).logits, plain)


def test_full_projector_swap_reproduces_source_logits(fam):
    model, a, b = fam
    rb = run(model, b, capture=["projector"])
    n = rb.acts["projector"].shape[1]
    swapped = run(model, a, patches=[Patch(site="projector", intervention=Interchange(),
                                           index=pairs(0, range(n)),
                                           source=rb.acts["projector"][0])])
    assert torch.equal(swapped.logits, rb.logits)
    assert not torch.equal(run(model, a).logits, rb.logits)


def test_patch_at_layer_is_local(fam):
    model, a, b = fam
    sites = [f"lm.resid.{i}" for i in range(4)]
    clean = run(model, a, capture=sites)
    src = run(model, b, capture=sites)
    img = _img_pos(a)
    patched = run(model, a, capture=sites, patches=[
        Patch(site="lm.resid.2", intervention=Interchange(), index=pairs(0, img),
              source=src.acts["lm.resid.2"][0, img])])
    for s in ("lm.resid.0", "lm.resid.1"):  # earlier layers untouched, bit for bit
        assert torch.equal(patched.acts[s], clean.acts[s])
    assert torch.equal(patched.acts["lm.resid.2"][0, img], src.acts["lm.resid.2"][0, img])
    pre = img[0]  # tokens before the image see no patched token (causal attention)
    assert torch.equal(patched.acts["lm.resid.3"][0, :pre], clean.acts["lm.resid.3"][0, :pre])
    assert not torch.allclose(patched.acts["lm.resid.3"][0, -1], clean.acts["lm.resid.3"][0, -1])
    assert not torch.equal(patched.logits, clean.logits)


def test_amplify_matches_hand_computation_on_captured_acts(fam):
    model, a, _ = fam
    img = _img_pos(a)
    h0 = run(model, a, capture=["lm.resid.0"]).acts["lm.resid.0"][0].double()
    w = torch.randn(2, h0.shape[-1], generator=torch.Generator().manual_seed(3)).double()
    alpha = 4.0
    got = run(model, a, capture=["lm.resid.0"], patches=[
        Patch(site="lm.resid.0", intervention=Amplify(w.float(), alpha), index=pairs(0, img))]
    ).acts["lm.resid.0"][0].double()
    expect = h0.clone()
    for t in img:
        proj = sum((h0[t] @ wk) / (wk @ wk) * wk for wk in w)
        expect[t] = h0[t] + alpha * proj
    assert torch.allclose(got, expect, rtol=1e-5, atol=1e-5)
    text = [t for t in range(h0.shape[0]) if t not in img]
    assert torch.equal(got[text].float(), h0[text].float())
    # projector-site amplification is the same intervention on the same vectors
    via_proj = run(model, a, patches=[Patch(site="projector", intervention=Amplify(w.float(),
                                                                                   alpha))])
    via_lm = run(model, a, patches=[Patch(site="lm.resid.0", intervention=Amplify(w.float(), alpha),
                                          index=pairs(0, img))])
    assert torch.allclose(via_proj.logits, via_lm.logits, atol=1e-5)


def test_hooks_skip_other_sequence_lengths_and_are_removed(fam):
    model, a, _ = fam
    plain = run(model, a).logits
    with hooked(model, patches=[Patch(site="lm.resid.1", intervention=Scale(0.0))],
                seq_len=a["input_ids"].shape[1] + 1):  # a decode step has another length
        out = model(**a, use_cache=False).logits
    assert torch.equal(out, plain)
    assert torch.equal(run(model, a).logits, plain)  # nothing left installed


def test_bad_site_index(fam):
    model, a, _ = fam
    with pytest.raises(InterventionError, match="out of range"):
        run(model, a, capture=["lm.resid.9"])


def test_sweep_equals_one_run_per_row_with_fewer_forwards(fam):
    model, a, b = fam
    T = a["input_ids"].shape[1]
    img = _img_pos(a)
    ic = Interchange()
    rows = [[Edit(site=f"lm.resid.{l}", intervention=ic, tokens=img[:4], source="cf")]
            for l in range(4)]
    rows.append([Edit(site="lm.resid.1", intervention=Scale(0.5), tokens=[T - 1])])
    res = sweep(model, a, rows, sources={"cf": SourceRun(inputs=b)}, batch_size=2)
    src = run(model, b, capture=[f"lm.resid.{l}" for l in range(4)])
    for l in range(4):
        s = f"lm.resid.{l}"
        one = run(model, a, patches=[Patch(site=s, intervention=ic, index=pairs(0, img[:4]),
                                           source=src.acts[s][0, img[:4]])]).logits[0, -1]
        assert torch.allclose(res.row_logits[l], one, atol=1e-5)
    one = run(model, a, patches=[Patch(site="lm.resid.1", intervention=Scale(0.5),
                                       index=pairs(0, [T - 1]))]).logits[0, -1]
    assert torch.allclose(res.row_logits[4], one, atol=1e-5)
    assert torch.allclose(res.base_logits, run(model, a).logits[0, -1], atol=1e-6)
    # 1 base + 1 source (cached for all layers) + ceil(5 rows / 2) batched forwards
    assert res.counter.forwards == 2 + math.ceil(5 / 2)
    assert res.counter.naive_forwards == 4 * 2 + 1


def test_precomputed_features_and_tiling_are_exact(fam):
    model, a, _ = fam
    r = run(model, a, capture=["projector"])
    assert torch.equal(run(model, a, features=r.acts["projector"]).logits, r.logits)
    tiled = run(model, tile_inputs(a, 3), features=r.acts["projector"].repeat(3, 1, 1)).logits
    assert torch.allclose(tiled, r.logits.expand_as(tiled), atol=1e-5)
    with pytest.raises(InterventionError, match="projector"):
        run(model, a, features=r.acts["projector"],
            patches=[Patch(site="projector", intervention=Scale(2.0))])
