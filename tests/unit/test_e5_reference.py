"""E5's split between the reference option and the others (interventions.ablation)."""
import pandas as pd
import pytest

from interventions.ablation import reference_diagnostics, reference_option
from scenegen.record import Entity, Prompt, Stimulus


def _stim(colors, text, ref_word, task="squares"):
    ents = tuple(Entity(mask_id=i + 1, role="target", ordinal=i, kind="square", color=c,
                        rgb=(0, 0, 0), box=(0, 0, 1, 1), centroid=(0.5, 0.5), area=1,
                        name=f"{c} square") for i, c in enumerate(colors))
    a = text.index(ref_word)
    p = Prompt(kind="completion", text=text, answer=colors[0], options=tuple(colors),
               spans={"reference": (a, a + len(ref_word))})
    return Stimulus(id="s", file_name="x.png", mask_file_name="m.png", width=8, height=8,
                    generator="flat", task=task, relation="left", axis="horizontal",
                    entities=ents, prompts=(p,)), p


def test_reference_option_names_the_reference_target():
    st, p = _stim(["red", "green", "blue"],
                  "The color of the square to the left of the green square is ", "green square")
    assert reference_option(st, p, p.options) == "green"
    # no reference span, or a span naming no target: unknown
    bare = Prompt(kind="completion", text=p.text, answer="red", options=p.options)
    assert reference_option(st, bare, p.options) is None
    st2, p2 = _stim(["red", "green", "blue"], "left of the pink square is ", "pink square")
    assert reference_option(st2, p2, p2.options) is None


def _table(rows):
    return pd.DataFrame(rows, columns=["answer", "ablated_pred", "reference", "n_options"])


def test_reference_diagnostics_by_hand():
    # 6 items with a known reference, 3 options each: 2 name the reference, the other 4 are
    # all right -> accuracy 1, chance 1/2, two-sided p = 2 * 0.5**4 = 0.125; one unknown item
    rows = [("a", "r", "r", 3), ("a", "r", "r", 3)] + [("a", "a", "r", 3)] * 4 \
        + [("a", "b", None, 3)]
    d = reference_diagnostics(_table(rows))
    assert d["n"] == 6 and d["reference_rate"] == pytest.approx(2 / 6)
    assert d["n_other"] == 4 and d["accuracy"] == 1.0 and d["chance"] == pytest.approx(0.5)
    assert d["p_value"] == pytest.approx(0.125)
    # at chance: 1 of 2 right -> p = 1
    d = reference_diagnostics(_table([("a", "a", "r", 3), ("a", "b", "r", 3)]))
    assert (d["accuracy"], d["p_value"]) == (0.5, pytest.approx(1.0))


def test_reference_diagnostics_without_references():
    d = reference_diagnostics(_table([("a", "b", None, 3)]))
    assert d["n"] == 0 and d["accuracy"] is None and d["p_value"] is None
    assert reference_diagnostics(pd.DataFrame({"answer": ["a"]}))["n"] == 0
