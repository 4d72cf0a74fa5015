"""What'sUp scoring and grouping, as pure functions (no model, no files).

Where it sits: :mod:`study.evaluate` turns model scores into per-item correctness; this
module computes the benchmark's aggregate numbers from them exactly as the original code does
(GitHub ``amitakamath/whatsup_vlms``, ``dataset_zoo/aro_datasets.py``), plus the strict
two-option metric of the dual-mechanisms paper and a few shared helpers.

- Individual accuracy: ``argmax(scores) == 0`` (the first caption option is always correct).
- Controlled A/B pair and set accuracy: items grouped by ``(file.split('_')[0],
  file.split('_')[-1][:-5])`` (object, reference); the relation slot is ``file.split('_')[1]``.
  Pair: +1 when left and right are both correct, +1 when on and under (A) / in-front and behind
  (B) are both correct; ``pair_acc = pair_correct*100/(len/2)``. Set: all four correct;
  ``set_acc = set_correct*100/(len/4)``.
- Strict two-option accuracy: an item counts only if it is answered correctly in both option
  orders.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import numpy as np

_SLOTS = {"A": ("left", "right", "on", "under"), "B": ("left", "right", "in-front", "behind")}


def normalise_token(text: str) -> str:
    """Lower-case alphanumerics only (the paper's answer normalisation).

    >>> normalise_token(" Red.")
    'red'
    """
    return re.sub(r"[^0-9a-z]", "", str(text).lower())


def predictions(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Index of the best-scoring option of each item (``np.argmax``; first index wins ties).

    Accepts a ragged list of per-item score vectors or an ``(N, K)`` / ``(N, 1, K)`` array.
    """
    if isinstance(scores, np.ndarray) and scores.dtype != object:
        s = scores.reshape(scores.shape[0], -1)
        return np.argmax(s, axis=-1)
    return np.array([int(np.argmax(np.asarray(s, dtype=float).ravel())) for s in scores], dtype=int)


def individual_accuracy(scores, answer_index: int | Sequence[int] = 0) -> float:
    """Fraction of items whose best option is the answer (What'sUp: option 0)."""
    pred = predictions(scores)
    if len(pred) == 0:
        return float("nan")
    return float(np.mean(pred == np.asarray(answer_index)))


def controlled_key(image_path: str) -> tuple[str, str]:
    """The original grouping key of a Controlled image: ``(object, reference)``.

    >>> controlled_key("data/controlled_images/beer-bottle_left_of_armchair.jpeg")
    ('beer-bottle', 'armchair')
    """
    name = image_path.split("/")[-1]
    return name.split("_")[0], name.split("_")[-1][:-5]


def controlled_slot(image_path: str) -> str:
    """The relation slot of a Controlled image (``left``, ``right``, ``on``, ``under``,
    ``in-front``, ``behind``): the second ``_`` field of the file name."""
    return image_path.split("/")[-1].split("_")[1]


def pair_set_accuracy(image_paths: Sequence[str], correct: Sequence[bool],
                      subset: str) -> dict[str, float]:
    """Controlled A/B pair and set accuracy, computed as the original ``evaluate_scores``.

    Parameters
    ----------
    image_paths
        The items' ``image_path`` as written in the release JSON, in file order.
    correct
        Per item: was option 0 the prediction.
    subset
        ``"A"`` (``Controlled_Images_A``) or ``"B"`` (``Controlled_Images_B``); the full subset
        name works too.

    Returns
    -------
    dict
        ``pair_correct``, ``set_correct``, ``n``, ``pair_acc`` and ``set_acc`` (percent, with the
        original denominators ``n/2`` and ``n/4``).
    """
    sub = subset[-1].upper()
    if sub not in _SLOTS:
        raise ValueError(f"subset must be 'A' or 'B' (Controlled_Images_A/B), got {subset!r}")
    if len(image_paths) != len(correct):
        raise ValueError(f"{len(image_paths)} image paths but {len(correct)} correctness values")
    slots = _SLOTS[sub]
    table: dict[tuple[str, str], dict[str, float]] = {}
    for p in image_paths:
        table.setdefault(controlled_key(p), {s: 0 for s in slots})
    for p, c in zip(image_paths, correct):
        table[controlled_key(p)][controlled_slot(p)] = bool(c)
    pair = set_ = 0
    for d in table.values():
        if d["left"] and d["right"]:
            pair += 1
        if d[slots[2]] and d[slots[3]]:
            pair += 1
        if sum(d.values()) == 4:
            set_ += 1
    n = len(image_paths)
    return {"n": n, "pair_correct": pair, "set_correct": set_,
            "pair_acc": pair * 100 / (n / 2) if n else float("nan"),
            "set_acc": set_ * 100 / (n / 4) if n else float("nan")}


def strict_accuracy(correct_by_order: Iterable[Sequence[bool]]) -> tuple[int, int]:
    """Strict two-option score: items right in *every* option order.

    Parameters
    ----------
    correct_by_order
        Per item, the correctness of each order asked (e.g. ``(lr_ok, rl_ok)``).

    Returns
    -------
    (n_strict, n_items)
    """
    rows = [tuple(bool(c) for c in r) for r in correct_by_order]
    return sum(all(r) for r in rows), len(rows)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k/n`` (``(nan, nan)`` when ``n == 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def softmax(logps: Sequence[float]) -> np.ndarray:
    """Probabilities over a set of options from their (log-)scores."""
    x = np.asarray(logps, dtype=float)
    x = x - np.max(x)
    e = np.exp(x)
    return e / e.sum()
