""""Which mechanism emerged?" checks for model organisms (ORGANISM.md §3/§5, PAPER.md E3).

Two measurements, both cheap (well under a minute on one CPU thread):

- :func:`slot_probe`: a StandardScaler + LogisticRegression probe for the ordinal slot
  (left/middle/right, or top/middle/bottom) of each object token in the *projector output*
  (Qwen2-VL ``visual.merger``, Gemma-3 ``multi_modal_projector``: the image tokens the LM
  receives). Fitted on images with training colour
  triples, tested on images with held-out triples, per axis. Controls: the same architecture at
  its initial weights (same seed), and a position-only baseline (one-hot row and column of the
  token). A vision-side organism scores >= 0.9; an LM-side one near chance (1/3).
- :func:`shuffle_test`: accuracy with the image tokens randomly permuted at the LM input. Under a
  ``vision`` organism all image tokens share one rotary phase, so only causal order could change
  with the permutation: equal accuracy means the LM does not count tokens. An ``lm`` organism
  loses its answer (positions no longer match content).
"""
from __future__ import annotations

import numpy as np

from . import data as od

CHANCE = 1 / 3


def projector_tokens(model, batcher, items) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projector output at every object token of ``items``.

    Returns
    -------
    X : (n_tokens, d) float32 features
    slot : (n_tokens,) ordinal slot 0/1/2 along the item's axis
    pos : (n_tokens, 2) token row and column
    """
    import torch

    feats, slots, pos = [], [], []
    g = batcher.grid
    from .model import image_tokens

    with torch.no_grad():
        for i in range(0, len(items), 64):
            chunk = items[i:i + 64]
            z = image_tokens(model, batcher(chunk)).numpy()
            for b, it in enumerate(chunk):
                for slot in range(3):
                    for r, c in it.layout.cells(slot):
                        feats.append(z[b, r * g + c])
                        slots.append(slot)
                        pos.append((r, c))
    return np.asarray(feats, np.float32), np.asarray(slots), np.asarray(pos)


def _fit_score(xtr, ytr, xte, yte, seed: int = 0) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(xtr, ytr)
    return float(clf.score(xtr, ytr)), float(clf.score(xte, yte))


def _onehot(pos: np.ndarray, g: int) -> np.ndarray:
    out = np.zeros((len(pos), 2 * g), np.float32)
    out[np.arange(len(pos)), pos[:, 0]] = 1
    out[np.arange(len(pos)), g + pos[:, 1]] = 1
    return out


def slot_probe(model, batcher, splits, *, n_images: int = 300, init_model=None, seed: int = 0
               ) -> dict:
    """Ordinal-slot probe on the projector output, per axis, with controls.

    Parameters
    ----------
    model
        A (trained) organism.
    batcher
        :class:`organisms.model.Batcher` of the organism.
    splits
        :class:`organisms.data.Splits`; fit on training triples (training and held-out
        layouts), test on held-out triples (all layouts).
    n_images
        Probe-training images per axis (test: half as many).
    init_model
        The same architecture at its initial weights (control); skipped if ``None``.

    Returns
    -------
    dict
        ``{axis: {"trained": {"train": acc, "test": acc}, "init": ..., "position_only": ...}}``
        plus ``"mean_test"`` per variant over both axes.
    """
    rng = np.random.default_rng(seed)
    lays_all = list(splits.train_layouts) + list(splits.heldout_layouts)
    res: dict = {}
    for axis in ("h", "v"):
        lays = [lay for lay in lays_all if lay.axis == axis]
        dirs = ("left", "right") if axis == "h" else ("above", "below")

        def sample(triples, n):
            return [od.Item(triples[rng.integers(len(triples))], lays[rng.integers(len(lays))],
                            dirs[rng.integers(2)]) for _ in range(n)]

        tr_items = sample(splits.train_triples, n_images)
        te_items = sample(splits.heldout_triples, max(1, n_images // 2))
        row = {}
        models = [("trained", model)] + ([("init", init_model)] if init_model is not None else [])
        for name, m in models:
            xtr, ytr, ptr = projector_tokens(m, batcher, tr_items)
            xte, yte, pte = projector_tokens(m, batcher, te_items)
            a_tr, a_te = _fit_score(xtr, ytr, xte, yte, seed)
            row[name] = {"train": a_tr, "test": a_te, "n_train_tokens": len(ytr),
                         "n_test_tokens": len(yte)}
        g = batcher.grid
        a_tr, a_te = _fit_score(_onehot(ptr, g), ytr, _onehot(pte, g), yte, seed)
        row["position_only"] = {"train": a_tr, "test": a_te}
        row["majority"] = float(np.bincount(yte).max() / len(yte))
        res[axis] = row
    res["mean_test"] = {k: float(np.mean([res[a][k]["test"] for a in ("h", "v")]))
                        for k in res["h"] if isinstance(res["h"][k], dict)}
    return res


def shuffle_test(model, batcher, splits, *, n: int = 256, seeds=(11, 12)) -> dict:
    """Held-out accuracy with raster-order image tokens vs randomly permuted ones."""
    from .trainer import accuracy

    items = od.eval_items(splits, "ht_rand", n=n // 2, seed=3) + \
        od.eval_items(splits, "hl", n=n // 2, seed=3)
    plain = accuracy(model, batcher, items)
    shuffled = [accuracy(model, batcher, items, shuffle_seed=s) for s in seeds]
    return {"items": len(items), "raster": plain, "shuffled": float(np.mean(shuffled)),
            "drop": plain - float(np.mean(shuffled))}


def mechanism_report(model, processor, *, cfg, n_images: int = 200) -> dict:
    """Slot probe (with init-weight and position-only controls) and shuffle test for an organism.

    Returns
    -------
    dict
        ``{"probe": ..., "shuffle": ..., "summary": {...}}``; ``summary["vision_ordering"]`` is
        ``"yes"`` when the projector probe reaches 0.9 on held-out triples, ``"no"`` when it
        stays within 0.15 of chance (ordering, if any, is computed in the LM), else ``"partial"``.
    """
    import torch

    from .trainer import Batcher, build

    torch.manual_seed(cfg.seed)
    batcher = Batcher(processor, cfg.grid)
    splits = od.make_splits(cfg.grid, seed=cfg.split_seed)
    init_model, _ = build(cfg)
    init_model.eval()
    probe = slot_probe(model, batcher, splits, n_images=n_images, init_model=init_model)
    shuf = shuffle_test(model, batcher, splits)
    t = probe["mean_test"]["trained"]
    emerged = "yes" if t >= 0.9 else ("no" if t <= CHANCE + 0.15 else "partial")
    summary = {"probe_projector_slot": t, "probe_init_control": probe["mean_test"].get("init"),
               "probe_position_only": probe["mean_test"]["position_only"],
               "accuracy_raster": shuf["raster"], "accuracy_shuffled_tokens": shuf["shuffled"],
               "vision_ordering": emerged}
    return {"probe": probe, "shuffle": shuf, "summary": summary}
