"""Option scoring without shared-first-token ties, input placement (device / dtype), organism
aliases. Oracles: the tiny model's own log-probs read by hand, logits set by the test, the
tokenizer's own token ids, directories written by ``save_pretrained``."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vlms
from tests.helpers_vlms import squares
from vlms import registry
from vlms.errors import AdapterNotFoundError
from vlms.scoring import distinct_option_ids, option_token_ids, variants


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def ad():
    torch.set_num_threads(1)
    return vlms.build_tiny("tiny-qwen2-vl", seed=0)


def _first(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"][0]


# ----------------------------------------------------------------- shared first tokens
def test_distinct_ids_drop_exactly_the_shared_first_tokens(ad):
    tok = ad.tokenizer
    left, right = option_token_ids(tok, "left"), option_token_ids(tok, "right")
    space = _first(tok, " Left")
    assert space == _first(tok, " Right") and space in left and space in right  # the trap
    got = distinct_option_ids(tok, ["left", "right"])
    assert got == [[t for t in left if t != space], [t for t in right if t != space]]


@pytest.mark.parametrize("order", [["left", "right"], ["right", "left"]])
def test_preferred_option_wins_when_shared_token_dominates(ad, monkeypatch, order):
    """Logits set by hand: the shared bare-space token is the most likely, ' right' beats every
    'left' spelling. The old max-over-variants scored both options by the space token (a tie,
    argmax = first listed); now 'right' wins in either order with its own token's log-prob."""
    tok = ad.tokenizer
    vocab = ad.model.config.text_config.vocab_size
    logits = torch.zeros(1, 1, vocab)
    logits[0, 0, _first(tok, " Left")] = 9.0  # the shared bare-space token
    logits[0, 0, _first(tok, " right")] = 5.0
    logits[0, 0, _first(tok, "left")] = 3.0
    monkeypatch.setattr(ad, "run", lambda batch, **kw: SimpleNamespace(logits=logits))
    r = squares(0)
    (scores,) = ad.score_options([r.image], ["Which side?"], [order])
    logp = torch.log_softmax(logits[0, 0], -1)
    want = {"left": float(logp[_first(tok, "left")]), "right": float(logp[_first(tok, " right")])}
    np.testing.assert_allclose(scores, [want[o] for o in order], rtol=1e-6)
    assert order[int(np.argmax(scores))] == "right"


def test_scores_match_the_models_own_logprobs(ad):
    r = squares(3)
    p = r.stimulus.prompts[0]
    (got,) = ad.score_options([r.image], [p], [["left", "right"]])
    logp = torch.log_softmax(ad.model(**ad.prepare([r.image], [p]).inputs).logits[0, -1], -1)
    tok = ad.tokenizer
    space = _first(tok, " Left")
    manual = []
    for opt in ("left", "right"):
        ids = {_first(tok, v) for v in variants(opt)} - {space}
        manual.append(max(float(logp[i]) for i in ids))
    np.testing.assert_allclose(got, manual, rtol=1e-5, atol=1e-6)


def test_all_shared_falls_back_to_summed_logprob_of_the_answer(ad):
    """'left' and 'left side' share every first token: both are scored by the max over
    spellings of the summed log-prob of the spelling's tokens, read here from one unpadded
    forward per spelling."""
    tok = ad.tokenizer
    assert distinct_option_ids(tok, ["left", "left side"]) == [[], []]
    r = squares(4)
    p = r.stimulus.prompts[0]
    (got,) = ad.score_options([r.image], [p], [["left", "left side"]], batch_size=3)
    n_prompt = ad.prepare([r.image], [p]).seq_len
    manual = []
    for opt in ("left", "left side"):
        best = -np.inf
        for v in variants(opt):
            b = ad.prepare([r.image], [p], suffixes=[v])
            logp = torch.log_softmax(ad.model(**b.inputs).logits[0].float(), -1)
            ids = b.inputs["input_ids"][0]
            k = b.seq_len - n_prompt
            best = max(best, sum(float(logp[t - 1, ids[t]]) for t in range(b.seq_len - k,
                                                                            b.seq_len)))
        manual.append(best)
    np.testing.assert_allclose(got, manual, rtol=1e-4, atol=1e-4)
    assert got[1] < got[0]  # 'left side' needs at least 'left' then more tokens


def test_evaluate_next_token_uses_the_adapters_scores(ad):
    from study.evaluate import next_token

    r = squares(5)
    prompts = ["Is the red square left or right of the blue one?"] * 2
    opts = [["left", "right"], ["left", "left side"]]
    scores, tops = next_token(ad, [r.image, r.image], prompts, opts, None)
    want = [ad.score_options([r.image], [prompts[k]], [opts[k]])[0] for k in range(2)]
    for s, w in zip(scores, want):
        np.testing.assert_allclose(s, w, rtol=1e-4, atol=1e-5)
    assert len(tops) == 2


def test_intervention_option_ids_share_the_rule(ad):
    from interventions.errors import InterventionError
    from interventions.stimuli import option_ids

    tok = ad.tokenizer
    assert option_ids(tok, ["left", "right"]) == distinct_option_ids(tok, ["left", "right"])
    with pytest.raises(InterventionError, match="shares every first token"):
        option_ids(tok, ["left", "left side"])


# ----------------------------------------------------------------- placement
@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-gemma-3"])
def test_bfloat16_model_gets_bfloat16_pixels_and_finite_logits(name):
    torch.set_num_threads(1)
    bf = vlms.load_adapter(name, dtype="bfloat16")
    r = squares(1)
    b = bf.prepare([r.image], [r.stimulus.prompts[0]])
    for k, v in b.inputs.items():
        if isinstance(v, torch.Tensor):
            assert v.device == bf.model.device, k
    assert b.inputs["pixel_values"].dtype == torch.bfloat16
    assert b.inputs["input_ids"].dtype == torch.int64  # ids are never cast
    out = bf.run(b, logits_to_keep=1)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    (s,) = bf.score_options([r.image], [r.stimulus.prompts[0]], [["red", "green"]])
    assert np.isfinite(s).all()


def test_run_places_a_raw_dict_before_the_forward():
    """A dict built elsewhere (float32 pixels) reaches the model cast and on its device: the
    forward pre-hook sees what the model sees."""
    torch.set_num_threads(1)
    bf = vlms.load_adapter("tiny-qwen2-vl", dtype="bfloat16")
    r = squares(2)
    raw = dict(bf.prepare([r.image], ["What is left of the red square?"]).inputs)
    raw["pixel_values"] = raw["pixel_values"].float()
    seen = {}

    def spy(module, args, kwargs):
        seen.update({k: (v.device, v.dtype) for k, v in kwargs.items()
                     if isinstance(v, torch.Tensor)})

    h = bf.model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        bf.capture(raw, ["projector"])
    finally:
        h.remove()
    assert seen["pixel_values"] == (bf.model.device, torch.bfloat16)
    assert raw["pixel_values"].dtype == torch.float32  # the caller's dict is left alone
    assert all(d == bf.model.device for d, _ in seen.values())


@pytest.mark.gpu
def test_cuda_model_runs_prepared_inputs():
    bf = vlms.load_adapter("tiny-qwen2-vl", dtype="bfloat16", device="cuda")
    r = squares(1)
    b = bf.prepare([r.image], [r.stimulus.prompts[0]])
    assert all(v.is_cuda for v in b.inputs.values() if isinstance(v, torch.Tensor))
    out, acts = bf.capture(b, ["projector", "lm.resid.1"])
    assert torch.isfinite(out.logits.float()).all()
    assert np.isfinite(bf.score_options([r.image], [r.stimulus.prompts[0]], [["red"]])[0]).all()


# ----------------------------------------------------------------- organism aliases
@pytest.mark.parametrize("name", ["qwen2-vl-lm", "qwen2-vl-vision", "qwen2-vl-dual"])
def test_shipped_organism_alias_resolves_to_its_directory(name):
    d = registry.SHIPPED / name
    if not (d / "config.json").is_file():
        pytest.skip(f"{d} not trained yet")
    cls, source = registry.resolve(f"organism-{name}")
    assert source == str(d) and cls.family == "qwen2-vl"
    assert json.loads((d / "config.json").read_text())["architectures"][0] in cls.architectures


def test_organism_alias_with_a_saved_directory_and_without(ad, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "SHIPPED", tmp_path)
    ad.save(tmp_path / "qwen2-vl-lm")
    cls, source = registry.resolve("organism-qwen2-vl-lm")
    assert source == str(tmp_path / "qwen2-vl-lm") and cls is type(ad)
    with pytest.raises(AdapterNotFoundError, match="'qwen2-vl-vision' is not shipped"):
        registry.resolve("organism-qwen2-vl-vision")
    loaded = vlms.load_adapter("organism-qwen2-vl-lm")
    r = squares(0)
    b = ad.prepare([r.image], ["Which colour?"])
    torch.testing.assert_close(loaded.run(b).logits, ad.run(b).logits)

    from cli import spatialbind

    res = CliRunner().invoke(spatialbind, ["model", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["organism-qwen2-vl-lm"]["status"] == "ok"
    assert rows["organism-qwen2-vl-lm"]["source"] == str(tmp_path / "qwen2-vl-lm")
    assert rows["organism-qwen2-vl-vision"]["status"] == "not shipped"
    res = CliRunner().invoke(spatialbind, ["model", "list"])
    assert "organism-qwen2-vl-vision" in res.output
    res = CliRunner().invoke(spatialbind, ["model", "save", "organism-qwen2-vl-vision",
                                           str(tmp_path / "copy")])
    assert res.exit_code == 1 and "is not shipped" in res.output
    assert not (tmp_path / "copy").exists()
