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
from .criteria import CHANCE, classify


def projector_tokens(model, batcher, items, region: str = "object"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projector output at every token of ``region`` (``organisms.data.region_slots``:
    ``object``, ``strip`` or ``band``) of ``items``.

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
                lab = od.region_slots(it.layout, g, region)
                for k in np.flatnonzero(lab >= 0):
                    feats.append(z[b, k])
                    slots.append(int(lab[k]))
                    pos.append((k // g, k % g))
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


def slot_probe(model, batcher, splits, *, n_images: int = 300, init_model=None, seed: int = 0,
               region: str = "object") -> dict:
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
            xtr, ytr, ptr = projector_tokens(m, batcher, tr_items, region)
            xte, yte, pte = projector_tokens(m, batcher, te_items, region)
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


def _check_items(splits, n: int, seed: int = 4):
    """Held-out items for the check: held-out triples on training layouts and on held-out ones."""
    return od.eval_items(splits, "ht_rand", n=n // 2, seed=seed) + \
        od.eval_items(splits, "ht_hl", n=n - n // 2, seed=seed)


def _predict_with_tokens(model, batcher, items, tokens):
    """Next-token predictions when the LM receives ``tokens`` (``(B, n, d)``) as image tokens."""
    import torch

    from .model import last_logits, projector_module

    flat = tokens.reshape(-1, tokens.shape[-1])
    h = projector_module(model).register_forward_hook(
        lambda m, a, o: flat.to(o.dtype).reshape(o.shape))
    try:
        with torch.no_grad():
            return last_logits(model, batcher(items)).argmax(-1)
    finally:
        h.remove()


def ablation_test(model, batcher, splits, *, n: int = 128) -> dict:
    """E5 on the organism's own stimuli: accuracy before and after ablating vision ordering at
    the LM input (object tokens <- the square alone and centred, the rest <- a blank canvas)."""
    import torch

    from .model import last_logits
    from .trainer import ablation_tokens

    items = _check_items(splits, n)
    base = abl = 0
    for i in range(0, len(items), 64):
        chunk = items[i:i + 64]
        gold = batcher.answer_ids(chunk)
        with torch.no_grad():
            base += int((last_logits(model, batcher(chunk)).argmax(-1) == gold).sum())
        a = ablation_tokens(model, chunk, batcher.grid)
        abl += int((_predict_with_tokens(model, batcher, chunk, a) == gold).sum())
    return {"items": len(items), "base": base / len(items), "ablated": abl / len(items),
            "chance": CHANCE}


def _translate(layout, slot_to, slot_from, g, region):
    """Cell pairs (to, from): region of ``slot_to`` <- region of ``slot_from`` translated by the
    anchors' offset (the criss-cross map of ``interventions.layout.map_region``)."""
    lab = od.region_slots(layout, g, region)
    a_to = np.array(min(layout.cells(slot_to)))
    a_from = np.array(min(layout.cells(slot_from)))
    d = a_from - a_to
    to, frm = [], []
    for k in np.flatnonzero(lab == slot_to):
        r, c = k // g + d[0], k % g + d[1]
        if 0 <= r < g and 0 <= c < g and lab[r * g + c] == slot_from:
            to.append(int(k))
            frm.append(int(r * g + c))
    return to, frm


def crisscross_test(model, batcher, splits, *, n: int = 128,
                    regions=("object", "strip", "band")) -> dict:
    """E4 at the LM input on the organism's own stimuli: the clean image (c0, c1, c2) takes, in
    its first square's region, the criss-cross source (c2, c1, c0)'s last-square region and vice
    versa; flip rate = share of items whose answer becomes the source's answer."""
    import torch

    from .model import image_tokens

    items = _check_items(splits, n)
    g = batcher.grid
    out = {}
    flips = {r: 0 for r in regions}
    for i in range(0, len(items), 64):
        chunk = items[i:i + 64]
        src = [od.Item(it.colours[::-1], it.layout, it.direction) for it in chunk]
        with torch.no_grad():
            zc = image_tokens(model, batcher(chunk))
            zs = image_tokens(model, batcher(src))
        target = batcher.answer_ids(src)
        for region in regions:
            z = zc.clone()
            for b, it in enumerate(chunk):
                for a, c in ((0, 2), (2, 0)):
                    to, frm = _translate(it.layout, a, c, g, region)
                    z[b, to] = zs[b, frm]
            flips[region] += int((_predict_with_tokens(model, batcher, chunk, z) == target).sum())
    for r in regions:
        out[r] = flips[r] / len(items)
    out["items"] = len(items)
    return out


def e6_test(model, batcher, splits, *, n: int = 128) -> dict:
    """E6 on the organism's own stimuli: E5's ablation on the clean item (c0, c1, c2) and on its
    criss-cross twin (c2, c1, c0), then, per LM residual site ``lm.resid.K`` (0 = the LM input,
    K >= 1 = output of LM layer K - 1), the clean run's first-square object tokens take the
    twin's last-square ones and vice versa (the E4 object map) at that site. A flip means the
    answer becomes the twin's. A flip at site K means the LM's own ordering code in the object
    tokens at K decides the answer once the vision tokens carry none (where the ``dual`` backup
    acts). At site 0 the two swapped ablated tokens are the same colour's, so only a positional
    reading remains there.

    Returns
    -------
    dict
        ``items``; ``ablated_accuracy`` (clean runs right under the ablation);
        ``kept_right_under_ablation`` (items right under the ablation on both runs, the paper's
        filter); ``flip_rate`` ``{K: rate}`` among the kept items (the criterion's number);
        ``flip_rate_all`` ``{K: rate}`` over all items; ``flip_layers``: the sites whose
        ``flip_rate`` is above ``criteria.THRESHOLDS['e6_flip_min']``.
    """
    import torch

    from vlms.registry import adapter_for

    from .criteria import THRESHOLDS
    from .trainer import ablation_tokens

    adapter = adapter_for(model)
    sites = list(range(int(model.config.get_text_config().num_hidden_layers) + 1))
    items = _check_items(splits, n)
    g = batcher.grid
    flips = {k: 0 for k in sites}
    flips_all = {k: 0 for k in sites}
    kept = right_clean = 0

    def run(chunk, tokens, fns):
        with adapter.hooks(fns):
            return _predict_with_tokens(model, batcher, chunk, tokens)

    for i in range(0, len(items), 64):
        chunk = items[i:i + 64]
        src = [od.Item(it.colours[::-1], it.layout, it.direction) for it in chunk]
        ac, as_ = ablation_tokens(model, chunk, g), ablation_tokens(model, src, g)
        img_c = batcher(chunk)["input_ids"] == batcher.image_token_id
        img_s = batcher(src)["input_ids"] == batcher.image_token_id
        gold, target = batcher.answer_ids(chunk), batcher.answer_ids(src)
        cache = {}
        grab = {f"lm.resid.{k}": (lambda k: lambda act: cache.__setitem__(k, act.clone()))(k)
                for k in sites}
        pred_src = run(src, as_, grab)
        pred_clean = run(chunk, ac, {})
        right = ((pred_clean == gold) & (pred_src == target)).numpy()
        kept += int(right.sum())
        right_clean += int((pred_clean == gold).sum())
        to, frm = [], []
        for j, it in enumerate(chunk):
            pc = torch.nonzero(img_c[j]).flatten()
            ps = torch.nonzero(img_s[j]).flatten()
            t0, f0 = _translate(it.layout, 0, 2, g, "object")
            t1, f1 = _translate(it.layout, 2, 0, g, "object")
            to.append(pc[list(t0) + list(t1)])
            frm.append(ps[list(f0) + list(f1)])
        for k in sites:
            def patch(act, k=k):
                act = act.clone()
                for j in range(len(chunk)):
                    act[j, to[j]] = cache[k][j, frm[j]].to(act.dtype)
                return act

            pred = run(chunk, ac, {f"lm.resid.{k}": patch})
            hit = (pred == target).numpy()
            flips[k] += int((hit & right).sum())
            flips_all[k] += int(hit.sum())
    rates = {k: (flips[k] / kept if kept else float("nan")) for k in sites}
    return {"items": len(items), "ablated_accuracy": right_clean / len(items),
            "kept_right_under_ablation": kept, "flip_rate": rates,
            "flip_rate_all": {k: v / len(items) for k, v in flips_all.items()},
            "flip_layers": [k for k in sites if kept and rates[k] > THRESHOLDS["e6_flip_min"]]}


def criteria_of(mechanism: str, summary: dict) -> list[dict]:
    """Criteria 1-3 of ``organisms.criteria`` for a planted ``mechanism`` from a
    :func:`mechanism_report` summary (1: probe on object and band tokens; 2: object and band
    criss-cross at the LM input; 3: E5 on the check items and, for ``dual``, :func:`e6_test`'s
    flip layers). Criterion 4 (E7) needs the demo."""
    from . import criteria as C

    s = summary
    return [C.criterion_probe(mechanism, s["probe_projector_slot"],
                              s["probe_projector_slot_strip"]),
            C.criterion_crisscross(mechanism, s["flip_object"], s["flip_band"]),
            C.criterion_ablation(mechanism, s["accuracy_base"],
                                 s["accuracy_ablated_vision_ordering"], s.get("e6_flip_layers"))]


def mechanism_report(model, processor, *, cfg, n_images: int = 200, n_items: int = 128) -> dict:
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
    # band tokens: 8-24 per image (object tokens: 1-4), so a quarter of the images suffices
    strip = slot_probe(model, batcher, splits, n_images=max(4, n_images // 4), region="band")
    shuf = shuffle_test(model, batcher, splits, n=2 * n_items)
    abl = ablation_test(model, batcher, splits, n=n_items)
    cc = crisscross_test(model, batcher, splits, n=n_items)
    e6 = e6_test(model, batcher, splits, n=n_items)
    t = probe["mean_test"]["trained"]
    emerged = "yes" if t >= 0.9 else ("no" if t <= CHANCE + 0.15 else "partial")
    summary = {"probe_projector_slot": t, "probe_init_control": probe["mean_test"].get("init"),
               "probe_position_only": probe["mean_test"]["position_only"],
               "probe_projector_slot_strip": strip["mean_test"]["trained"],
               "accuracy_raster": shuf["raster"], "accuracy_shuffled_tokens": shuf["shuffled"],
               "accuracy_base": abl["base"], "accuracy_ablated_vision_ordering": abl["ablated"],
               "flip_object": cc["object"], "flip_strip": cc["strip"], "flip_band": cc["band"],
               "e6_flip_rate": {str(k): v for k, v in e6["flip_rate"].items()},
               "e6_flip_layers": e6["flip_layers"], "e6_items_kept": e6["kept_right_under_ablation"],
               "vision_ordering": emerged,
               "mechanism": classify(t, abl["ablated"], abl["base"])}
    return {"probe": probe, "probe_strip": strip, "shuffle": shuf, "ablation": abl,
            "crisscross": cc, "e6": e6, "summary": summary}
