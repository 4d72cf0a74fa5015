"""Evaluation protocols and report files with a fake scorer whose scores are known."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli import spatialbind
from study.evaluate import (
    EvalConfig, EvalItem, EvaluationError, build_queries, evaluate, load_items, parse_data,
    two_option_text,
)
from scenegen import Entity, Prompt, Stimulus

FIX = Path(__file__).parents[1] / "fixtures" / "whatsup"


def _key(img) -> str:
    return hashlib.sha1(np.asarray(img).tobytes()).hexdigest()


class FakeScorer:
    """Scores chosen per image (identified by its pixels) and per text: known in advance."""

    def __init__(self, items, caption_winner=None, knows=None, top=None):
        self.by_image = {_key(it.load_image()): i for i, it in enumerate(items)}
        # images can be shared between items (COCO/VG): captions tell those apart
        self.by_caption = {(_key(it.load_image()), it.stimulus.prompts[0].options): i
                           for i, it in enumerate(items)}
        self.caption_winner = caption_winner or {}
        self.knows = knows or {}  # text found in the prompt -> the answer the model gives
        self.top = top or {}
        self.calls = []

    def caption_logprob(self, images, captions, **kw):
        self.calls.append(("caption", len(images)))
        out = []
        for img, caps in zip(images, captions):
            w = self.caption_winner.get(self.by_caption[(_key(img), tuple(caps))], 0)
            out.append(np.array([0.0 if k == w else -1.0 - k for k in range(len(caps))]))
        return out

    def score_options(self, images, prompts, options, system=None, **kw):
        self.calls.append(("options", len(images), system))
        out = []
        for img, p, opts in zip(images, prompts, options):
            want = next((a for t, a in self.knows.items() if t in p), None)
            # a model that knows the item picks the answer; otherwise the first-listed option
            out.append(np.array([-0.1 if (o == want if want else k == 0) else -2.3
                                 for k, o in enumerate(opts)]))
        return out

    def top1(self, images, prompts, system=None):
        return [self.top.get(self.by_image[_key(img)], " nothing") for img in images]


def test_caption_protocol_matches_hand_computation(tmp_path):
    items = load_items(f"whatsup:{FIX}:Controlled_Images_A")
    # wrong items: 4 (beer bottle on), 10 (scarf left); item 7 prefers option 2 (wrong)
    fake = FakeScorer(items, caption_winner={4: 1, 10: 3, 7: 2})
    cfg = EvalConfig(model="fake", data=f"whatsup:{FIX}:Controlled_Images_A", batch_size=5)
    res = evaluate(cfg, out=tmp_path / "ev", adapter=fake, items=items, progress=False)
    assert res.protocol == "caption"
    df = pd.read_parquet(tmp_path / "ev" / "predictions.parquet")
    assert set(df["prompt_kind"]) == {"caption"} and set(df["order"]) == {""}
    assert len(df) == 12 and list(df["id"]) == [it.stimulus.id for it in items]
    wrong = {4, 7, 10}
    assert list(df["correct"]) == [i not in wrong for i in range(12)]
    assert df.loc[7, "prediction"] == df.loc[7, "options"][2]
    assert list(df.loc[4, "scores"]) == [-1.0, 0.0, -3.0, -4.0]
    assert df.loc[0, "p_answer"] == pytest.approx(np.exp(0) / (1 + sum(np.exp([-2, -3, -4]))))
    s = pd.read_csv(tmp_path / "ev" / "summary.csv")
    overall = s[(s.group == "all")].iloc[0]
    assert overall.n_items == 12 and overall.accuracy == pytest.approx(9 / 12)
    # by hand: mug all 4 (2 pairs, 1 set); beer bottle: 'on' (4) and 'right' (7) wrong -> 0
    # pairs; scarf: 'left' (10) wrong -> on+under pair only
    pair = s[(s.group == "pair_acc")].iloc[0]
    assert pair.n_correct == 3 and pair.accuracy == pytest.approx(3 * 100 / 6 / 100)
    assert s[(s.group == "set_acc")].iloc[0].n_correct == 1
    rel = s[s.group == "relation"].set_index("value")
    assert rel.loc["on", "accuracy"] == pytest.approx(2 / 3)
    assert rel.loc["right", "accuracy"] == pytest.approx(2 / 3)
    assert s[s.group == "axis"].set_index("value").loc["vertical", "n_items"] == 6
    assert (tmp_path / "ev" / "summary.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "ev" / "config.json").read_text())
    assert meta["resolved"]["protocol"] == "caption" and meta["run"]["batch_size"] == 5
    assert fake.calls == [("caption", 5), ("caption", 5), ("caption", 2)]


def test_two_option_both_orders_strict(tmp_path):
    items = load_items(f"whatsup:{FIX}:COCO_QA_two_obj")
    # items 0 and 1 share COCO image 37777: the model knows item 0 (dining table) and 3 (dog)
    fake = FakeScorer(items, knows={"is the dining table": "left", "is the dog": "below"},
                      top={1: " Left", 2: "above"})  # images 37777 (items 0, 1) and 139 (item 2)
    qs = build_queries(items, "two-option", "anchor")
    assert [q.order for q in qs] == ["lr", "rl"] * 4
    assert qs[0].prompt == ("Using the refrigerator as the reference point, which side is the "
                            "dining table on? Answer with one word: left or right.")
    assert qs[1].options == ("right", "left") and qs[1].answer == "left"
    assert qs[4].prompt == ("Using the bowl as the reference point, where is the cup located? "
                            "Answer with one word: above or below.")
    cfg = EvalConfig(model="fake", data=f"whatsup:{FIX}:COCO_QA_two_obj", protocol="two-option")
    res = evaluate(cfg, out=tmp_path / "ev", adapter=fake, items=items, progress=False)
    df = res.predictions
    # items 0, 3 known (both orders right); 1 (right): lr picks left (wrong), rl picks right;
    # 2 (above): lr picks above (right), rl picks below (wrong)
    assert list(df["correct"]) == [True, True, False, True, True, False, True, True]
    assert set(df["prompt_kind"]) == {"two-option"}
    assert list(df.drop_duplicates("id")["item_correct"]) == [True, False, False, True]
    overall = res.summary[res.summary.group == "all"].iloc[0]
    assert overall.accuracy == pytest.approx(0.5) and overall.query_accuracy == pytest.approx(6 / 8)
    assert res.extra["two_option_outcomes"] == {"golden": 2, "fail_lr_only": 1,
                                                "fail_rl_only": 1, "fail_both": 0}
    assert all(c[2] is None for c in fake.calls)  # the paper's prompt has no system message
    # "clean" set: top-1 token is an option in both orders -> items 0, 1, 2; strict-right: item 0
    assert list(df["top1_in_options"]) == [True] * 6 + [False] * 2
    assert res.extra["clean"] == {"n_items": 3, "strict_correct": 1, "strict_accuracy": 1 / 3}


def test_two_option_templates():
    assert two_option_text("cup", "bowl", "below", "above", "direct") == (
        "Is the cup below or above the bowl? Answer with one word.")
    assert two_option_text("cup", "bowl", "right", "left", "direct") == (
        "Is the cup to the right or to the left of the bowl? Answer with one word.")
    assert two_option_text("cup", "plate", "front", "behind", "direct") == (
        "Is the cup in front of or behind the plate? Answer with one word.")
    assert two_option_text("dog", None, "top", "bottom", "anchor") == (
        "Where is the dog in the photo? Answer with one word: top or bottom.")


def _flat_items():
    prompts = [("red", "The color of the square to the left of the green square is ", 0),
               ("blue", "The color of the square to the right of the green square is ", 1)]
    items = []
    for k, (ans, text, seed) in enumerate(prompts):
        stim = Stimulus(
            id=f"s{k}", file_name="", mask_file_name="", width=8, height=8, generator="flat",
            task="squares", relation="left" if k == 0 else "right", axis="horizontal",
            entities=(Entity(mask_id=1, role="target", ordinal=0, kind="square", color=ans,
                             rgb=(0, 0, 0), box=(0, 0, 1, 1), centroid=(0.5, 0.5), area=1,
                             name=f"{ans} square"),),
            prompts=(Prompt(kind="completion", text=text, answer=ans,
                            options=("red", "green", "blue"), system="Respond in one token.",
                            spans={"reference": (text.index("green"), text.index("green") + 12)}),),
            factors={"background": "white" if k == 0 else "gray"})
        img = np.full((8, 8, 3), 40 * k, np.uint8)
        items.append(EvalItem(stim, lambda img=img: img))
    return items


def test_completion_protocol_top1_and_answer_probability():
    items = _flat_items()
    fake = FakeScorer(items, knows={"left of the green": "red"}, top={0: " Red", 1: "green"})
    res = evaluate(EvalConfig(model="fake", data="unused"), adapter=fake, items=items,
                   progress=False)
    df = res.predictions
    assert res.protocol == "completion" and list(df["prediction"]) == ["red", "green"]
    assert list(df["correct"]) == [True, False]
    # item 0: the answer 'red' has log-prob -0.1 vs -2.3 for the two others
    p = np.exp(-0.1) / (np.exp(-0.1) + 2 * np.exp(-2.3))
    assert df.loc[0, "p_answer"] == pytest.approx(p)
    assert fake.calls[0] == ("options", 2, "Respond in one token.")
    bg = res.summary[res.summary.group == "axis"]
    assert list(bg["n_items"]) == [2]
    # the generated stimulus can also be asked the two-option question (names from the record)
    q = build_queries(items, "two-option", "anchor")[0]
    assert q.prompt.startswith("Using the green square as the reference point, which side is "
                               "the red square on?")


def test_protocol_mismatch_and_bad_config():
    items = _flat_items()
    with pytest.raises(EvaluationError, match="no caption or choice options"):
        build_queries(items, "caption")
    with pytest.raises(EvaluationError, match="'batch_size' parameter of EvalConfig"):
        EvalConfig(model="m", data="d", batch_size=0)
    with pytest.raises(EvaluationError, match="'protocol' parameter"):
        EvalConfig(model="m", data="d", protocol="vqa")
    assert parse_data(f"whatsup:{FIX}") == ("whatsup", str(FIX), None)
    assert parse_data(f"whatsup:{FIX}:VG_QA_one_obj") == ("whatsup", str(FIX), "VG_QA_one_obj")
    with pytest.raises(EvaluationError, match="Did you mean 'VG_QA_one_obj'"):
        parse_data(f"whatsup:{FIX}:VG_QA_one")


def test_whatsup_root_without_subset_loads_every_subset():
    items = load_items(f"whatsup:{FIX}", limit=2)
    assert sorted({it.stimulus.task for it in items}) == sorted(
        ["Controlled_Images_A", "Controlled_Images_B", "COCO_QA_one_obj", "COCO_QA_two_obj",
         "VG_QA_one_obj", "VG_QA_two_obj"])
    assert len(items) == 12


def test_output_folder_guard(tmp_path):
    items = load_items(f"whatsup:{FIX}:VG_QA_one_obj")
    fake = FakeScorer(items)
    cfg = EvalConfig(model="fake", data=f"whatsup:{FIX}:VG_QA_one_obj")
    out = tmp_path / "ev"
    evaluate(cfg, out=out, adapter=fake, items=items, progress=False)
    evaluate(cfg, out=out, adapter=fake, items=items, progress=False)  # same run: replaced
    before = (out / "predictions.parquet").read_bytes()
    other = EvalConfig(model="fake", data=f"whatsup:{FIX}:VG_QA_one_obj", batch_size=3)
    with pytest.raises(EvaluationError, match="different evaluation"):
        evaluate(other, out=out, adapter=fake, items=items, progress=False)
    assert (out / "predictions.parquet").read_bytes() == before
    from scenegen.importers import import_whatsup

    ds = import_whatsup(FIX, "VG_QA_one_obj", tmp_path / "ds", progress=False)
    meta = (ds / "metadata.jsonl").read_bytes()
    with pytest.raises(EvaluationError, match="not an evaluation's"):  # --out = a dataset
        evaluate(cfg, out=ds, adapter=fake, items=items, progress=False)
    assert (ds / "metadata.jsonl").read_bytes() == meta and not (ds / "summary.csv").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(EvaluationError, match="not empty"):
        evaluate(cfg, out=tmp_path / "busy", adapter=fake, items=items, progress=False)


@pytest.mark.parametrize("args,needle", [
    (["--data", "whatsup:/nonexistent/root:COCO_QA_two_obj"], "is not a directory"),
    (["--data", "whatsup:/nonexistent/root"], "is not a directory"),
    (["--data", f"whatsup:{FIX}", "--protocol", "completion"], "has no text prompt"),
    (["--data", f"whatsup:{FIX}:Controled_Images_A"], "Did you mean 'Controlled_Images_A'"),
    (["--data", "/nonexistent/dataset"], "is not a spatialbind dataset"),
])
def test_cli_bad_input_is_one_line_exit_1(tmp_path, args, needle):
    r = CliRunner().invoke(spatialbind, ["evaluate", "--model", "tiny-qwen2-vl", "--out",
                                         str(tmp_path / "o"), *args])
    assert r.exit_code == 1, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0


def test_macro_accuracy_over_subsets():
    items = load_items(f"whatsup:{FIX}", limit=3)  # VG_QA_one_obj has only 2: unequal sizes
    tasks = [it.stimulus.task for it in items]
    # the first item of the first subset and both items of the last subset are wrong
    wrong = {0, len(items) - 2, len(items) - 1}
    fake = FakeScorer(items, caption_winner={i: 1 for i in wrong})
    res = evaluate(EvalConfig(model="fake", data=f"whatsup:{FIX}"), adapter=fake, items=items,
                   progress=False)
    per_task = {t: np.mean([i not in wrong for i, tt in enumerate(tasks) if tt == t])
                for t in set(tasks)}
    # the original Table 1 macro: within Controlled A+B, COCO one+two, GQA (VG) one+two
    macro = res.summary[res.summary.group == "macro"].set_index("value")["accuracy"]
    pairs = {"Controlled (A+B)": ("Controlled_Images_A", "Controlled_Images_B"),
             "COCO (one+two)": ("COCO_QA_one_obj", "COCO_QA_two_obj"),
             "GQA (one+two)": ("VG_QA_one_obj", "VG_QA_two_obj")}
    assert set(macro.index) == {k for k, v in pairs.items() if set(v) <= set(tasks)} != set()
    for name, acc in macro.items():
        assert acc == pytest.approx(np.mean([per_task[t] for t in pairs[name]]))
    # the mean over whatever ran is reported under another name, not as the headline
    mean = res.summary[res.summary.group == "task_mean"].iloc[0]
    assert mean.accuracy == pytest.approx(np.mean(list(per_task.values())))
    assert mean.accuracy != pytest.approx(res.summary[res.summary.group == "all"].iloc[0].accuracy)


def test_macro_needs_both_subsets_of_a_pair():
    items = load_items(f"whatsup:{FIX}:Controlled_Images_A")
    res = evaluate(EvalConfig(model="fake", data=f"whatsup:{FIX}:Controlled_Images_A"),
                   adapter=FakeScorer(items), items=items, progress=False)
    assert "macro" not in set(res.summary["group"])


def test_two_option_paper_recipe_scores_an_off_option_top1_wrong():
    """The model's option scores pick the truth, but its top-1 token is not an option: the
    authors' strict check counts the item wrong; the forced choice (robust) counts it right."""
    items = load_items(f"whatsup:{FIX}:COCO_QA_two_obj", limit=1)
    fake = FakeScorer(items, knows={"is the dining table": "left"}, top={0: " table"})
    out = {}
    for recipe in ("paper", "robust"):
        cfg = EvalConfig(model="fake", data=f"whatsup:{FIX}:COCO_QA_two_obj",
                         protocol="two-option", recipe=recipe)
        out[recipe] = evaluate(cfg, adapter=fake, items=items, progress=False)
    assert not out["paper"].predictions["correct"].any()
    assert not out["paper"].predictions["item_correct"].any()
    assert out["robust"].predictions["item_correct"].all()
    assert out["paper"].extra["recipe"] == "paper"
    # and a top-1 token equal to the truth (any case / leading space) is right under paper
    fake_ok = FakeScorer(items, knows={"is the dining table": "left"}, top={0: " Left"})
    cfg = EvalConfig(model="fake", data=f"whatsup:{FIX}:COCO_QA_two_obj",
                     protocol="two-option", recipe="paper")
    res = evaluate(cfg, adapter=fake_ok, items=items, progress=False)
    assert list(res.predictions["correct"]) == [True, True]


def test_caption_compares_option_indices_and_counts_exact_ties():
    """A duplicate of the right caption at another index does not make a pick of that index
    right (the original compares argmax with 0); exact ties go to the first index and are
    counted."""
    import dataclasses

    items = load_items(f"whatsup:{FIX}:Controlled_Images_A", limit=2)
    st = items[0].stimulus
    p = st.prompts[0]
    opts = (p.options[0], p.options[1], p.options[0], p.options[3])  # a duplicate at index 2
    items[0] = dataclasses.replace(items[0], stimulus=dataclasses.replace(
        st, prompts=(dataclasses.replace(p, options=opts),)))

    class Scorer(FakeScorer):
        def caption_logprob(self, images, captions, **kw):
            return [np.array([-1.0, -2.0, 0.0, -3.0]) if tuple(c) == opts  # index 2 wins
                    else np.array([0.0, 0.0, -1.0, -2.0]) for c in captions]  # a tie at 0, 1

    res = evaluate(EvalConfig(model="fake", data=f"whatsup:{FIX}:Controlled_Images_A"),
                   adapter=Scorer(items), items=items, progress=False)
    assert list(res.predictions["correct"]) == [False, True]
    assert list(res.predictions["tie"]) == [False, True]
    assert res.extra["n_exact_ties"] == 1 and res.extra["n_exact_ties_counted_right"] == 1
