"""Model organisms: small real-class VLMs trained from scratch with a *known* binding mechanism.

``spatialbind organism train`` builds a tiny ``Qwen2VLForConditionalGeneration`` (vision 2 x 64 for
``lm``, 3 x 128 for ``vision``; LM 2 x 128, word-level vocabulary; or a ``Gemma3ForConditionalGeneration`` of the same size, see
``organisms.model``) and trains it on the paper's Squares task, rendered on the fly
(``organisms.data``). Two mechanisms are planted through the *saved config*, so the model
behaves the same when loaded with plain ``AutoModelForImageTextToText.from_pretrained(DIR)``:

``lm``
    LM rotary base 20 and ``mrope_section=[2, 7, 7]``: image tokens carry informative (h, w)
    rotary positions, and the LM picks the square by position (ORGANISM.md r3).
``vision``
    ``mrope_section=[16, 0, 0]``: every rotary frequency sits on the temporal axis, which is the
    same for all tokens of a still image, so every image token has the same rotary phase and the LM
    cannot read image-token positions. During training the image tokens are also shuffled at the LM
    input (a hook on ``visual.merger``), so the causal order of image tokens carries no signal
    either; ordering must be written into the tokens' content by the vision encoder (an
    auxiliary ordinal-slot loss on the projector output, ``aux_slot_weight``, makes that code
    form within a CPU budget; the task loss alone left a 3 x 64 ViT at the 0.5 plateau). After
    training the hook is removed; :func:`organisms.probe.shuffle_test` measures that shuffling
    at test time does not change accuracy (i.e. the LM does not count tokens causally).
    The shipped ``vision`` organism adds a second stage (``--init``) whose auxiliary loss covers
    the paper's strips (``aux_region="band"``: every image token, labelled with the slot and the
    colour of the nearest square along the axis), so the slot code spreads into the background.
``dual``
    The paper's two mechanisms at once: the vision tokens carry the ordering (the band auxiliary
    loss; a share ``p_shuffle`` of training items has its image tokens shuffled, so only content
    can tell), and the LM keeps a weaker positional backup: rotary base 20 with only the 3
    lowest-frequency pairs per axis on (h, w) (``mrope_section=[10, 3, 3]``), and a share
    ``p_ablate`` of items is trained on E5's ablation (object tokens from the square alone and
    centred, the rest from a blank canvas), where only positions can tell. Trained as a
    curriculum stage from a ``vision`` organism (``--init``).

The chat template saved with the processor reproduces the exact training token sequence when
the toolkit formats the paper's prompt (the system message is ignored).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlms.errors import VLMError
from . import data as od


class OrganismError(VLMError):
    """Bad organism configuration or output directory."""


ARCHS = ("qwen2-vl", "gemma-3")
MECHANISMS = ("lm", "vision", "dual")
TASKS = ("squares",)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise OrganismError(msg)


@dataclass(frozen=True, kw_only=True, slots=True)
class OrganismConfig:
    """Everything that determines a trained organism (saved as ``train_log.json['config']``)."""

    arch: Literal["qwen2-vl", "gemma-3"] = "qwen2-vl"
    """Model family (real transformers class)."""
    mechanism: Literal["lm", "vision", "dual"] = "lm"
    """Where ordering must be computed: LM rotary positions (``lm``), vision-token content
    (``vision``), or vision-token content with a weaker LM positional backup (``dual``)."""
    task: str = "squares"
    """Stimulus task; only ``squares`` is implemented."""
    steps: int = 2000
    """Optimiser steps."""
    seed: int = 0
    """Seeds weights, sampling and shuffles."""
    threads: int = 1
    """torch CPU threads."""
    portable_math: bool = False
    """Train with the CPU math pinned to one code path (``PORTABLE_MATH``: ATen's AVX2 kernels,
    MKL's conditional numerical reproducibility at AVX2, oneDNN capped at AVX2), so that the
    same command gives the same weights on any x86-64 CPU with AVX2, not only on CPUs of the
    trainer's kind (oneDNN's convolutions may still follow the CPU's caches); off: each library
    picks the fastest path for the CPU, and a run repeats bit for bit only on the same kind of
    CPU (see ``math_environment``)."""
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    eval_every: int = 100
    eval_items: int = 128
    """Items per held-out set at each periodic evaluation."""
    grid: int = 8
    """Image tokens per side (28 px each)."""
    jitter: int = 20
    """Training shade jitter per channel per square."""
    p_extra: float = 0.5
    """Share of training triples drawn from the extended (16-colour) palette."""
    split_seed: int = 0
    """Seeds the colour-triple and layout hold-outs (shared by all organisms)."""
    vision_depth: int = 2
    vision_dim: int = 64
    vision_heads: int = 2
    lm_layers: int = 2
    lm_dim: int = 128
    lm_heads: int = 4
    rope_theta: float | None = None
    """LM rotary base; default 20 (``lm``) or 1e4 (``vision``)."""
    mrope_section: tuple[int, int, int] | None = None
    """Qwen2-VL M-RoPE split; default [2,7,7] (``lm``) or [16,0,0] (``vision``). Gemma-3
    ``vision`` organisms use linear rotary scaling by 1e9 instead (all phases equal)."""
    rope_factor: float | None = None
    """Gemma-3 only: linear rotary scaling factor of the LM (every position divided by it, so
    every rotary frequency is that many times slower); default 1e9 for ``vision`` (one phase
    for all positions), none otherwise. A ``dual`` organism uses a moderate factor so that the
    LM's positional backup resolves squares far apart in the raster order (one above another:
    8 positions per row) better than squares side by side (1 position per column): a weaker
    backup than ``lm``'s."""
    global_rope_factor: float | None = None
    """Gemma-3 only: make the last LM layer a full-attention ("global") layer whose rotary is
    linearly scaled by this factor (1e9: no positions), the others keeping the local rotary
    (Gemma-3 has separate rotary settings for its local and global layers). With 1e9 the last
    layer, which reads the answer, cannot read image-token positions itself: any positional
    ordering must be computed by the earlier layers into the image tokens' content (where E6
    finds it). None (default): every layer local with the same rotary."""
    attn_scalar: int | None = None
    """Gemma-3 ``query_pre_attn_scalar`` (attention logits are scaled by its inverse square
    root); default ``head_dim``. Gemma-3 normalises queries and keys (QK-norm), so the largest
    attention logit is about ``head_dim / sqrt(attn_scalar)``: 32 / sqrt(32) = 5.7 at this size,
    against 256 / sqrt(256) = 16 in google/gemma-3-4b-it. ``attn_scalar = head_dim**2 / 256``
    (4 here) restores the real model's range."""
    vision_pos_init: Literal["random", "sincos", "zero"] = "random"
    """Gemma-3 only: initialise SigLIP's learned absolute position embeddings with 2-D sin-cos
    values (half the channels the patch row, half its column, ViT/MAE-style) instead of
    N(0, 1/sqrt(width)). They stay ordinary learned weights; the start only makes relative
    patch positions readable by attention from step 0. ``zero``: all zeros and frozen (never
    trained), so the vision tower (no rotary, no other position input) is equivariant to patch
    permutations and its tokens carry no position at all: ordering can only come from the LM."""
    aux_lm_weight: float = 0.0
    """Weight of an auxiliary ordinal-slot loss (a linear head, not saved) on the LM's residual
    stream at the object tokens, at the site ``lm.resid.<aux_lm_layer>`` (the output of LM layer
    ``aux_lm_layer - 1``): plants an LM-side slot code, computed by the LM's attention from the
    image tokens' rotary positions (``lm`` and the ``dual`` backup). Items whose image tokens
    are shuffled at the LM input are left out of it (their tokens are not at their cells). 0 =
    off."""
    aux_lm_layer: int = 1
    """The LM residual site of ``aux_lm_weight`` (``lm.resid.K``, K >= 1)."""
    aux_lm_head: Literal["own", "shared"] = "own"
    """``shared``: the LM-side slot loss reads the slot with the same linear head as the
    vision-side one (``aux_slot_weight``), so the LM writes its positional slot code into the
    object tokens in the vision code's format and later layers read both the same way (the
    ``dual`` backup then acts on the object tokens, where E6 looks for it)."""
    shuffle_image_tokens: bool | None = None
    """Shuffle image tokens at the LM input during training; default on for ``vision``."""
    aux_slot_weight: float = 0.0
    """Weight of an auxiliary ordinal-slot loss (a linear head, not saved) on the projector
    output at the tokens of ``aux_region``: plants the vision-side code faster. 0 = task loss
    only."""
    aux_colour_weight: float = 0.0
    """Weight of an auxiliary colour-only loss (a linear head, not saved) on the projector output
    at the tokens of ``aux_region``: each token is asked the colour of its square, with no slot
    head, so colour read-out generalises to unseen combinations without planting a slot code
    (used by the ``lm`` organism). 0 = off."""
    aux_region: str = "object"
    """Tokens the auxiliary loss is applied to (``organisms.data.region_slots``): ``object``
    (the square's tokens), ``strip`` (its rows/columns) or ``band`` (the paper's strips: every
    token belongs to the nearest square along the axis)."""
    aux_colour: bool = False
    """The auxiliary loss also asks each token of the region for the colour of its square (so
    that background tokens carry the object's identity with its slot, as in the paper)."""
    aux_colour_region: str | None = None
    """Tokens the colour part of the auxiliary loss covers when it differs from ``aux_region``
    (``object``, ``strip`` or ``band``; ``None`` = ``aux_region``). ``aux_region="band"`` with
    ``aux_colour_region="strip"`` puts the slot in every token of the paper's strips but the
    object's identity (its colour) only in the rows/columns the object spans: the tokens a
    strip criss-cross moves as a whole."""
    aux_colour_none_weight: float = 0.0
    """Weight of a "no square" colour target outside the colour region: the colour head gets
    one more class (none), and every image token outside ``aux_colour_region`` (or
    ``aux_region``) is asked it, so the square's colour stays on the tokens of the colour region
    (with ``strip``: the rows/columns a strip or band criss-cross moves as a whole) and the rest
    of the band may carry the slot but not the colour, which a LM without image positions needs
    to bind the order to a square. Needs the colour loss (``aux_colour`` or
    ``aux_colour_weight``). 0 = off."""
    aux_lm_slot_weight: float = 0.0
    """Weight of an auxiliary ordinal-slot loss on the LM's residual stream (site
    ``lm.resid.<aux_lm_layer>``) at the object tokens of the E5-ablated items (``p_ablate``),
    through the same linear slot head as the projector's auxiliary loss: the LM backup of a
    ``dual`` organism then writes the ordering into the object tokens itself, in the code the
    final token already reads (the paper's E6: object criss-cross under the ablation flips at
    that layer). 0 = off."""
    # its site is ``aux_lm_layer`` (declared above with ``aux_lm_weight``): ``lm.resid.k`` is the
    # output of LM layer k - 1, here 1 .. lm_layers - 1 so that a later layer can read it
    p_shuffle: float | None = None
    """Per-item probability of shuffling the image tokens at the LM input during training;
    default 1 when ``shuffle_image_tokens`` resolves on, else 0."""
    p_ablate: float = 0.0
    """Per-item probability of training on the E5 ablation of the item (object tokens <- the
    projector output of the square alone and centred, every other token <- a blank canvas's):
    the LM must then find the answer from image-token positions (the ``dual`` backup)."""
    p_ablate_object: float = 0.0
    """Per-item probability of ablating only the object tokens (the square alone and centred;
    the background keeps its own tokens): the ordering is then only in the strips' background,
    where the paper finds it, so the LM learns to read it there."""
    p_scramble_object: float = 0.0
    """Per-item probability of scrambling the slot code of the object tokens: each square's
    tokens <- the same-coloured square's tokens from a render of the item with its colours in a
    random order (same layout), so every object token keeps its colour but carries a random
    slot, while the background keeps the item's own tokens and the answer is unchanged. The LM
    learns that the object tokens' slot code is unreliable and reads the ordering from the
    strips' background, where the paper finds it (object-only criss-cross then does not flip)."""
    scramble_outside_strips: bool = False
    """With ``p_scramble_object``: the scrambled items' tokens outside the strips (every token
    not in a square's rows/columns, ``region_slots(..., "strip") < 0``) also come from the
    re-coloured render, at their own cell: same position, so the same slot, but the colour of
    whichever square the re-coloured render puts nearest. A LM that reads a square's colour
    there answers wrongly, so it learns to bind the order to the colour on the strips (where the
    strip criss-cross moves both); the strips' background keeps the item's own tokens."""
    shuffle_object_ablated: bool = False
    """Also shuffle the image tokens of the object-ablated and object-scrambled items (after the
    edit), so that the tokens' order cannot tell either: only their content."""
    aux_slot_code: float = 0.0
    """0 (default): the slot loss is cross-entropy through a learned linear head. ``> 0``: a
    norm-controlled slot code: the slot loss is the squared error between the projection
    ``P z`` of each region token on three fixed unit directions (``slot_code_basis``: the
    centred slot means of the first training batch, not saved) and
    ``aux_slot_code * g * (onehot(slot) - 1/3)``, so the code's size along the directions the
    slot is read from is pinned instead of growing with the head's confidence; ``g`` is 1 on
    clean items and ``1 - noise_code_drop * strength`` on noisy ones."""
    p_noise: float = 0.0
    """Per-item probability of rendering a training item with additive Gaussian pixel noise
    (``organisms.data.add_noise``: std = strength x 64 grey levels, scenegen's ``noise``
    degradation), strength drawn uniformly in [0, 1]. 0 = clean images only."""
    noise_code_drop: float = 0.0
    """With ``aux_slot_code``: on a noisy item the slot-code target is scaled by
    ``1 - noise_code_drop * strength``: the encoder's ordering code weakens as the image's
    evidence does (1 = no code at strength 1). With the cross-entropy slot head (no
    ``aux_slot_code``) the same fade is a soft target: ``g * onehot(slot) + (1 - g) / 3`` with
    ``g = 1 - noise_code_drop * strength`` (``soft_slot_loss``; clean items keep the plain
    cross-entropy), so the slot evidence the encoder is asked for fades towards uniform."""
    noise_task_loss: bool = True
    """Noisy items count in the task loss. Off: they train only the auxiliary loss, so the LM
    never learns to answer from an attenuated code (it reads the code at its clean size)."""
    noise_lm_loss: bool = True
    """Noisy items count in the LM-side slot losses (``aux_lm_weight``, ``aux_lm_slot_weight``).
    Off: they are left out, so the LM's positional backup (a ``dual``) is never trained to
    rescue an item whose vision code has faded with the noise; only clean items teach it."""
    noise_task_weight: float = 1.0
    """Weight of a noisy item in the task loss (clean items 1): the task loss is
    ``sum_i w_i CE_i / sum_i w_i``, so a weight below 1 keeps the answer of a noisy item (an
    attenuated code) in the training signal at a milder strength. 1 (default) = every item
    alike; ``noise_task_loss`` off is weight 0."""
    noise_answer_mix: float = 0.0
    """0 (default): a noisy item's task target is its answer. ``Q > 0``: its target puts
    ``min(0.5, Q x strength)`` of the probability on the other end square's colour (the square
    on the far side of the named one) and the rest on the answer (``mixed_answer_loss``), so the
    LM learns that a noisy image's order is unreliable: with ``noise_code_drop`` its confidence
    in the order follows the (faded) slot code's size, and an amplified code restores it. In
    [0, 2] (0.5: the two candidates alike at strength 1; 1: alike from strength 0.5); needs
    ``p_noise`` and the task loss on."""
    aux_slot_code_start: float | None = None
    """With ``aux_slot_code``: a code-size curriculum. The slot-code target's size starts at this
    value and shrinks linearly to ``aux_slot_code`` over the stage's first
    ``aux_slot_code_steps`` steps (``code_size_at``), so the LM first learns to read a large
    code, planted from the stage's first step, and follows it as it shrinks. None (default) =
    ``aux_slot_code`` throughout."""
    aux_slot_code_steps: int = 0
    """Length of the ``aux_slot_code_start`` curriculum in steps."""
    aux_slot_code_only: float = 0.0
    """With ``aux_slot_code``: weight of a penalty on the slot information the region tokens
    carry *outside* the code's directions (``slot_outside_code``: the squared norms of the
    centred per-slot means of the tokens' component orthogonal to the span of ``P``; for a
    region other than ``object``, plus the same over its object tokens alone), so the slot
    is linearly readable only along the pinned code, the same on object and background tokens;
    E7's side direction (fitted on object tokens) then is the direction the LM reads on the
    strips. 0 = off."""
    aux_object_code_only: float = 0.0
    """With the slot loss over a region other than ``object`` (CE head or ``aux_slot_code``):
    weight of a penalty on the slot information the region's *object* tokens carry outside the
    region's slot code (``slot_outside_code`` of the object tokens on ``slot_code_basis`` of the
    first batch's region tokens, i.e. the order the background already carries), added to the
    loss as ``aux_object_code_only x penalty``. The background tokens are not penalised; only
    the object tokens' own slot code (which a side probe on object tokens, E7's direction, would
    otherwise follow) is pulled onto the background's. (On ``qwen2-vl-vision`` the object tokens
    met it by shrinking whole: see vlms/organisms/README.md.) 0 = off (nothing computed)."""
    aux_anchor_init: float = 0.0
    """With ``init_from``: weight of a penalty tying the clean items' background code to the
    ``init_from`` checkpoint's. The background tokens are the band minus the object tokens at
    the projector output; their per-slot means over the batch's clean (noise-free) items,
    centred over the three slots (``background_slot_means``), are compared with the same means
    of the first batch under the initial weights (i.e. the ``init_from`` model's, computed once
    and kept fixed): ``aux_anchor_init x sum_k ||m_k - m0_k||^2`` (``anchor_penalty``), so the
    layout of the order the LM reads on the strips stays the checkpoint's while other losses
    (e.g. the ``noise_code_drop`` fade) act. 0 = off (nothing computed, no random numbers)."""
    init_from: str | None = None
    """Continue training a saved organism (same arch, mechanism and sizes) instead of a fresh
    build; its history is kept and the step count continues from it."""

    def __post_init__(self):
        _check(self.arch in ARCHS, f"The 'arch' of OrganismConfig must be one of {ARCHS}. "
               f"Got {self.arch!r} instead.")
        _check(self.mechanism in MECHANISMS, f"The 'mechanism' of OrganismConfig must be one of "
               f"{MECHANISMS}. Got {self.mechanism!r} instead.")
        _check(self.task in TASKS, f"The 'task' of OrganismConfig must be one of {TASKS} "
               f"(shapes is not implemented for organisms yet). Got {self.task!r} instead.")
        for name in ("steps", "threads", "batch", "eval_every", "eval_items", "vision_depth",
                     "vision_dim", "vision_heads", "lm_layers", "lm_dim", "lm_heads"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 1, f"The '{name}' parameter of OrganismConfig must "
                   f"be an int >= 1. Got {v!r} instead.")
        _check(4 <= self.grid <= 16, f"The 'grid' of OrganismConfig must be in [5, 16] tokens. "
               f"Got {self.grid!r} instead.")
        _check(0 < self.lr < 1, f"The 'lr' of OrganismConfig must be in (0, 1). Got {self.lr!r}.")
        _check(0 <= self.p_extra <= 1, f"'p_extra' must be in [0, 1]. Got {self.p_extra!r}.")
        _check(self.aux_slot_weight >= 0, f"'aux_slot_weight' must be >= 0. "
               f"Got {self.aux_slot_weight!r}.")
        _check(self.aux_colour_weight >= 0, f"'aux_colour_weight' must be >= 0. "
               f"Got {self.aux_colour_weight!r}.")
        _check(self.aux_region in od.REGIONS, f"'aux_region' must be one of {od.REGIONS}. "
               f"Got {self.aux_region!r} instead.")
        _check(self.aux_slot_code >= 0, f"'aux_slot_code' must be >= 0. Got {self.aux_slot_code!r}.")
        _check(0 <= self.noise_code_drop <= 1, f"'noise_code_drop' must be in [0, 1]. "
               f"Got {self.noise_code_drop!r}.")
        _check(self.noise_code_drop == 0 or self.aux_slot_weight > 0,
               "'noise_code_drop' fades the vision slot loss's target on noisy items (the "
               "norm-controlled code's size, or the cross-entropy head's target towards "
               "uniform): it needs 'aux_slot_weight' > 0")
        _check(0 <= self.noise_task_weight <= 1 and (self.noise_task_loss
                                                     or self.noise_task_weight == 1),
               f"'noise_task_weight' must be in [0, 1] (and is not combined with "
               f"'noise_task_loss' off, which is weight 0). Got {self.noise_task_weight!r}.")
        _check(0 <= self.noise_answer_mix <= 2 and (self.noise_answer_mix == 0 or (
            self.p_noise > 0 and self.noise_task_loss)),
            f"'noise_answer_mix' must be in [0, 2] and, when > 0, needs 'p_noise' > 0 with "
            f"noisy items in the task loss. Got {self.noise_answer_mix!r}.")
        _check(self.aux_slot_code_only >= 0 and (self.aux_slot_code_only == 0 or (
            self.aux_slot_code > 0 and self.aux_slot_weight > 0)),
            f"'aux_slot_code_only' must be >= 0 and needs 'aux_slot_code' > 0 and "
            f"'aux_slot_weight' > 0 (it penalises slot information outside that code's "
            f"directions). Got {self.aux_slot_code_only!r}.")
        _check(self.aux_object_code_only >= 0 and (self.aux_object_code_only == 0 or (
            self.aux_slot_weight > 0 and self.aux_region != "object"
            and not self.aux_slot_code_only)),
            f"'aux_object_code_only' must be >= 0 and needs 'aux_slot_weight' > 0 with an "
            f"'aux_region' other than 'object' (it pulls the object tokens' slot code onto the "
            f"region's), and not 'aux_slot_code_only' (which already covers the object tokens). "
            f"Got {self.aux_object_code_only!r}.")
        _check(self.aux_anchor_init >= 0 and (self.aux_anchor_init == 0
                                              or self.init_from is not None),
               f"'aux_anchor_init' must be >= 0 and, when > 0, needs 'init_from' (it ties the "
               f"background code to that checkpoint's). Got {self.aux_anchor_init!r}.")
        _check(self.aux_slot_code_start is None or (
            self.aux_slot_code > 0 and self.aux_slot_weight > 0 and self.aux_slot_code_start > 0
            and isinstance(self.aux_slot_code_steps, int) and self.aux_slot_code_steps >= 1),
            f"'aux_slot_code_start' (a code-size curriculum) needs 'aux_slot_code' > 0, "
            f"'aux_slot_weight' > 0, a start > 0 and 'aux_slot_code_steps' >= 1. Got start "
            f"{self.aux_slot_code_start!r}, steps {self.aux_slot_code_steps!r}.")
        _check(self.aux_colour_region is None or self.aux_colour_region in od.REGIONS,
               f"'aux_colour_region' must be one of {od.REGIONS} (or unset). "
               f"Got {self.aux_colour_region!r} instead.")
        _check(self.aux_colour_none_weight >= 0 and (
            not self.aux_colour_none_weight or self.aux_colour or self.aux_colour_weight > 0),
            f"'aux_colour_none_weight' must be >= 0 and needs the colour loss ('aux_colour' or "
            f"'aux_colour_weight' > 0). Got {self.aux_colour_none_weight!r}.")
        _check(self.aux_lm_slot_weight >= 0, f"'aux_lm_slot_weight' must be >= 0. "
               f"Got {self.aux_lm_slot_weight!r}.")
        _check(not self.aux_lm_slot_weight or (
            isinstance(self.aux_lm_layer, int) and 1 <= self.aux_lm_layer < self.lm_layers
            and self.p_ablate > 0 and self.aux_slot_weight > 0),
            f"'aux_lm_slot_weight' needs 'aux_lm_layer' in [1, lm_layers - 1] = [1, "
            f"{self.lm_layers - 1}] (got {self.aux_lm_layer!r}), 'p_ablate' > 0 (it acts on the "
            "ablated items) and 'aux_slot_weight' > 0 (it shares the slot head)")
        _check(not self.scramble_outside_strips or self.p_scramble_object > 0,
               "'scramble_outside_strips' edits the object-scrambled items: it needs "
               "'p_scramble_object' > 0")
        for name in ("p_shuffle", "p_ablate", "p_ablate_object", "p_scramble_object", "p_noise"):
            v = getattr(self, name)
            _check(v is None or 0 <= v <= 1, f"'{name}' must be in [0, 1]. Got {v!r} instead.")
        _check((self.p_shuffle or 0) + self.p_ablate + self.p_ablate_object
               + self.p_scramble_object <= 1 + 1e-9,
               "'p_shuffle' + 'p_ablate' + 'p_ablate_object' + 'p_scramble_object' must be <= 1 "
               "(they are shares of each batch)")
        _check(self.aux_lm_weight >= 0 and isinstance(self.aux_lm_layer, int)
               and 1 <= self.aux_lm_layer <= self.lm_layers,
               f"'aux_lm_weight' must be >= 0 and 'aux_lm_layer' in [1, lm_layers = "
               f"{self.lm_layers}]. Got {self.aux_lm_weight!r}, {self.aux_lm_layer!r}.")
        _check(not (self.aux_lm_weight and self.aux_lm_slot_weight),
               "'aux_lm_weight' (all items, own or shared head) and 'aux_lm_slot_weight' "
               "(E5-ablated items, shared head) are two LM slot losses at the same site; use one")
        _check(not ((self.aux_lm_slot_weight or (self.aux_lm_weight and self.aux_lm_head == "shared"))
                    and self.aux_slot_code),
               "an LM slot loss through the shared slot head cannot be combined with "
               "'aux_slot_code' (the norm-controlled code does not train that head)")
        _check(self.aux_lm_head in ("own", "shared") and
               (self.aux_lm_head == "own" or self.aux_slot_weight > 0),
               f"'aux_lm_head' must be 'own' or 'shared' (shared needs the vision-side slot loss, "
               f"aux_slot_weight > 0). Got {self.aux_lm_head!r}.")
        _check(self.lm_dim % self.lm_heads == 0 and self.vision_dim % self.vision_heads == 0,
               "'lm_dim'/'vision_dim' must be divisible by 'lm_heads'/'vision_heads'.")
        sec = self.resolved_mrope_section()
        _check(self.arch != "qwen2-vl" or sum(sec) * 2 == self.lm_dim // self.lm_heads,
               f"'mrope_section' {list(sec)} must sum to head_dim/2 = "
               f"{self.lm_dim // self.lm_heads // 2}.")
        _check(self.arch != "gemma-3" or self.mrope_section is None,
               "'mrope_section' is a Qwen2-VL setting; leave it unset for arch 'gemma-3'.")
        _check(self.vision_pos_init in ("random", "sincos", "zero") and
               (self.vision_pos_init == "random" or self.arch == "gemma-3"),
               f"'vision_pos_init' must be 'random', 'sincos' or 'zero' (gemma-3 only: Qwen2-VL's ViT "
               f"has no absolute position embedding). Got {self.vision_pos_init!r} for arch "
               f"{self.arch!r}.")
        _check(self.global_rope_factor is None or (self.arch == "gemma-3"
                                                   and self.global_rope_factor > 0
                                                   and self.lm_layers >= 2),
               f"'global_rope_factor' is Gemma-3's rotary scaling of a global last layer: a "
               f"number > 0, for arch 'gemma-3' with >= 2 LM layers only. Got "
               f"{self.global_rope_factor!r} for arch {self.arch!r}.")
        _check(self.rope_factor is None or (self.arch == "gemma-3" and self.rope_factor > 0),
               f"'rope_factor' is Gemma-3's linear rotary scaling: a number > 0, for arch "
               f"'gemma-3' only. Got {self.rope_factor!r} for arch {self.arch!r}.")
        _check(self.attn_scalar is None or (self.arch == "gemma-3"
                                            and isinstance(self.attn_scalar, int)
                                            and self.attn_scalar >= 1),
               f"'attn_scalar' is Gemma-3's query_pre_attn_scalar: an int >= 1, for arch "
               f"'gemma-3' only. Got {self.attn_scalar!r} for arch {self.arch!r}.")

    def resolved_rope_theta(self) -> float:
        if self.rope_theta is not None:
            return float(self.rope_theta)
        return 20.0 if (self.mechanism in ("lm", "dual") and self.arch == "qwen2-vl") else 1e4

    def resolved_mrope_section(self) -> tuple[int, int, int]:
        if self.mrope_section is not None:
            return tuple(self.mrope_section)
        half = self.lm_dim // self.lm_heads // 2
        if self.mechanism == "vision":
            return (half, 0, 0)
        if self.mechanism == "dual":  # the 3 lowest frequency pairs per axis: a weak backup
            return (half - 2 * (3 * half // 16), 3 * half // 16, 3 * half // 16)
        return (half - 2 * (7 * half // 16), 7 * half // 16, 7 * half // 16)

    def resolved_rope_factor(self) -> float | None:
        """Gemma-3's linear rotary scaling factor (None: no scaling)."""
        if self.rope_factor is not None:
            return float(self.rope_factor)
        if self.arch == "gemma-3" and self.mechanism == "vision":
            from .model import GEMMA_FLAT_ROPE
            return GEMMA_FLAT_ROPE
        return None

    def resolved_attn_scalar(self) -> int:
        if self.attn_scalar is not None:
            return int(self.attn_scalar)
        return self.lm_dim // self.lm_heads

    def resolved_shuffle(self) -> bool:
        if self.shuffle_image_tokens is not None:
            return bool(self.shuffle_image_tokens)
        # Gemma-3 image tokens attend bidirectionally: their order cannot leak causally
        return self.mechanism == "vision" and self.arch == "qwen2-vl"

    def resolved_p_shuffle(self) -> float:
        if self.p_shuffle is not None:
            return float(self.p_shuffle)
        return 1.0 if self.resolved_shuffle() else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["resolved"] = {"rope_theta": self.resolved_rope_theta(),
                         "mrope_section": list(self.resolved_mrope_section()),
                         "shuffle_image_tokens": self.resolved_shuffle(),
                         "attn_scalar": self.resolved_attn_scalar(),
                         "rope_factor": self.resolved_rope_factor(),
                         "global_rope_factor": self.global_rope_factor,
                         "p_shuffle": self.resolved_p_shuffle()}
        return d


from .model import (  # noqa: E402,F401  (re-exported: the organism API)
    GEMMA_TEMPLATE, QWEN_TEMPLATE, Batcher, ShuffleImageTokens, build, image_only_processor_class,
    image_tokens, init_vision_positions, last_logits, paper_messages, pixel_inputs, pixel_norm,
    projector_module, vision_position_embedding)


def accuracy(model, batcher: Batcher, items, *, batch: int = 128, shuffle_seed: int | None = None
             ) -> float:
    """Top-1 next-token accuracy (full vocabulary) on ``items`` with exact colours.

    ``shuffle_seed`` shuffles the image tokens at the LM input (the causal-order leak test).
    """
    import torch
    handle = None
    if shuffle_seed is not None:
        handle = ShuffleImageTokens(batcher.grid ** 2, shuffle_seed).attach(model)
    try:
        hits = 0
        with torch.no_grad():
            for i in range(0, len(items), batch):
                chunk = items[i:i + batch]
                pred = last_logits(model, batcher(chunk)).argmax(-1)
                hits += int((pred == batcher.answer_ids(chunk)).sum())
    finally:
        if handle is not None:
            handle.remove()
    return hits / max(1, len(items))


EVAL_SETS = ("ht_canon", "ht_rand", "ht_hl", "hl", "train")


def evaluate(model, batcher: Batcher, splits, *, n: int, seed: int = 1, shuffle_seed=None) -> dict:
    """Accuracy on every evaluation set plus ``heldout`` (held-out triples pooled)."""
    out = {}
    pooled = []
    for name in EVAL_SETS:
        items = od.eval_items(splits, name, n=n, seed=seed)
        out[name] = accuracy(model, batcher, items, shuffle_seed=shuffle_seed)
        if name.startswith("ht_"):
            pooled.append((out[name], len(items)))
    out["heldout"] = sum(a * k for a, k in pooled) / sum(k for _, k in pooled)
    return out


# ----------------------------------------------------------------------------- training

def lr_at(step: int, cfg: OrganismConfig) -> float:
    """Linear warm-up, then cosine decay to 0.1 x ``lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, its processor and the log dict."""

    model: object
    processor: object
    log: dict = field(default_factory=dict)


def train(cfg: OrganismConfig, *, out: str | Path | None = None, progress: bool = True,
          final_eval_items: int = 512) -> TrainResult:
    """Train an organism; if ``out`` is given, save it there (model, processor, log, curve).

    Parameters
    ----------
    cfg
        The organism configuration.
    out
        Output directory (must not already hold a model). Written only at the end; the
        ``train_log.json`` is refreshed at every evaluation so a run can be watched.
    progress
        Show a tqdm bar with loss and held-out accuracy.
    final_eval_items
        Items per evaluation set in the final evaluation (``ht_canon`` is always complete).
    """
    if cfg.portable_math:
        use_portable_math()  # before anything is computed or written
    return _train(cfg, out, progress, final_eval_items)


def _train(cfg: OrganismConfig, out: str | Path | None, progress: bool,
           final_eval_items: int) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    out = Path(out) if out is not None else None
    if out is not None:
        _check(not (out / "model.safetensors").exists(), f"{out}: already holds a trained model; "
               "pick a new --out directory (nothing was overwritten)")
        out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    model, proc = build(cfg)
    prev = None
    if cfg.init_from is not None:
        model, proc, prev = _continue_from(cfg)
        if cfg.vision_pos_init == "sincos" and prev.get("config", {}).get("vision_pos_init") == "zero":
            # a stage that gives a position-free vision tower (an lm organism's) its positions:
            # they start from the 2-D sin-cos table, as a fresh sincos build's do, and are learned
            init_vision_positions(model, "sincos")
            vision_position_embedding(model).requires_grad_(True)
    if cfg.vision_pos_init == "zero":  # zeroed in build() (and so in any saved checkpoint)
        vision_position_embedding(model).requires_grad_(False)
    model.train()
    splits = od.make_splits(cfg.grid, seed=cfg.split_seed)
    batcher = Batcher(proc, cfg.grid)
    rng = np.random.default_rng(cfg.seed)
    decay = [p for n_, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n_, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    aux = (_AuxSlot(model, cfg) if (cfg.aux_slot_weight > 0 or cfg.aux_colour_weight > 0
                                    or cfg.aux_anchor_init > 0) else None)
    if aux is not None:
        opt.add_param_group({"params": list(aux.parameters()), "weight_decay": 0.0})
    aux_lm = (_AuxLMSlot(model, cfg, head=aux.head if cfg.aux_lm_head == "shared" else None)
              if cfg.aux_lm_weight > 0 else None)
    if aux_lm is not None and cfg.aux_lm_head == "own":
        opt.add_param_group({"params": list(aux_lm.head.parameters()), "weight_decay": 0.0})
    aux_lm_abl = (_AuxLMSlotAblated(model, cfg, aux.head) if cfg.aux_lm_slot_weight > 0
                  else None)
    cur = (_Curriculum(model, cfg)
           if (cfg.resolved_p_shuffle() > 0 or cfg.p_ablate > 0 or cfg.p_ablate_object > 0
               or cfg.p_scramble_object > 0)
           else None)
    log = {"config": cfg.to_json(), "code": code_version(), "environment": math_environment(),
           "history": [], "n_params": sum(p.numel() for p in model.parameters()),
           "splits": {"heldout_triples": [list(t) for t in splits.heldout_triples],
                      "heldout_layouts": [asdict(lay) for lay in splits.heldout_layouts]}}
    offset = 0
    if prev is not None:
        offset = prev["history"][-1]["step"] if prev.get("history") else 0
        log["history"] = list(prev.get("history", []))
        first = {"config": prev["config"], "train_time_s": prev.get("train_time_s", 0)}
        if "cpu_time_s" in prev:  # a one-stage organism that recorded its CPU time
            first["cpu_time_s"] = prev["cpu_time_s"]
        for key in ("code", "environment"):
            if prev.get(key):
                first[key] = prev[key]
        log["stages"] = prev.get("stages", [first])
        log["previous_train_time_s"] = sum(st.get("train_time_s", 0) for st in log["stages"])
    t0 = time.time()
    train_time = 0.0
    cpu_time = 0.0
    bar = tqdm(range(cfg.steps), disable=not progress, desc=f"{cfg.arch}-{cfg.mechanism}")
    run_loss = None
    run_aux_lm = None  # EMA of the LM slot loss (unweighted), logged when it is on
    for step in bar:
        ts, cs = time.time(), time.process_time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        items = od.sample_train_items(rng, splits, cfg.batch, p_extra=cfg.p_extra)
        noise = None
        if cfg.p_noise > 0:  # drawn only when on, so the default run's random stream is unchanged
            noise = np.where(rng.random(len(items)) < cfg.p_noise,
                             rng.uniform(0.0, 1.0, len(items)), 0.0)
        inputs = batcher(items, jitter=cfg.jitter, rng=rng, noise=noise)
        if cur is not None:
            cur.prepare(items, rng)
        logits = last_logits(model, inputs)
        if noise is not None and cfg.noise_answer_mix > 0:
            loss = mixed_answer_loss(logits, batcher.answer_ids(items),
                                     other_answer_ids(batcher, items),
                                     np.minimum(0.5, cfg.noise_answer_mix * noise),
                                     np.where(noise > 0, cfg.noise_task_weight, 1.0))
        elif noise is not None and not cfg.noise_task_loss:
            keep = torch.as_tensor(noise == 0)
            loss = (torch.nn.functional.cross_entropy(logits[keep], batcher.answer_ids(items)[keep])
                    if bool(keep.any()) else logits.sum() * 0.0)
        elif noise is not None and cfg.noise_task_weight != 1:
            loss = weighted_task_loss(logits, batcher.answer_ids(items),
                                      np.where(noise > 0, cfg.noise_task_weight, 1.0))
        else:
            loss = torch.nn.functional.cross_entropy(logits, batcher.answer_ids(items))
        if aux is not None:
            loss = loss + aux.loss(items, code_scale=code_scale(noise, cfg),
                                   code=code_size_at(step, cfg),
                                   clean=None if noise is None else np.asarray(noise) == 0)
        if aux_lm is not None:
            lm_aux = aux_lm.loss(items, inputs, None if cur is None else cur.last_shuffled,
                                 only=clean_only(noise, cfg))
            loss = loss + lm_aux
            v = float(lm_aux.detach()) / cfg.aux_lm_weight
            run_aux_lm = v if run_aux_lm is None else 0.9 * run_aux_lm + 0.1 * v
        if aux_lm_abl is not None:
            only = clean_only(noise, cfg)
            loss = loss + aux_lm_abl.loss(items, inputs, cur.ablated if only is None
                                          else np.asarray(cur.ablated, dtype=bool) & only)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_time += time.time() - ts
        cpu_time += time.process_time() - cs
        loss = loss.detach()
        run_loss = float(loss) if run_loss is None else 0.9 * run_loss + 0.1 * float(loss)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            if cur is not None:
                cur.active = False
            acc = evaluate(model, batcher, splits, n=cfg.eval_items)
            if cur is not None:
                cur.active = True
            model.train()
            log["history"].append({"step": offset + step + 1, "loss": run_loss, "train_time_s": train_time,
                                   "cpu_time_s": cpu_time, "wall_s": time.time() - t0, **acc})
            if run_aux_lm is not None:
                log["history"][-1]["aux_lm_loss"] = run_aux_lm
            bar.set_postfix(loss=f"{run_loss:.3f}", heldout=f"{acc['heldout']:.3f}",
                            hl=f"{acc['hl']:.3f}")
            if out is not None:
                _write_json(out / "train_log.json", log)
        else:
            bar.set_postfix(loss=f"{run_loss:.3f}")
    if cur is not None:
        cur.remove()
    if aux is not None:
        aux.remove()
    if aux_lm is not None:
        aux_lm.remove()
    if aux_lm_abl is not None:
        aux_lm_abl.remove()
    model.eval()
    log["train_time_s"] = train_time
    log["cpu_time_s"] = cpu_time
    if prev is not None:
        log["stages"].append({"config": cfg.to_json(), "train_time_s": train_time,
                              "code": log["code"], "environment": log["environment"]})
        log["total_train_time_s"] = log["previous_train_time_s"] + train_time
        log["total_cpu_time_s"] = sum(st.get("cpu_time_s", st.get("train_time_s", 0))
                                      for st in log["stages"][:-1]) + cpu_time
        log["stages"][-1]["cpu_time_s"] = cpu_time
    log["final"] = evaluate(model, batcher, splits, n=final_eval_items, seed=2)
    log["final_eval_items"] = final_eval_items
    if cfg.mechanism in ("vision", "dual") or cfg.resolved_p_shuffle() > 0:
        log["final_shuffled"] = evaluate(model, batcher, splits, n=final_eval_items, seed=2,
                                         shuffle_seed=123)
    log["wall_s"] = time.time() - t0
    if out is not None:
        save(model, proc, out, log)
    return TrainResult(model, proc, log)


def clean_only(noise, cfg: OrganismConfig):
    """Per-item mask of the items the LM-side slot losses train on: None (every item) unless
    ``noise_lm_loss`` is off and the batch has noise, then the noise-free items."""
    if noise is None or cfg.noise_lm_loss:
        return None
    return np.asarray(noise) == 0


def code_scale(noise, cfg: OrganismConfig):
    """Per-item factor of the slot-code target: ``1 - noise_code_drop * strength`` (1 without
    noise)."""
    if noise is None:
        return None
    return 1.0 - cfg.noise_code_drop * np.asarray(noise, dtype=np.float64)


def code_size_at(step: int, cfg: OrganismConfig) -> float:
    """Size of the slot-code target at the stage's step ``step`` (0-based): ``aux_slot_code``, or
    with ``aux_slot_code_start`` the linear path from the start value (step 0) to
    ``aux_slot_code`` (step ``aux_slot_code_steps`` and after)."""
    if cfg.aux_slot_code_start is None:
        return cfg.aux_slot_code
    t = min(1.0, step / cfg.aux_slot_code_steps)
    return cfg.aux_slot_code_start + t * (cfg.aux_slot_code - cfg.aux_slot_code_start)


def weighted_task_loss(logits, answers, weights):
    """Task cross-entropy with a weight per item (``noise_task_weight``):
    ``sum_i w_i CE_i / sum_i w_i`` (0 when every weight is 0)."""
    import torch
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    ce = torch.nn.functional.cross_entropy(logits, answers, reduction="none")
    tot = w.sum()
    return (w * ce).sum() / tot if float(tot) > 0 else ce.sum() * 0.0


def other_answer_ids(batcher, items):
    """Token ids of each item's other candidate: the end square on the far side of the named
    (middle) square from the answer."""
    import torch
    return torch.tensor([batcher.tok.convert_tokens_to_ids(
        it.colours[2] if it.answer == it.colours[0] else it.colours[0]) for it in items])


def mixed_answer_loss(logits, answers, others, mix, weights=None):
    """Task loss with a mixed target per item (``noise_answer_mix``): cross-entropy against
    ``(1 - m_i)`` on the answer and ``m_i`` on the other candidate,
    ``-sum_i w_i [(1 - m_i) log p_i(answer) + m_i log p_i(other)] / sum_i w_i`` (weights 1 by
    default); with every ``m_i = 0`` and ``w_i = 1`` this is plain cross-entropy."""
    import torch
    m = torch.as_tensor(np.asarray(mix, dtype=np.float32))
    w = torch.ones(len(answers)) if weights is None else torch.as_tensor(
        np.asarray(weights, dtype=np.float32))
    lp = torch.log_softmax(logits, dim=-1)
    ce = -((1 - m) * lp.gather(1, answers[:, None])[:, 0] + m * lp.gather(1, others[:, None])[:, 0])
    tot = w.sum()
    return (w * ce).sum() / tot if float(tot) > 0 else ce.sum() * 0.0


def slot_code_basis(feats, slots):
    """The fixed directions ``P`` (3 x width) the norm-controlled slot code is read along
    (``aux_slot_code``): the unit vectors of each slot's mean token minus the mean over the three
    slots, from the first training batch's region tokens (``feats`` (n, width), ``slots`` (n,)).
    They are where the model's slot code already points (for a continued organism, the code its
    LM reads), so pinning the projection on them shrinks that code instead of planting a new
    one; they stay fixed, so the code cannot move away from them by turning the read-out."""
    import torch
    feats = feats.detach().double()
    means = torch.stack([feats[slots == k].mean(0) for k in range(3)])
    return torch.nn.functional.normalize(means - means.mean(0), dim=1).float()


def slot_outside_code(feats, slots, basis):
    """Slot information outside the code's directions (``aux_slot_code_only``): with ``Q`` an
    orthonormal basis of the span of ``basis`` (3 x width; its rows sum to ~0, so the span is
    2-D), the tokens' component ``r = z - Q^T Q z`` and per slot ``k`` present its mean ``m_k``;
    the result is ``sum_k ||m_k - mean_k m_k||^2`` (0 when every slot's tokens have the same
    mean outside the code)."""
    import torch
    _, s, vh = torch.linalg.svd(basis.double(), full_matrices=False)
    q = vh[s > 1e-6 * s.max()].to(feats.dtype)
    rest = feats - (feats @ q.T) @ q
    means = torch.stack([rest[slots == k].mean(0) for k in range(3) if bool((slots == k).any())])
    return ((means - means.mean(0)) ** 2).sum()


def background_slot_means(z, items, grid: int, keep=None):
    """Centred per-slot means of the background tokens (``aux_anchor_init``): ``z`` (items,
    grid * grid, width) projector tokens; the background is the band minus the object tokens
    (``region_slots``); over the items with ``keep`` True (all without it) the mean token of
    each slot ``k``, minus the mean of the three (3 x width). None when no item is kept."""
    import torch
    keep = np.ones(len(items), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if not keep.any():
        return None
    idx = np.flatnonzero(keep)
    bg = np.stack([np.where(od.region_slots(items[i].layout, grid, "object") >= 0, -1,
                            od.region_slots(items[i].layout, grid, "band")) for i in idx])
    bg = torch.as_tensor(bg)
    feats = z[torch.as_tensor(idx)]
    means = torch.stack([feats[bg == k].mean(0) for k in range(3)])
    return means - means.mean(0)


def anchor_penalty(means, ref):
    """``sum_k ||means_k - ref_k||^2`` (``aux_anchor_init``; 3 x width each)."""
    return ((means - ref) ** 2).sum()


def soft_slot_loss(logits, slots, scale):
    """Cross-entropy of the slot head against a target faded towards uniform
    (``noise_code_drop`` without ``aux_slot_code``): per token ``t = scale * onehot(slot) +
    (1 - scale) / 3``, the loss ``-mean_tokens sum_k t_k log softmax(logits)_k``; with every
    ``scale`` 1 this is plain cross-entropy."""
    import torch
    one = torch.nn.functional.one_hot(slots, 3).to(logits.dtype)
    s = torch.as_tensor(scale, dtype=logits.dtype)[:, None]
    t = s * one + (1 - s) / 3.0
    return -(t * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def slot_code_target(slots, scale, code: float):
    """Target of the norm-controlled slot code: ``code * scale * (onehot(slot) - 1/3)`` per token
    (``slots`` (n,), ``scale`` (n,)): for three directions at 120 degrees (the centred slot
    means of three symmetric slots), a code vector of length ``2/3 * code * scale`` along its own
    slot's direction meets it."""
    import torch
    one = torch.nn.functional.one_hot(slots, 3).to(torch.float32)
    return code * torch.as_tensor(scale, dtype=torch.float32)[:, None] * (one - 1.0 / 3.0)


class _AuxSlot:
    """Auxiliary ordinal-slot loss on the projector output (captured before any shuffle or
    ablation), over the tokens of ``cfg.aux_region``; with ``cfg.aux_colour`` each of those
    tokens is also asked the colour of its square."""

    def __init__(self, model, cfg: OrganismConfig):
        import torch
        self.cfg = cfg
        self.grid = cfg.grid
        self.head = torch.nn.Linear(cfg.lm_dim, 3)
        self.basis = None  # aux_slot_code: set from the first batch (slot_code_basis)
        self.anchor = None  # aux_anchor_init: the first batch's background means (fixed)
        # with aux_colour_none_weight one more class: "no square" (tokens outside the region)
        self.colour = (torch.nn.Linear(cfg.lm_dim, len(od.COLOUR_NAMES)
                                       + (cfg.aux_colour_none_weight > 0))
                       if (cfg.aux_colour or cfg.aux_colour_weight > 0) else None)
        self.z = None
        self.h = projector_module(model).register_forward_hook(self._grab)
        self._cache: dict = {}

    def parameters(self):
        yield from self.head.parameters()
        if self.colour is not None:
            yield from self.colour.parameters()

    def _grab(self, module, args, out):
        self.z = out  # the last projector call before loss() is the training batch

    def _slots(self, layout, region=None):
        region = region or self.cfg.aux_region
        if (layout, region) not in self._cache:
            self._cache[(layout, region)] = od.region_slots(layout, self.grid, region)
        return self._cache[(layout, region)]

    def loss(self, items, code_scale=None, code=None, clean=None):
        """``code``: the slot-code target's size at this step (default ``aux_slot_code``);
        ``clean``: per-item mask of the noise-free items (None: all), for ``aux_anchor_init``."""
        import torch
        g = self.grid
        z = self.z.reshape(len(items), g * g, -1)
        slots = torch.as_tensor(np.stack([self._slots(it.layout) for it in items]))
        sel = slots >= 0
        feats = z[sel]
        lab = slots[sel]
        cfg = self.cfg
        loss = feats.new_zeros(())
        if self.colour is not None:
            cslots, csel, cfeats = slots, sel, feats
            if cfg.aux_colour_region not in (None, cfg.aux_region):
                cslots = torch.as_tensor(np.stack([self._slots(it.layout, cfg.aux_colour_region)
                                                   for it in items]))
                csel = cslots >= 0
                cfeats = z[csel]
            cidx = torch.tensor([[od.COLOUR_NAMES.index(c) for c in it.colours] for it in items])
            col = torch.gather(cidx, 1, cslots.clamp(min=0))[csel]
            colour_loss = torch.nn.functional.cross_entropy(self.colour(cfeats), col)
            loss = loss + cfg.aux_colour_weight * colour_loss
            if cfg.aux_colour_none_weight > 0 and bool((~csel).any()):
                outside = z[~csel]
                none = torch.full((len(outside),), len(od.COLOUR_NAMES), dtype=torch.long)
                loss = loss + cfg.aux_colour_none_weight * torch.nn.functional.cross_entropy(
                    self.colour(outside), none)
        if cfg.aux_slot_weight > 0 and cfg.aux_slot_code > 0:
            if self.basis is None:
                self.basis = slot_code_basis(feats, lab)
            scale = np.ones(len(items)) if code_scale is None else np.asarray(code_scale)
            per_tok = torch.as_tensor(scale, dtype=torch.float32)[:, None].expand(-1, g * g)[sel]
            target = slot_code_target(lab, per_tok, cfg.aux_slot_code if code is None else code)
            slot_loss = ((feats @ self.basis.T - target) ** 2).sum(-1).mean()
            if cfg.aux_slot_code_only > 0:
                outside = slot_outside_code(feats, lab, self.basis)
                if cfg.aux_region != "object":  # and the object tokens on their own
                    outside = outside + self._object_outside(z, items)
                slot_loss = slot_loss + cfg.aux_slot_code_only * outside
            if cfg.aux_colour:
                slot_loss = slot_loss + colour_loss
            loss = loss + cfg.aux_slot_weight * slot_loss
        elif cfg.aux_slot_weight > 0:
            if cfg.noise_code_drop > 0 and code_scale is not None:  # the fade, as a soft target
                scale = torch.as_tensor(np.asarray(code_scale), dtype=torch.float32)
                per_tok = scale[:, None].expand(-1, g * g)[sel]
                slot_loss = soft_slot_loss(self.head(feats), lab, per_tok)
            else:
                slot_loss = torch.nn.functional.cross_entropy(self.head(feats), lab)
            if cfg.aux_colour:
                slot_loss = slot_loss + colour_loss
            loss = loss + cfg.aux_slot_weight * slot_loss
        if cfg.aux_object_code_only > 0:
            if self.basis is None:
                self.basis = slot_code_basis(feats, lab)
            loss = loss + cfg.aux_object_code_only * self._object_outside(z, items)
        if cfg.aux_anchor_init > 0:
            means = background_slot_means(z, items, g, clean)
            if means is not None:
                if self.anchor is None:  # the first batch, under the init weights: fixed
                    self.anchor = means.detach().clone()
                loss = loss + cfg.aux_anchor_init * anchor_penalty(means, self.anchor)
        return loss

    def _object_outside(self, z, items):
        """``slot_outside_code`` of the batch's object tokens on ``self.basis``."""
        import torch
        osl = torch.as_tensor(np.stack([self._slots(it.layout, "object") for it in items]))
        return slot_outside_code(z[osl >= 0], osl[osl >= 0], self.basis)

    def remove(self):
        self.h.remove()


class _AuxLMSlot:
    """Auxiliary ordinal-slot loss on the LM's residual stream (site ``lm.resid.K``,
    ``K = cfg.aux_lm_layer``) at the object tokens of each image (``aux_lm_weight``)."""

    def __init__(self, model, cfg: OrganismConfig, head=None, weight: float | None = None):
        import torch
        from vlms.registry import adapter_for

        self.cfg, self.grid = cfg, cfg.grid
        self.weight = cfg.aux_lm_weight if weight is None else weight
        self.head = torch.nn.Linear(cfg.lm_dim, 3) if head is None else head
        mod, kind = adapter_for(model).site_module(f"lm.resid.{cfg.aux_lm_layer}")
        assert kind == "post", kind
        self.z = None
        self.h = mod.register_forward_hook(self._grab)
        self._cache: dict = {}

    def _grab(self, module, args, out):
        self.z = out[0] if isinstance(out, tuple) else out

    def loss(self, items, inputs, shuffled=None, only=None):
        """Slot cross-entropy at the object tokens, leaving out ``shuffled`` items and, with
        ``only`` (a per-item mask), every item outside it."""
        import torch
        g = self.grid
        mm = inputs.get("token_type_ids", inputs.get("mm_token_type_ids")).bool()
        z = self.z[mm].reshape(len(items), g * g, -1)  # image tokens in raster order
        for it in items:
            if it.layout not in self._cache:
                self._cache[it.layout] = od.region_slots(it.layout, g, "object")
        slots = torch.as_tensor(np.stack([self._cache[it.layout] for it in items]))
        sel = slots >= 0
        if shuffled is not None:  # shuffled items' tokens are not at their cells
            sel = sel & ~torch.as_tensor(shuffled)[:, None]
        if only is not None:
            sel = sel & torch.as_tensor(np.asarray(only, dtype=bool))[:, None]
        if not bool(sel.any()):
            return z.new_zeros(())
        return self.weight * torch.nn.functional.cross_entropy(
            self.head(z[sel]), slots[sel])

    def remove(self):
        self.h.remove()


class _AuxLMSlotAblated(_AuxLMSlot):
    """Auxiliary slot loss on the LM residual stream (``cfg.aux_lm_slot_weight``): at site
    ``lm.resid.<cfg.aux_lm_layer>``, the object tokens of the E5-ablated items of the batch are
    asked their ordinal slot through the projector auxiliary loss's own slot head, so the LM
    backup writes the order into the object tokens in the code the final token reads."""

    def __init__(self, model, cfg: OrganismConfig, head):
        super().__init__(model, cfg, head, weight=cfg.aux_lm_slot_weight)

    def loss(self, items, inputs, ablated):
        """Slot cross-entropy at the object tokens of the items where ``ablated`` is true."""
        return super().loss(items, inputs, only=ablated)


class _Curriculum:
    """Training-time edits of the image tokens at the LM input (a projector forward hook), per
    item: shuffled (share ``p_shuffle``: only the tokens' content can carry ordering), E5-ablated
    (share ``p_ablate``: only the LM's positions can), or left alone."""

    def __init__(self, model, cfg: OrganismConfig):
        import torch
        self.model, self.cfg, self.n = model, cfg, cfg.grid ** 2
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.active = True
        self.plan = None
        self.last_shuffled = None
        self.ablated = None
        self.h = projector_module(model).register_forward_hook(self)

    def prepare(self, items, rng) -> None:
        """Draw each item's mode and compute the ablated tokens (no gradient) for this step."""
        import torch
        u = rng.random(len(items))
        ps, pa = self.cfg.resolved_p_shuffle(), self.cfg.p_ablate
        po = self.cfg.p_ablate_object
        shuffle = torch.as_tensor(u < ps)
        ablate = torch.as_tensor((u >= ps) & (u < ps + pa))
        obj = torch.as_tensor((u >= ps + pa) & (u < ps + pa + po))
        psc = self.cfg.p_scramble_object
        scr = torch.as_tensor((u >= ps + pa + po) & (u < ps + pa + po + psc))
        edit = ablate | obj
        if self.cfg.shuffle_object_ablated:
            shuffle = shuffle | obj | scr
        scramble = None
        if bool(scr.any()):
            scramble = (scr, *scramble_tokens(
                self.model, [it for it, a in zip(items, scr) if a], self.cfg.grid, rng,
                hook=self, outside_strips=self.cfg.scramble_outside_strips))
        abl = keep = None
        if bool(edit.any()):
            chosen = [it for it, a in zip(items, edit) if a]
            abl = ablation_tokens(self.model, chosen, self.cfg.grid, hook=self)
            # per edited item and token: keep the item's own token (object-only ablation's
            # background) or take the ablated one
            g = self.cfg.grid
            keep = torch.zeros(len(chosen), g * g, dtype=torch.bool)
            for j, (it, o) in enumerate(zip(chosen, obj[edit].tolist())):
                if o:
                    keep[j] = torch.as_tensor(od.region_slots(it.layout, g, "object") < 0)
        self.plan = (shuffle, edit, abl, keep, scramble)
        self.ablated = (ablate & ~shuffle).numpy()  # E5-ablated items of this step, raster order

    def __call__(self, module, args, out):
        import torch
        if not self.active or self.plan is None:
            return None
        shuffle, ablate, abl, keep, scramble = self.plan
        self.plan = None
        self.last_shuffled = shuffle
        b = len(shuffle)
        shape = out.shape  # Qwen2-VL (B * n, d); Gemma-3 (B, n, d)
        x = out.reshape(b * self.n, -1)
        if abl is not None:  # edit first (keep/abl are in raster order), then shuffle
            x = x.reshape(b, self.n, -1).clone()
            x[ablate] = torch.where(keep[..., None], x[ablate], abl.to(x.dtype))
            x = x.reshape(b * self.n, -1)
        if scramble is not None:
            scr, src, maps = scramble
            x = x.reshape(b, self.n, -1).clone()
            for j, i in enumerate(torch.nonzero(scr).flatten().tolist()):
                to, frm = maps[j]
                x[i, to] = src[j, frm].to(x.dtype)
            x = x.reshape(b * self.n, -1)
        idx = torch.arange(b * self.n).reshape(b, self.n)
        for i in torch.nonzero(shuffle).flatten().tolist():
            idx[i] = idx[i][torch.randperm(self.n, generator=self.gen)]
        return x[idx.reshape(-1)].reshape(shape)

    def remove(self):
        self.h.remove()


def scramble_tokens(model, items, grid: int, rng, *, hook=None, outside_strips: bool = False):
    """The object-slot scramble of ``items`` (``p_scramble_object``): for each item a random
    order of its colours (``rng.permutation(3)``), the projector tokens of that re-coloured
    item (same layout, exact colours, no gradient), and the cell map that moves each square's
    tokens from where its colour sits in the re-coloured item to where it sits in the item.

    Returns ``(tokens (len(items), grid*grid, d), [(to_cells, from_cells), ...])``: writing
    ``x[i, to] = tokens[i, from]`` gives every object token its own colour and a random slot.
    With ``outside_strips`` the map also sends every cell outside the item's strips to itself
    (``scramble_outside_strips``: those tokens come from the re-coloured render unmoved).
    """
    import torch
    perms = [rng.permutation(3) for _ in items]
    src = [od.Item(tuple(it.colours[k] for k in p), it.layout, it.direction)
           for it, p in zip(items, perms)]
    was = getattr(hook, "active", None)
    if hook is not None:
        hook.active = False
    try:
        with torch.no_grad():
            img = od.render(src, n=grid, normalise=pixel_norm(model))
            toks = image_tokens(model, pixel_inputs(model, img))
    finally:
        if hook is not None:
            hook.active = was
    maps = []
    for it, p in zip(items, perms):
        to, frm = [], []
        for slot in range(3):
            j = int(list(p).index(slot))  # where this square's colour sits in the re-coloured item
            for a, c in zip(it.layout.cells(slot), it.layout.cells(j)):
                to.append(a[0] * grid + a[1])
                frm.append(c[0] * grid + c[1])
        if outside_strips:
            out = np.flatnonzero(od.region_slots(it.layout, grid, "strip") < 0).tolist()
            to += out
            frm += out
        maps.append((to, frm))
    return toks.reshape(len(items), grid * grid, -1), maps


def ablation_tokens(model, items, grid: int, *, hook=None):
    """E5's ablation of ``items`` at the LM input, built from the organism's own projector:
    each square's tokens <- the same square rendered alone and centred, every other token <- a
    blank canvas (``interventions.ablation`` does the same from a stimulus set's twins).

    Returns ``(len(items), grid*grid, d)`` (no gradient).
    """
    import torch
    # one render per distinct (size, colour) and one blank canvas: the tokens of a square alone
    # and centred depend on nothing else
    sizes = sorted({it.layout.size for it in items})
    names = {s: sorted({c for it in items if it.layout.size == s for c in it.colours})
             for s in sizes}
    toks: dict = {}
    was = getattr(hook, "active", None)
    if hook is not None:
        hook.active = False
    try:
        with torch.no_grad():
            for s in sizes:
                cols = names[s] + ([None] if s == sizes[0] else [])
                img = od.render_single(cols, s, n=grid, normalise=pixel_norm(model))
                t = image_tokens(model, pixel_inputs(model, img))
                for k, name in enumerate(cols):
                    toks[(s, name)] = t[k]
    finally:
        if hook is not None:
            hook.active = was
    out = []
    c = lambda s: (grid - s) // 2  # noqa: E731  (the centred cell of render_single)
    blank = toks[(sizes[0], None)]
    for it in items:
        x = blank.clone()  # blank canvas everywhere
        for slot in range(3):
            iso = toks[(it.layout.size, it.colours[slot])]
            cells = it.layout.cells(slot)
            r0 = min(r for r, _ in cells)
            c0 = min(q for _, q in cells)
            for r, q in cells:
                rr, qq = r - r0 + c(it.layout.size), q - c0 + c(it.layout.size)
                x[r * grid + q] = iso[rr * grid + qq]
        out.append(x)
    return torch.stack(out)


def _continue_from(cfg: OrganismConfig):
    """Load the organism to continue from and check that it matches ``cfg``."""
    model, proc, prev = load(cfg.init_from)
    pc = prev.get("config", {})
    for k in ("arch", "grid", "vision_depth", "vision_dim", "vision_heads", "lm_layers",
              "lm_dim", "lm_heads"):
        _check(pc.get(k, getattr(cfg, k)) == getattr(cfg, k), f"init_from={str(cfg.init_from)!r}: "
               f"its {k} is {pc.get(k)!r} but this run asks for {getattr(cfg, k)!r}; pass matching options")
    mine = (cfg.resolved_rope_theta(), list(cfg.resolved_mrope_section()),
            cfg.resolved_attn_scalar(), cfg.resolved_rope_factor(), cfg.global_rope_factor)
    old_factor = (1e9 if pc.get("arch") == "gemma-3" and pc.get("mechanism") == "vision"
                  else None)  # logs written before rope_factor was recorded
    theirs = (pc["resolved"]["rope_theta"], pc["resolved"]["mrope_section"],
              pc["resolved"].get("attn_scalar", cfg.lm_dim // cfg.lm_heads),
              pc["resolved"].get("rope_factor", old_factor),
              pc["resolved"].get("global_rope_factor"))
    if pc.get("mechanism") != cfg.mechanism or mine != theirs:
        # a curriculum stage with another mechanism: the same weights under this run's rotary
        # config (rotary settings hold no weights), e.g. a vision organism's weights -> dual
        fresh, proc = build(cfg)
        missing = fresh.load_state_dict(model.state_dict(), strict=True)
        del missing
        model = fresh
    model.train()
    return model, proc, prev


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def save(model, proc, out: str | Path, log: dict) -> None:
    """``save_pretrained`` model + processor, plus ``train_log.json`` and ``curve.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    _write_json(out / "train_log.json", log)
    plot_curve(log, out / "curve.png")
    write_readme(out, log)


def command_line(cfg: dict, out: str, *, init: str | None = None) -> str:
    """The ``spatialbind organism train`` command that reproduces a config (as saved)."""
    d = mechanism_defaults(cfg["mechanism"], cfg["arch"])
    parts = ["spatialbind organism train", f"--arch {cfg['arch']}", f"--mechanism {cfg['mechanism']}",
             f"--task {cfg['task']}", f"--steps {cfg['steps']}", f"--seed {cfg['seed']}",
             f"--threads {cfg['threads']}", f"--batch {cfg['batch']}",
             f"--eval-every {cfg['eval_every']}"]
    if cfg["vision_depth"] != d["vision_depth"]:
        parts.append(f"--vision-depth {cfg['vision_depth']}")
    if cfg.get("vision_dim", 64) != 64 or cfg.get("vision_dim", 64) != d["vision_dim"]:
        parts.append(f"--vision-dim {cfg['vision_dim']}")
    if cfg.get("vision_heads", 2) != 2:
        parts.append(f"--vision-heads {cfg['vision_heads']}")
    if cfg.get("lr", 1e-3) != 1e-3:
        parts.append(f"--lr {cfg['lr']:g}")
    if cfg.get("aux_slot_weight", 0.0) or d["aux_slot_weight"]:
        parts.append(f"--aux-slot-weight {cfg['aux_slot_weight']:g}")
        if "aux_region" in cfg:  # a log from before these options: its code had neither
            parts.append(f"--aux-region {cfg['aux_region']}")
            parts.append("--aux-colour" if cfg.get("aux_colour") else "--no-aux-colour")
    if cfg.get("aux_colour_region") is not None:
        parts.append(f"--aux-colour-region {cfg['aux_colour_region']}")
    if cfg.get("aux_colour_none_weight", 0.0):
        parts.append(f"--aux-colour-none-weight {cfg['aux_colour_none_weight']:g}")
    if cfg.get("aux_lm_slot_weight", 0.0):
        parts.append(f"--aux-lm-slot-weight {cfg['aux_lm_slot_weight']:g}")
        parts.append(f"--aux-lm-layer {cfg.get('aux_lm_layer', 1)}")
    if cfg.get("aux_colour_weight", 0.0):
        parts.append(f"--aux-colour-weight {cfg['aux_colour_weight']:g}")
        if not cfg.get("aux_slot_weight", 0.0):
            parts.append(f"--aux-region {cfg.get('aux_region', 'object')}")
    if cfg.get("p_shuffle") is not None:
        parts.append(f"--p-shuffle {cfg['p_shuffle']:g}")
    if cfg.get("p_ablate", 0.0) or cfg["mechanism"] == "dual":
        parts.append(f"--p-ablate {cfg.get('p_ablate', 0.0):g}")
    if cfg.get("p_ablate_object", 0.0):
        parts.append(f"--p-ablate-object {cfg['p_ablate_object']:g}")
    if cfg.get("p_scramble_object", 0.0):
        parts.append(f"--p-scramble-object {cfg['p_scramble_object']:g}")
    if cfg.get("scramble_outside_strips", False):
        parts.append("--scramble-outside-strips")
    if cfg.get("shuffle_object_ablated", False):
        parts.append("--shuffle-object-ablated")
    if cfg.get("rope_theta") is not None:
        parts.append(f"--rope-theta {cfg['rope_theta']:g}")
    if cfg.get("rope_factor") is not None:
        parts.append(f"--rope-factor {cfg['rope_factor']:g}")
    if cfg.get("global_rope_factor") is not None:
        parts.append(f"--global-rope-factor {cfg['global_rope_factor']:g}")
    if cfg.get("attn_scalar") is not None:
        parts.append(f"--attn-scalar {cfg['attn_scalar']}")
    if cfg.get("aux_slot_code", 0.0):
        parts.append(f"--aux-slot-code {cfg['aux_slot_code']:g}")
        if cfg.get("aux_slot_code_start") is not None:
            parts.append(f"--aux-slot-code-start {cfg['aux_slot_code_start']:g}")
            parts.append(f"--aux-slot-code-steps {cfg['aux_slot_code_steps']}")
        if cfg.get("aux_slot_code_only", 0.0):
            parts.append(f"--aux-slot-code-only {cfg['aux_slot_code_only']:g}")
    if cfg.get("aux_object_code_only", 0.0):
        parts.append(f"--aux-object-code-only {cfg['aux_object_code_only']:g}")
    if cfg.get("aux_anchor_init", 0.0):
        parts.append(f"--aux-anchor-init {cfg['aux_anchor_init']:g}")
    if cfg.get("p_noise", 0.0):
        parts.append(f"--p-noise {cfg['p_noise']:g}")
        if cfg.get("noise_code_drop", 0.0):
            parts.append(f"--noise-code-drop {cfg['noise_code_drop']:g}")
        if not cfg.get("noise_task_loss", True):
            parts.append("--no-noise-task-loss")
        if cfg.get("noise_task_weight", 1.0) != 1:
            parts.append(f"--noise-task-weight {cfg['noise_task_weight']:g}")
        if not cfg.get("noise_lm_loss", True):
            parts.append("--no-noise-lm-loss")
        if cfg.get("noise_answer_mix", 0.0):
            parts.append(f"--noise-answer-mix {cfg['noise_answer_mix']:g}")
    if cfg.get("vision_pos_init", "random") != "random":
        parts.append(f"--vision-pos-init {cfg['vision_pos_init']}")
    if cfg.get("aux_lm_weight", 0.0):
        parts.append(f"--aux-lm-weight {cfg['aux_lm_weight']:g}")
        parts.append(f"--aux-lm-layer {cfg.get('aux_lm_layer', 1)}")
        if cfg.get("aux_lm_head", "own") != "own":
            parts.append(f"--aux-lm-head {cfg['aux_lm_head']}")
    if cfg.get("warmup", 100) != 100:
        parts.append(f"--warmup {cfg['warmup']}")
    if cfg.get("portable_math"):
        parts.append("--portable-math")
    if init is not None:
        parts.append(f"--init {init}")
    return " ".join(parts + [f"--out {out}"])


def code_version(path: str | Path | None = None) -> dict[str, Any] | None:
    """The git commit of the code that trains (``commit``, and ``dirty``: tracked files under
    ``path`` differ from it), or None outside a git checkout. ``path``: this package's folder
    by default. Recorded per stage in ``train_log.json``: the same command at other code may
    draw its random numbers differently and train another model."""
    import subprocess

    here = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "-uno", "--",
                                str(here)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


#: Environment variables that pin the CPU math to one code path on any x86-64 CPU with AVX2:
#: ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``), MKL's BLAS through its conditional
#: numerical reproducibility mode (``MKL_CBWR``, strict: results independent of memory
#: alignment too) and oneDNN's JIT kernels, torch's CPU convolutions (``ONEDNN_MAX_CPU_ISA``).
#: Each library reads its variable once per process, lazily, before its first computation.
#: oneDNN's kernels may still size their blocks by the CPU's caches, which no variable pins;
#: switching oneDNN off instead (``torch.backends.mkldnn``) makes the organisms' patch-embedding
#: Conv3d take ATen's slow path and costs x2 per training step (measured 2026-12-01).
PORTABLE_MATH = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT",
                 "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: ``mkl_cbwr_get(MKL_CBWR_ALL)`` under ``MKL_CBWR=AVX2,STRICT``: MKL_CBWR_STRICT | MKL_CBWR_AVX2
#: (mkl_service.h).
PORTABLE_MKL_CBWR = 0x10000 | 10


def mkl_cbwr_mode() -> int | None:
    """MKL's conditional-numerical-reproducibility mode in this process
    (``mkl_cbwr_get(MKL_CBWR_ALL)``; 1 = off, each CPU takes its own path), or None when torch
    has no MKL or does not export the call. Reading it fixes the mode for the process, as MKL's
    first computation would."""
    import ctypes

    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        get = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")
                          ).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(-1))


def use_portable_math() -> None:
    """Pin this process's CPU math to ``PORTABLE_MATH`` (what ``--portable-math`` does).

    Sets the variables in ``os.environ``; they act if the libraries have not chosen their code
    path yet (no tensor computation in the process before). Checks that they did act where the
    library can tell: ATen runs its AVX2 kernels and MKL reports the strict AVX2 mode (oneDNN
    cannot be asked from Python). Raises ``OrganismError`` otherwise
    (torch computed something before, the CPU has no AVX2, or this torch has no MKL), before
    anything is trained or written."""
    import os

    import torch

    clash = {k: os.environ[k] for k in PORTABLE_MATH
             if k in os.environ and os.environ[k] != PORTABLE_MATH[k]}
    _check(not clash, f"--portable-math pins {PORTABLE_MATH}, but the environment sets {clash}; "
           "unset those variables or train without --portable-math")
    os.environ.update(PORTABLE_MATH)
    fresh = ("torch computed something before the option took effect (start a fresh process, "
             "or set " + " ".join(f"{k}={v}" for k, v in PORTABLE_MATH.items())
             + " before Python starts)")
    cap = torch.backends.cpu.get_cpu_capability()
    _check(cap == "AVX2", f"--portable-math needs ATen's AVX2 kernels, but this process runs "
           f"{cap!r} ones: either {fresh}, or the CPU has no AVX2 (then train without "
           "--portable-math; the run repeats only on the same kind of CPU)")
    mode = mkl_cbwr_mode()
    _check(mode is not None, "--portable-math pins MKL's BLAS, but this torch build has no MKL "
           "(or does not export mkl_serv_cbwr_get); train without --portable-math")
    _check(mode == PORTABLE_MKL_CBWR, f"--portable-math needs MKL's strict AVX2 mode "
           f"({PORTABLE_MKL_CBWR}), but MKL runs in mode {mode}: {fresh}")


def math_environment() -> dict[str, Any]:
    """What decides a training run's floating point besides the code and the command: library
    versions, the CPU, the code path torch dispatches to, the math-pinning variables and
    whether ``--portable-math`` is in force. Recorded per stage in ``train_log.json``
    (``environment``): the same command and commit on another kind of CPU without
    ``--portable-math`` rounds differently, and over hundreds of steps trains another model.
    ``portable_math``: ATen on AVX2 kernels, MKL in the strict AVX2 mode and oneDNN capped at
    AVX2; ``onednn``: whether torch calls oneDNN."""
    import os
    import platform
    import sys

    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    cap, mode = torch.backends.cpu.get_cpu_capability(), mkl_cbwr_mode()
    onednn = bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    env = {k: os.environ.get(k) for k in PORTABLE_MATH}
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__,
            "platform": sys.platform, "machine": platform.machine(), "cpu": cpu,
            "cpu_capability": cap, "mkl": bool(torch.backends.mkl.is_available()),
            "mkl_cbwr": mode, "onednn": onednn,
            "math_env": env,
            "portable_math": (cap == "AVX2" and mode == PORTABLE_MKL_CBWR
                              and env["ONEDNN_MAX_CPU_ISA"] == PORTABLE_MATH["ONEDNN_MAX_CPU_ISA"])}


def reproduce_commands(log: dict, out: str) -> list[str]:
    """Every ``organism train`` command (one per training stage) that reproduces ``log``; a
    stage whose code commit differs from the last stage's is preceded by a comment naming the
    commit to run it at (``code`` in the stage's entry)."""
    stages = log.get("stages") or [{"config": log["config"], "code": log.get("code")}]
    last = (stages[-1].get("code") or {}).get("commit")
    cmds, prev = [], None
    for k, st in enumerate(stages):
        dst = out if k == len(stages) - 1 else f"{out}-stage{k + 1}"
        commit = (st.get("code") or {}).get("commit")
        if commit and commit != last:
            cmds.append(f"# stage {k + 1}: run at commit {commit[:12]} "
                        f"(git worktree add ../spatialbind-{commit[:7]} {commit[:12]})")
        cmds.append(command_line(st["config"], dst, init=prev))
        prev = dst
    return cmds


_CLASS = {"qwen2-vl": "Qwen2VLForConditionalGeneration",
          "gemma-3": "Gemma3ForConditionalGeneration"}


def _rope_text(c: dict) -> str:
    r = c["resolved"]
    if r.get("global_rope_factor") is not None:
        local = _rope_text({**c, "resolved": {**r, "global_rope_factor": None}})
        return (f"{local} in every layer but the last; the last is a global layer with linear "
                f"scaling by {r['global_rope_factor']:g}"
                + (" (no positions)" if r["global_rope_factor"] >= 1e6 else ""))
    if c["arch"] == "qwen2-vl":
        return f"`rope_theta={r['rope_theta']}`, `mrope_section={r['mrope_section']}`"
    if r.get("rope_factor") is not None and r["rope_factor"] >= 1e6:
        return f"`rope_theta={r['rope_theta']}` with linear scaling by {r['rope_factor']:g} (no positions)"
    if r.get("rope_factor") is not None:
        return (f"`rope_theta={r['rope_theta']}` with linear scaling by {r['rope_factor']:g} "
                "(1-D positions over the raster order, every frequency that many times slower)")
    if c["mechanism"] == "vision":
        return f"`rope_theta={r['rope_theta']}` with linear scaling by 1e9 (no positions)"
    return f"`rope_theta={r['rope_theta']}` (1-D positions over the raster order)"


def write_readme(out: str | Path, log: dict) -> None:
    """``README.md`` of a saved organism: what it is, how to reproduce it, its numbers."""
    out = Path(out)
    c = log["config"]
    r = c["resolved"]
    f = log.get("final", {})
    lines = [f"# {out.name}: {c['arch']} organism, mechanism `{c['mechanism']}`", "",
             f"A small `{_CLASS[c['arch']]}` (real transformers class) trained from "
             "scratch on the paper's Squares task by `spatialbind organism train` "
             f"({log.get('n_params', 0) / 1e6:.2f} M parameters; {c['grid']}x{c['grid']} image "
             f"tokens = {28 * c['grid']} px canvas, squares of 1-2 tokens, gaps of 1-2 tokens).", "",
             f"- LM rotary: {_rope_text(c)}; share of items with image tokens shuffled at the LM "
             f"input during training: {r.get('p_shuffle', float(r['shuffle_image_tokens'])):g}; "
             f"share trained on the E5 ablation: {c.get('p_ablate', 0.0):g}; on the "
             f"object-only ablation: {c.get('p_ablate_object', 0.0):g}"
             + (f"; on the object-slot scramble: {c['p_scramble_object']:g}"
                if c.get("p_scramble_object") else "")
             + (" (the tokens outside the strips from the re-coloured render too)"
                if c.get("scramble_outside_strips") else "")
             + (" (object-edited items also shuffled)" if c.get("shuffle_object_ablated")
                else "") + ".",
             f"- Auxiliary slot loss: weight {c.get('aux_slot_weight', 0):g}"
             + (f" over `{c.get('aux_region', 'object')}` tokens"
                + (" (slot and the colour of the token's square)" if c.get("aux_colour") else
                   " (slot)") if c.get("aux_slot_weight") else "") + "."
             + (f" Colour part over `{c['aux_colour_region']}` tokens."
                if c.get("aux_colour_region") not in (None, c.get("aux_region")) else "")
             + (f" Every other image token is asked a 'no square' colour class (weight "
                f"{c['aux_colour_none_weight']:g})." if c.get("aux_colour_none_weight") else "")
             + ((f" Colour-only auxiliary loss: weight {c['aux_colour_weight']:g} over "
                 f"`{c.get('aux_region', 'object')}` tokens (no slot head)."
                 if not c.get("aux_colour") else
                 f" Colour loss weight {c['aux_colour_weight']:g} more (same head, same "
                 f"`{c.get('aux_colour_region') or c.get('aux_region', 'object')}` tokens).")
                if c.get("aux_colour_weight") else "")
             + (f" Norm-controlled slot code (`--aux-slot-code {c['aux_slot_code']:g}`): squared "
                f"error of each token's projection on the three centred slot-mean directions of "
                f"the first batch (fixed) against "
                f"{c['aux_slot_code']:g} x (one-hot slot - 1/3)"
                + (f", the size going linearly from {c['aux_slot_code_start']:g} to "
                   f"{c['aux_slot_code']:g} over the first {c['aux_slot_code_steps']} steps"
                   if c.get("aux_slot_code_start") is not None else "") + "."
                + (f" Slot information outside those directions penalised "
                   f"(`--aux-slot-code-only {c['aux_slot_code_only']:g}`: the region tokens' "
                   f"per-slot means of the other components pulled together)."
                   if c.get("aux_slot_code_only") else "")
                if c.get("aux_slot_code") else "")
             + (f" The object tokens' slot information outside the region's slot-mean "
                f"directions (first batch, fixed) penalised (`--aux-object-code-only "
                f"{c['aux_object_code_only']:g}`), so they carry the order along the "
                f"background's code." if c.get("aux_object_code_only") else "")
             + (f" The clean items' centred per-slot background (band minus object) means "
                f"tied to the init checkpoint's (first batch, fixed; `--aux-anchor-init "
                f"{c['aux_anchor_init']:g}` x squared distance)." if c.get("aux_anchor_init")
                else "")
             + (f" Share of training items with pixel noise (strength ~ U(0, 1), std = strength "
                f"x 64 grey levels): {c['p_noise']:g}; "
                + (f"slot-code target on them x (1 - {c.get('noise_code_drop', 0.0):g} x "
                   f"strength); " if c.get("aux_slot_code") else
                   f"slot target on them {c['noise_code_drop']:g} x strength of the way to "
                   f"uniform; " if c.get("noise_code_drop") else "")
                + ((f"they count in the task loss at weight {c.get('noise_task_weight', 1.0):g}."
                    if c.get("noise_task_weight", 1.0) != 1 else "they count in the task loss.")
                   if c.get("noise_task_loss", True) else
                   "they train only the auxiliary loss (the LM never answers from an "
                   "attenuated code).")
                + (f" Their task target puts min(0.5, {c['noise_answer_mix']:g} x strength) on "
                   "the other candidate's colour (a noisy image's order is unreliable)."
                   if c.get("noise_answer_mix", 0.0) else "")
                + (" They are left out of the LM-side slot losses (the LM's positional backup "
                   "never learns to rescue a faded code)." if not c.get("noise_lm_loss", True)
                   else "") if c.get("p_noise") else ""),
             *([f"- LM-side auxiliary slot loss: weight {c['aux_lm_weight']:g} on the LM's "
                f"residual stream `lm.resid.{c.get('aux_lm_layer', 1)}` at the object tokens (a "
                "linear head, not saved"
                + ("; the vision-side slot head, shared" if c.get("aux_lm_head") == "shared" else "")
                + "; items whose image tokens were shuffled left out)."]
               if c.get("aux_lm_weight") else []),
             *([f"- LM-side auxiliary slot loss on the E5-ablated items: weight "
                f"{c['aux_lm_slot_weight']:g} on the LM's residual stream "
                f"`lm.resid.{c.get('aux_lm_layer', 1)}` at their object tokens, through the "
                "vision-side slot head (the LM backup writes the order into the object tokens)."]
               if c.get("aux_lm_slot_weight") else []),
             *([{"zero": "- Vision position embeddings: all zero and frozen (the vision tower "
                         "has no position input, so its tokens carry no position).",
                 "sincos": "- Vision position embeddings: started from the 2-D sin-cos table "
                           "(then learned)"
                           + (" at the first stage that asked for them (the earlier stage's "
                              "were zero and frozen)" if any(
                                  st["config"].get("vision_pos_init") == "zero"
                                  for st in log.get("stages", [])) else "") + "."
                 }[c["vision_pos_init"]]]
               if c.get("vision_pos_init", "random") != "random" else []),
             "- Load: `AutoModelForImageTextToText.from_pretrained(DIR)` (model) and "
             "`organisms.load(DIR)` (model, image-only processor, log).", "",
             "## Reproduce", "", "```", *reproduce_commands(log, f"vlms/organisms/{out.name}"),
             "```", "",
             f"Training: {sum(st['config']['steps'] for st in log.get('stages', [])) or c['steps']}"
             f" steps, {log.get('total_train_time_s', log.get('train_time_s', 0)) / 60:.1f} min "
             "of training"
             + (f" ({log.get('total_cpu_time_s', log['cpu_time_s']) / 60:.1f} CPU-minutes)"
                if "cpu_time_s" in log else "") + " "
             f"(last stage {log.get('wall_s', 0) / 60:.1f} min wall) on a shared 2-core CPU, "
             f"{c['threads']} torch thread(s). Curve: `curve.png`; full history: `train_log.json`.",
             *_cpu_notes(log),
             *[line for k, st in enumerate(log.get("stages", []))
               if (st.get("code") or {}).get("note")
               for line in ("", f"Stage {k + 1} code: {st['code']['note']}")],
             *_environment_notes(log),
             "", "## Held-out accuracy (top-1 next token, exact paper colours)", "",
             f"{log.get('final_eval_items', '')} items per set (`ht_canon`: all of them).", "",
             "| set | meaning | accuracy |", "|---|---|---|"]
    meaning = {"ht_canon": "held-out colour triples, canonical layouts",
               "ht_rand": "held-out triples, training layouts",
               "ht_hl": "held-out triples, held-out layouts",
               "hl": "training triples, held-out layouts", "train": "training triples and layouts",
               "heldout": "held-out triples pooled"}
    for k, v in f.items():
        lines.append(f"| `{k}` | {meaning.get(k, k)} | {v:.3f} |")
    if "final_shuffled" in log:
        lines += ["", f"With image tokens shuffled at the LM input: held-out "
                  f"{log['final_shuffled']['heldout']:.3f}, held-out layouts "
                  f"{log['final_shuffled']['hl']:.3f}."]
    mc = log.get("mechanism_check")
    if mc:
        s = mc["summary"]
        lines += ["", "## Which mechanism emerged?", "",
                  "Ordinal-slot probe (StandardScaler + LogisticRegression) on the projector output "
                  f"(`{'multi_modal_projector' if c['arch'] == 'gemma-3' else 'visual.merger'}`)"
                  " at object tokens, fitted on training triples, tested on held-out "
                  "triples, mean over the two axes (chance 0.33):", "",
                  f"- trained: **{s['probe_projector_slot']:.3f}**; same architecture at init "
                  f"weights: {s['probe_init_control']:.3f}; position-only (one-hot row, column): "
                  f"{s['probe_position_only']:.3f}",
                  f"- accuracy with raster-order image tokens {s['accuracy_raster']:.3f}, with "
                  f"shuffled image tokens {s['accuracy_shuffled_tokens']:.3f}",
                  f"- vision-side ordering: **{s['vision_ordering']}**"]
        if "mechanism" in s:
            lines += [f"- projector probe on the paper's strips (band tokens, background "
                      f"included): {s['probe_projector_slot_strip']:.3f}",
                      f"- ablating vision ordering at the LM input (E5 on held-out items): "
                      f"{s['accuracy_base']:.3f} -> {s['accuracy_ablated_vision_ordering']:.3f}"
                      " (chance 0.333)",
                      f"- criss-cross at the LM input, flip rate: object {s['flip_object']:.3f}, "
                      f"strip {s['flip_strip']:.3f}, band {s['flip_band']:.3f}",
                      f"- mechanism (thresholds of `organisms.criteria`): **{s['mechanism']}**"]
        if "e6_flip_rate" in s:
            lines += ["- E6 (object criss-cross under the E5 ablation, per LM residual site "
                      "`lm.resid.l`; items right under the ablation on both runs: "
                      f"{s.get('e6_items_kept', 'not recorded')}): flip rate "
                      + ", ".join(f"site {k} {v:.3f}" for k, v in s["e6_flip_rate"].items())
                      + f"; flip layers (> 0.5) {s['e6_flip_layers']}"]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def _environment_notes(log: dict) -> list[str]:
    """README lines on the CPU math each stage was trained with (``environment`` in the log;
    logs written before it was recorded give none)."""
    stages = log.get("stages") or [{"environment": log.get("environment")}]
    lines = []
    for k, st in enumerate(stages):
        e = st.get("environment")
        if not e:
            continue
        who = f"Stage {k + 1}" if len(stages) > 1 else "Trained"
        how = ("CPU math pinned (`--portable-math`: " + ", ".join(
            f"{v}={e['math_env'][v]}" for v in PORTABLE_MATH) + "), meant to repeat bit for "
               "bit on any x86-64 CPU with AVX2 and the same library versions (oneDNN's "
               "convolutions may still follow the CPU's caches)"
               if e.get("portable_math") else
               f"native CPU math ({e['cpu_capability']} kernels), which repeats bit for bit only "
               "on a CPU that takes the same code paths (elsewhere the command trains another "
               "model; `--portable-math` pins them)")
        lines += ["", f"{who} on {e['cpu']} ({e['machine']}), Python {e['python']}, torch "
                  f"{e['torch']}, transformers {e['transformers']}, numpy {e['numpy']}: {how}."]
    return lines


def _cpu_notes(log: dict) -> list[str]:
    """README lines on stages that recorded only wall time (trained before CPU time was
    recorded): their wall time is counted in the CPU total above (an upper bound for one
    thread); an estimate at the measured per-step CPU rate of the same config is given beside
    it when the log holds one (``cpu_time_s_estimate`` and ``cpu_time_estimate_method``)."""
    out = []
    for k, st in enumerate(log.get("stages", [])):
        if "cpu_time_s" in st:
            continue
        line = (f"Stage {k + 1} recorded wall time only ({st.get('train_time_s', 0) / 60:.1f} min, "
                "counted in the CPU total above as an upper bound)")
        if "cpu_time_s_estimate" in st:
            line += (f"; its CPU time estimated at the measured rate is "
                     f"{st['cpu_time_s_estimate'] / 60:.1f} min ({st.get('cpu_time_estimate_method', '')})")
        out += ["", line + "."]
    return out


def plot_curve(log: dict, path: str | Path) -> None:
    """Training curve: loss (left axis) and accuracy per evaluation set (right axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = log["history"]
    if not h:
        return
    steps = [r["step"] for r in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in h], "k-", label="loss (EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    for name, style in zip(EVAL_SETS, ("-", "--", ":", "-.", "-")):
        ax2.plot(steps, [r[name] for r in h], style, label=name, alpha=0.8)
    ax2.axhline(0.95, color="grey", lw=0.5)
    edge = 0
    for st in log.get("stages", [])[:-1]:
        edge += st["config"]["steps"]
        ax2.axvline(edge, color="grey", ls=":", lw=0.8)
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("top-1 accuracy")
    c = log["config"]
    ax.set_title(f"{c['arch']} organism, mechanism={c['mechanism']}, seed={c['seed']}")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax2.legend(lines, labels, loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load(path: str | Path):
    """Load a saved organism with plain transformers (``trust_remote_code`` off).

    Returns
    -------
    (model, processor, log)
    """
    from vlms.registry import refuse_remote_code

    path = Path(path)
    _check((path / "config.json").exists(), f"{path}: no config.json; expected a directory "
           "written by 'spatialbind organism train'")
    refuse_remote_code(path)
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=False).eval()
    log = json.loads((path / "train_log.json").read_text()) if (path / "train_log.json").exists() else {}
    if type(model).__name__.startswith("Gemma3"):
        from transformers import AutoProcessor
        return model, AutoProcessor.from_pretrained(path, trust_remote_code=False), log
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    ip = Qwen2VLImageProcessorPil.from_pretrained(path, trust_remote_code=False)
    tmpl = (path / "chat_template.jinja").read_text() if (path / "chat_template.jinja").exists() \
        else QWEN_TEMPLATE
    proc = image_only_processor_class()(image_processor=ip, tokenizer=tok, chat_template=tmpl)
    return model, proc, log


from vlms.registry import SHIPPED  # noqa: E402  (the checkpoints stay in vlms/organisms/ as data)


def shipped(name: str) -> Path:
    """Path of a shipped organism (``qwen2-vl-lm``, ``qwen2-vl-vision``, ``qwen2-vl-dual``,
    ``gemma-3-vision``, ``gemma-3-lm``, ``gemma-3-dual``)."""
    p = SHIPPED / name
    names = sorted(q.name for q in SHIPPED.iterdir() if q.is_dir()) if SHIPPED.exists() else []
    _check(p.is_dir(), f"no shipped organism {name!r}; available: {names}")
    return p


def mechanism_defaults(mechanism: str, arch: str = "qwen2-vl") -> dict:
    """Default steps and vision depth of the shipped recipe for each mechanism."""
    if mechanism == "vision" and arch == "qwen2-vl":
        # stage 1 of the shipped recipe (stage 2: --init it with --aux-region band --aux-colour;
        # a fresh 400-step band run did not learn the task, see vlms/organisms/README.md)
        return {"steps": 1000, "vision_depth": 3, "vision_dim": 128, "aux_slot_weight": 2.0,
                "aux_region": "object", "aux_colour": False, "p_ablate": 0.0}
    if mechanism == "dual" and arch == "gemma-3":
        # a curriculum stage from a gemma-3 organism (--init; the shipped dual's stages start
        # from gemma-3-lm with their own options): see vlms/organisms/README.md
        return {"steps": 250, "vision_depth": 2, "vision_dim": 64, "aux_slot_weight": 2.0,
                "aux_region": "band", "aux_colour": True, "p_shuffle": 0.3, "p_ablate": 0.4}
    if mechanism == "dual":
        # a curriculum stage from a vision organism (--init): see vlms/organisms/README.md
        return {"steps": 250, "vision_depth": 3, "vision_dim": 128, "aux_slot_weight": 2.0,
                "aux_region": "band", "aux_colour": True, "p_shuffle": 0.3, "p_ablate": 0.4}
    return {"steps": 1500, "vision_depth": 2, "vision_dim": 64, "aux_slot_weight": 0.0,
            "aux_region": "object", "aux_colour": False, "p_ablate": 0.0}


def save_log(out: str | Path, log: dict) -> None:
    """Rewrite ``train_log.json`` (and the curve) of a saved organism."""
    _write_json(Path(out) / "train_log.json", log)
    plot_curve(log, Path(out) / "curve.png")
    write_readme(out, log)
