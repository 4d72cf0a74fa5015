"""One hook mechanism for every intervention: run a model with activations replaced, added or
scaled at named sites and token positions, and capture activations on the way.

Where it sits: experiments (``patching``, ``ablation``, ``amplify``) build :class:`Patch` lists
and call :func:`run`; :mod:`interventions.sweeps` batches many patches into one forward.

Sites (the store's vocabulary, parsed by :func:`actstore.schema.parse_site`; module paths and
hook installation come from the model's ``vlms`` adapter, :meth:`vlms.base.VLMAdapter.hooks`):

- ``vision.blocks.{i}``: output of vision block ``i``, as ``batch x patch x hidden`` in the
  family's native patch order (Qwen2-VL's blocks have no batch dim and order patches in 2x2
  merge blocks; they are viewed per image here). :meth:`vlms.base.VLMAdapter.site_tokens` maps
  LM image tokens to their patches;
- ``projector`` (layer 0, as in the store): the vision embeddings the LM receives, as
  ``batch x image_token x hidden`` (Qwen2-VL's merger output has no batch dim; it is viewed as
  one here);
- ``lm.resid.{i}``: the LM residual stream, ``batch x seq x hidden``; ``lm.resid.0`` is the input
  of layer 0 (a pre-hook), ``lm.resid.{i}`` the output of layer ``i-1``.

Interventions are small ``nn.Module`` s with one call signature
``forward(base, source=None, index=None) -> new activations``: ``base`` is
``batch x token x hidden``, ``index`` a ``(N, 2)`` long tensor of (row, token) pairs, ``source``
the ``(N, hidden)`` values for those pairs (already taken from a partner run). Hooks act on
prefill only: a call whose sequence length differs from the prompt's (a decode step) is left alone.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .errors import InterventionError

#: site families whose token axis is the image (patched on image-token / patch indices)
IMAGE_FAMILIES = ("vision.blocks", "projector")


# --------------------------------------------------------------------------- interventions
class Intervention(nn.Module):
    """Base class: ``forward(base, source=None, index=None)`` returns new activations.

    Only the ``index`` pairs change; every other value is returned bit-identical.
    """

    needs_source = False

    def edit(self, h: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """New values for the selected vectors ``h`` (``N x hidden``)."""
        raise NotImplementedError

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if self.needs_source and source is None:
            raise InterventionError(f"{type(self).__name__} needs source activations; "
                                    "pass the partner run's values as `source`")
        if index is None:  # every token of every row
            flat = base.reshape(-1, base.shape[-1])
            src = None if source is None else source.reshape(-1, base.shape[-1])
            return self.edit(flat, src).reshape(base.shape).to(base.dtype)
        rows, toks = index[:, 0], index[:, 1]
        out = base.clone()
        out[rows, toks] = self.edit(base[rows, toks], source).to(base.dtype)
        return out


class Interchange(Intervention):
    """Replace the selected vectors by the source's (interchange / activation patching)."""

    needs_source = True

    def edit(self, h, source):
        if source.shape != h.shape:
            raise InterventionError(f"source has shape {tuple(source.shape)} but the selected "
                                    f"base tokens have {tuple(h.shape)}; map the same number of "
                                    "tokens on both sides")
        return source.to(h.dtype)


class Ablate(Interchange):
    """Replace the selected vectors by a reference run's (e.g. an isolated entity, a blank image)."""


class Scale(Intervention):
    """Multiply the selected vectors by ``factor``."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def edit(self, h, source):
        return h if self.factor == 1.0 else h * self.factor


def _as_directions(w: torch.Tensor | Any) -> torch.Tensor:
    w = torch.as_tensor(w, dtype=torch.float32)
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[0] == 0:
        raise InterventionError(f"directions must be (k, hidden) or (hidden,); got shape "
                                f"{tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w.norm(dim=1) == 0).any():
        raise InterventionError("directions contain a zero-norm or non-finite vector; "
                                "re-export the direction")
    return w


class AddDirection(Intervention):
    """Add a fixed vector: ``h <- h + alpha * sum_k w_k`` (steering along probe directions)."""

    def __init__(self, directions, alpha: float):
        super().__init__()
        self.register_buffer("w", _as_directions(directions))
        self.alpha = float(alpha)

    def edit(self, h, source):
        if self.alpha == 0.0:
            return h
        return h + self.alpha * self.w.sum(0).to(h.device, h.dtype)


class Amplify(Intervention):
    """Scale each vector's component in the span of the directions (the paper's E7 formula).

    ``h <- h + alpha * sum_k (h . w_k / (||w_k||^2 + eps)) w_k``, summed over the rows ``w_k``
    as they are (no orthogonalisation: the authors' hook does the same); with orthogonal
    ``w_k`` this multiplies the projection on their span by ``1 + alpha``. ``alpha = 0``
    returns ``h`` unchanged.

    ``exact=False`` (default): computed in float32 whatever the model's dtype (the projection
    coefficients lose precision in bf16), ``eps = 0``. ``exact=True`` is the authors' hook
    (``coco_amplification/src/qwen.py`` and ``gemma.py``, ``predict_with_amp``): the directions
    cast to the hidden states' dtype, the arithmetic in that dtype, ``eps = 1e-8``
    (:data:`AMPLIFY_EPS`).
    """

    def __init__(self, directions, alpha: float, *, exact: bool = False):
        super().__init__()
        self.register_buffer("w", _as_directions(directions))
        self.alpha = float(alpha)
        self.exact = bool(exact)

    def edit(self, h, source):
        if self.alpha == 0.0:
            return h
        if self.exact:  # the authors' arithmetic: in h's dtype, + 1e-8 in the denominator
            w = self.w.to(h.device, h.dtype)
            coeff = (h @ w.T) / ((w * w).sum(1) + AMPLIFY_EPS)
            return h + self.alpha * (coeff @ w)
        # in float32 even for bf16/fp16 models: the projection coefficients lose precision
        hf, w = h.float(), self.w.to(h.device, torch.float32)
        coeff = (hf @ w.T) / (w * w).sum(1)
        return (hf + self.alpha * (coeff @ w)).to(h.dtype)


#: The authors' denominator guard in E7's amplification, ``(W ** 2).sum(dim=0) + 1e-8``.
AMPLIFY_EPS = 1e-8


INTERVENTIONS: dict[str, type[Intervention]] = {
    "interchange": Interchange, "ablate": Ablate, "scale": Scale,
    "add": AddDirection, "amplify": Amplify,
}


# --------------------------------------------------------------------------- sites
def parse_site(site: str) -> tuple[str, int]:
    """``(family, layer)`` of a concrete site by the store's parser (``'projector'`` ->
    ``('projector', 0)``; ``'lm.resid.3'`` -> ``('lm.resid', 3)``), errors as
    :class:`InterventionError`."""
    from actstore.errors import StoreError
    from actstore.schema import parse_site as store_parse

    try:
        return store_parse(site, require_layer=True)
    except StoreError as e:
        raise InterventionError(f"{e} (sites: 'vision.blocks.<i>', 'projector', 'lm.resid.<i>'; "
                                "lm.resid.0 = LM input, lm.resid.<i> = output of layer i-1)"
                                ) from None


def adapter(target: Any):
    """The ``vlms`` adapter of a model or adapter (the only source of module paths)."""
    from vlms.registry import adapter_for

    try:
        return adapter_for(target)
    except ValueError as e:
        raise InterventionError(str(e)) from None


def unwrap(target: Any) -> nn.Module:
    """The ``nn.Module`` of a model or of a ``vlms`` adapter (which has ``.model``)."""
    return target.model if hasattr(target, "site_module") else target


def site_module(target: Any, site: str) -> tuple[nn.Module, str]:
    """``(module, "pre" | "post")`` where ``site`` is hooked (from the model's adapter)."""
    ad = adapter(target)
    try:
        return ad.site_module(site)
    except ValueError as e:
        raise InterventionError(str(e)) from None


def n_resid_sites(target: Any) -> int:
    """Number of ``lm.resid.{i}`` sites: LM layers + 1."""
    return adapter(target).n_lm_layers + 1


def check_site(model: Any, site: str) -> None:
    """Raise :class:`InterventionError` if ``model`` has no such site."""
    parse_site(site)
    try:
        adapter(model).check_site(site)
    except ValueError as e:
        raise InterventionError(str(e)) from None


# --------------------------------------------------------------------------- patches
@dataclass(frozen=True, kw_only=True, eq=False)
class Patch:
    """One intervention at one site on some (row, token) pairs of a batch."""

    site: str
    """``vision.blocks.{i}``, ``projector`` or ``lm.resid.{i}``."""
    intervention: Intervention
    index: torch.Tensor | None = None
    """``(N, 2)`` long tensor of (batch row, token) pairs in the site's token space (sequence
    positions for ``lm.resid.*``, image-token indices for ``projector``, patch indices in the
    family's native order for ``vision.blocks.*``); None = everything."""
    source: torch.Tensor | None = None
    """``(N, hidden)`` values for the pairs (Interchange / Ablate)."""

    def __post_init__(self):
        parse_site(self.site)
        if self.index is not None:
            if self.index.ndim != 2 or self.index.shape[1] != 2:
                raise InterventionError(f"Patch.index must be (N, 2) (row, token) pairs; got "
                                        f"shape {tuple(self.index.shape)}")
            if self.source is not None and self.source.shape[0] != self.index.shape[0]:
                raise InterventionError(
                    f"Patch at {self.site}: {self.index.shape[0]} token pairs but "
                    f"{self.source.shape[0]} source vectors; they must match one to one")


def pairs(rows: Sequence[int] | int, tokens: Sequence[int]) -> torch.Tensor:
    """Index tensor for ``tokens`` in each of ``rows`` (row-major: row0 tokens, row1 tokens...)."""
    rows = [rows] if isinstance(rows, int) else list(rows)
    toks = torch.as_tensor(list(tokens), dtype=torch.long)
    return torch.cat([torch.stack([torch.full_like(toks, r), toks], 1) for r in rows]) \
        if rows else torch.zeros((0, 2), dtype=torch.long)


@dataclass
class RunResult:
    """What :func:`run` returns: logits at every position and the captured activations."""

    logits: torch.Tensor
    """``batch x seq x vocab``."""
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    """site -> ``batch x token x hidden`` (after any patch at that site)."""


def _apply(patches: list[Patch], h: torch.Tensor) -> torch.Tensor:
    for p in patches:
        src = None if p.source is None else p.source.to(h.device)
        idx = None if p.index is None else p.index.to(h.device)
        h = p.intervention(h, src, idx)
    return h


def _batch_of(inputs: dict[str, Any]) -> int:
    return int(inputs["input_ids"].shape[0])


@contextlib.contextmanager
def hooked(model: Any, *, patches: Sequence[Patch] = (), capture: Sequence[str] = (),
           seq_len: int | None = None, batch: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Install patch and capture hooks for the duration of the block; yields the capture dict.

    The hooks go in through the adapter's installer (:meth:`vlms.base.VLMAdapter.hooks`).

    Parameters
    ----------
    model
        A ``vlms`` adapter or a model of a family that has one (``...ForConditionalGeneration``).
    patches
        Interventions to apply; several may share a site (applied in order).
    capture
        Sites whose activations to record (detached, after patches at that site).
    seq_len
        Prompt length; residual hooks skip calls with another length (decode steps).
    batch
        Batch size, needed to view Qwen2-VL's flat vision-block and projector outputs as
        ``batch x token x hidden``.
    """
    ad = adapter(model)
    by_site: dict[str, list[Patch]] = {}
    for p in patches:
        check_site(ad, p.site)
        by_site.setdefault(p.site, []).append(p)
    for s in capture:
        check_site(ad, s)
    captured: dict[str, torch.Tensor] = {}

    def process(site: str):
        def fn(h: torch.Tensor) -> torch.Tensor:
            if h.ndim == 2:
                raise InterventionError(f"the {site} output is flat (Qwen2-VL); pass batch=")
            if site in by_site:
                h = _apply(by_site[site], h)
            if site in capture:
                captured[site] = h.detach()
            return h
        return fn

    with ad.hooks({site: process(site) for site in sorted(set(by_site) | set(capture))},
                  batch=batch, seq_len=seq_len):
        yield captured


def image_features_kwargs(model: nn.Module, inputs: dict[str, Any],
                          features: torch.Tensor) -> dict[str, Any]:
    """Model kwargs that feed precomputed projector outputs (``batch x token x hidden``) instead of
    pixels, so the vision tower is skipped. M-RoPE ids still come from ``input_ids``,
    ``image_grid_thw`` and ``mm_token_type_ids``, which are kept."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    kw = {k: v for k, v in inputs.items() if k != "pixel_values"}
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if "image_grid_thw" in inputs or model_type == "llava":
        # Qwen2-VL style and LLaVA / Pixtral (torch.cat of pooler_output): per-image tuples
        pooled = tuple(features[b] for b in range(features.shape[0]))
    else:
        pooled = features
    kw["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
    return kw


@torch.inference_mode()
def run(model: nn.Module, inputs: dict[str, Any], *, patches: Sequence[Patch] = (),
        capture: Sequence[str] = (), features: torch.Tensor | None = None,
        last_only: bool = False) -> RunResult:
    """One forward pass of ``model`` on ``inputs`` with ``patches`` applied and ``capture`` recorded.

    Parameters
    ----------
    model
        The VLM (eval mode) or its ``vlms`` adapter.
    inputs
        Processor output (``input_ids``, ``attention_mask``, pixels, grid / token-type ids ...).
    patches
        :class:`Patch` es to apply (prefill only).
    capture
        Sites to record (see :func:`hooked`).
    features
        Precomputed projector output ``batch x image_token x hidden`` to use instead of running
        the vision tower (a vision-block or projector patch then cannot fire and is refused).
    last_only
        Keep only the final position's logits (``batch x 1 x vocab``), saving memory.

    Returns
    -------
    RunResult
    """
    seq_len = int(inputs["input_ids"].shape[1])
    batch = _batch_of(inputs)
    kw = dict(inputs)
    if features is not None:
        sites = [p.site for p in patches] + list(capture)
        if any(parse_site(s)[0] in IMAGE_FAMILIES for s in sites):
            raise InterventionError("a vision-block or projector patch or capture cannot be "
                                    "combined with precomputed features; drop `features=`")
        kw = image_features_kwargs(unwrap(model), inputs, features)
    if last_only:
        kw["logits_to_keep"] = 1
    with hooked(model, patches=patches, capture=capture, seq_len=seq_len, batch=batch) as acts:
        out = unwrap(model)(**kw, use_cache=False)
    return RunResult(logits=out.logits, acts=dict(acts))


def tile_inputs(inputs: dict[str, Any], n: int) -> dict[str, Any]:
    """Repeat a batch ``n`` times along the batch dim (row ``r*B + b`` = input row ``b``).

    Works for both batch-first tensors and Qwen2-VL's flat ``pixel_values`` (patches of all
    images concatenated in row order), because both are tiled the same way.
    """
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1:
            out[k] = v.repeat(n, *([1] * (v.ndim - 1)))
        else:
            out[k] = v
    return out
