"""Behavioural evaluation (the paper's E1, and What'sUp): runs any adapter, saves per-item predictions.

Where it sits: reads stimuli (a dataset directory made by ``scenegen``, or the What'sUp release
through :mod:`scenegen.importers.whatsup`), asks a :class:`vlms.base.VLMAdapter` for scores, and
hands rows to :mod:`study.evaluate_report` (``predictions.parquet``, ``summary.csv``, a
bar chart). ``spatialbind evaluate`` is a thin wrapper around :func:`evaluate`.

Protocols
---------
``caption``
    What'sUp's original scoring: every caption option is scored by its log-likelihood given the
    image (``adapter.caption_logprob``); the argmax must be the correct caption (option 0 in the
    release). Controlled A/B also get the original pair and set accuracy. On generated datasets
    the choice / yes-no prompts are scored this way (each option as the whole answer).
``two-option``
    The dual-mechanisms paper's variant: a two-option question (the true relation and its
    opposite) asked in both option orders, scored by the next-token log-probabilities of the two
    option words (``adapter.score_options``); an item is correct only if both orders are right
    (strict). ``template="anchor"`` is the paper's Qwen2-VL/Pixtral wording, ``"direct"`` its
    Gemma-3 wording (no system message); ``"auto"`` picks ``direct`` for Gemma models.
``completion``
    The paper's E1 for generated datasets: each completion prompt of a stimulus (e.g. "The color
    of the square to the left of the red square is ") with its system message; the top-1 next
    token, normalised to lower-case alphanumerics, must equal the answer. The probability of the
    answer among the prompt's options is reported beside it. Stimuli without a completion prompt
    are asked their choice / yes-no prompts instead, scored by the argmax over the options.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from interventions.errors import EvaluationError
from interventions.questions import (  # noqa: F401  (re-exported: the evaluation's items and queries)
    PROTOCOLS, EvalItem, Query, build_queries, caption_queries, completion_queries, load_items,
    parse_data, resolve_protocol, resolve_template, two_option_queries, two_option_text)

from .whatsup_metrics import normalise_token, softmax


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalConfig:
    """Resolved settings of one evaluation run (saved as ``config.json`` next to the outputs)."""

    model: str
    """Adapter name, hub id or local directory (``tiny-qwen2-vl``, ``Qwen/Qwen2-VL-7B-Instruct``).
    """
    data: str
    """A dataset directory, or ``whatsup:ROOT`` / ``whatsup:ROOT:SUBSET``."""
    protocol: Literal["auto", "caption", "two-option", "completion"] = "auto"
    """``auto``: ``caption`` for What'sUp, ``completion`` for generated datasets."""
    batch_size: int = 8
    """Items per forward pass."""
    limit: int | None = None
    """Evaluate only the first N items (per What'sUp subset)."""
    coco_annotations: str | None = None
    """COCO ``instances_val2017.json``: boxes and masks for What'sUp COCO subsets."""
    template: Literal["auto", "anchor", "direct"] = "auto"
    """Two-option wording: ``anchor`` (paper's Qwen2-VL prompt), ``direct`` (its Gemma-3 prompt)."""
    recipe: str | None = None
    """``paper`` or ``robust`` (interventions/RECIPES.md); None: ``paper`` for the paper's
    presets, else ``robust``. Recorded in ``config.json`` and ``metrics.json``."""

    def __post_init__(self):
        if self.recipe is not None and self.recipe not in ("paper", "robust"):
            raise EvaluationError("The 'recipe' parameter of EvalConfig must be paper or robust. "
                                  f"Got {self.recipe!r} instead.")
        if self.protocol not in ("auto",) + PROTOCOLS:
            raise EvaluationError(
                f"The 'protocol' parameter of EvalConfig must be one of auto, "
                f"{', '.join(PROTOCOLS)}. Got {self.protocol!r} instead.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise EvaluationError("The 'batch_size' parameter of EvalConfig must be an int >= 1. "
                                  f"Got {self.batch_size!r} instead.")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise EvaluationError("The 'limit' parameter of EvalConfig must be an int >= 1 or "
                                  f"None. Got {self.limit!r} instead.")
        if self.template not in ("auto", "anchor", "direct"):
            raise EvaluationError("The 'template' parameter of EvalConfig must be one of auto, "
                                  f"anchor, direct. Got {self.template!r} instead.")
        if not str(self.model).strip():
            raise EvaluationError("The 'model' parameter of EvalConfig must be an adapter name, "
                                  "hub id or local directory. Got an empty string instead.")
        if not str(self.data).strip():
            raise EvaluationError("The 'data' parameter of EvalConfig must be a dataset directory "
                                  "or whatsup:ROOT[:SUBSET]. Got an empty string instead.")


# --------------------------------------------------------------------------- scoring
def top1_tokens(adapter, images, prompts: Sequence[str], system: str | None) -> list[str]:
    """Decoded top-1 next token of each (image, prompt) (greedy, one forward pass)."""
    if hasattr(adapter, "top1"):
        return list(adapter.top1(images, prompts, system=system))
    return next_token(adapter, images, prompts, [[] for _ in prompts], system)[1]


def next_token(adapter, images, prompts: Sequence[str], options: Sequence[Sequence[str]],
               system: str | None) -> tuple[list[np.ndarray], list[str]]:
    """Option log-probs and the decoded top-1 token from *one* forward pass per batch.

    Option scores are those of :func:`vlms.scoring.score_options`: max over case /
    leading-space variants of each option's first token, ignoring first tokens shared by several
    options (:func:`vlms.scoring.distinct_option_ids`); items where an option keeps no first
    token of its own are re-scored by ``adapter.score_options`` (its multi-token fallback).
    Adapters without ``prepare``/``run`` (test doubles) are asked ``score_options`` and ``top1``
    separately.
    """
    if not (hasattr(adapter, "prepare") and hasattr(adapter, "run")):
        with_opts = [k for k, o in enumerate(options) if o]
        scores: list[np.ndarray] = [np.zeros(0)] * len(prompts)
        if with_opts:
            got = adapter.score_options([images[k] for k in with_opts],
                                        [prompts[k] for k in with_opts],
                                        [list(options[k]) for k in with_opts], system=system,
                                        batch_size=len(with_opts))
            for k, g in zip(with_opts, got):
                scores[k] = np.asarray(g, dtype=float)
        return scores, list(adapter.top1(images, list(prompts), system=system))
    import torch

    from vlms.scoring import distinct_option_ids as own_ids

    batch = adapter.prepare(images, list(prompts), system=system)
    out = adapter.run(batch, logits_to_keep=1)
    logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu().numpy()
    tops = [adapter.tokenizer.decode([int(t)]) for t in logp.argmax(-1)]
    cand = [own_ids(adapter.tokenizer, opts) if opts else [] for opts in options]
    scores = [np.array([row[ids].max() if ids else np.nan for ids in c], dtype=np.float64)
              for row, c in zip(logp, cand)]
    fall = [k for k, c in enumerate(cand) if any(not ids for ids in c)]
    if fall:  # the adapter's multi-token fallback keeps each item's scores on one scale
        got = adapter.score_options([images[k] for k in fall], [prompts[k] for k in fall],
                                    [list(options[k]) for k in fall], system=system,
                                    batch_size=len(fall))
        for k, g in zip(fall, got):
            scores[k] = np.asarray(g, dtype=np.float64)
    return scores, tops


def distinct_option_ids(tokenizer, options: Sequence[str]) -> list[list[int]]:
    """:func:`vlms.scoring.distinct_option_ids`, but an error when an option keeps no id.

    A variant such as `` Left`` may start with a bare-space token that `` Right`` starts with
    too; scoring both options by that token would tie them and the argmax would always pick the
    first-listed option. Ids that start variants of more than one option are therefore dropped
    (the adapter's helper does the dropping; this wrapper is for callers that only have logits).

    Raises
    ------
    EvaluationError
        When an option keeps no id of its own (its first tokens all belong to others too).
    """
    if not options:
        return []
    from vlms.scoring import distinct_option_ids as own_ids

    out = own_ids(tokenizer, options)
    for o, ids in zip(options, out):
        if not ids:
            raise EvaluationError(f"option {o!r} shares every first token with another option "
                                  f"of {list(options)}; next-token scoring cannot tell them "
                                  "apart: use other option words or --protocol caption")
    return out


def score_queries(adapter, items: Sequence[EvalItem], queries: Sequence[Query], *,
                  batch_size: int = 8, progress: bool = True,
                  recipe: str = "robust") -> list[dict[str, Any]]:
    """Ask the model every query; one result dict per query, in query order.

    Each dict holds ``scores`` (per option, log-probs), ``prediction`` (an option, or the
    normalised top-1 token for completion prompts), ``correct``, ``p_answer`` (the answer's
    probability among the options, NaN when there are none) and ``tie`` (the best score is
    shared by several options: the argmax's first index decided).

    Recipes (interventions/RECIPES.md): two-option questions under ``paper`` are right iff the
    normalised top-1 token over the whole vocabulary is the answer (an off-option token is
    wrong); under ``robust`` the argmax over the two options decides. Captions in both recipes:
    right iff the argmax index is the answer's index (the original's ``argmax == 0``).
    """
    from tqdm.auto import tqdm

    results: list[dict[str, Any] | None] = [None] * len(queries)
    groups: dict[tuple, list[int]] = {}
    for qi, q in enumerate(queries):
        groups.setdefault((q.kind, q.system), []).append(qi)
    bar = tqdm(total=len(queries), desc="evaluate", unit="q", disable=not progress,
               dynamic_ncols=True)
    try:
        for (kind, system), idx in groups.items():
            for s in range(0, len(idx), batch_size):
                chunk = [queries[j] for j in idx[s:s + batch_size]]
                images = [items[q.item].load_image() for q in chunk]
                for j, r in zip(idx[s:s + batch_size],
                                _score_chunk(adapter, kind, system, images, chunk,
                                             recipe=recipe)):
                    results[j] = r
                bar.update(len(chunk))
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _score_chunk(adapter, kind: str, system, images, chunk: Sequence[Query], *,
                 recipe: str = "robust") -> list[dict]:
    scores: list[np.ndarray | None] = [None] * len(chunk)
    if kind == "caption":
        prompts = [q.prompt for q in chunk]
        kw = {"prompts": prompts, "system": system} if any(prompts) else {}
        scores = list(adapter.caption_logprob(images, [list(q.options) for q in chunk],
                                              batch_size=len(chunk), **kw))
        tops: list[str | None] = [None] * len(chunk)
        tok = getattr(adapter, "tokenizer", None)
        ntok = [[len(tok(c, add_special_tokens=False)["input_ids"]) for c in q.options]
                if tok is not None else None for q in chunk]
    else:
        ntok = [None] * len(chunk)
        got, tops = next_token(adapter, images, [q.prompt for q in chunk],
                               [list(q.options) for q in chunk], system)
        scores = [g if len(q.options) else None for g, q in zip(got, chunk)]
    out = []
    for q, sc, top, nt in zip(chunk, scores, tops, ntok):
        sc = None if sc is None else np.asarray(sc, dtype=float).ravel()
        if sc is not None and len(sc) != len(q.options):
            raise EvaluationError(f"the adapter returned {len(sc)} scores for {len(q.options)} "
                                  "options; the adapter's scoring is broken")
        p_ans = (float(softmax(sc)[q.options.index(q.answer)])
                 if sc is not None and q.answer in q.options else float("nan"))
        tie = bool(sc is not None and len(sc) > 1 and int((sc == sc.max()).sum()) > 1)
        if kind == "completion":
            pred = normalise_token(top)
            correct = pred != "" and pred == normalise_token(q.answer)
        elif recipe == "paper" and q.prompt_kind == "two-option" and top is not None:
            # the authors: the decoded top-1 token must be the truth; off-option is wrong
            pred = normalise_token(top)
            correct = pred != "" and pred == normalise_token(q.answer)
        else:
            k = int(np.argmax(sc))  # first index on ties, as np.argmax in the original
            pred = q.options[k]
            correct = q.answer in q.options and k == list(q.options).index(q.answer)
        in_opts = (None if top is None or kind == "completion" else
                   normalise_token(top) in {normalise_token(o) for o in q.options})
        out.append({"scores": [] if sc is None else sc.tolist(), "prediction": pred,
                    "correct": bool(correct), "p_answer": p_ans, "top1": top,
                    "top1_in_options": in_opts, "option_tokens": nt, "tie": tie})
    return out


# --------------------------------------------------------------------------- entry point
@dataclass
class EvalResult:
    """What :func:`evaluate` returns: the tables (and where they were written, if anywhere).

    ``save(dir)`` writes the report (``predictions.parquet``, ``summary.csv``, ``summary.png``,
    ``metrics.json``, ``config.json``) separately from running.
    """

    predictions: Any
    summary: Any
    out: Path | None
    protocol: str
    extra: dict[str, Any] = field(default_factory=dict)
    config: EvalConfig | None = None
    resolved: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | Path) -> Path:
        """Write the report into ``out`` (refusing a folder holding another run's results)."""
        from . import evaluate_report as report

        if self.config is None:
            raise EvaluationError("this EvalResult has no config to save; run evaluate(config)")
        out = Path(out)
        report.check_output(out, self.config)
        report.write_report(out, self.predictions, self.summary, self.extra,
                            asdict(self.config), self.resolved)
        self.out = out
        return out


def evaluate(config: EvalConfig, *, out: str | Path | None = None, adapter=None,
             items: Sequence[EvalItem] | None = None, progress: bool = True) -> EvalResult:
    """Run a behavioural evaluation and (when ``out`` is given) write its report.

    Parameters
    ----------
    config
        What to run (model, data, protocol, batch size, limit, template).
    out
        Output folder for ``predictions.parquet``, ``summary.csv``, ``summary.png`` and
        ``config.json`` (checked before any work); None keeps the results in memory only
        (``result.save(dir)`` writes them later).
    adapter
        An already loaded adapter (default: ``vlms.load_adapter(config.model)``).
    items
        Pre-loaded items (default: :func:`load_items` on ``config.data``).

    Returns
    -------
    EvalResult
        ``predictions`` (one row per query) and ``summary`` (accuracy by group) DataFrames.
    """
    from . import evaluate_report as report

    if out is not None:
        report.check_output(Path(out), config)
    if items is None:
        items = load_items(config.data, limit=config.limit,
                           coco_annotations=config.coco_annotations)
    protocol = resolve_protocol(config.protocol, items)
    template = resolve_template(config.template, config.model)
    queries = build_queries(items, protocol, template)
    if adapter is None:
        import vlms

        adapter = vlms.load_adapter(config.model)
    recipe = config.recipe or ("paper" if _paper_preset(config.data) else "robust")
    results = score_queries(adapter, items, queries, batch_size=config.batch_size,
                            progress=progress, recipe=recipe)
    preds = report.prediction_table(items, queries, results, protocol)
    summary, extra = report.summarise(preds, items, protocol)
    extra = {**extra, "recipe": recipe}
    resolved = {"protocol": protocol, "template": template, "recipe": recipe,
                "n_items": len(items), "n_queries": len(queries),
                "adapter": type(adapter).__name__}
    if out is not None:
        report.write_report(Path(out), preds, summary, extra, asdict(config), resolved)
    return EvalResult(predictions=preds, summary=summary,
                      out=None if out is None else Path(out), protocol=protocol, extra=extra,
                      config=config, resolved=resolved)


def _paper_preset(data: str) -> bool:
    """Whether ``data`` is a dataset directory generated from one of the paper's presets."""
    if str(data).startswith("whatsup:"):
        return False
    from scenegen import read_dataset

    from interventions.recipes import is_paper_preset

    try:
        return is_paper_preset(read_dataset(data))
    except Exception:  # noqa: BLE001 - not a dataset directory: load_items reports that
        return False
