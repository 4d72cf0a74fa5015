"""Answer scoring: next-token log-probs of candidate answers, caption log-likelihoods.

- :func:`score_options` follows the paper's one-token protocol: the log-prob of each candidate
  is the maximum over its case and leading-space variants (``blue``, `` blue``, ``Blue``,
  `` Blue``, ``BLUE``...) of the log-prob of the variant's *first* token at the last input
  position.
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


def _chunks(n: int, size: int):
    for s in range(0, n, max(1, size)):
        yield slice(s, min(n, s + size))


def score_options(adapter, images: Sequence[Any], prompts: Sequence[Any],
                  options: Sequence[Sequence[str]] | Sequence[str], *, system: str | None = None,
                  batch_size: int = 8) -> list[np.ndarray]:
    """Next-token log-probs of candidate answers.

    Parameters
    ----------
    adapter
        A :class:`vlms.base.VLMAdapter`.
    images, prompts
        One image per prompt (prompts: strings or :class:`scenegen.Prompt`).
    options
        Candidate answers per item, or one list shared by all items. When None is given for an
        item whose prompt is a ``Prompt``, its ``options`` are used.
    system
        System message (default: each prompt's own, else the template's).
    batch_size
        Items per forward.

    Returns
    -------
    list of np.ndarray
        Per item, ``(n_options,)`` float64 log-probs (max over variants, first token).
    """
    import torch

    n = len(prompts)
    if options and isinstance(options[0], str):
        options = [list(options)] * n
    if len(options) != n:
        raise InputError(f"score_options got {len(options)} option lists for {n} prompts")
    cand = [[option_token_ids(adapter.tokenizer, o) for o in opts] for opts in options]
    out: list[np.ndarray] = []
    for sl in _chunks(n, batch_size):
        batch = adapter.prepare(list(images[sl]), list(prompts[sl]), system=system)
        res = adapter.run(batch, logits_to_keep=1)
        logp = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu().numpy()
        for row, ids in zip(logp, cand[sl]):
            out.append(np.array([row[i].max() for i in ids], dtype=np.float64))
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
    import torch

    n = len(images)
    if len(captions) != n:
        raise InputError(f"caption_logprob got {len(captions)} caption lists for {n} images")
    prompts = list(prompts) if prompts is not None else [""] * n
    flat = [(i, c) for i in range(n) for c in captions[i]]
    for _, c in flat:
        if not c.strip():
            raise InputError("empty caption option; every option needs some text")
    scores = [np.zeros(len(captions[i])) for i in range(n)]
    jobs = [(i, j, c) for i in range(n) for j, c in enumerate(captions[i])]
    for sl in _chunks(len(jobs), batch_size):
        part = jobs[sl]
        ims = [images[i] for i, _, _ in part]
        pr = [prompts[i] for i, _, _ in part]
        # the prompt alone (to count its tokens) and prompt + caption
        base = adapter.prepare(ims, pr, system=system)
        full = adapter.prepare(ims, pr, system=system, suffixes=[c for _, _, c in part])
        n_prompt = [base.seq_len - p for p in base.n_pad]
        n_full = [full.seq_len - p for p in full.n_pad]
        n_cap = [f - p for f, p in zip(n_full, n_prompt)]
        for (i, j, c), b, k in zip(part, range(len(part)), n_cap):
            ids_b = base.inputs["input_ids"][b, base.n_pad[b]:]
            ids_f = full.inputs["input_ids"][b, full.n_pad[b]:full.n_pad[b] + len(ids_b)]
            if k <= 0 or not torch.equal(ids_b, ids_f):
                raise InputError(f"caption {c!r} merges with the end of the prompt when "
                                 "tokenized; caption scoring needs a token boundary there")
        keep = max(n_cap) + 1
        res = adapter.run(full, logits_to_keep=keep)
        logp = torch.log_softmax(res.logits.float(), dim=-1)
        ids = full.inputs["input_ids"][:, -keep:]
        for b, ((i, j, _), k) in enumerate(zip(part, n_cap)):
            # logits at position t predict token t+1: the last k tokens from the k before
            pred = logp[b, keep - 1 - k: keep - 1]
            tgt = ids[b, keep - k:]
            scores[i][j] = float(pred.gather(-1, tgt[:, None]).sum())
    return scores
