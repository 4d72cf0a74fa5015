"""E7's cross-fitted alpha selection (``interventions.amplification.cross_fitted``) against hand
computations, its grouping by colour triple and mirror, its determinism, and criterion 4 reading it."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from interventions.amplification import (CROSS_FITTED, AmplifyConfig, cross_fit_folds,
                                         item_group, item_groups, summarize_e7)
from interventions.errors import InterventionError
from organisms import criteria as C

#: item -> (group, correct at alpha 0, 1, 2) for the probe direction. Three groups of two items:
#: A: a1 fails, fixed at 1 and 2; a2 right, broken at 2     -> net by alpha: 0, +1, 0
#: B: b1 fails, fixed at 2 only; b2 right throughout         -> net: 0, 0, +1
#: C: c1 fails, fixed at 1 only; c2 right, broken at 1 and 2 -> net: 0, 0, -1
PROBE = {"a1": ("A", 0, 1, 1), "a2": ("A", 1, 1, 0),
         "b1": ("B", 0, 0, 1), "b2": ("B", 1, 1, 1),
         "c1": ("C", 0, 1, 0), "c2": ("C", 1, 0, 0)}
#: the random direction keeps every baseline answer except b2, which it breaks at alpha 1
RANDOM_BROKEN = {("b2", 1)}


def _table(probe=PROBE, *, with_group=True) -> pd.DataFrame:
    rows = []
    for item, (g, *ok) in probe.items():
        for a, v in enumerate(ok):
            for c in ("probe", "random"):
                right = bool(v) if c == "probe" else bool(ok[0]) and (item, a) not in RANDOM_BROKEN
                row = {"item": item, "split": "train", "axis": "horizontal", "control": c,
                       "alpha": float(a), "correct": right}
                if with_group:
                    row["group"] = f"mirror:{g}"
                rows.append(row)
    return pd.DataFrame(rows)


def _cf(summary, control="probe"):
    return next(s for s in summary["selections"]
                if s["selection"] == CROSS_FITTED and s["control"] == control)


def test_cross_fitted_matches_a_hand_computation():
    """K = 3 with three groups: every fold is one group, whatever the shuffle. By hand (max net
    on the other two groups, ties to the smaller alpha):
    fold A, chosen on B+C: nets 0 / 0 / 0 -> alpha 0; A at 0: nothing fixed or broken;
    fold B, chosen on A+C: nets 0 / +1 / -1 -> alpha 1; B at 1: b1 still fails, b2 right: 0 / 0;
    fold C, chosen on A+B: nets 0 / +1 / +1 -> alpha 1 (tie); C at 1: c1 fixed, c2 broken: 1 / 1.
    Summed: fixed 1, broken 1, net 0, 3 failing, fix rate 1/3; accuracy (3 + 1 - 1) / 6. The
    random direction at each fold's alpha on that fold: A at 0 changes none, B at 1 breaks b2,
    C at 1 none: 1 of 6 answers."""
    s = summarize_e7(_table(), AmplifyConfig(alphas=(0, 1, 2), cv_folds=3))
    r = _cf(s)
    by_group = {f["groups"][0]: f for f in r["folds"]}
    assert all(len(f["groups"]) == 1 for f in r["folds"])
    assert {g: f["alpha"] for g, f in by_group.items()} == {
        "mirror:A": 0.0, "mirror:B": 1.0, "mirror:C": 1.0}
    assert [(by_group[g]["fixed"], by_group[g]["broken"]) for g in
            ("mirror:A", "mirror:B", "mirror:C")] == [(0, 0), (0, 0), (1, 1)]
    assert (r["fixed"], r["broken"], r["net"], r["n_fail"], r["n"]) == (1, 1, 0, 3, 6)
    assert r["fix_rate"] == pytest.approx(1 / 3)
    assert r["base_accuracy"] == pytest.approx(0.5) and r["accuracy"] == pytest.approx(0.5)
    assert sorted(r["fold_alphas"]) == [0.0, 1.0, 1.0] and r["alpha"] == 1.0  # the median
    assert r["random_changed"] == pytest.approx(1 / 6)
    assert [by_group[g]["random_changed"] for g in ("mirror:A", "mirror:B", "mirror:C")] == \
        [0, 1, 0]
    assert r["cv_folds"] == 3 and r["n_groups"] == 3 and r["grouped_by"] == "colour triple and its mirror"
    # the random control gets its own cross-fitted row: its nets are 0 / -1 / 0 on any two
    # groups that hold B, else 0 everywhere -> alpha 0 for every fold, nothing changed
    rr = _cf(s, "random")
    assert rr["fold_alphas"] == [0.0, 0.0, 0.0] and (rr["fixed"], rr["broken"]) == (0, 0)
    # the held-out selection is still there, unchanged in name
    assert any(x["selection"] == "held-out alpha" for x in s["selections"])


def test_a_group_with_two_failing_items_pulls_its_fold_alpha():
    """Hand computation with K = 2 over four groups (two folds of two groups, whatever the
    shuffle, since every group has two items and folds take the smaller load): the per-fold
    alphas are those chosen on the other fold's two groups; checked against a brute force over
    the folds actually drawn."""
    probe = dict(PROBE)
    probe.update({"d1": ("D", 0, 0, 1), "d2": ("D", 0, 0, 1)})  # D: +2 at alpha 2
    t = _table(probe)
    s = summarize_e7(t, AmplifyConfig(alphas=(0, 1, 2), cv_folds=2, seed=3))
    r = _cf(s)
    net = {"A": (0, 1, 0), "B": (0, 0, 1), "C": (0, 0, -1), "D": (0, 0, 2)}
    fix = {"A": (0, 1, 1), "B": (0, 0, 1), "C": (0, 1, 0), "D": (0, 0, 2)}
    brk = {"A": (0, 0, 1), "B": (0, 0, 0), "C": (0, 1, 1), "D": (0, 0, 0)}
    assert len(r["folds"]) == 2 and all(f["n"] == 4 for f in r["folds"])
    fixed = broken = 0
    for f in r["folds"]:
        mine = {g.split(":")[1] for g in f["groups"]}
        other = set(net) - mine
        tot = [sum(net[g][a] for g in other) for a in range(3)]
        a = max(range(3), key=lambda x: (tot[x], -x))
        assert f["alpha"] == a
        fixed += sum(fix[g][a] for g in mine)
        broken += sum(brk[g][a] for g in mine)
    assert (r["fixed"], r["broken"], r["n_fail"]) == (fixed, broken, 5)


def test_a_triple_and_its_mirror_share_a_group_other_orders_do_not():
    from types import SimpleNamespace as S

    def g(triple, scene="s", id_="i"):
        return item_group(S(factors={"triple": triple} if triple else {}, scene_id=scene, id=id_))
    assert g(["red", "blue", "green"]) == g(["green", "blue", "red"]) == "mirror:green|blue|red"
    assert g(["blue", "red", "green"]) != g(["red", "blue", "green"])  # same colours, other order
    assert g(None, scene="s7") == "scene:s7" and g(None, scene="", id_="x1") == "item:x1"


def test_folds_keep_each_triple_together_and_are_deterministic():
    groups = {f"s{i:03d}": f"mirror:{i // 8}" for i in range(96)}  # 12 mirror pairs of 8 items
    folds = cross_fit_folds(groups, 4, seed=0)
    assert len(folds) == 4 and sorted(len(f) for f in folds) == [24, 24, 24, 24]
    assert sorted(i for f in folds for i in f) == sorted(groups)
    for f in folds:  # a triple never straddles two folds
        for g in {groups[i] for i in f}:
            assert all(i in f for i, h in groups.items() if h == g)
    # same seed, item order shuffled: the same folds; another seed: other folds
    items = list(groups)
    random.Random(1).shuffle(items)
    again = cross_fit_folds({i: groups[i] for i in items}, 4, seed=0)
    assert [sorted(f) for f in again] == [sorted(f) for f in folds]
    assert any([sorted(f) for f in cross_fit_folds(groups, 4, seed=s)]
               != [sorted(f) for f in folds] for s in (1, 2, 3))
    # unequal groups: every item placed, loads within one group of each other
    uneven = {f"u{i}": f"scene:{g}" for i, g in enumerate("aaaaabbbcccdde")}
    f2 = cross_fit_folds(uneven, 2, seed=0)
    assert sorted(i for f in f2 for i in f) == sorted(uneven)
    assert abs(len(f2[0]) - len(f2[1])) <= 5


def test_summary_is_the_same_for_shuffled_rows():
    t = _table()
    cfg = AmplifyConfig(alphas=(0, 1, 2), cv_folds=2, seed=7)
    a = _cf(summarize_e7(t, cfg))
    b = _cf(summarize_e7(t.sample(frac=1.0, random_state=0).reset_index(drop=True), cfg))
    key = ("fold_alphas", "fixed", "broken", "n_fail", "random_changed")
    assert sorted(map(sorted, (f["groups"] for f in a["folds"]))) == \
        sorted(map(sorted, (f["groups"] for f in b["folds"])))
    assert {k: a[k] for k in key if k != "fold_alphas"} == \
        {k: b[k] for k in key if k != "fold_alphas"}


def test_fewer_groups_than_k_uses_one_fold_per_group_and_says_so():
    s = summarize_e7(_table(), AmplifyConfig(alphas=(0, 1, 2), cv_folds=5))
    r = _cf(s)
    assert r["cv_folds"] == 3 and r["cv_folds_asked"] == 5
    assert "K reduced from 5 to 3" in r["note"]
    assert (r["fixed"], r["broken"]) == (1, 1)  # the K = 3 hand computation above


def test_a_single_group_is_not_cross_fitted_and_criterion_4_is_not_measured():
    one = {i: ("A", *v[1:]) for i, v in PROBE.items()}
    s = summarize_e7(_table(one), AmplifyConfig(alphas=(0, 1, 2)))
    r = _cf(s)
    assert r["fixed"] is None and r["alpha"] is None and "not computed" in r["note"]
    assert "got 1" in r["note"]
    c = C.criterion_amplify("vision", s)
    assert c["holds"] is None and c["measured"]["selection"].startswith("cross-fitted")


def test_a_table_without_groups_puts_each_item_in_its_own_group():
    t = _table(with_group=False)
    assert item_groups(t) == {i: f"item:{i}" for i in PROBE}
    r = _cf(summarize_e7(t, AmplifyConfig(alphas=(0, 1, 2), cv_folds=6)))
    assert r["cv_folds"] == 6 and r["grouped_by"] == "item" and r["n"] == 6
    assert all(f["n"] == 1 for f in r["folds"])


def test_cv_folds_below_two_is_refused():
    with pytest.raises(InterventionError, match="'cv_folds' parameter of AmplifyConfig must be "
                                                "an int >= 2"):
        AmplifyConfig(cv_folds=1)


def _summary(held: tuple[int, int], cross: tuple[int, int] | None, *, rand_row=0.0,
             rand_dose=0):
    sels = [{"selection": "held-out alpha", "control": "probe", "alpha": 2.0, "fixed": held[0],
             "broken": held[1], "net": held[0] - held[1], "n_fail": 10, "n": 40,
             "fix_rate": held[0] / 10}]
    if cross is not None:
        sels.append({"selection": CROSS_FITTED, "control": "probe", "alpha": 3.0,
                     "fold_alphas": [3.0, 3.0, 4.0, 2.0], "cv_folds": 4, "fixed": cross[0],
                     "broken": cross[1], "net": cross[0] - cross[1], "n_fail": 12, "n": 48,
                     "fix_rate": cross[0] / 12, "random_changed": rand_row})
    return {"selections": sels,
            "dose_response": [{"control": "random", "alpha": a, "fixed": rand_dose, "broken": 0,
                               "n": 48} for a in (2.0, 3.0)]}


def test_criterion_4_reads_the_cross_fitted_selection():
    # held-out says yes (5 fixed, 1 broken of 10), cross-fitted says no (3 / 1 of 12: 0.25)
    c = C.criterion_amplify("vision", _summary((5, 1), (3, 1)))
    assert c["holds"] is False
    assert c["measured"]["selection"] == "cross-fitted (4 folds)"
    assert c["measured"]["fix_rate"] == pytest.approx(0.25)
    assert c["measured"]["fold_alphas"] == [3.0, 3.0, 4.0, 2.0]
    # and the other way round; the random share comes from the selection row (each fold's own
    # alpha), not from the dose-response at the summary alpha
    c = C.criterion_amplify("dual", _summary((1, 1), (6, 2), rand_row=0.02, rand_dose=10))
    assert c["holds"] is True and c["measured"]["random_changed"] == pytest.approx(0.02)
    c = C.criterion_amplify("dual", _summary((1, 1), (6, 2), rand_row=0.1))
    assert c["holds"] is False  # 10 % changed by the random direction > 5 %


def test_criterion_4_falls_back_to_held_out_for_old_summaries_and_says_so():
    c = C.criterion_amplify("vision", _summary((5, 1), None, rand_dose=1))
    assert c["holds"] is True and c["measured"]["alpha"] == 2.0
    assert c["measured"]["selection"].startswith("held-out alpha (summary written before")
    assert c["measured"]["random_changed"] == pytest.approx(1 / 48)
    from study.report import validation

    rows = validation({"V": {"e7": _summary((5, 1), None)}}, {"V": "vision"})
    row = next(r for r in rows if r["criterion"] == 4)
    assert "summary written before the cross-fitted selection" in row["measured"]
