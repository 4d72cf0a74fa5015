"""``evaluate`` end to end with tiny-qwen2-vl: What'sUp fixture and a tiny generated flat dataset.

The saved predictions must agree with scores recomputed directly through the adapter.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import spatialbind
from study.evaluate import EvalConfig, evaluate
from scenegen import read_dataset
from scenegen.importers import import_whatsup

pytest.importorskip("transformers")
FIX = Path(__file__).parents[1] / "fixtures" / "whatsup"


def _oracle_option_scores(adapter, img, prompt, options, system=None):
    """Hand recomputation: one forward, log-softmax at the last position, and per option the
    max over the first tokens of its case / leading-space variants that no other option shares."""
    import torch

    batch = adapter.prepare([img], [prompt], system=system)
    logp = torch.log_softmax(adapter.run(batch).logits[0, -1].float(), -1).numpy()
    firsts = []
    for o in options:
        forms = {f for c in (o, o.lower(), o.capitalize(), o.upper(), o.title())
                 for f in (c, " " + c)}
        firsts.append({adapter.tokenizer(f, add_special_tokens=False)["input_ids"][0]
                       for f in forms})
    out = []
    for k, ids in enumerate(firsts):
        others = set().union(*(f for j, f in enumerate(firsts) if j != k))
        out.append(max(logp[t] for t in ids - others))
    return np.array(out)


@pytest.fixture(scope="module")
def adapter():
    import torch

    import vlms

    torch.set_num_threads(1)
    return vlms.load_adapter("tiny-qwen2-vl")


def test_caption_protocol_on_whatsup_fixture_matches_adapter(tmp_path, adapter):
    cfg = EvalConfig(model="tiny-qwen2-vl", data=f"whatsup:{FIX}:Controlled_Images_A", limit=4,
                     batch_size=3)
    res = evaluate(cfg, out=tmp_path / "ev", adapter=adapter, progress=False)
    df = pd.read_parquet(tmp_path / "ev" / "predictions.parquet")
    assert len(df) == 4 and res.protocol == "caption"
    items = import_whatsup(FIX, "Controlled_Images_A", limit=4)
    for k in (0, 3):
        stim, path = items[k]
        with Image.open(path) as im:
            direct = adapter.caption_logprob([im.convert("RGB")], [list(stim.prompts[0].options)])
        np.testing.assert_allclose(df.loc[k, "scores"], direct[0], rtol=1e-4, atol=1e-4)
        best = int(np.argmax(direct[0]))
        assert df.loc[k, "prediction"] == stim.prompts[0].options[best]
        assert bool(df.loc[k, "correct"]) == (best == 0)
    s = pd.read_csv(tmp_path / "ev" / "summary.csv")
    assert s.loc[s.group == "all", "accuracy"].item() == pytest.approx(df["correct"].mean())
    assert {"pair_acc", "set_acc"} <= set(s["group"])
    # length-normalised diagnostic: per-token scores from the saved sums and token counts
    opts = list(df.loc[0, "options"])
    assert list(df.loc[0, "option_tokens"]) == [
        len(adapter.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in opts]
    ok = [int(np.argmax(np.asarray(sc) / np.asarray(nt))) == 0
          for sc, nt in zip(df["scores"], df["option_tokens"])]
    meta = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert meta["length_normalised"]["query_accuracy"] == pytest.approx(np.mean(ok))


def test_cli_two_option_on_whatsup_fixture_matches_adapter(tmp_path, adapter):
    out = tmp_path / "ev2"
    r = CliRunner().invoke(spatialbind, [
        "evaluate", "--model", "tiny-qwen2-vl", "--data", f"whatsup:{FIX}:COCO_QA_two_obj",
        "--out", str(out), "--protocol", "two-option", "--batch-size", "4", "--quiet",
        "--coco-annotations", str(FIX / "instances_val2017.json")])
    assert r.exit_code == 0, r.output
    assert "all" in r.output and "protocol two-option" in r.output
    df = pd.read_parquet(out / "predictions.parquet")
    assert len(df) == 8 and list(df["order"]) == ["lr", "rl"] * 4
    assert set(df["factor_masks"]) == {"coco_boxes"}
    for k in (0, 5):  # recompute two rows directly (the CLI built its own tiny model)
        img = Image.open(FIX / "val2017" / f"{json.loads(df.loc[k, 'factors'])['image_id']:012d}"
                         ".jpg").convert("RGB")
        direct = _oracle_option_scores(adapter, img, df.loc[k, "prompt"],
                                       list(df.loc[k, "options"]))
        np.testing.assert_allclose(df.loc[k, "scores"], direct, rtol=1e-4, atol=1e-4)
    strict = df.groupby("id")["correct"].all()
    s = pd.read_csv(out / "summary.csv")
    assert s.loc[s.group == "all", "accuracy"].item() == pytest.approx(strict.mean())
    meta = json.loads((out / "metrics.json").read_text())
    assert sum(meta["two_option_outcomes"].values()) == 4
    assert df["top1"].notna().all() and meta["clean"]["n_items"] == int(
        df.groupby("id")["top1_in_options"].all().sum())
    assert (out / "summary.png").stat().st_size > 1000


def test_completion_protocol_on_generated_flat_dataset(tmp_path, adapter):
    from scenegen.generate import generate
    from scenegen.presets import preset_config

    data = tmp_path / "flat"
    generate(preset_config("squares-qwen2-vl", n=3, twins=["swap"]), data, progress=False)
    cfg = EvalConfig(model="tiny-qwen2-vl", data=str(data), batch_size=2)
    res = evaluate(cfg, out=tmp_path / "ev3", adapter=adapter, progress=False)
    df = pd.read_parquet(tmp_path / "ev3" / "predictions.parquet")
    assert res.protocol == "completion" and len(df) == 3
    assert set(df["prompt_kind"]) == {"completion"}
    ds = read_dataset(data)
    assert list(df["id"]) == [s.id for s in ds.base()]  # E1 asks the base stimuli, not twins
    assert len(ds) > len(ds.base())
    for k in (0, 2):
        stim = ds[df.loc[k, "id"]]
        (p,) = [p for p in stim.prompts if p.kind == "completion"]
        img = ds.pil_image(stim)
        batch = adapter.prepare([img], [p.text], system=p.system)
        logits = adapter.run(batch).logits[0, -1]
        top = adapter.tokenizer.decode([int(logits.argmax())])
        assert df.loc[k, "top1"] == top
        norm = "".join(ch for ch in top.lower() if ch.isascii() and ch.isalnum())
        assert bool(df.loc[k, "correct"]) == (norm == p.answer)
        direct = _oracle_option_scores(adapter, img, p.text, list(p.options), p.system)
        np.testing.assert_allclose(df.loc[k, "scores"], direct, rtol=1e-4, atol=1e-4)
        e = np.exp(direct - direct.max())
        assert df.loc[k, "p_answer"] == pytest.approx(
            (e / e.sum())[list(p.options).index(p.answer)], rel=1e-5)
    assert set(res.summary["group"]) >= {"all", "task", "relation", "axis"}
    # golden.txt: the ids answered right (one completion query per item), one per line
    golden = (tmp_path / "ev3" / "golden.txt").read_text().splitlines()
    assert golden == sorted(df.loc[df["correct"].astype(bool), "id"])
    # the caption protocol on the same data scores each choice / yes-no option as the answer
    cap = evaluate(EvalConfig(model="tiny-qwen2-vl", data=str(data), protocol="caption"),
                   adapter=adapter, progress=False).predictions
    assert set(cap["prompt_kind"]) == {"choice", "yesno"} and len(cap) == 6
    stim = ds[cap.loc[1, "id"]]
    p = next(p for p in stim.prompts if p.text == cap.loc[1, "prompt"])
    direct = adapter.caption_logprob([ds.pil_image(stim)], [list(p.options)], prompts=[p.text],
                                     system=p.system)[0]
    np.testing.assert_allclose(cap.loc[1, "scores"], direct, rtol=1e-4, atol=1e-4)


def test_whatsup_imported_dataset_directory_evaluates_like_the_release(tmp_path, adapter):
    out = import_whatsup(FIX, "VG_QA_two_obj", tmp_path / "ds", progress=False)
    a = evaluate(EvalConfig(model="tiny-qwen2-vl", data=str(out)), adapter=adapter,
                 progress=False)
    b = evaluate(EvalConfig(model="tiny-qwen2-vl", data=f"whatsup:{FIX}:VG_QA_two_obj"),
                 adapter=adapter, progress=False)
    assert a.protocol == b.protocol == "caption"
    # PNG holds the decoded JPEG pixels exactly, so the scores are the same
    np.testing.assert_allclose(np.stack(a.predictions["scores"]), np.stack(b.predictions["scores"]),
                               rtol=1e-5, atol=1e-5)
    assert list(a.predictions["source_path"]) == [f"vg_images/{i}.jpg" for i in (1, 2, 3, 3)]


def test_shared_first_tokens_do_not_tie_options(adapter):
    """' Left' and ' Right' both start with a bare-space token in the tiny tokenizer: that id
    must not score either option (it would tie them and favour the first-listed one)."""
    from study.evaluate import distinct_option_ids
    from vlms.scoring import option_token_ids

    tok = adapter.tokenizer
    shared = set(option_token_ids(tok, "left")) & set(option_token_ids(tok, "right"))
    assert shared  # the situation exists in this tokenizer
    ids = distinct_option_ids(tok, ["left", "right"])
    assert not (set(ids[0]) | set(ids[1])) & shared
    assert set(ids[0]) == set(option_token_ids(tok, "left")) - shared


def test_tiny_gemma_two_option_uses_the_direct_template():
    import torch

    import vlms

    torch.set_num_threads(1)
    gemma = vlms.load_adapter("tiny-gemma-3")
    cfg = EvalConfig(model="tiny-gemma-3", data=f"whatsup:{FIX}:COCO_QA_two_obj",
                     protocol="two-option", limit=1)
    res = evaluate(cfg, adapter=gemma, progress=False)
    df = res.predictions
    q = "Is the dining table to the {} or to the {} of the refrigerator? Answer with one word."
    assert list(df["prompt"]) == [q.format("left", "right"), q.format("right", "left")]
    assert df["system"].isna().all()
    img = Image.open(FIX / "val2017" / "000000037777.jpg").convert("RGB")
    direct = _oracle_option_scores(gemma, img, df.loc[1, "prompt"], ["right", "left"])
    np.testing.assert_allclose(df.loc[1, "scores"], direct, rtol=1e-4, atol=1e-4)
