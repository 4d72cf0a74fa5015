"""The demo's report logic: contrast verdicts come from the numbers, and resuming is guarded."""
from __future__ import annotations

import html
import json

import pytest

from study.demo import DemoConfig, Stages, stimulus_config
from interventions.errors import InterventionError
from study.report import contrasts, write_report

MECH = {"V": "vision", "L": "lm"}


def _results(*, pv, sv, fo, fs, av, fixed, broken, rand_changed):
    def e4(obj, strip):
        return {"by_layer": [{"region": "object", "layer": 0, "flip_rate": obj},
                             {"region": "band", "layer": 0, "flip_rate": strip},
                             {"region": "band", "layer": 1, "flip_rate": 0.0}]}

    n = 40
    e7 = {"selections": [{"selection": "held-out alpha", "control": "probe", "alpha": 2.0,
                          "fixed": fixed, "broken": broken, "net": fixed - broken,
                          "n_fail": 10, "n": n, "fix_rate": fixed / 10}],
          "dose_response": [{"control": "random", "alpha": 2.0, "fixed": rand_changed,
                             "broken": 0, "n": n}]}
    return {"V": {"e3": {"projector_object_accuracy": pv, "projector_strip_accuracy": sv},
                  "e4": e4(fo, fs), "e5": {"ablated_accuracy": av, "chance": 1 / 3,
                                           "base_accuracy": 1.0}, "e7": e7},
            "L": {"e3": {"projector_object_accuracy": 0.36, "projector_strip_accuracy": 0.3},
                  "e4": e4(0.0, 0.05), "e5": {"ablated_accuracy": 0.95, "chance": 1 / 3,
                                              "base_accuracy": 0.98}}}


def test_validation_holds_when_the_numbers_say_so():
    rows = {(r["model"], r["criterion"]): r for r in contrasts(
        _results(pv=0.97, sv=0.95, fo=0.1, fs=0.9, av=0.35, fixed=4, broken=1, rand_changed=1),
        MECH)}
    assert [rows[("V", c)]["holds"] for c in (1, 2, 3, 4)] == [True, True, True, True]
    assert [rows[("L", c)]["holds"] for c in (1, 2, 3, 4)] == [True, True, True, None]


def test_validation_reports_failures_as_found():
    # object-only criss-cross flips (1.0 >= 0.2); E7 fix rate 0.2 < 0.3; random changes 10 %
    rows = {(r["model"], r["criterion"]): r for r in contrasts(
        _results(pv=0.97, sv=0.85, fo=1.0, fs=1.0, av=0.6, fixed=2, broken=1, rand_changed=4),
        MECH)}
    assert [rows[("V", c)]["holds"] for c in (1, 2, 3, 4)] == [False, False, False, False]


def test_validation_skips_models_without_a_mechanism():
    assert contrasts({"X": {}}, MECH) == []


def test_report_is_self_contained_html(tmp_path):
    res = _results(pv=0.97, sv=0.95, fo=0.1, fs=0.9, av=0.35, fixed=4, broken=1, rand_changed=1)
    for m in res:
        res[m]["dir"] = str(tmp_path / m)
    path = write_report(tmp_path, cfg=DemoConfig(out=str(tmp_path)), models=("V", "L"),
                        results=res, stages={"generate": {"seconds": 1.0}}, mechanisms=MECH)
    text = path.read_text()
    assert "Validation: the paper's effects" in text and "0.970" in text
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


def test_degraded_presets_draw_their_kinds_and_strengths(tmp_path):
    """The E7 set of each preset holds only its kinds, at strengths inside its ranges; the hard
    occluder hides at least 60 % of the square it covers (measured on the mask)."""
    from scenegen import read_dataset
    from scenegen.config import GenerateConfig
    from scenegen.generate import generate

    from study.demo import DEGRADED_PRESETS

    assert DemoConfig().degraded == "hard"
    for name in ("mild", "hard", "noise"):
        cfg = DemoConfig(n=8, n_degraded=24, degraded=name)
        out = generate(GenerateConfig.from_dict(stimulus_config(cfg, degraded=True)),
                       tmp_path / name, progress=False)
        ranges = dict(DEGRADED_PRESETS[name])
        seen = set()
        for st in read_dataset(out):
            d = st.degradation
            lo, hi = ranges[d["kind"]]
            assert lo <= d["strength"] <= hi
            seen.add(d["kind"])
            if d["kind"] == "occluder":
                x0, y0, x1, y1 = d["box"]
                covered = next(e for e in st.entities if e.mask_id == d["covers"])
                # the square is 28 x 28 px; what stays visible is its area now
                assert covered.area <= 0.4 * 28 * 28 + 1e-9
        assert seen == set(ranges), (name, seen)
    with pytest.raises(InterventionError, match="'degraded' parameter"):
        DemoConfig(degraded="extreme")


def test_demo_config_validates():
    with pytest.raises(InterventionError, match="'n' parameter"):
        DemoConfig(n=2)
    with pytest.raises(InterventionError, match="'recipe' parameter"):
        DemoConfig(recipe="authors")
    assert DemoConfig().recipe == "both"


def test_unusable_direction_names_zero_and_non_finite_weights():
    """E3's side-probe directions the demo cannot amplify, with the reason (independent of the
    intervention's own check, which raises on the same vectors)."""
    import numpy as np
    import pytest
    import torch

    from interventions.errors import InterventionError
    from interventions.hooks import _as_directions
    from probes.directions import Direction
    from study.demo import unusable_direction

    def d(w, cv=0.5):
        return Direction(weights=np.asarray(w, float), bias=np.zeros(len(w)),
                         components=tuple(f"c{i}" for i in range(len(w))), classes=(0, 1),
                         model="m", site="projector", layer=0, cv_accuracy=cv)

    ok = d([[0.0, 1e-12, 0.0]])
    assert unusable_direction(ok) is None
    _as_directions(torch.as_tensor(ok.weights))  # the intervention accepts it too
    for w, why in (([[0.0, 0.0, 0.0]], "all zero (cv accuracy 0.21)"),
                   ([[1.0, 0.0], [0.0, 0.0]], "all zero"),
                   ([[np.nan, 1.0]], "not finite")):
        msg = unusable_direction(d(w, cv=0.2083))
        assert msg is not None and why in msg
        with pytest.raises(InterventionError):
            _as_directions(torch.as_tensor(np.asarray(w, float)))
    assert "cv accuracy n/a" in unusable_direction(d([[0.0]], cv=None))
