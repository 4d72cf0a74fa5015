"""What'sUp scoring: individual, pair and set accuracy against hand computations on the fixture."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from study.whatsup_metrics import (
    controlled_key, controlled_slot, individual_accuracy, normalise_token, pair_set_accuracy,
    predictions, strict_accuracy, wilson_interval,
)

FIX = Path(__file__).parents[1] / "fixtures" / "whatsup"


def _paths(name):
    return [e["image_path"] for e in json.loads((FIX / name).read_text())]


def test_grouping_key_and_slot_are_the_originals():
    p = "data/controlled_images/beer-bottle_left_of_armchair.jpeg"
    assert controlled_key(p) == ("beer-bottle", "armchair")
    assert controlled_slot(p) == "left"
    q = "data/controlled_clevr/book_in-front_of_can.jpeg"
    assert controlled_key(q) == ("book", "can") and controlled_slot(q) == "in-front"


def test_pair_and_set_accuracy_controlled_a_by_hand():
    paths = _paths("controlled_images_dataset.json")
    # fixture order per group: on, under, left_of, right_of; groups mug/table, beer-bottle/armchair,
    # scarf/chair
    correct = [True, True, True, True,      # mug: all four -> 2 pairs, 1 set
               False, True, True, True,     # beer bottle: left+right only -> 1 pair
               True, True, False, True]     # scarf: on+under only -> 1 pair
    m = pair_set_accuracy(paths, correct, "Controlled_Images_A")
    assert m["pair_correct"] == 4 and m["set_correct"] == 1 and m["n"] == 12
    assert m["pair_acc"] == pytest.approx(4 * 100 / 6)
    assert m["set_acc"] == pytest.approx(1 * 100 / 3)


def test_pair_and_set_accuracy_controlled_b_by_hand():
    paths = _paths("controlled_clevr_dataset.json")
    # order per group: left_of, right_of, in-front_of, behind; groups book/can, cube/sphere
    correct = [True, False, True, True,     # book: front+behind -> 1 pair
               True, True, True, True]      # cube: 2 pairs, 1 set
    m = pair_set_accuracy(paths, correct, "B")
    assert (m["pair_correct"], m["set_correct"]) == (3, 1)
    assert m["pair_acc"] == pytest.approx(3 * 100 / 4) and m["set_acc"] == pytest.approx(50.0)
    # on/under pairs do not exist in B: all-correct except the depth pair gives only left/right
    m2 = pair_set_accuracy(paths, [True, True, False, True] * 2, "B")
    assert (m2["pair_correct"], m2["set_correct"]) == (2, 0)


def test_pair_set_input_checks():
    with pytest.raises(ValueError, match="'A' or 'B'"):
        pair_set_accuracy([], [], "C")
    with pytest.raises(ValueError, match="2 image paths but 1"):
        pair_set_accuracy(["a_left_of_b.jpeg"] * 2, [True], "A")


def test_individual_accuracy_and_argmax_ties():
    scores = np.array([[[-1.0, -2.0, -3.0, -4.0]], [[-5.0, -1.0, -3.0, -4.0]],
                       [[-1.0, -1.0, -3.0, -4.0]]])  # N x 1 x 4 as the original code
    assert list(predictions(scores)) == [0, 1, 0]   # a tie goes to the first option
    assert individual_accuracy(scores) == pytest.approx(2 / 3)
    ragged = [[0.1, 0.2], [0.3, 0.1, 0.0]]
    assert list(predictions(ragged)) == [1, 0]
    assert individual_accuracy(ragged, [1, 0]) == 1.0


def test_strict_wilson_normalise():
    assert strict_accuracy([(True, True), (True, False), (False, False)]) == (1, 3)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert np.isnan(wilson_interval(0, 0)[0])
    assert normalise_token(" Red.") == "red" and normalise_token("ĠBlue\n") == "blue"


def test_pair_set_invariant_to_item_order_and_bounded():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    paths = _paths("controlled_images_dataset.json")

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.booleans(), min_size=12, max_size=12), st.randoms(use_true_random=False))
    def check(correct, rnd):
        m = pair_set_accuracy(paths, correct, "A")
        order = list(range(12))
        rnd.shuffle(order)
        m2 = pair_set_accuracy([paths[i] for i in order], [correct[i] for i in order], "A")
        assert m == m2
        # a set implies both its pairs; every pair needs two correct items
        assert 2 * m["set_correct"] <= m["pair_correct"] <= sum(correct) // 2
        if all(correct):
            assert m["pair_acc"] == 100 and m["set_acc"] == 100

    check()


def test_summary_plot_survives_perfect_accuracy(tmp_path):
    """At accuracy 1.0 the Wilson upper bound may round below it: the bar plot must not fail."""
    import pandas as pd

    from study.evaluate_report import plot_summary
    from study.whatsup_metrics import wilson_interval

    lo, hi = wilson_interval(48, 48)
    assert hi <= 1.0 and lo < 1.0
    summary = pd.DataFrame({"group": ["all", "relation", "relation"], "value": ["all", "left", "right"],
                            "accuracy": [1.0, 1.0, 1.0], "ci_low": [lo, lo, lo],
                            "ci_high": [hi - 1e-12] * 3, "n_items": [48, 24, 24],
                            "n_correct": [48, 24, 24]})
    plot_summary(summary, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0
