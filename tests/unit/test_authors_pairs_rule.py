"""The authors' E4 / E6 draw rule (``interventions.authors_pairs.collect``) against the pairs the
authors published (``criss_cross_patching/cf_pairs/squares.json`` and
``criss_cross_wo_ve_oi/cf_pairs/squares.json`` of GitHub Nix07/spatial-variable-binding at
4b1f70d8, the ``qwen2-vl-7b`` entries), and against the rule written out here with ``random``."""
from __future__ import annotations

import random

from interventions.authors_pairs import (AUTHORS_SQUARES, authors_pool, clean_order, collect)

SIX = ["Red", "Green", "Blue", "Black", "Brown", "Gray"]  # COLOR_RGB minus White and Orange

# published facts: Qwen2-VL-7B's E4 squares pairs (first entries of each direction; left's last
# two; left holds 50)
E4_QWEN = {
    "left": [("Black", "Gray", "Red"), ("Blue", "Brown", "Black"), ("Black", "Blue", "Gray"),
             ("Blue", "Brown", "Green"), ("Brown", "Green", "Blue")],
    "right": [("Gray", "Black", "Green"), ("Gray", "Green", "Red"), ("Gray", "Green", "Brown")],
    "above": [("Black", "Green", "Blue"), ("Red", "Gray", "Brown"), ("Brown", "Black", "Green")],
    "below": [("Red", "Blue", "Gray"), ("Blue", "Gray", "Green"), ("Red", "Green", "Blue")],
}
E4_QWEN_LEFT_LAST = [("Brown", "Red", "Black"), ("Green", "Blue", "Brown")]
# Qwen2-VL-7B's E6 (under ablation) left pairs: the 4th kept is the 7th distinct draw, the 5th
# the 9th
E6_QWEN_LEFT = [("Black", "Gray", "Red"), ("Blue", "Brown", "Black"), ("Black", "Blue", "Gray"),
                ("Brown", "Gray", "Green"), ("Gray", "Blue", "Black")]


def _rule(pool, directions, keep, target, max_attempts, seed=0):
    """The published rule, written out independently: one Random(seed), per direction draw
    sample(pool, 3), skip a repeat, keep when keep() says so, stop at target or max_attempts."""
    rng = random.Random(seed)
    out = {}
    for d in directions:
        seen, kept, n = [], [], 0
        while len(kept) < target and n < max_attempts:
            n += 1
            t = tuple(rng.sample(pool, 3))
            if t in seen:
                continue
            seen.append(t)
            if keep(d, t):
                kept.append(t)
        out[d] = (kept, n)
    return out


def test_every_draw_kept_gives_qwen2_vl_7b_published_e4_pairs():
    """Qwen2-VL-7B answered every left/right/above draw right: our draws with every candidate
    kept are its published lists (Orange is not in the pool: two tokens for its tokenizer)."""
    got = collect(SIX, ("left", "right", "above", "below"), lambda d, a, t: True, target=50)
    for d, head in E4_QWEN.items():
        assert got[d]["kept"][:len(head)] == head, d
    assert len(got["left"]["kept"]) == 50
    assert got["left"]["kept"][-2:] == E4_QWEN_LEFT_LAST


def test_rejected_draws_give_the_published_e6_pairs():
    """E6's published left list skips draws 4-6 and 8 (wrong under ablation); rejecting exactly
    those reproduces it."""
    wrong = {("Blue", "Brown", "Green"), ("Brown", "Green", "Blue"), ("Green", "Red", "Blue"),
             ("Blue", "Red", "Brown")}
    got = collect(SIX, ("left",), lambda d, a, t: t not in wrong, target=5)
    assert got["left"]["kept"] == E6_QWEN_LEFT


def test_collect_equals_the_rule_with_a_model_dependent_filter():
    """A filter that rejects any pair whose answer or counterfactual answer is Blue (one model's
    verdicts): later directions start where the earlier ones stopped, as the authors' shared rng
    does; small targets and the attempt cap included."""
    pool = list(AUTHORS_SQUARES)
    dirs = ("left", "right", "above", "below")

    def keep(d, t):
        return "blue" not in (t[0], t[2])

    for target, cap in ((50, 2000), (3, 2000), (4, 5)):
        got = collect(pool, dirs, lambda d, a, t: keep(d, t), target=target, max_attempts=cap)
        want = _rule(pool, dirs, keep, target, cap)
        assert {d: (v["kept"], v["attempts"]) for d, v in got.items()} == want


def test_attempt_numbers_passed_to_the_filter_count_repeats():
    seen = []
    collect(SIX, ("left",), lambda d, a, t: seen.append((a, t)) or False, target=1)
    rng = random.Random(0)
    draws = [tuple(rng.sample(SIX, 3)) for _ in range(2000)]  # the authors' cap
    want = [(i + 1, t) for i, t in enumerate(draws) if t not in draws[:i]]
    assert seen == want and len(seen) == 120  # every ordered triple of six colours once


def test_clean_order_puts_the_answer_at_the_queried_slot():
    assert clean_order(("a", "b", "c"), "left") == ("a", "b", "c")
    assert clean_order(("a", "b", "c"), "above") == ("a", "b", "c")
    assert clean_order(("a", "b", "c"), "right") == ("c", "b", "a")
    assert clean_order(("a", "b", "c"), "below") == ("c", "b", "a")


class _Tok:
    def __init__(self, split):
        self.split = split

    def tokenize(self, w):
        return [w[:1], w[1:]] if w in self.split else [w]


def test_pool_is_the_seven_colours_whose_capitalised_name_is_one_token():
    assert authors_pool("squares", (), _Tok({"Orange"})) == [c.lower() for c in SIX]
    assert authors_pool("squares", (), _Tok(set())) == list(AUTHORS_SQUARES)
    # lower-case spelling does not matter (the authors check the Capitalised name twice)
    assert authors_pool("squares", (), _Tok({"orange"})) == list(AUTHORS_SQUARES)
    shapes = ("square", "circle", "triangle", "star", "cross", "heart")
    assert authors_pool("shapes", shapes, _Tok({"Star"})) == list(shapes)  # no token check
