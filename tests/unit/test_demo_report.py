"""The demo's report logic: contrast verdicts come from the numbers, and resuming is guarded."""
from __future__ import annotations

import html
import json

import pytest

from study.demo import DemoConfig, Stages, stimulus_config
from interventions.errors import InterventionError
from study.report import contrasts, write_report

MECH = {"V": "vision", "L": "lm"}


def _results(*, pv, pl, fv, fl, av, al, base_l, e7v, e7l):
    def e4(f):
        return {"by_layer": [{"region": "band", "layer": 0, "flip_rate": f},
                             {"region": "band", "layer": 1, "flip_rate": 0.0}]}

    def e7(acc):
        # dose response: the probe direction moves accuracy from 0.5 to ``acc`` at alpha 2;
        # the random control moves it a lot, and must not be read as the probe
        return {"dose_response": [
            {"control": "probe", "alpha": 0.0, "accuracy": 0.5},
            {"control": "probe", "alpha": 1.0, "accuracy": 0.5},
            {"control": "probe", "alpha": 2.0, "accuracy": acc},
            {"control": "random", "alpha": 0.0, "accuracy": 0.5},
            {"control": "random", "alpha": 2.0, "accuracy": 0.95}]}

    return {"V": {"e3": {"projector_object_accuracy": pv}, "e4": e4(fv),
                  "e5": {"ablated_accuracy": av, "chance": 1 / 3, "base_accuracy": 1.0},
                  "e7": e7(e7v)},
            "L": {"e3": {"projector_object_accuracy": pl}, "e4": e4(fl),
                  "e5": {"ablated_accuracy": al, "chance": 1 / 3, "base_accuracy": base_l},
                  "e7": e7(e7l)}}


def test_contrasts_hold_when_the_numbers_say_so():
    rows = contrasts(_results(pv=0.97, pl=0.36, fv=0.9, fl=0.1, av=0.35, al=0.95, base_l=0.98,
                              e7v=0.70, e7l=0.52), MECH)
    assert [r["holds"] for r in rows] == [True, True, True, True]
    # mean |delta| over alpha 1 and 2: (0 + 0.2) / 2 and (0 + 0.02) / 2
    assert rows[3]["vision"] == pytest.approx(0.10) and rows[3]["lm"] == pytest.approx(0.01)


def test_contrasts_report_failures_as_found():
    rows = contrasts(_results(pv=0.5, pl=0.36, fv=0.2, fl=0.1, av=0.9, al=0.95, base_l=0.98,
                              e7v=0.50, e7l=0.60), MECH)
    assert [r["holds"] for r in rows] == [False, False, False, False]
    # the random-direction control row must not be read as the probe direction
    assert rows[3]["vision"] == pytest.approx(0.0)


def test_contrasts_need_both_mechanisms():
    assert contrasts({"V": {}}, MECH) == []


def test_report_is_self_contained_html(tmp_path):
    res = _results(pv=0.97, pl=0.36, fv=0.9, fl=0.1, av=0.35, al=0.95, base_l=0.98,
                   e7v=0.7, e7l=0.52)
    for m in res:
        res[m]["dir"] = str(tmp_path / m)
    path = write_report(tmp_path, cfg=DemoConfig(out=str(tmp_path)), models=("V", "L"),
                        results=res, stages={"generate": {"seconds": 1.0}}, mechanisms=MECH)
    text = path.read_text()
    assert "Validation contrasts" in text and "0.970" in text
    assert "src=\"http" not in text
    # every paper number is marked comparable or says why not (here: the models differ)
    from study.report import PAPER_NUMBERS

    for entries in PAPER_NUMBERS.values():
        for e in entries:
            assert text.count(html.escape(e["text"])) >= 1
    # V ran E3, E4, E5 and E7 (one verdict each); E1 and E6 did not run: said so
    assert text.count("not comparable: model (V;") == 4 and ">comparable<" not in text
    assert text.count("not run here") == 3  # E1 (two numbers) and E6


def test_a_paper_number_is_comparable_only_when_model_task_recipe_and_metric_match():
    from study.report import PAPER_NUMBERS, comparability, ours_facts

    e5 = PAPER_NUMBERS["E5"][0]
    task = "Squares/Shapes (paper presets)"
    assert comparability(e5, ours_facts("Qwen/Qwen2-VL-7B-Instruct", "e5", "paper", task)) \
        == "comparable"
    robust = comparability(e5, ours_facts("Qwen/Qwen2-VL-7B-Instruct", "e5", "robust", task))
    assert robust.startswith("not comparable: recipe") and "metric (ours: argmax over" in robust
    other = comparability(e5, ours_facts("google/gemma-3-4b-it", "e5", "paper",
                                         "Squares on the organisms' 8x8-token canvas"))
    assert other.startswith("not comparable: task")
    # What'sUp caption accuracy never stands beside the stitched What'sUp number
    wu = PAPER_NUMBERS["E1"][1]
    v = comparability(wu, ours_facts("Qwen/Qwen2-VL-7B-Instruct", "e1_whatsup", "paper", task))
    assert v.startswith("not comparable: task (ours: What'sUp original subsets")


def test_report_shows_both_recipes_side_by_side():
    from study.report import recipes_side_by_side

    res = {"V": {"e5": {"ablated_accuracy": 0.5, "n_skipped": 0},
                 "e5_paper": {"ablated_accuracy": 0.25, "n_skipped": 0},
                 "e6_paper": {"error": "E6: every item was skipped"}}}
    rows = {r["number"]: r for r in recipes_side_by_side(["V"], res)}
    assert rows["E5 ablated accuracy"]["robust"] == 0.5
    assert rows["E5 ablated accuracy"]["paper"] == 0.25 and rows["E5 ablated accuracy"]["differs"]
    assert rows["E6 pairs kept"]["paper"].startswith("not run: E6")


def test_stages_skip_finished_work_and_record_it(tmp_path):
    calls = []
    st = Stages(tmp_path, echo=lambda s: None)
    assert st.run("a", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    st2 = Stages(tmp_path, echo=lambda s: None)
    assert st2.run("a", lambda: calls.append(2) or {"x": 2}) == {"x": 1}
    assert calls == [1]
    assert json.loads((tmp_path / "stages.json").read_text())["a"]["done"] is True


def test_demo_refuses_an_out_dir_with_other_options(tmp_path):
    from study.demo import run_demo

    (tmp_path / "demo_config.json").write_text(json.dumps({"out": str(tmp_path), "n": 99}))
    with pytest.raises(InterventionError, match="other options"):
        run_demo(DemoConfig(out=str(tmp_path), n=8), echo=lambda s: None)


def test_stimulus_configs_build_and_degraded_set_has_no_twins():
    from scenegen.config import GenerateConfig

    cfg = DemoConfig(n=8, n_degraded=6)
    clean = GenerateConfig.from_dict(stimulus_config(cfg, degraded=False))
    deg = GenerateConfig.from_dict(stimulus_config(cfg, degraded=True))
    assert clean.n == 8 and deg.n == 6 and not deg.twins and len(deg.degradations) == 3
    assert clean.flat.grid.num_tokens == 8 and clean.flat.grid.token_px == 28


def test_demo_config_validates():
    with pytest.raises(InterventionError, match="'n' parameter"):
        DemoConfig(n=2)
    with pytest.raises(InterventionError, match="'recipe' parameter"):
        DemoConfig(recipe="authors")
    assert DemoConfig().recipe == "both"
