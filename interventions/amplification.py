"""E7: amplify the vision-derived ordering component of every image token before LM layer 0.

``h <- h + alpha * sum_k (h . w_k / ||w_k||^2) w_k`` on all image tokens at ``lm.resid.0`` (the
projector output as the LM receives it; prefill only), for a sweep of ``alpha``, with a random
control (Gaussian directions with the same count and the same norms). Items are scored strictly:
with a two-option ``choice`` prompt the question is asked in both option orders and the item is
right only if both are.

Reported, each clearly labelled:

- ``held-out``: ``alpha`` chosen on a selection split (max net gain = fixed - broken), reported on
  the other items;
- ``cross-fitted alpha (K-fold)``: the items are cut into K folds (``cv_folds``), grouped so that
  items of one colour triple and its mirror (else one scene) share a fold; each fold is scored at
  the alpha chosen on the other folds by the held-out rule (max net, ties to the smaller alpha),
  and the counts are summed over folds, so every item is scored at an alpha chosen without it (the
  random direction likewise at each fold's own alpha, on that fold);
- ``in-sample best alpha``: the paper's "Probe": the single alpha that fixes most failing items,
  chosen and reported on the same items;
- ``in-sample per-item oracle``: the paper's "Probe*": a failing item counts as fixed if any
  alpha > 0 fixes it;

with fixed (failing -> right), broken (right -> failing), net and accuracy beside each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from .errors import InterventionError
from .hooks import Amplify, run
from .stimuli import base_items, option_ids, pick_prompt, prepare
from .sweeps import Edit, ForwardCounter, option_scores, sweep

SITE = "lm.resid.0"
CONTROLS = ("probe", "random")


def parse_alphas(spec: str | Any) -> tuple[float, ...]:
    """``"0:15:1"`` (inclusive start:stop:step) or ``"0,1,2.5"`` -> alphas.

    Raises
    ------
    InterventionError
        Malformed or empty range.
    """
    if not isinstance(spec, str):
        vals = tuple(float(a) for a in spec)
    else:
        s = spec.strip()
        try:
            if ":" in s:
                parts = [float(x) for x in s.split(":")]
                if len(parts) not in (2, 3):
                    raise ValueError
                a, b = parts[0], parts[1]
                step = parts[2] if len(parts) == 3 else 1.0
                if step <= 0:
                    raise InterventionError(f"alphas={spec!r}: the step must be > 0")
                n = int(np.floor((b - a) / step + 1e-9)) + 1
                vals = tuple(float(round(a + i * step, 10)) for i in range(max(n, 0)))
            else:
                vals = tuple(float(x) for x in s.split(",") if x.strip())
        except ValueError:
            raise InterventionError(f"alphas={spec!r} is malformed; use start:stop:step "
                                    "(inclusive, e.g. 0:15:1) or a list such as 0,2,4") from None
    if not vals:
        raise InterventionError(f"alphas={spec!r} is an empty range; give start <= stop, "
                                "e.g. 0:15:1")
    if any(not np.isfinite(a) for a in vals):
        raise InterventionError(f"alphas={spec!r} contains a non-finite value")
    return vals


@dataclass(frozen=True, kw_only=True, slots=True)
class AmplifyConfig:
    """Options of E7 (``spatialbind amplify``)."""

    alphas: tuple[float, ...] = tuple(float(a) for a in range(16))
    """Amplification strengths (``--alphas 0:15:1``); 0 is added if missing (the baseline)."""
    prompt: str = "choice"
    """Prompt kind; ``choice`` is asked in both option orders (strict scoring)."""
    both_orders: bool = True
    """Ask two-option prompts in both orders and require both right."""
    select_split: str = "val"
    """Held-out selection: alpha is chosen on items of this split (``--select-split``), reported
    on the others; if either side is empty, alternate items are used instead."""
    cv_folds: int = 4
    """Cross-fitted selection (``--cv-folds``): K folds of item groups (colour triple with its
    mirror, else scene); each fold scored at the alpha chosen on the other folds. With fewer groups than K,
    one fold per group (noted in the summary); with fewer than 2 groups it is not computed."""
    limit: int | None = None
    """Use the first N base stimuli (None: all)."""
    batch_size: int = 8
    """Rows (alpha x control) per batched forward."""
    seed: int = 0
    """Seed of the random-direction control."""
    recipe: str | None = None
    """``paper`` or ``robust`` (interventions/RECIPES.md); None: ``paper`` for the paper's
    presets, else ``robust``."""

    def __post_init__(self):
        if self.recipe is not None and self.recipe not in ("paper", "robust"):
            raise InterventionError(f"The 'recipe' parameter of AmplifyConfig must be paper or "
                                    f"robust. Got {self.recipe!r} instead.")
        al = parse_alphas(self.alphas)
        if 0.0 not in al:
            al = (0.0,) + al
        object.__setattr__(self, "alphas", tuple(sorted(set(al))))
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise InterventionError(f"The 'limit' parameter of AmplifyConfig must be an int >= 1 "
                                    f"or None. Got {self.limit!r} instead.")
        if (not isinstance(self.cv_folds, int) or isinstance(self.cv_folds, bool)
                or self.cv_folds < 2):
            raise InterventionError(f"The 'cv_folds' parameter of AmplifyConfig must be an int "
                                    f">= 2. Got {self.cv_folds!r} instead.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InterventionError(f"The 'batch_size' parameter of AmplifyConfig must be an int "
                                    f">= 1. Got {self.batch_size!r} instead.")


def random_control(w: np.ndarray, seed: int, *, unit: bool = False) -> np.ndarray:
    """Gaussian directions with the same count and the same per-direction norms as ``w``
    (``unit=True``: unit norms, as the authors' ``make_random_W`` draws them)."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    r = np.random.default_rng(seed).standard_normal(w.shape)
    norms = np.ones(len(w)) if unit else np.linalg.norm(w, axis=1)
    r *= (norms / np.linalg.norm(r, axis=1))[:, None]
    return r.astype(np.float32)


ENTRY_SITES = ("projector", "lm.resid.0")
#: Axis order of the paper recipe's per-axis random draws (the authors' ``AXES``).
AXES_ORDER = ("horizontal", "vertical")


def load_directions(paths, adapter) -> np.ndarray | dict[str, np.ndarray]:
    """Load probe directions with :func:`probes.load_direction`, checking model, site and width.

    Parameters
    ----------
    paths
        One direction directory or several (e.g. one per axis, as ``probes.axis_directions``
        exports them, with ``extra["axis"]`` set).
    adapter
        The model they will be applied to.

    Returns
    -------
    numpy.ndarray or dict
        ``(k, hidden)`` weights, or ``axis -> (k, hidden)`` when the directions name their axis.

    Raises
    ------
    InterventionError
        A direction trained on another model, on a site other than the LM input (``projector``
        / ``lm.resid.0``) or with another width, or an unreadable file.
    """
    from probes import load_direction

    paths = [paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__") else paths
    by_axis: dict[str, np.ndarray] = {}
    plain = []
    for path in paths:
        try:
            d = load_direction(path, expect_model=adapter.name, expect_width=adapter.d_lm)
        except ValueError as e:
            raise InterventionError(f"direction={str(path)!r}: {e}") from None
        if d.site not in ENTRY_SITES:
            raise InterventionError(
                f"direction={str(path)!r} was trained on site {d.site!r}, but E7 amplifies the LM "
                f"input (sites {ENTRY_SITES}); export a direction trained on the projector")
        w = np.asarray(d.weights, dtype=np.float32).reshape(-1, d.width)
        axis = (d.extra or {}).get("axis")
        if axis:
            by_axis[axis] = w
        else:
            plain.append(w)
    if by_axis and plain:
        raise InterventionError("mix of per-axis and axis-less directions; pass one kind")
    return by_axis if by_axis else np.concatenate(plain)


def mean_diff_directions(adapter, ds, *, split: str = "train", limit: int = 64,
                         prompt: str = "completion") -> dict[str, np.ndarray]:
    """A simple in-house direction per axis (clearly not a trained probe): the difference of the
    mean LM-input vectors of first-slot and last-slot object tokens minus the grand mean of
    object tokens, from ``split`` items. Returns ``axis -> (2, hidden)``."""
    sums: dict[tuple[str, int], list] = {}
    try:
        items = base_items(ds, split=split, limit=limit)
    except InterventionError:
        items = base_items(ds, limit=limit)
    for stim in items:
        p = prepare(adapter, ds, stim, pick_prompt(stim, prompt))
        h = run(adapter, p.inputs, capture=[SITE], last_only=True).acts[SITE][0]
        for o in p.layout.ordinals():
            pos = p.layout.positions(f"object:{o}")
            sums.setdefault((stim.axis, o), []).append(h[pos].double().mean(0).numpy())
    out = {}
    for axis in {a for a, _ in sums}:
        ords = sorted(o for a, o in sums if a == axis)
        means = {o: np.mean(sums[(axis, o)], 0) for o in ords}
        grand = np.mean(list(means.values()), 0)
        out[axis] = np.stack([means[ords[0]] - grand, means[ords[-1]] - grand]).astype(np.float32)
    if not out:
        raise InterventionError("mean-diff directions found no object tokens in the dataset")
    return out


def _variants(prompt, both: bool) -> list:
    if not both or prompt.kind != "choice" or len(prompt.options) != 2:
        return [prompt]
    a, b = prompt.options
    text = prompt.text.replace(f"{a} or {b}", f"{b} or {a}", 1)
    if text == prompt.text:
        return [prompt]
    import dataclasses

    return [prompt, dataclasses.replace(prompt, text=text, options=(b, a), spans={})]


def _dirs_for(directions, axis: str | None) -> np.ndarray:
    if isinstance(directions, Mapping):
        if axis not in directions:
            raise InterventionError(f"no direction for axis {axis!r}; directions are given for "
                                    f"{sorted(directions)}")
        return np.atleast_2d(np.asarray(directions[axis], dtype=np.float32))
    return np.atleast_2d(np.asarray(directions, dtype=np.float32))


@dataclass
class Question:
    """One question of an E7 item: image loader, prompt (text or scenegen Prompt), options."""

    image: Callable[[], Any]
    prompt: Any
    options: tuple[str, ...]
    answer: str
    system: str | None = None


@dataclass
class E7Item:
    """An item scored strictly: right only if every question is answered right."""

    id: str
    split: str
    axis: str | None
    questions: list[Question]
    group: str | None = None
    """Items of one group share a cross-fitting fold (:func:`item_group`); None: the item alone."""


def item_group(stim) -> str:
    """The cross-fitting group of a stimulus: ``mirror:<c0>|<c1>|<c2>`` when its factors record
    a colour triple (the triple and its mirror share a group, as in the organisms' held-out
    split and ``SplitConfig(by="mirror")``: a mirrored horizontal item is the other one's image
    flipped, with the answer's side swapped), else ``scene:<scene id>`` (the base stimulus and
    its twins), else ``item:<id>``."""
    triple = (getattr(stim, "factors", None) or {}).get("triple")
    if triple:
        t = tuple(str(c) for c in triple)
        return "mirror:" + "|".join(min(t, t[::-1]))
    if getattr(stim, "scene_id", ""):
        return f"scene:{stim.scene_id}"
    return f"item:{stim.id}"


def dataset_items(ds, config: AmplifyConfig) -> list[E7Item]:
    """E7 items of a generated dataset: the ``config.prompt`` prompt, in both option orders for
    two-option ``choice`` prompts."""
    out = []
    for stim in base_items(ds, limit=config.limit):
        qs = [Question(image=(lambda s=stim: ds.image(s)), prompt=p, options=tuple(p.options),
                       answer=p.answer)
              for p in _variants(pick_prompt(stim, config.prompt), config.both_orders)]
        out.append(E7Item(id=stim.id, split=stim.split, axis=stim.axis, questions=qs,
                          group=item_group(stim)))
    return out


def whatsup_items(spec: str, config: AmplifyConfig, *, model_name: str,
                  template: str = "auto") -> list[E7Item]:
    """E7 items of What'sUp (``whatsup:ROOT:COCO_QA_two_obj``): the paper's two-option question
    in both orders (the evaluation's prompts and templates, see :mod:`interventions.questions`)."""
    from .questions import load_items, resolve_template, two_option_queries

    tpl = resolve_template(template, model_name)
    out = []
    for i, it in enumerate(load_items(spec, limit=config.limit)):
        qs = [Question(image=it.load_image, prompt=q.prompt, options=q.options, answer=q.answer,
                       system=q.system) for q in two_option_queries(i, it.stimulus, tpl)]
        out.append(E7Item(id=it.stimulus.id, split=it.stimulus.split, axis=it.stimulus.axis,
                          questions=qs, group=item_group(it.stimulus)))
    return out


def run_e7(adapter, data, directions, config: AmplifyConfig = AmplifyConfig(), *,
           progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """E7: alpha sweep of :class:`~interventions.hooks.Amplify` on all image tokens.

    Parameters
    ----------
    adapter
        ``vlms`` adapter.
    data
        A scenegen dataset, or a list of :class:`E7Item` (e.g. :func:`whatsup_items`).
    directions
        ``(k, hidden)`` array, or ``axis -> (k, hidden)``.
    config
        :class:`AmplifyConfig`.

    Returns
    -------
    (table, summary)
        One row per (item, control, alpha) with strict correctness; the summary holds the
        dose-response and the four labelled selections for both controls.
    """
    from tqdm.auto import tqdm

    items = dataset_items(data, config) if hasattr(data, "stimuli") else list(data)
    if not items:
        raise InterventionError("E7 got no items; check the data and limit parameters")
    counter = ForwardCounter()
    rows = []
    mods: dict[tuple, Amplify] = {}
    keys = [(c, a) for c in CONTROLS for a in config.alphas]
    for item in tqdm(items, desc="E7 amplify", disable=not progress, dynamic_ncols=True):
        w = _dirs_for(directions, item.axis)
        if w.shape[1] != adapter.d_lm:
            raise InterventionError(f"direction width {w.shape[1]} != model hidden size "
                                    f"{adapter.d_lm}")
        if config.recipe == "paper":  # the authors' make_random_W: a fresh draw per axis,
            # unit-norm columns (seeded here: theirs is not)
            rnd = random_control(w, config.seed + AXES_ORDER.index(item.axis)
                                 if item.axis in AXES_ORDER else config.seed, unit=True)
        else:
            rnd = random_control(w, config.seed)
        ctrl = {"probe": w, "random": rnd}
        for c, a in keys:
            # paper: the authors' hook arithmetic (model dtype, + 1e-8); see Amplify
            mods.setdefault((item.axis, c, a), Amplify(ctrl[c], a,
                                                       exact=config.recipe == "paper"))
        ok = {k: True for k in keys}
        margin = {k: 0.0 for k in keys}
        top_ok = {k: "" for k in keys}  # per order: 1 = top-1 token is the truth
        in_axis = {k: True for k in keys}  # every order's top-1 token is one of the options
        for q in item.questions:
            batch = adapter.prepare([q.image()], [q.prompt], system=q.system)
            img = np.asarray(batch.image_positions[0]).tolist()
            edits = [[Edit(site=SITE, intervention=mods[(item.axis, c, a)], tokens=img)]
                     for c, a in keys]
            res = sweep(adapter, batch.inputs, edits, batch_size=config.batch_size)
            counter.add(res.counter)
            opts = list(q.options)
            # scored as `spatialbind evaluate` scores two-option questions (max over spellings)
            probs = option_scores(res.row_logits, option_ids(adapter.tokenizer, opts))
            ans = opts.index(q.answer)
            norm_opts = {_norm(o) for o in opts}
            for k, pr, lg in zip(keys, probs, res.row_logits):
                ok[k] &= opts[int(pr.argmax())] == q.answer
                margin[k] += float(pr[ans] - np.delete(pr, ans).max())
                top = _norm(adapter.tokenizer.decode([int(lg.float().argmax())]))
                top_ok[k] += "1" if top == _norm(q.answer) else "0"
                in_axis[k] &= top in norm_opts
        for (c, a), v in ok.items():
            rows.append({"item": item.id, "split": item.split, "axis": item.axis,
                         "group": item.group or f"item:{item.id}", "control": c,
                         "alpha": a, "correct": bool(v),
                         "margin": margin[(c, a)] / len(item.questions),
                         "top1_orders": top_ok[(c, a)], "top1_in_axis": bool(in_axis[(c, a)])})
    table = pd.DataFrame(rows)
    summary = summarize_e7(table, config)
    summary["paper"] = summarize_e7_paper(table)
    summary.update(forwards=counter.forwards, naive_forwards=counter.naive_forwards)
    return table, summary


def apply_recipe(summary: dict[str, Any], recipe: str) -> dict[str, Any]:
    """Record ``recipe`` in an E7 summary; under ``paper`` the headline ``selections`` become the
    authors' (``summary["paper"]``) and the robust ones move to ``selections_robust``."""
    summary["recipe"] = recipe
    if recipe == "paper":
        summary["selections_robust"] = summary["selections"]
        summary["selections"] = [
            {**r, "broken": None, "net": r["fixed"]} for r in summary["paper"]["selections"]]
    return summary


def _effects(t: pd.DataFrame) -> pd.DataFrame:
    """Per (control, alpha): accuracy, fixed, broken, net vs alpha = 0, over the items in ``t``."""
    base = t[t["alpha"] == 0].set_index(["control", "item"])["correct"]
    t = t.join(base.rename("base"), on=["control", "item"])
    g = t.groupby(["control", "alpha"])
    out = pd.DataFrame({
        "accuracy": g["correct"].mean(),
        "fixed": g.apply(lambda x: int((~x["base"] & x["correct"]).sum())),
        "broken": g.apply(lambda x: int((x["base"] & ~x["correct"]).sum())),
        "n_fail": g.apply(lambda x: int((~x["base"]).sum())),
        "n": g.size()}).reset_index()
    out["net"] = out["fixed"] - out["broken"]
    out["fix_rate"] = out["fixed"] / out["n_fail"].where(out["n_fail"] > 0)
    return out


CROSS_FITTED = "cross-fitted alpha (K-fold)"
"""Label of the cross-fitted selection (criterion 4 reads it, ``organisms.criteria``)."""
HELD_OUT = "held-out alpha"
"""Label of the selection on the ``select_split`` items."""


def _pick_alpha(d: pd.DataFrame) -> float:
    """The held-out rule: max net gain, ties to the smaller alpha (``d``: one control's
    :func:`_effects` rows)."""
    return float(d.sort_values(["net", "alpha"], ascending=[False, True])["alpha"].iloc[0])


def item_groups(table: pd.DataFrame) -> dict[str, str]:
    """item -> cross-fitting group, from the table's ``group`` column (tables written before it
    existed, or a missing value: each item its own group)."""
    items = list(dict.fromkeys(table["item"]))
    if "group" not in table.columns:
        return {i: f"item:{i}" for i in items}
    g = table.drop_duplicates("item").set_index("item")["group"]
    return {i: (str(g[i]) if isinstance(g[i], str) and g[i] else f"item:{i}") for i in items}


def cross_fit_folds(groups: Mapping[str, str], k: int, seed: int) -> list[list[str]]:
    """Cut items into ``min(k, number of groups)`` folds, every group in one fold.

    The groups, sorted by name, are put in a random order drawn from ``seed``; each in turn
    goes to the fold with the fewest items so far (ties: the lower fold index). Deterministic
    given ``seed`` and the item -> group map (not the item order). Items keep their order in
    ``groups`` within a fold.
    """
    names = sorted(set(groups.values()))
    size = {n: 0 for n in names}
    for g in groups.values():
        size[g] += 1
    k = min(int(k), len(names))
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    load = [0] * k
    fold_of: dict[str, int] = {}
    for n in order:
        f = int(np.argmin(load))
        fold_of[n] = f
        load[f] += size[n]
    return [[i for i, g in groups.items() if fold_of[g] == f] for f in range(k)]


def cross_fitted(table: pd.DataFrame, config: AmplifyConfig, control: str) -> dict[str, Any]:
    """The cross-fitted selection for ``control`` (see the module docstring): per fold, alpha
    chosen on the other folds by :func:`_pick_alpha` and that fold scored at it; fixed, broken,
    failing items (and, for the probe, answers the random direction changes at the fold's alpha
    on the fold) summed over folds."""
    groups = item_groups(table)
    n_groups = len(set(groups.values()))
    kinds = sorted({g.split(":", 1)[0] for g in groups.values()})
    grouping = {"mirror": "colour triple and its mirror", "scene": "scene", "item": "item"}
    by = " / ".join(grouping.get(k, k) for k in kinds)
    row: dict[str, Any] = {"selection": CROSS_FITTED, "control": control, "alpha": None,
                           "alpha_summary": "median of the fold alphas", "fold_alphas": None,
                           "fixed": None, "broken": None, "net": None, "n_fail": None,
                           "n": len(groups), "fix_rate": None, "base_accuracy": None,
                           "accuracy": None, "cv_folds": None, "cv_folds_asked": config.cv_folds,
                           "n_groups": n_groups, "grouped_by": by, "folds": []}
    if n_groups < 2:
        row["note"] = (f"not computed: cross-fitting needs items of at least 2 groups "
                       f"(grouped by {by}); got {n_groups}")
        return row
    folds = cross_fit_folds(groups, config.cv_folds, config.seed)
    k = len(folds)
    tc = table[table["control"] == control]
    tr = table[table["control"] == "random"]
    tot = {"fixed": 0, "broken": 0, "n_fail": 0, "n": 0, "right": 0, "base_right": 0}
    rand_changed = 0
    for f, test in enumerate(folds):
        d_train = _effects(tc[~tc["item"].isin(test)])
        a = _pick_alpha(d_train)
        d_test = _effects(tc[tc["item"].isin(test)])
        r = d_test[d_test["alpha"] == a].iloc[0]
        b = d_test[d_test["alpha"] == 0].iloc[0]
        fold = {"fold": f, "alpha": a, "n": int(r["n"]), "n_fail": int(r["n_fail"]),
                "fixed": int(r["fixed"]), "broken": int(r["broken"]),
                "groups": sorted({groups[i] for i in test})}
        if control == "probe" and len(tr):
            d_rand = _effects(tr[tr["item"].isin(test)])
            rr = d_rand[d_rand["alpha"] == a].iloc[0]
            fold["random_changed"] = int(rr["fixed"]) + int(rr["broken"])
            rand_changed += fold["random_changed"]
        row["folds"].append(fold)
        for key in ("fixed", "broken", "n_fail", "n"):
            tot[key] += int(r[key])
        tot["right"] += int(round(float(r["accuracy"]) * int(r["n"])))
        tot["base_right"] += int(round(float(b["accuracy"]) * int(b["n"])))
    alphas = [fd["alpha"] for fd in row["folds"]]
    row.update(alpha=float(np.median(alphas)), fold_alphas=alphas, fixed=tot["fixed"],
               broken=tot["broken"], net=tot["fixed"] - tot["broken"], n_fail=tot["n_fail"],
               n=tot["n"], fix_rate=tot["fixed"] / tot["n_fail"] if tot["n_fail"] else None,
               base_accuracy=tot["base_right"] / tot["n"], accuracy=tot["right"] / tot["n"],
               cv_folds=k)
    if control == "probe" and len(tr):
        row["random_changed"] = rand_changed / tot["n"]
    note = (f"{k} folds grouped by {by}: each fold scored at the alpha chosen on the other "
            f"folds (max net, ties to the smaller alpha), counts summed over folds; alpha = "
            f"median of the fold alphas {alphas}")
    if k < config.cv_folds:
        note += f"; K reduced from {config.cv_folds} to {k}: only {n_groups} groups"
    row["note"] = note
    return row


def summarize_e7(table: pd.DataFrame, config: AmplifyConfig) -> dict[str, Any]:
    """Dose-response and the four labelled alpha selections (see the module docstring)."""
    items = list(dict.fromkeys(table["item"]))
    split_of = dict(zip(table["item"], table["split"]))
    sel = [i for i in items if split_of[i] == config.select_split]
    ev = [i for i in items if split_of[i] != config.select_split]
    how = f"select on split {config.select_split!r}, report on the other splits"
    if not sel or not ev:
        sel, ev = items[0::2], items[1::2]
        how = "select on even-numbered items, report on odd-numbered items (split was one-sided)"
    dose = _effects(table)
    out: dict[str, Any] = {"experiment": "E7", "n_items": len(items),
                           "alphas": list(config.alphas),
                           "dose_response": dose.to_dict("records"), "selections": []}
    for c in CONTROLS:
        d_all = dose[dose["control"] == c]
        base_acc = float(d_all.loc[d_all["alpha"] == 0, "accuracy"].iloc[0])
        # held-out
        d_sel = _effects(table[table["item"].isin(sel)])
        d_sel = d_sel[d_sel["control"] == c]
        a_star = float(d_sel.sort_values(["net", "alpha"], ascending=[False, True])
                       ["alpha"].iloc[0]) if len(sel) else 0.0
        d_ev = _effects(table[table["item"].isin(ev)])
        r = d_ev[(d_ev["control"] == c) & (d_ev["alpha"] == a_star)].iloc[0]
        b = d_ev[(d_ev["control"] == c) & (d_ev["alpha"] == 0)].iloc[0]
        out["selections"].append(_sel(HELD_OUT, c, a_star, r, b, how,
                                      n_select=len(sel)))
        out["selections"].append(cross_fitted(table, config, c))
        # paper's Probe: best single alpha on the failing items, in-sample
        cand = d_all[d_all["alpha"] > 0]
        if len(cand):
            best = cand.sort_values(["fixed", "alpha"], ascending=[False, True]).iloc[0]
            b_all = d_all[d_all["alpha"] == 0].iloc[0]
            out["selections"].append(_sel("in-sample best alpha (paper's Probe)", c,
                                          float(best["alpha"]), best, b_all,
                                          "alpha chosen on the same failing items it is "
                                          "reported on"))
            # paper's Probe*: per-item oracle
            t = table[table["control"] == c]
            base = t[t["alpha"] == 0].set_index("item")["correct"]
            anyfix = t[t["alpha"] > 0].groupby("item")["correct"].any()
            fail = base[~base].index
            fixed = int(anyfix.reindex(fail).fillna(False).sum())
            out["selections"].append({
                "selection": "in-sample per-item oracle (paper's Probe*)", "control": c,
                "alpha": None, "fixed": fixed, "broken": None, "net": fixed,
                "n_fail": int(len(fail)), "n": int(len(base)),
                "fix_rate": fixed / len(fail) if len(fail) else None,
                "base_accuracy": base_acc,
                "accuracy": (int(base.sum()) + fixed) / len(base),
                "note": "each failing item gets its own best alpha; broken items not counted"})
    return out


def _norm(text: str) -> str:
    import re

    return re.sub(r"[^0-9a-z]", "", str(text).lower())


def summarize_e7_paper(table: pd.DataFrame) -> dict[str, Any]:
    """E7 scored as the authors score it (``coco_amplification/src/common.py``): each order's
    next-token argmax over the whole vocabulary, normalised, must be the truth; items whose
    baseline top-1 is out of the axis in any order are dropped (the "clean" set); a failing item
    is *fixed* at alpha when every order that failed at baseline now predicts the truth (orders
    right at baseline are not re-checked). ``Probe``: the single alpha > 0 with most fixes,
    chosen on the failing items themselves; ``Probe*``: fixed at any alpha > 0. Accuracy =
    (golden + fixed) / clean items; fix rate = fixed / failing items."""
    out: dict[str, Any] = {"selections": []}
    for c in CONTROLS:
        t = table[table["control"] == c]
        base = t[t["alpha"] == 0].set_index("item")
        clean = base[base["top1_in_axis"]]
        n_dropped = int(len(base) - len(clean))
        orders = clean["top1_orders"]
        golden = orders[orders.map(lambda o: set(o) == {"1"})].index
        fail = orders.index.difference(golden)
        outcomes = {"golden": len(golden), "fail_both": 0, "fail_lr_only": 0, "fail_rl_only": 0}
        for o in orders[fail]:
            key = ("fail_both" if o.count("0") > 1 else
                   "fail_lr_only" if o[:1] == "0" else "fail_rl_only")
            outcomes[key] += 1
        fixes: dict[float, set] = {}
        for a, g in t[(t["alpha"] > 0) & t["item"].isin(fail)].groupby("alpha"):
            now = g.set_index("item")["top1_orders"]
            fixes[float(a)] = {i for i in fail if all(
                n == "1" for b, n in zip(orders[i], now.get(i, "")) if b == "0")}
        n_clean = len(clean)
        common = {"control": c, "n": n_clean, "n_fail": len(fail), "n_golden": len(golden),
                  "n_dropped_out_of_axis": n_dropped, "outcomes": outcomes,
                  "base_accuracy": len(golden) / n_clean if n_clean else None}
        a_best = sorted(fixes, key=lambda a: (-len(fixes[a]), a))[0] if fixes else None
        k = len(fixes[a_best]) if fixes else 0
        anyfix = set().union(*fixes.values()) if fixes else set()
        note = None if n_clean else ("no item kept: every item's baseline top-1 token is out "
                                     "of the axis in some order")
        for name, alpha, n_fixed in (
                ("Probe (the authors' best global alpha, in-sample)", a_best, k),
                ("Probe* (the authors' per-item oracle)", None, len(anyfix))):
            out["selections"].append({
                **common, "selection": name, "alpha": alpha, "fixed": n_fixed,
                "fix_rate": n_fixed / len(fail) if len(fail) else None,
                "accuracy": (len(golden) + n_fixed) / n_clean if n_clean else None,
                "note": note})
    return out


def _sel(name, control, alpha, r, b, note, **extra) -> dict[str, Any]:
    d = {"selection": name, "control": control, "alpha": alpha, "fixed": int(r["fixed"]),
         "broken": int(r["broken"]), "net": int(r["net"]), "n_fail": int(r["n_fail"]),
         "n": int(r["n"]),
         "fix_rate": None if pd.isna(r["fix_rate"]) else float(r["fix_rate"]),
         "base_accuracy": float(b["accuracy"]), "accuracy": float(r["accuracy"]), "note": note}
    d.update(extra)
    return d
