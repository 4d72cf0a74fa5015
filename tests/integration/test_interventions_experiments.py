"""E2 / E4 / E5 / E6 / E7 on the tiny vlms adapters and small generated flat datasets, each checked
against an independent computation (the model's own runs, hooks installed by hand)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.ablation import (AblateConfig, SITE, ablation_edits, blank_acts, references,
                                    run_e5)
from interventions.regions import ablation_pairs, regions_table
from interventions.amplification import AmplifyConfig, run_e7
from interventions.hooks import Interchange, Patch, pairs, run
from interventions.layout import crisscross_map
from interventions.patching import PatchConfig, run_e2, run_e4, run_e6
from interventions.stimuli import (base_items, option_ids, pick_prompt, prepare, slot_colors,
                                   twin)
from interventions.sweeps import option_probs, run_edits


@pytest.fixture(scope="module")
def qwen_setup(tmp_path_factory):
    torch.set_num_threads(1)
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.registry import load_adapter

    out = tmp_path_factory.mktemp("ds") / "squares"
    generate(preset_config("squares-qwen2-vl", n=6), out, progress=False)
    return load_adapter("tiny-qwen2-vl"), read_dataset(out)


@pytest.fixture(scope="module")
def gemma_setup(tmp_path_factory):
    torch.set_num_threads(1)
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.registry import load_adapter

    out = tmp_path_factory.mktemp("dsg") / "squares"
    generate(preset_config("squares-gemma-3", n=1), out, progress=False)
    return load_adapter("tiny-gemma-3"), read_dataset(out)


def _check_e5_inputs(ad, ds, exact: bool = True, recipe: str = "robust"):
    stim = base_items(ds)[0]
    prompt = pick_prompt(stim)
    p = prepare(ad, ds, stim, prompt)
    blank = blank_acts(ad, ds, prompt, stim)
    refs = references(ad, ds, stim, prompt, blank)
    prs = ablation_pairs(ds, stim, p.layout.grid, recipe)
    edits, sources = ablation_edits(p, refs, prs)
    filled = np.unique(np.concatenate([x.clean for x in prs if x.source_kind == "isolated"]))
    got = run_edits(ad, p.inputs, edits, sources=sources, capture=[SITE]).acts[SITE][0]
    # every image token was replaced, each exactly once
    touched = np.concatenate([e.tokens for e in edits])
    assert sorted(touched) == sorted(p.layout.image_positions.tolist())
    objects = np.concatenate([p.layout.cells(f"object:{o}") for o in p.layout.ordinals()])
    if recipe == "robust":
        assert set(filled.tolist()) <= set(objects.tolist())
    else:  # paper: the layout blocks (squares fill them, so they equal the covered tokens)
        assert sorted(filled.tolist()) == sorted(objects.tolist())
    if exact:  # flat stimuli: isolated twins show the same-size entity, every token pairs
        assert len(filled) == len(objects)
    # entity tokens equal the isolated twins' tokens at the mapped positions
    n_checked = 0
    for e in edits:
        if e.source == "blank":
            ref = blank[1][SITE][0]
        else:
            ref = run(ad, sources[e.source].inputs, capture=[SITE]).acts[SITE][0]
        assert torch.equal(got[list(e.tokens)], ref[list(e.source_tokens)])
        n_checked += len(e.tokens)
    assert n_checked == p.layout.n_image
    # and the blank canvas run really is what the background took, cell for cell
    bg = np.setdiff1d(np.arange(p.layout.n_image), filled)  # strips: all non-entity cells
    assert len(bg) == p.layout.n_image - len(filled) > 0
    assert torch.equal(got[p.layout.image_positions[bg]],
                       blank[1][SITE][0][blank[0].layout.image_positions[bg]])


@pytest.mark.parametrize("recipe", ["paper", "robust"])
def test_e5_ablated_inputs_equal_reference_tokens_qwen(qwen_setup, recipe):
    _check_e5_inputs(*qwen_setup, recipe=recipe)


@pytest.mark.parametrize("recipe", ["paper", "robust"])
def test_e5_ablated_inputs_equal_reference_tokens_gemma(gemma_setup, recipe):
    _check_e5_inputs(*gemma_setup, recipe=recipe)


@pytest.mark.gl
def test_scene3d_uses_each_scene_blank_and_runs_e4_e5(tmp_path):
    pytest.importorskip("pyrender")
    from scenegen import read_dataset
    from scenegen.generate import generate
    from scenegen.presets import preset_config
    from vlms.registry import load_adapter

    from interventions.stimuli import blank_of

    torch.set_num_threads(1)
    generate(preset_config("scene3d", n=2), tmp_path / "d3", progress=False)
    ds = read_dataset(tmp_path / "d3")
    ad = load_adapter("tiny-qwen2-vl")
    stim = base_items(ds)[0]
    own = blank_of(ds, stim)
    assert own.counterfactual_of == stim.id and own.counterfactual_kind == "blank"
    # entities <- isolated twins (on the overlap of the two object regions: perspective may
    # change an entity's token footprint), the rest <- the scene's own blank
    _check_e5_inputs(ad, ds, exact=False)
    table, summary = run_e4(ad, ds, PatchConfig(experiment="e4", layers="0", limit=2),
                            progress=False)
    assert summary["recipe"] == "robust"  # not a paper preset: the default is robust
    assert summary["n_items"] + len(summary["skipped"]) == 2


def _direct_e4(ad, ds, stim, layer, region):
    prompt = pick_prompt(stim)
    p = prepare(ad, ds, stim, prompt)
    cf = prepare(ad, ds, twin(ds, stim, "crisscross"), prompt)
    bpos, spos = crisscross_map(p.layout, cf.layout, region)
    site = f"lm.resid.{layer}"
    src = run(ad, cf.inputs, capture=[site]).acts[site][0, spos]
    logits = run(ad, p.inputs, patches=[Patch(site=site, intervention=Interchange(),
                                              index=pairs(0, bpos), source=src)]).logits[0, -1]
    return option_probs(logits, option_ids(ad.tokenizer, slot_colors(stim)), normalize=True)


@pytest.mark.parametrize("setup", ["qwen_setup", "gemma_setup"])
def test_e4_rows_equal_direct_patched_runs(setup, request):
    ad, ds = request.getfixturevalue(setup)
    table, summary = run_e4(ad, ds, PatchConfig(experiment="e4", layers="0,2", limit=1,
                                                batch_size=3, recipe="robust",
                                                regions=("object", "strip", "band")),
                            progress=False)
    assert len(table) == 2 * 3  # layers x regions
    stim = base_items(ds)[0]
    for _, r in table.iterrows():
        want = _direct_e4(ad, ds, stim, int(r["layer"]), r["region"])
        got = np.array([r["p_slot0"], r["p_slot1"], r["p_slot2"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert r["flip"] == (r["pred"] == r["cf_answer"])
    # 1 base + 1 cached source + ceil(6 rows / 3) batched forwards; naive = 2 per row
    assert summary["forwards"] == 2 + 2 and summary["naive_forwards"] == 12
    assert {d["region"] for d in summary["by_layer"]} == {"object", "strip", "band"}
    # the regions differ: band (paper's tiling) is wider than strip (object columns)
    stim = base_items(ds)[0]
    p = prepare(ad, ds, stim, pick_prompt(stim))
    n = {r: len(p.layout.cells(f"{r}:0")) for r in ("object", "strip", "band")}
    assert n["object"] < n["strip"] <= n["band"]


def test_e2_last_site_reproduces_counterfactual_run(qwen_setup):
    ad, ds = qwen_setup
    last = ad.n_lm_layers  # patching the final residual at the last token = the cf's logits
    table, summary = run_e2(ad, ds, PatchConfig(experiment="e2", layers=f"0,{last}", limit=2,
                                                recipe="robust"),
                            progress=False)
    assert len(table) == 4 and set(table["layer"]) == {0, last}
    for _, r in table[table["layer"] == last].iterrows():
        other = ds[r["partner"]]
        op = pick_prompt(other)
        cf = prepare(ad, ds, other, op)
        stim = ds[r["item"]]
        opts = list(dict.fromkeys(slot_colors(stim) + slot_colors(other)))
        want = option_probs(run(ad, cf.inputs).logits[0, -1], option_ids(ad.tokenizer, opts),
                            normalize=True)
        assert r["p_cf_answer"] == pytest.approx(want[opts.index(op.answer)], abs=1e-5)
        assert r["p_answer"] == pytest.approx(want[opts.index(r["answer"])], abs=1e-5)
        assert other.relation != stim.relation and other.axis == stim.axis
    assert sum(summary["winners"][last].values()) == 2


def test_e6_unpatched_row_is_e5_and_layers_flip_bookkeeping(qwen_setup):
    ad, ds = qwen_setup
    t6, s6 = run_e6(ad, ds, PatchConfig(experiment="e6", layers="0,1", limit=2,
                                        recipe="robust"), progress=False)
    t5, s5 = run_e5(ad, ds, AblateConfig(limit=2, recipe="robust"), progress=False)
    ab = t6[t6["layer"] == -1].set_index("item")
    for _, r in t5.iterrows():
        assert ab.loc[r["item"], "pred"] == r["ablated_pred"]
        assert ab.loc[r["item"], "p_answer"] == pytest.approx(r["ablated_p_answer"], abs=1e-5)
    assert s6["ablated_accuracy"] == pytest.approx(s5["ablated_accuracy"])
    assert set(t6.loc[t6["layer"] >= 0, "region"]) == {"object"}
    assert s5["chance"] == pytest.approx(1 / 3)


def test_e7_alpha_zero_is_baseline_and_controls(qwen_setup):
    import dataclasses

    from study.evaluate import next_token

    ad, ds = qwen_setup
    w = np.random.default_rng(0).standard_normal((2, ad.d_lm)).astype(np.float32)
    table, summary = run_e7(ad, ds, {"horizontal": w, "vertical": w},
                            AmplifyConfig(alphas=(0, 40), limit=3, prompt="choice"),
                            progress=False)
    assert len(table) == 3 * 2 * 2
    for stim in base_items(ds, limit=3):
        pr = pick_prompt(stim, "choice")
        a, b = pr.options
        ok = True  # the evaluation's own two-option scoring, both orders
        for q in (pr, dataclasses.replace(pr, text=pr.text.replace(f"{a} or {b}", f"{b} or {a}"),
                                          options=(b, a))):
            scores, _ = next_token(ad, [ds.image(stim)], [q.text], [list(q.options)], q.system)
            ok &= q.options[int(np.argmax(scores[0]))] == pr.answer
        for c in ("probe", "random"):
            row = table[(table["item"] == stim.id) & (table["control"] == c)
                        & (table["alpha"] == 0)]
            assert bool(row["correct"].item()) == ok
    labels = {s["selection"] for s in summary["selections"]}
    assert labels == {"held-out alpha", "cross-fitted alpha (K-fold)",
                      "in-sample best alpha (paper's Probe)",
                      "in-sample per-item oracle (paper's Probe*)"}
    # each item's cross-fitting group is its colour triple with its mirror (the smaller order)
    for stim in base_items(ds, limit=3):
        got = set(table.loc[table["item"] == stim.id, "group"])
        t = tuple(stim.factors["triple"])
        assert got == {"mirror:" + "|".join(min(t, t[::-1]))}
    assert summary["forwards"] == 3 * 2 * (1 + 1)  # per question: base + one batch of 4 rows


def test_e7_on_whatsup_alpha_zero_matches_evaluate(qwen_setup, tmp_path):
    from pathlib import Path

    from interventions.amplification import whatsup_items
    from study.evaluate import EvalConfig, evaluate, load_items

    ad, _ = qwen_setup
    spec = f"whatsup:{Path(__file__).parents[1] / 'fixtures' / 'whatsup'}:COCO_QA_two_obj"
    cfg = AmplifyConfig(alphas=(0, 8), limit=2)
    items = whatsup_items(spec, cfg, model_name="tiny-qwen2-vl")
    assert [len(i.questions) for i in items] == [2, 2]  # both option orders
    w = np.random.default_rng(1).standard_normal((1, ad.d_lm)).astype(np.float32)
    table, _ = run_e7(ad, items, {"horizontal": w, "vertical": w}, cfg, progress=False)
    ev = evaluate(EvalConfig(model="tiny-qwen2-vl", data=spec, protocol="two-option", limit=2),
                  out=tmp_path / "ev", adapter=ad, items=load_items(spec, limit=2),
                  progress=False)
    strict = ev.predictions.drop_duplicates("id").set_index("id")["item_correct"]
    base = table[(table["alpha"] == 0) & (table["control"] == "probe")].set_index("item")
    for item_id, ok in strict.items():
        assert bool(base.loc[item_id, "correct"]) == bool(ok)


@pytest.mark.parametrize("setup", ["qwen_setup", "gemma_setup"])
def test_e4_paper_patches_exactly_its_regions_parquet(setup, request, monkeypatch):
    """The paper recipe is the default on a paper preset; the experiment records the token pairs
    that the model-free region computation gives, and patches exactly those."""
    import interventions.patching as patching
    from interventions.errors import InterventionError

    ad, ds = request.getfixturevalue(setup)
    # the authors keep only pairs answered right on both runs: a random tiny model never is
    with pytest.raises(InterventionError, match="answered right on both runs"):
        run_e4(ad, ds, PatchConfig(experiment="e4", layers="0", limit=1, pairs="dataset"), progress=False)
    monkeypatch.setattr(patching, "vocab_top1", lambda tok, logits: "x")  # always right
    monkeypatch.setattr(patching, "vocab_top1_answer", lambda a: "x")
    collected = []
    table, summary = run_e4(ad, ds, PatchConfig(experiment="e4", layers="0", limit=1, pairs="dataset"),
                            progress=False, regions=collected)
    assert summary["recipe"] == "paper" and summary["n_skipped"] == 0
    stim = base_items(ds)[0]
    p = prepare(ad, ds, stim, pick_prompt(stim))
    want, _ = regions_table(ds, p.layout.grid, "e4", "paper", limit=1)
    got = collected[0]
    assert got.sort_values(list(got.columns)).reset_index(drop=True).equals(
        want.sort_values(list(want.columns)).reset_index(drop=True))
    cf = prepare(ad, ds, twin(ds, stim, "crisscross"), pick_prompt(stim))
    for region, g in got.groupby("region"):
        bpos = p.layout.image_positions[g["clean_token"].to_numpy()]
        spos = cf.layout.image_positions[g["source_token"].to_numpy()]
        src = run(ad, cf.inputs, capture=["lm.resid.0"]).acts["lm.resid.0"][0, spos]
        logits = run(ad, p.inputs, patches=[Patch(site="lm.resid.0", intervention=Interchange(),
                                                  index=pairs(0, bpos), source=src)]).logits[0, -1]
        want_p = option_probs(logits, option_ids(ad.tokenizer, slot_colors(stim)), normalize=True)
        r = table[(table["region"] == region) & (table["layer"] == 0)].iloc[0]
        np.testing.assert_allclose([r["p_slot0"], r["p_slot1"], r["p_slot2"]], want_p, atol=1e-5)


def test_e6_paper_keeps_only_pairs_right_under_ablation(qwen_setup):
    ad, ds = qwen_setup
    from interventions.errors import InterventionError

    try:
        t6, s6 = run_e6(ad, ds, PatchConfig(experiment="e6", layers="0", limit=3, pairs="dataset"),
                        progress=False)
    except InterventionError as e:  # a random tiny model is rarely right: all dropped
        assert "answered right under the ablation" in str(e)
        return
    assert s6["recipe"] == "paper"
    assert s6["n_items"] + s6["n_dropped_ablated_wrong"] == 3
    ab = t6[t6["layer"] == -1]
    assert (ab["top1"] == ab["answer"].str.lower()).all()


def test_e2_paper_pairs_filter_and_four_variant_probability(qwen_setup, monkeypatch):
    """The authors' E2: 5-tuples from the 7-colour pool (orange added), clean (t0,t1,t2) asked
    the direction and counterfactual (t4,t1,t3) asked the opposite one (right/below reversed),
    kept only when both runs are right; P(word) = softmax mass summed over the four spellings."""
    import interventions.patching as patching
    from interventions.errors import InterventionError

    ad, ds = qwen_setup
    last = ad.n_lm_layers
    # a model that is always right (the tiny random model never is): both checks pass
    monkeypatch.setattr(patching, "vocab_top1", lambda tok, logits: "x")
    monkeypatch.setattr(patching, "vocab_top1_answer", lambda a: "x")
    # the tiny tokenizer splits capitalised colours; the real ones keep them whole
    monkeypatch.setattr(patching, "_single_token", lambda tok, w: True)
    table, summary = patching.run_e2(ad, ds, PatchConfig(experiment="e2", layers=f"0,{last}",
                                                         limit=2), progress=False)
    assert summary["recipe"] == "paper" and "orange" in summary["pool"]
    assert len(summary["pool"]) == 7
    assert {d: v["kept"] for d, v in summary["pairs_per_direction"].items()} == \
        {"left": 2, "right": 2, "above": 2, "below": 2}
    row = table[table["layer"] == last].iloc[0]
    words = row["colors"].split(",")
    assert row["answer"] == words[0] and row["cf_answer"] == words[3]
    # oracle: the counterfactual image rendered by hand from the published tuple algebra
    from scenegen.config import PALETTE

    ds_ = patching._paper_generator(ds)
    mem = patching._Memory()
    rel = row["relation"]
    cf_items = (words[4], words[1], words[3]) if rel in ("left", "above") else \
        (words[3], words[1], words[4])
    other = patching._render(ds_, mem, "cf", cf_items, patching.OPPOSITE_OF[rel])
    img = mem.image(other)
    assert tuple(img[other.targets[0].box[1], other.targets[0].box[0]]) == \
        tuple(PALETTE[cf_items[0]])
    cf = prepare(ad, mem, other, pick_prompt(other))
    probs = torch.softmax(run(ad, cf.inputs).logits[0, -1].float(), -1)
    tok = ad.tokenizer
    want = []
    for w in (words[0], words[3]):
        ids = [tok(v, add_special_tokens=False)["input_ids"][0]
               for v in (w, w.capitalize(), " " + w, " " + w.capitalize())]
        want.append(float(sum(probs[i] for i in ids)))
    # patching the last residual at the last token reproduces the counterfactual's output
    assert row["p_answer"] == pytest.approx(want[0], abs=1e-5)
    assert row["p_cf_answer"] == pytest.approx(want[1], abs=1e-5)
    # a model never right on the counterfactual: nothing is kept, and it says so
    monkeypatch.setattr(patching, "vocab_top1_answer", lambda a: "never")
    with pytest.raises(InterventionError, match="no pair was answered right"):
        patching.run_e2(ad, ds, PatchConfig(experiment="e2", layers="0", limit=1),
                        progress=False)


def test_e5_paper_scores_whole_vocabulary_top1_robust_the_options(qwen_setup):
    ad, ds = qwen_setup
    tp, sp = run_e5(ad, ds, AblateConfig(limit=3, recipe="paper"), progress=False)
    tr, sr = run_e5(ad, ds, AblateConfig(limit=3, recipe="robust"), progress=False)
    assert (sp["recipe"], sp["metric"]) == ("paper", "vocab_top1")
    assert (sr["recipe"], sr["metric"]) == ("robust", "options")
    # the same runs (squares: layout cells = covered cells), scored two ways
    assert list(tp["ablated_top1"]) == list(tr["ablated_top1"])
    assert (tp["ablated_correct"] == (tp["ablated_top1"] == tp["answer"])).all()
    assert (tr["ablated_correct"] == (tr["ablated_pred"] == tr["answer"])).all()
    # the reference option: the colour word before "square is" in the prompt text itself
    for stim, ref in zip(base_items(ds, limit=3), tr["reference"]):
        text = pick_prompt(stim).text
        assert ref == text.rsplit(" square", 1)[0].rsplit(" ", 1)[1], text
    ex = sr["excluding_reference"]
    assert ex["n"] == 3 and ex["n_other"] == int((tr["ablated_pred"] != tr["reference"]).sum())
    # oracle for the top-1 token: the model's own decoding of its base run
    stim = base_items(ds)[0]
    p = prepare(ad, ds, stim, pick_prompt(stim))
    tok = int(run(ad, p.inputs).logits[0, -1].argmax())
    import re

    want = re.sub(r"[^0-9a-z]", "", ad.tokenizer.decode([tok]).lower())
    assert tp.loc[0, "base_top1"] == want


def test_e4_paper_caps_pairs_per_direction(qwen_setup, monkeypatch):
    import interventions.patching as patching

    ad, ds = qwen_setup
    monkeypatch.setattr(patching, "vocab_top1", lambda tok, logits: "x")  # always right
    monkeypatch.setattr(patching, "vocab_top1_answer", lambda a: "x")
    monkeypatch.setattr(patching, "PAPER_PAIRS_PER_DIRECTION", 1)  # the authors' 50, scaled
    items = base_items(ds, limit=6)
    _, s = run_e4(ad, ds, PatchConfig(experiment="e4", layers="0", limit=6, pairs="dataset"), progress=False)
    n_rel = len({st.relation for st in items})
    assert s["n_items"] == n_rel and s["n_beyond_50_per_direction"] == 6 - n_rel
