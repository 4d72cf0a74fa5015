"""Answer scoring: next-token log-probs of candidate answers, caption log-likelihoods.

- :func:`score_options` follows the paper's one-token protocol: the log-prob of each candidate
  is the maximum over its case and leading-space variants (``blue``, `` blue``, ``Blue``,
  `` Blue``, ``BLUE``...) of the log-prob of the variant's *first* token at the last input
  position. First tokens that start variants of more than one option of the same item are not
  used (:func:`distinct_option_ids`): with tokenizers where `` Left`` and `` Right`` both begin
  with a bare-space token, that token would give both options the same score and the argmax
  would always pick the first-listed option. When an option keeps no first token of its own,
  every option of that item is scored by the multi-token protocol instead (the maximum over
  spellings of the summed log-prob of the spelling's tokens as the model's answer,
  :func:`answer_logprob`), so the scores of one item always stay comparable.
- :func:`caption_logprob` scores multiple-choice captions by the summed log-prob of all their
  tokens after the prompt (the model's answer turn).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import InputError


def variants(option: str) -> list[str]:
    """Case and leading-space variants of an answer string (deduplicated, stable order)."""
    core = option.strip()
    forms = [core, core.lower(), core.capitalize(), core.upper(), core.title()]
    out: list[str] = []
    for f in forms:
        for v in (f, " " + f):
            if v not in out:
                out.append(v)
    return out


def option_token_ids(tokenizer, option: str) -> list[int]:
    """First-token ids of every variant of ``option``."""
    ids = []
    for v in variants(option):
        t = tokenizer(v, add_special_tokens=False)["input_ids"]
        if t and t[0] not in ids:
            ids.append(int(t[0]))
    if not ids:
        raise InputError(f"answer option {option!r} tokenizes to nothing; give a non-empty option")
    return ids


def distinct_option_ids(tokenizer, options: Sequence[str]) -> list[list[int]]:
    """First-token ids of each option's variants, minus ids shared with another option.

    An id that starts a variant of more than one option (e.g. the bare-space token that both
    `` Left`` and `` Right`` begin with in some tokenizers) cannot tell the options apart:
    scoring with it would tie them, and the argmax would pick the first-listed option.

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer.
    options
        The candidate answers of one item.

    Returns
    -------
    list of list of int
        Per option, its own first-token ids (stable order); an empty list when every first
        token of the option also starts a variant of another option.
    """
    per = [option_token_ids(tokenizer, o) for o in options]
    count: dict[int, int] = {}
    for ids in per:
        for t in set(ids):
            count[t] = count.get(t, 0) + 1
    return [[t for t in ids if count[t] == 1] for ids in per]


def _chunks(n: int, size: int):
    for s in range(0, n, max(1, size)):
        yield slice(s, min(n, s + size))


def score_options(adapter, images: Sequence[Any], prompts: Sequence[Any],
                  options: Sequence[Sequence[str]] | Sequence[str], *, system: str | None = None,
                  batch_size: int = 8) -> list[np.ndarray]:
    """Log-probs of candidate answers (one-token protocol, multi-token fallback).

    Per item, each option scores the maximum log-prob, at the last input position, of the first
    tokens of its case / leading-space variants that no other option of the item starts with
    (:func:`distinct_option_ids`). If some option has no such token left, *all* options of that
    item are scored by :func:`answer_logprob` (max over spellings of the summed log-prob of the
    spelling's tokens as the answer) so that the item's scores stay on one scale.

    Parameters
    ----------
    adapter
        A :class:`vlms.base.VLMAdapter`.
    images, prompts
        One image per prompt (prompts: strings or :class:`scenegen.Prompt`).
    options
        Candidate answers per item, or one list shared by all items.
    system
        System message (default: each prompt's own, else the template's).
    batch_size
        Items per forward.

    Returns
    -------
    list of np.ndarray
        Per item, ``(n_options,)`` float64 log-probs.

    Raises
    ------
    InputError
        Option lists that do not match the prompts, an option that tokenizes to nothing, or
        (fallback) an option none of whose spellings has a token boundary after the prompt.
    """
    import torch

    n = len(prompts)
    if options and isinstance(options[0], str):
        options = [list(options)] * n
    if len(options) != n:
        raise InputError(f"score_options got {len(options)} option lists for {n} prompts")
    cand = [distinct_option_ids(adapter.tokenizer, opts) for opts in options]
    out: list[np.ndarray] = []
    for sl in _chunks(n, batch_size):
        batch = adapter.prepare(list(images[sl]), list(prompts[sl]), system=system)
        res = adapter.run(batch, logits_to_keep=1)
        logp = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu().numpy()
        for row, ids in zip(logp, cand[sl]):
            out.append(np.array([row[i].max() if i else np.nan for i in ids], dtype=np.float64))
    fall = [k for k, ids in enumerate(cand) if any(not i for i in ids)]
    if fall:
        got = answer_logprob(adapter, [images[k] for k in fall], [options[k] for k in fall],
                             prompts=[prompts[k] for k in fall], system=system,
                             batch_size=batch_size)
        for k, g in zip(fall, got):
            out[k] = g
    return out


def answer_logprob(adapter, images: Sequence[Any], options: Sequence[Sequence[str]], *,
                   prompts: Sequence[Any], system: str | None = None,
                   batch_size: int = 8) -> list[np.ndarray]:
    """Multi-token option scores: max over spellings of the summed log-prob of their tokens.

    The spellings are :func:`variants` (case, leading space) of each option, appended as the
    model's answer after the generation prompt; spellings whose first token merges with the
    end of the prompt are skipped.

    Returns
    -------
    list of np.ndarray
        Per item, ``(n_options,)`` float64 log-probs.

    Raises
    ------
    InputError
        An option with no spelling that starts at a token boundary after the prompt.
    """
    n = len(images)
    jobs = [(i, j, v) for i in range(n) for j, o in enumerate(options[i]) for v in variants(o)]
    got = _suffix_logprobs(adapter, [images[i] for i, _, _ in jobs],
                           [prompts[i] for i, _, _ in jobs], [v for _, _, v in jobs],
                           system=system, batch_size=batch_size)
    scores = [np.full(len(options[i]), -np.inf) for i in range(n)]
    for (i, j, _), lp in zip(jobs, got):
        if np.isfinite(lp):
            scores[i][j] = max(scores[i][j], lp)
    for i in range(n):
        for j, o in enumerate(options[i]):
            if not np.isfinite(scores[i][j]):
                raise InputError(f"answer option {o!r}: every spelling merges with the end of "
                                 "the prompt when tokenized, so it cannot be scored; use "
                                 "another option word")
    return scores


def _suffix_logprobs(adapter, images: Sequence[Any], prompts: Sequence[Any],
                     suffixes: Sequence[str], *, system: str | None, batch_size: int,
                     strict: bool = False) -> np.ndarray:
    """Summed log-prob of each suffix's tokens after its (image, prompt) turn.

    A suffix that merges with the end of the prompt when tokenized gets NaN (``strict``:
    raise :class:`InputError`).
    """
    import torch

    out = np.full(len(suffixes), np.nan)
    for sl in _chunks(len(suffixes), batch_size):
        ims, pr, suf = list(images[sl]), list(prompts[sl]), list(suffixes[sl])
        # the prompt alone (to count its tokens) and prompt + suffix
        base = adapter.prepare(ims, pr, system=system)
        full = adapter.prepare(ims, pr, system=system, suffixes=suf)
        n_cap = []
        for b, c in enumerate(suf):
            ids_b = base.inputs["input_ids"][b, base.n_pad[b]:]
            ids_f = full.inputs["input_ids"][b, full.n_pad[b]:full.n_pad[b] + len(ids_b)]
            k = (full.seq_len - full.n_pad[b]) - (base.seq_len - base.n_pad[b])
            if k <= 0 or not torch.equal(ids_b, ids_f):
                if strict:
                    raise InputError(f"caption {c!r} merges with the end of the prompt when "
                                     "tokenized; caption scoring needs a token boundary there")
                k = 0
            n_cap.append(k)
        if not any(n_cap):
            continue
        keep = max(n_cap) + 1
        res = adapter.run(full, logits_to_keep=keep)
        logp = torch.log_softmax(res.logits.float(), dim=-1)
        ids = full.inputs["input_ids"][:, -keep:]
        for b, k in enumerate(n_cap):
            if k == 0:
                continue
            # logits at position t predict token t+1: the last k tokens from the k before
            pred = logp[b, keep - 1 - k: keep - 1]
            tgt = ids[b, keep - k:]
            out[sl.start + b] = float(pred.gather(-1, tgt[:, None]).sum())
    return out


def caption_logprob(adapter, images: Sequence[Any], captions: Sequence[Sequence[str]], *,
                    prompts: Sequence[Any] | None = None, system: str | None = None,
                    batch_size: int = 8) -> list[np.ndarray]:
    """Summed token log-probs of each caption option, as the model's answer to the prompt.

    Parameters
    ----------
    images
        One image per item.
    captions
        Per item, the caption options.
    prompts
        The question per item (default: an empty text turn, i.e. the image alone).

    Returns
    -------
    list of np.ndarray
        Per item, ``(n_captions,)`` float64 sums of log-probs of the caption tokens.
    """
    n = len(images)
    if len(captions) != n:
        raise InputError(f"caption_logprob got {len(captions)} caption lists for {n} images")
    prompts = list(prompts) if prompts is not None else [""] * n
    for i in range(n):
        for c in captions[i]:
            if not c.strip():
                raise InputError("empty caption option; every option needs some text")
    jobs = [(i, c) for i in range(n) for c in captions[i]]
    got = _suffix_logprobs(adapter, [images[i] for i, _ in jobs], [prompts[i] for i, _ in jobs],
                           [c for _, c in jobs], system=system, batch_size=batch_size,
                           strict=True)
    scores, k = [], 0
    for i in range(n):
        scores.append(np.asarray(got[k:k + len(captions[i])], dtype=np.float64))
        k += len(captions[i])
    return scores
