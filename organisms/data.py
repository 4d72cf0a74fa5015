"""On-the-fly Squares stimuli, splits and tokenizer for the model organisms.

The organisms (``organisms.trainer``) are trained on the paper's Squares task (PAPER.md E1): three
squares in a row (left/right questions) or a column (above/below questions), grid-aligned to the
model's image tokens, prompt ``The color of the square to the left of the red square is``.

Everything here is plain torch/numpy so that a training batch costs ~0.1 s:

- :func:`layouts` enumerates every grid-aligned layout (square size ``S`` tokens, gap ``sp``
  tokens, row/column, offset) on an ``N x N`` token canvas;
- :func:`make_splits` holds out *mirror pairs* of colour triples ((a,m,b) with (b,m,a); a random
  triple split leaks through mirrors, ORGANISM.md r1) and 20 % of the non-canonical layouts;
- :func:`render` draws uint8 canvases directly as a tensor;
- :func:`qwen_pixels` / :func:`gemma_pixels` normalise and patchify them bit-identically to the
  official ``Qwen2VLImageProcessorPil`` / ``Gemma3ImageProcessorPil`` on the same PNG (tested);
- :func:`word_tokenizer` builds the word-level tokenizer with the family's special tokens.

Training draws colours from an extended palette (the paper's six plus ten more named colours) so
that colour read-out generalises to unseen combinations; evaluation uses the paper's six only.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

#: The paper's six colours (PAPER-NOTES.md, ``shared/palette.py``).
PAPER_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "black": (0, 0, 0), "brown": (150, 75, 0), "gray": (128, 128, 128),
}
#: Extra named colours used only as training diversity (all >= 100 RGB units from each other,
#: from the paper's six and from the white background).
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
    "orange": (255, 150, 0), "purple": (120, 0, 180), "olive": (128, 128, 0),
    "teal": (0, 128, 128), "maroon": (128, 0, 0), "pink": (255, 140, 200), "navy": (0, 0, 110),
}
ALL_COLOURS = {**PAPER_COLOURS, **EXTRA_COLOURS}
COLOUR_NAMES = list(ALL_COLOURS)
SIX = list(PAPER_COLOURS)

#: question word(s) per direction; the answer is slot 0 for left/above, slot 2 for right/below.
DIRECTIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
AXIS = {"left": "h", "right": "h", "above": "v", "below": "v"}
ANSWER_SLOT = {"left": 0, "right": 2, "above": 0, "below": 2}
PROMPT = "The color of the square {rel} the {mid} square is "

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                 "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
WORDS = ["the", "color", "of", "square", "to", "left", "right", "above", "below", "is",
         "user", "assistant", "system", "model", "shape"] + COLOUR_NAMES

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
QWEN_NORM = (CLIP_MEAN, CLIP_STD)
GEMMA_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def prompt_text(direction: str, mid: str) -> str:
    """The paper's Squares question for ``direction`` about the ``mid``-coloured square."""
    return PROMPT.format(rel=DIRECTIONS[direction], mid=mid)


@dataclass(frozen=True, slots=True)
class Layout:
    """One grid-aligned layout: axis ``h``/``v``, square size and gap in tokens, line, offset."""

    axis: str
    size: int
    gap: int
    line: int
    offset: int

    def cells(self, slot: int) -> list[tuple[int, int]]:
        """Token cells (row, col) covered by the square in ``slot`` (0, 1, 2)."""
        start = self.offset + slot * (self.size + self.gap)
        out = []
        for a in range(self.line, self.line + self.size):
            for b in range(start, start + self.size):
                out.append((a, b) if self.axis == "h" else (b, a))
        return out


REGIONS = ("object", "strip", "band")


def region_slots(layout: Layout, n: int, region: str) -> np.ndarray:
    """Ordinal slot of every image token (row-major ``n x n``) in ``region``, -1 elsewhere.

    ``object``: the square's own tokens. ``strip``: the rows (vertical layouts) or columns
    (horizontal ones) the square spans, background included (the store's ``strip`` role).
    ``band``: the paper's strips, the whole grid tiled along the axis at the midpoints between
    neighbouring squares (every token belongs to the nearest square along the axis; a token
    exactly halfway between two squares belongs to neither).
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}; got {region!r}")
    out = np.full((n, n), -1, dtype=np.int64)
    if region == "object":
        for slot in range(3):
            for r, c in layout.cells(slot):
                out[r, c] = slot
        return out.reshape(-1)
    starts = [layout.offset + k * (layout.size + layout.gap) for k in range(3)]
    along = np.full(n, -1, dtype=np.int64)
    if region == "strip":
        for k, s0 in enumerate(starts):
            along[s0:s0 + layout.size] = k
    else:
        centres = np.array([s0 + (layout.size - 1) / 2 for s0 in starts])
        for i in range(n):
            d = np.abs(centres - i)
            best = np.flatnonzero(d == d.min())
            if len(best) == 1:
                along[i] = best[0]
    if layout.axis == "h":      # columns carry the slot, every row
        out[:, :] = along[None, :]
    else:
        out[:, :] = along[:, None]
    return out.reshape(-1)


def render_single(colours: list[str], size: int, *, n: int = 8, token_px: int = 28,
                  normalise: tuple | None = None) -> torch.Tensor:
    """One square per image, alone and centred (cell ``((n - size) // 2,) * 2``), as the
    ``isolated`` twins of the stimulus generator draw it; a ``None`` colour gives a blank canvas."""
    c = (n - size) // 2
    lay = Layout("h", size, 1, c, c)
    side = n * token_px
    if normalise is None:
        img = torch.full((len(colours), 3, side, side), 255, dtype=torch.uint8)
    else:
        lut = _lut(*normalise)
        img = torch.empty((len(colours), 3, side, side), dtype=torch.float32)
        img[:] = lut[:, 255][None, :, None, None]
    for b, name in enumerate(colours):
        if name is None:
            continue
        rgb = torch.as_tensor(ALL_COLOURS[name])
        val = rgb.to(torch.uint8) if normalise is None else lut[torch.arange(3), rgb]
        r0 = lay.line * token_px
        img[b, :, r0:r0 + size * token_px, r0:r0 + size * token_px] = val[:, None, None]
    return img


def layouts(n: int, sizes=(1, 2), gaps=(1, 2)) -> list[Layout]:
    """Every layout of three ``S x S``-token squares with gap ``sp`` on an ``n x n`` token grid."""
    out = []
    for axis in ("h", "v"):
        for s in sizes:
            for sp in gaps:
                width = 3 * s + 2 * sp
                if width > n:
                    continue
                for line in range(n - s + 1):
                    for off in range(n - width + 1):
                        out.append(Layout(axis, s, sp, line, off))
    return out


def canonical(n: int, axis: str) -> Layout:
    """The centred layout with 1-token squares and 2-token gaps (the paper's arrangement)."""
    width = 7 if n >= 7 else 5
    gap = 2 if n >= 7 else 1
    return Layout(axis, 1, gap, (n - 1) // 2, (n - width) // 2)


@dataclass(frozen=True, slots=True)
class Splits:
    """Colour-triple and layout splits (deterministic in ``seed``)."""

    train_triples: tuple[tuple[str, str, str], ...]
    heldout_triples: tuple[tuple[str, str, str], ...]
    train_layouts: tuple[Layout, ...]
    heldout_layouts: tuple[Layout, ...]
    canonical: tuple[Layout, ...]


def make_splits(n: int = 8, *, seed: int = 0, n_pairs: int = 12, layout_frac: float = 0.2) -> Splits:
    """Hold out ``n_pairs`` mirror pairs of six-colour triples and ``layout_frac`` of the layouts.

    Returns
    -------
    Splits
        Held-out triples always contain both members of a mirror pair; the canonical layouts are
        always in training.
    """
    rng = np.random.default_rng(seed)
    triples = list(itertools.permutations(SIX, 3))
    pairs = sorted({tuple(sorted([t, (t[2], t[1], t[0])])) for t in triples})
    pick = rng.choice(len(pairs), size=n_pairs, replace=False)
    held = sorted({t for i in pick for t in pairs[i]})
    train = [t for t in triples if t not in set(held)]
    canon = [canonical(n, "h"), canonical(n, "v")]
    held_l, train_l = [], []
    for axis in ("h", "v"):
        pool = [lay for lay in layouts(n) if lay.axis == axis and lay not in canon]
        k = int(round(layout_frac * len(pool)))
        idx = set(rng.choice(len(pool), size=k, replace=False).tolist())
        held_l += [lay for i, lay in enumerate(pool) if i in idx]
        train_l += [lay for i, lay in enumerate(pool) if i not in idx]
    return Splits(tuple(train), tuple(held), tuple(train_l + canon), tuple(held_l), tuple(canon))


@dataclass(frozen=True, slots=True)
class Item:
    """One Squares question: colours in slot order, layout, direction, answer colour."""

    colours: tuple[str, str, str]
    layout: Layout
    direction: str

    @property
    def answer(self) -> str:
        return self.colours[ANSWER_SLOT[self.direction]]

    @property
    def text(self) -> str:
        return prompt_text(self.direction, self.colours[1])


def _directions(axis: str) -> tuple[str, str]:
    return ("left", "right") if axis == "h" else ("above", "below")


def sample_train_items(rng: np.random.Generator, splits: Splits, batch: int, *,
                       p_extra: float = 0.5) -> list[Item]:
    """Random training items: with prob ``p_extra`` a triple from the extended palette.

    Extended-palette triples never equal a held-out six-colour triple.
    """
    held = set(splits.heldout_triples)
    out = []
    for _ in range(batch):
        if rng.random() < p_extra:
            while True:
                t = tuple(rng.choice(COLOUR_NAMES, size=3, replace=False).tolist())
                if t not in held:
                    break
        else:
            t = splits.train_triples[rng.integers(len(splits.train_triples))]
        lay = splits.train_layouts[rng.integers(len(splits.train_layouts))]
        d = _directions(lay.axis)[rng.integers(2)]
        out.append(Item(t, lay, d))
    return out


def eval_items(splits: Splits, which: str, *, n: int | None = None, seed: int = 1) -> list[Item]:
    """Fixed evaluation items (exact paper colours).

    ``which`` is one of ``ht_canon`` (held-out triples, canonical layouts, all items),
    ``ht_rand`` (held-out triples, training layouts), ``ht_hl`` (held-out triples and layouts),
    ``hl`` (training triples, held-out layouts), ``train`` (training triples and layouts).
    ``n`` samples that many items (without replacement where possible).
    """
    table = {
        "ht_canon": (splits.heldout_triples, splits.canonical),
        "ht_rand": (splits.heldout_triples, splits.train_layouts),
        "ht_hl": (splits.heldout_triples, splits.heldout_layouts),
        "hl": (splits.train_triples, splits.heldout_layouts),
        "train": (splits.train_triples, splits.train_layouts),
    }
    triples, lays = table[which]
    allitems = [Item(t, lay, d) for t in triples for lay in lays for d in _directions(lay.axis)]
    if n is None or n >= len(allitems):
        return allitems
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(allitems), size=n, replace=False)
    return [allitems[i] for i in sorted(idx)]


def render(items: list[Item], *, n: int = 8, token_px: int = 28, jitter: int = 0,
           rng: np.random.Generator | None = None, normalise: tuple | None = None) -> torch.Tensor:
    """Draw items as a uint8 tensor ``(B, 3, n*token_px, n*token_px)`` on white.

    ``jitter`` adds a uniform integer in ``[-jitter, jitter]`` per channel per square.
    ``normalise=(mean, std)`` draws the normalised float32 values directly (bit-identical to
    normalising the uint8 canvas, and ~10x faster than doing it afterwards).
    """
    side = n * token_px
    if normalise is None:
        img = torch.full((len(items), 3, side, side), 255, dtype=torch.uint8)
        colour = lambda rgb: torch.tensor(rgb, dtype=torch.uint8)  # noqa: E731
    else:
        lut = _lut(*normalise)
        img = torch.empty((len(items), 3, side, side), dtype=torch.float32)
        img[:] = lut[:, 255][None, :, None, None]
        colour = lambda rgb: lut[torch.arange(3), torch.as_tensor(rgb)]  # noqa: E731
    for b, it in enumerate(items):
        for slot, name in enumerate(it.colours):
            rgb = np.array(ALL_COLOURS[name], dtype=np.int64)
            if jitter:
                rgb = np.clip(rgb + rng.integers(-jitter, jitter + 1, size=3), 0, 255)
            cells = it.layout.cells(slot)
            r0 = min(c[0] for c in cells) * token_px
            c0 = min(c[1] for c in cells) * token_px
            r1 = (max(c[0] for c in cells) + 1) * token_px
            c1 = (max(c[1] for c in cells) + 1) * token_px
            img[b, :, r0:r1, c0:c1] = colour(rgb)[:, None, None]
    return img


#: Grey levels of noise std at strength 1 (``scenegen.degrade.NOISE_STD``: the same knob).
NOISE_STD = 64.0


def add_noise(img: torch.Tensor, strengths, rng: np.random.Generator) -> torch.Tensor:
    """Additive Gaussian pixel noise on uint8 canvases, as ``scenegen``'s ``noise`` degradation
    draws it: per pixel and channel ``N(0, (strength * 64)^2)`` grey levels, rounded, clipped to
    [0, 255]. ``strengths`` has one value per image (0 leaves that image unchanged)."""
    if img.dtype != torch.uint8:
        raise ValueError("add_noise takes uint8 canvases (render(..., normalise=None))")
    out = img.clone()
    for b, s in enumerate(np.asarray(strengths, dtype=np.float64)):
        if s > 0:
            z = torch.from_numpy(rng.standard_normal(tuple(img.shape[1:])))
            out[b] = (img[b].double() + s * NOISE_STD * z).round().clamp(0, 255).to(torch.uint8)
    return out


_LUTS: dict = {}


def _lut(mean, std) -> torch.Tensor:
    key = (tuple(mean), tuple(std))
    if key not in _LUTS:
        v = (torch.arange(256, dtype=torch.float64) * (1 / 255)).float()
        m = torch.tensor(mean, dtype=torch.float32)[:, None]
        s = torch.tensor(std, dtype=torch.float32)[:, None]
        _LUTS[key] = (v[None, :] - m) / s
    return _LUTS[key]


def _normalise(img: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 -> float32 exactly as transformers' PIL processors do it (rescale in float64, cast,
    then ``(x - mean) / std`` in float32); float input is taken as already normalised."""
    if img.dtype != torch.uint8:
        return img
    lut = _lut(mean, std)
    idx = img.long()
    return torch.stack([lut[ch][idx[:, ch]] for ch in range(img.shape[1])], dim=1)


def qwen_pixels(img: torch.Tensor, *, patch: int = 14, merge: int = 2, temporal: int = 2
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and patchify uint8 canvases exactly like ``Qwen2VLImageProcessorPil``.

    Float input (from ``render(..., normalise=QWEN_NORM)``) is patchified as is.

    Returns
    -------
    pixel_values : (B * grid_h * grid_w, 3 * temporal * patch * patch) float32
    image_grid_thw : (B, 3) int64
    """
    b, c, h, w = img.shape
    x = _normalise(img, CLIP_MEAN, CLIP_STD)
    gh, gw = h // patch, w // patch
    x = x[:, None].expand(b, temporal, c, h, w)
    x = x.reshape(b, 1, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    pv = x.reshape(b * gh * gw, c * temporal * patch * patch).contiguous()
    thw = torch.tensor([[1, gh, gw]] * b, dtype=torch.long)
    return pv, thw


def gemma_pixels(img: torch.Tensor) -> torch.Tensor:
    """Normalise uint8 canvases exactly like ``Gemma3ImageProcessorPil`` (mean = std = 0.5)."""
    return _normalise(img, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def word_tokenizer(arch: str):
    """Word-level tokenizer (lower-casing, whitespace/punctuation split) with ``arch``'s specials.

    Returns a ``PreTrainedTokenizerFast``; the Gemma one carries ``boi/eoi/image_token``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = QWEN_SPECIAL if arch == "qwen2-vl" else GEMMA_SPECIAL
    vocab = {t: i for i, t in enumerate(special)}
    unk = "<unk>" if arch == "gemma-3" else "[UNK]"
    if unk not in vocab:
        vocab[unk] = len(vocab)
    for wd in WORDS:
        vocab[wd] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if arch == "qwen2-vl":
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core, unk_token=unk, pad_token="<|endoftext|>", eos_token="<|im_end|>",
            extra_special_tokens=QWEN_SPECIAL[1:])
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core, unk_token=unk, pad_token="<pad>", eos_token="<eos>",
            bos_token="<bos>",
            extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                  "image_token": "<image_soft_token>",
                                  "sot": "<start_of_turn>", "eot": "<end_of_turn>"})
    tok.padding_side = "left"
    return tok
