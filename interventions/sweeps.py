"""Sweep engine: many patched variants of one base input, with source runs cached once and the
variants batched into few forward passes.

A sweep is one base input, named source runs (each a partner input, optionally itself patched,
e.g. E6's ablated counterfactual) and a list of *rows*; each row is a list of :class:`Edit` s (what
to do at which site and tokens, with values from which source). The engine

1. runs the base once (plain logits; its projector output is kept so later batched rows skip the
   vision tower),
2. runs each source once, capturing every site any row needs from it,
3. runs the rows ``batch_size`` at a time as one batched forward whose rows are copies of the base.

:class:`ForwardCounter` records forwards and rows, and the naive count (one source run plus one
patched run per row) for the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import InterventionError
from .hooks import IMAGE_FAMILIES, Intervention, Patch, adapter, parse_site, run, tile_inputs


@dataclass(frozen=True, kw_only=True, eq=False)
class Edit:
    """One intervention in a sweep row.

    ``tokens`` are sequence positions for ``lm.resid.*`` and LM image-token indices (row-major
    over the token grid) for the image sites: ``projector`` rows are those tokens, and at
    ``vision.blocks.*`` each token stands for its patches (mapped to the family's native patch
    order by :meth:`vlms.base.VLMAdapter.site_tokens`). ``source_tokens`` are the matching
    tokens in the source run (defaults to ``tokens``). None means every token of the site.
    """

    site: str
    intervention: Intervention
    tokens: Sequence[int] | None = None
    source: str | None = None
    source_tokens: Sequence[int] | None = None

    def __post_init__(self):
        parse_site(self.site)
        if self.intervention.needs_source and self.source is None:
            raise InterventionError(f"{type(self.intervention).__name__} at {self.site} needs a "
                                    "source run name (Edit.source)")
        if self.source_tokens is not None and self.tokens is not None \
                and len(self.source_tokens) != len(self.tokens):
            raise InterventionError(f"Edit at {self.site}: {len(self.tokens)} base tokens but "
                                    f"{len(self.source_tokens)} source tokens")


@dataclass(frozen=True, kw_only=True, eq=False)
class SourceRun:
    """A partner input run once; ``edits`` (which may use earlier sources) are applied to it.

    Give ``acts`` (site -> ``1 x token x hidden``) instead of ``inputs`` to reuse activations
    computed earlier (e.g. the blank canvas, shared by every item of a dataset): no forward then.
    """

    inputs: dict[str, Any] | None = None
    edits: tuple[Edit, ...] = ()
    acts: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        if (self.inputs is None) == (self.acts is None):
            raise InterventionError("SourceRun needs exactly one of inputs= or acts=")


@dataclass
class ForwardCounter:
    """Forward passes made, batch rows computed, and what a naive loop would have needed."""

    forwards: int = 0
    rows: int = 0
    naive_forwards: int = 0

    def add(self, other: "ForwardCounter") -> None:
        self.forwards += other.forwards
        self.rows += other.rows
        self.naive_forwards += other.naive_forwards


@dataclass
class SweepResult:
    """Logits of the base and of every row, at the final position."""

    base_logits: torch.Tensor
    """``vocab``."""
    row_logits: torch.Tensor
    """``rows x vocab``."""
    sources: dict[str, torch.Tensor] = field(default_factory=dict)
    """Final-position logits of each (possibly patched) source run."""
    counter: ForwardCounter = field(default_factory=ForwardCounter)


def _site_tokens(ad, site: str, tokens, inputs: dict[str, Any]) -> list[int]:
    """An edit's tokens in the site's own token axis (see :class:`Edit`)."""
    if parse_site(site)[0] not in IMAGE_FAMILIES:
        seq = int(inputs["input_ids"].shape[1])
        return list(range(seq)) if tokens is None else [int(t) for t in tokens]
    try:
        return ad.site_tokens(site, tokens, ad.image_grid(inputs)).tolist()
    except ValueError as e:
        raise InterventionError(str(e)) from None


def _patches(ad, edits: Sequence[Edit], row: int, acts: dict[str, dict[str, torch.Tensor]],
             inputs: dict[str, Any]) -> list[Patch]:
    out = []
    for e in edits:
        toks = _site_tokens(ad, e.site, e.tokens, inputs)
        idx = torch.tensor([[row, t] for t in toks], dtype=torch.long).reshape(-1, 2)
        src = None
        if e.source is not None:
            if e.source not in acts:
                raise InterventionError(f"edit at {e.site} uses source {e.source!r}, which is not "
                                        f"defined before it; known: {sorted(acts)}")
            stoks = toks if e.source_tokens is None else _site_tokens(ad, e.site,
                                                                      e.source_tokens, inputs)
            src = acts[e.source][e.site][0, stoks]
        out.append(Patch(site=e.site, intervention=e.intervention, index=idx, source=src))
    return out


def sweep(model: nn.Module, base: dict[str, Any], rows: Sequence[Sequence[Edit]], *,
          sources: dict[str, SourceRun] | None = None, batch_size: int = 8,
          reuse_vision: bool = True, progress: Any = None) -> SweepResult:
    """Run every row of edits on copies of ``base``, caching sources and batching rows.

    Parameters
    ----------
    model
        The VLM (eval mode).
    base
        Processor output for one input (batch of 1).
    rows
        One list of :class:`Edit` s per variant.
    sources
        Named partner runs (run once each, in order; a source's own edits may use earlier ones).
    batch_size
        Rows per batched forward.
    reuse_vision
        Feed the base's cached projector output to batched rows instead of re-running the vision
        tower (exact; disabled automatically when a row edits a vision block or the projector).
    progress
        Optional tqdm bar advanced once per row.

    Returns
    -------
    SweepResult
    """
    if int(base["input_ids"].shape[0]) != 1:
        raise InterventionError("sweep() takes one base input (batch of 1)")
    if batch_size < 1:
        raise InterventionError(f"batch_size must be >= 1; got {batch_size}")
    sources = dict(sources or {})
    counter = ForwardCounter()
    needed: dict[str, set[str]] = {name: set() for name in sources}
    all_edits = [e for r in rows for e in r] + [e for s in sources.values() for e in s.edits]
    for e in all_edits:
        if e.source is not None:
            if e.source not in needed:
                raise InterventionError(f"edit at {e.site} uses unknown source {e.source!r}; "
                                        f"known: {sorted(sources)}")
            needed[e.source].add(e.site)
    image_edit = any(parse_site(e.site)[0] in IMAGE_FAMILIES for r in rows for e in r)
    reuse = reuse_vision and not image_edit
    ad = adapter(model)

    base_run = run(model, base, capture=["projector"] if reuse else [], last_only=True)
    counter.forwards += 1
    counter.rows += 1
    feats = base_run.acts.get("projector")

    acts: dict[str, dict[str, torch.Tensor]] = {}
    src_logits: dict[str, torch.Tensor] = {}
    for name, spec in sources.items():
        if spec.acts is not None:
            missing = needed[name] - set(spec.acts)
            if missing:
                raise InterventionError(f"source {name!r} was given as cached activations but "
                                        f"lacks sites {sorted(missing)}")
            acts[name] = spec.acts
            continue
        patches = _patches(ad, spec.edits, 0, acts, spec.inputs)
        r = run(model, spec.inputs, patches=patches, capture=sorted(needed[name]), last_only=True)
        acts[name] = r.acts
        src_logits[name] = r.logits[0, -1]
        counter.forwards += 1
        counter.rows += 1

    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n = len(chunk)
        patches = []
        for j, edits in enumerate(chunk):
            patches += _patches(ad, edits, j, acts, base)
        # with cached features the pixels are not needed: do not copy them n times
        tiled = tile_inputs({k: v for k, v in base.items() if not (reuse and k == "pixel_values")},
                            n)
        r = run(model, tiled, patches=_merge(patches), last_only=True,
                features=feats.repeat(n, 1, 1) if reuse else None)
        out.append(r.logits[:, -1])
        counter.forwards += 1
        counter.rows += n
        if progress is not None:
            progress.update(n)
    # naive: every row re-runs its sources (and what they depend on) and then the patched base
    for edits in rows:
        counter.naive_forwards += 1 + _naive_sources(edits, sources)
    logits = torch.cat(out) if out else torch.zeros((0, base_run.logits.shape[-1]))
    return SweepResult(base_logits=base_run.logits[0, -1], row_logits=logits,
                       sources=src_logits, counter=counter)


def _naive_sources(edits: Sequence[Edit], sources: dict[str, SourceRun]) -> int:
    # cached-activation sources count too: a naive loop would recompute them
    names: set[str] = set()
    stack = [e.source for e in edits if e.source is not None]
    while stack:
        s = stack.pop()
        if s in names:
            continue
        names.add(s)
        stack += [e.source for e in sources[s].edits if e.source is not None]
    return len(names)


def _merge(patches: list[Patch]) -> list[Patch]:
    """Merge same-site, same-intervention patches of different rows into one (fewer kernel calls)."""
    groups: dict[tuple[str, int], list[Patch]] = {}
    order: list[tuple[str, int]] = []
    for p in patches:
        key = (p.site, id(p.intervention))
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(p)
    out = []
    for key in order:
        ps = groups[key]
        if len(ps) == 1 or any(p.index is None for p in ps) \
                or len({p.source is None for p in ps}) > 1:
            out += ps
            continue
        src = None if ps[0].source is None else torch.cat([p.source for p in ps])
        out.append(Patch(site=ps[0].site, intervention=ps[0].intervention,
                         index=torch.cat([p.index for p in ps]), source=src))
    return out


def option_probs(logits: torch.Tensor, option_ids: Sequence[Sequence[int]], *,
                 normalize: bool = False) -> np.ndarray:
    """Probability of each option: softmax over the vocabulary, summed over each option's token
    variants (e.g. ``red``, ``Red``, `` red``, `` Red``); with ``normalize`` renormalised over the
    options (the paper's "probability over {c0, c1, c2}").

    Parameters
    ----------
    logits
        ``... x vocab`` final-position logits.
    option_ids
        For each option, the first token id of each of its spellings.

    Returns
    -------
    numpy.ndarray
        ``... x n_options``.
    """
    p = torch.softmax(logits.float(), dim=-1)
    cols = [p[..., sorted(set(ids))].sum(-1) for ids in option_ids]
    out = torch.stack(cols, -1)
    if normalize:
        out = out / out.sum(-1, keepdim=True)
    return out.cpu().numpy()


def option_scores(logits: torch.Tensor, option_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Log-prob score of each option as ``spatialbind evaluate`` computes it: the maximum over
    the option's spellings of their first token's log-prob (``... x n_options``)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([lp[..., sorted(set(ids))].max(-1).values for ids in option_ids],
                       -1).cpu().numpy()


def run_edits(model: nn.Module, base: dict[str, Any], edits: Sequence[Edit], *,
              sources: dict[str, SourceRun] | None = None, capture: Sequence[str] = ()):
    """One patched forward of ``base`` (no batching): sources are run first, then ``edits``
    applied; ``capture`` records sites after the edits. Returns a :class:`~hooks.RunResult`."""
    sources = dict(sources or {})
    needed: dict[str, set[str]] = {n: set() for n in sources}
    for e in list(edits) + [e for s in sources.values() for e in s.edits]:
        if e.source is not None:
            if e.source not in needed:
                raise InterventionError(f"edit at {e.site} uses unknown source {e.source!r}")
            needed[e.source].add(e.site)
    acts: dict[str, dict[str, torch.Tensor]] = {}
    ad = adapter(model)
    for name, spec in sources.items():
        if spec.acts is not None:
            acts[name] = spec.acts
            continue
        patches = _patches(ad, spec.edits, 0, acts, spec.inputs)
        acts[name] = run(model, spec.inputs, patches=patches, capture=sorted(needed[name])).acts
    patches = _patches(ad, edits, 0, acts, base)
    return run(model, base, patches=patches, capture=capture)
