"""The validation criteria of the model organisms: the paper's effects, each with a threshold
fixed before measuring (issue 11). One place for the numbers; the demo report's validation table
(``study.report``), ``spatialbind organism check`` and the tests all read them from here.

Every criterion is evaluated on held-out items (the demo's stimuli are never trained on: the
organisms are trained on stimuli rendered on the fly, the demo draws its own set; E7 picks alpha
by cross-fitting: each item is scored at an alpha chosen on the other folds). A criterion that
fails is reported as found.

==  ======================================================  =================================
#   paper effect (PAPER.md)                                 threshold, per mechanism
==  ======================================================  =================================
1   E3: the projector probe reads the ordinal slot on the   vision, dual: object >= 0.9 and
    object tokens *and* on the strip tokens (background)    strip >= 0.9; lm: both <= chance +
                                                            0.15 (no slot code in the tokens)
2   E4: at the LM input, object-only criss-cross does not   vision, dual: object flip < 0.2,
    flip the answer, strip criss-cross does                 strip flip > 0.8; lm: strip flip <
                                                            0.2 (content swap of equal colours)
3   E5: ablating vision ordering; E6: where the LM backup   vision: <= chance + 0.15; dual: in
    acts (object criss-cross under the ablation flips at    [chance + 0.15, base - 0.15] and E6
    some LM layer)                                          flips (> 0.5) at >= 1 layer; lm:
                                                            >= base - 0.1
4   E7 on degraded stimuli, alpha chosen on held-out        vision, dual: net > 0 and fix rate
    items (cross-fitted: K folds grouped by colour          >= 0.3 (probe, cross-fitted alpha,
    triple and mirror, each fold scored at the alpha on     counts summed over folds); random
    the other folds): amplifying the ordering direction     directions at each fold's alpha
    more than it breaks; random directions change almost    change <= 5 % of answers; lm: n/a
    nothing
==  ======================================================  =================================

Criterion 4 reads the ``cross-fitted alpha (K-fold)`` selection of the E7 summary (decided
2026-11-30, before measuring with it: the ``held-out alpha`` chosen on the 8 ``val`` items out of
96 rests on zero to two failing items). A summary written before that selection existed is read
at its ``held-out alpha`` (random changes from the dose-response at that alpha), and the row says
so. Thresholds unchanged.

Chance is 1/3 (three candidate squares).
"""
from __future__ import annotations

from typing import Any

CHANCE = 1 / 3

#: Every threshold, fixed before measuring (issue 11). Do not tune these to a result.
THRESHOLDS: dict[str, float] = {
    "probe_min": 0.9,              # 1: vision/dual, object and strip tokens
    "probe_near_chance": 0.15,     # 1: lm, at most chance + this
    "object_flip_max": 0.2,        # 2: vision/dual, object-only criss-cross at the LM input
    "strip_flip_min": 0.8,         # 2: vision/dual, strip criss-cross at the LM input
    "lm_strip_flip_max": 0.2,      # 2: lm
    "vision_ablated_margin": 0.15,  # 3: vision ablated accuracy <= chance + this
    "dual_margin": 0.15,           # 3: dual ablated in [chance + m, base - m]
    "e6_flip_min": 0.5,            # 3: dual, E6 flip rate at >= 1 layer above this
    "lm_ablated_drop_max": 0.1,    # 3: lm ablated accuracy >= base - this
    "e7_net_min": 0,               # 4: net (fixed - broken) strictly above this
    "e7_fix_rate_min": 0.3,        # 4: fixed / previously failing
    "e7_random_changed_max": 0.05,  # 4: share of answers a random direction changes
}

#: The paper's effect each criterion stands for (report wording).
EFFECTS = {
    1: "E3 slot code in the vision tokens, background of the strip included",
    2: "E4 ordering lives in the whole strip (object-only patch does not flip, strip does)",
    3: "E5/E6 vision ordering dominant (dual: a weaker LM backup above chance)",
    4: "E7 amplifying the ordering direction fixes errors",
}


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def _verdict(ok) -> bool | None:
    return None if ok is None else bool(ok)


def criterion_probe(mechanism: str, obj, strip) -> dict[str, Any]:
    """Criterion 1 from the projector probe accuracies on object and strip tokens."""
    t = THRESHOLDS
    obj, strip = _num(obj), _num(strip)
    if mechanism in ("vision", "dual"):
        expected = f"object ≥ {t['probe_min']} and strip ≥ {t['probe_min']}"
        ok = None if obj is None or strip is None else obj >= t["probe_min"] and strip >= t["probe_min"]
    else:
        hi = CHANCE + t["probe_near_chance"]
        expected = f"object ≤ {hi:.2f} and strip ≤ {hi:.2f} (near chance)"
        ok = None if obj is None or strip is None else obj <= hi and strip <= hi
    return {"criterion": 1, "measured": {"object": obj, "strip": strip}, "expected": expected,
            "holds": _verdict(ok)}


def criterion_crisscross(mechanism: str, object_flip, strip_flip) -> dict[str, Any]:
    """Criterion 2 from the flip rates of object-only and strip criss-cross at the LM input."""
    t = THRESHOLDS
    o, s = _num(object_flip), _num(strip_flip)
    if mechanism in ("vision", "dual"):
        expected = f"object flip < {t['object_flip_max']}, strip flip > {t['strip_flip_min']}"
        ok = None if o is None or s is None else o < t["object_flip_max"] and s > t["strip_flip_min"]
    else:
        expected = f"strip flip < {t['lm_strip_flip_max']}"
        ok = None if s is None else s < t["lm_strip_flip_max"]
    return {"criterion": 2, "measured": {"object_flip": o, "strip_flip": s},
            "expected": expected, "holds": _verdict(ok)}


def criterion_ablation(mechanism: str, base, ablated, e6_flip_layers=None, *,
                       chance: float = CHANCE) -> dict[str, Any]:
    """Criterion 3 from E5's base and ablated accuracy (and, for ``dual``, E6's flip layers:
    the LM layers where object criss-cross under the ablation flips more than half the items)."""
    t = THRESHOLDS
    b, a = _num(base), _num(ablated)
    meas: dict[str, Any] = {"base": b, "ablated": a}
    if mechanism == "vision":
        hi = chance + t["vision_ablated_margin"]
        expected = f"ablated ≤ {hi:.2f} (chance + {t['vision_ablated_margin']})"
        ok = None if a is None else a <= hi
    elif mechanism == "dual":
        lo = chance + t["dual_margin"]
        hi = "?" if b is None else f"{b - t['dual_margin']:.2f}"
        expected = (f"ablated in [chance + {t['dual_margin']}, base − {t['dual_margin']}] = "
                    f"[{lo:.2f}, {hi}] and E6 flips (> {t['e6_flip_min']}) at ≥ 1 layer")
        meas["e6_flip_layers"] = None if e6_flip_layers is None else list(e6_flip_layers)
        ok = None if a is None or b is None or e6_flip_layers is None else (
            lo <= a <= b - t["dual_margin"] and len(e6_flip_layers) > 0)
    else:
        expected = f"ablated ≥ base − {t['lm_ablated_drop_max']}"
        ok = None if a is None or b is None else a >= b - t["lm_ablated_drop_max"]
    return {"criterion": 3, "measured": meas, "expected": expected, "holds": _verdict(ok)}


#: The E7 summary's selection labels, as ``interventions.amplification`` writes them (spelled
#: here because the organisms may not import ``interventions``; ``study`` takes them from here).
CROSS_FITTED = "cross-fitted alpha (K-fold)"
HELD_OUT = "held-out alpha"


def e7_numbers(summary: dict | None) -> dict[str, Any]:
    """From an E7 summary: the probe direction at the cross-fitted alpha (fixed, broken, net, fix
    rate, the fold alphas) and the share of answers the random direction changes at each fold's
    alpha on that fold; for a summary without a cross-fitted selection, the held-out alpha and the
    random direction's changes at that alpha over all items (``selection`` says which)."""
    out: dict[str, Any] = {"selection": None, "alpha": None, "fixed": None, "broken": None,
                           "net": None, "fix_rate": None, "random_changed": None}
    if not summary:
        return out
    probe = {s.get("selection"): s for s in summary.get("selections", [])
             if s.get("control") == "probe"}
    sel = probe.get(CROSS_FITTED)
    if sel is not None:
        out["selection"] = (f"cross-fitted ({sel.get('cv_folds')} folds)" if sel.get("cv_folds")
                            else "cross-fitted")
        out.update({k: sel.get(k) for k in ("alpha", "fixed", "broken", "net", "fix_rate")})
        out["fold_alphas"] = sel.get("fold_alphas")
        out["random_changed"] = sel.get("random_changed")
        return out
    sel = probe.get(HELD_OUT)
    if sel is None:
        return out
    out["selection"] = "held-out alpha (summary written before the cross-fitted selection)"
    out.update({k: sel.get(k) for k in ("alpha", "fixed", "broken", "net", "fix_rate")})
    rand = [r for r in summary.get("dose_response", [])
            if r.get("control") == "random" and _num(r.get("alpha")) == _num(sel.get("alpha"))]
    if rand and rand[0].get("n"):
        r = rand[0]
        out["random_changed"] = (int(r["fixed"]) + int(r["broken"])) / int(r["n"])
    return out


def criterion_amplify(mechanism: str, summary: dict | None) -> dict[str, Any]:
    """Criterion 4 from an E7 summary (``interventions.amplification.summarize_e7``): its
    cross-fitted selection (see :func:`e7_numbers`)."""
    t = THRESHOLDS
    e = e7_numbers(summary)
    if mechanism not in ("vision", "dual"):
        return {"criterion": 4, "measured": e, "expected": "n/a (no vision-side direction)",
                "holds": None}
    expected = (f"net > {t['e7_net_min']}, fix rate ≥ {t['e7_fix_rate_min']}, random direction "
                f"changes ≤ {t['e7_random_changed_max']:.0%} of answers")
    net, fr, rc = _num(e["net"]), _num(e["fix_rate"]), _num(e["random_changed"])
    ok = None if net is None or fr is None or rc is None else (
        net > t["e7_net_min"] and fr >= t["e7_fix_rate_min"] and rc <= t["e7_random_changed_max"])
    return {"criterion": 4, "measured": e, "expected": expected, "holds": _verdict(ok)}


def classify(probe, ablated, base, *, chance: float = CHANCE) -> str:
    """Which mechanism a checkpoint has, from the projector probe and the ablation accuracy:
    ``vision``, ``dual``, ``lm`` or ``unclear`` (the same thresholds as criteria 1 and 3)."""
    t = THRESHOLDS
    p, a, b = _num(probe), _num(ablated), _num(base)
    if p is None or a is None or b is None:
        return "unclear"
    if p >= t["probe_min"]:
        if a <= chance + t["vision_ablated_margin"]:
            return "vision"
        if chance + t["dual_margin"] <= a <= b - t["dual_margin"]:
            return "dual"
        return "unclear"
    if p <= chance + t["probe_near_chance"] and a >= b - t["lm_ablated_drop_max"]:
        return "lm"
    return "unclear"


__all__ = ["CHANCE", "CROSS_FITTED", "EFFECTS", "HELD_OUT", "THRESHOLDS", "classify", "criterion_ablation",
           "criterion_amplify", "criterion_crisscross", "criterion_probe", "e7_numbers"]
