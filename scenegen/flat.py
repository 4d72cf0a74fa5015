"""The ``flat`` generator: the paper's grid-aligned canvases (Squares, Shapes, Objects tasks).

A canvas is ``num_tokens x num_tokens`` cells of ``token_px`` pixels, white, so every cell is one
image token of the model. Three same-size entities (``size x size`` tokens, ``spacing`` tokens
apart) sit in one row (left/right questions) or one column (above/below questions). Slot origins
follow the paper (PAPER-NOTES 1.3): horizontal ``y = (N-S)//2``, ``x0 = (N-(3S+2sp))//2``, slot
``i`` at ``x0 + i(S+sp)``; vertical swaps rows and columns. ``layout="random"`` instead draws the
size, spacing, row/column and offset per scene (organism training, augmentation).

Pixels are drawn without anti-aliasing, with the same geometry into the RGB image and the
instance mask, so ``mask == k`` holds exactly where the RGB shows entity ``k``'s colour (every
other pixel is white). Squares fill their ``size x size`` token cells; shapes are drawn inside
those cells as in the paper's code (square 0.8x, circle 0.9x, triangle, 10-point star, cross with
arm width side//3, parametric heart). Objects are RGBA sprites (:mod:`scenegen.objects`) resized
to their cells and pasted where their alpha is >= 128, so the mask again equals the drawn pixels.

Each unit is one base stimulus plus its twins (``<id>-swap``, ``<id>-cc``, ``<id>-iso<k>``);
:meth:`FlatGenerator.extras` gives the dataset-wide ``blank`` canvas.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .config import PALETTE, FlatConfig, GridConfig, SplitConfig, check_fits
from .errors import ConfigError
from .record import Entity, Prompt, Rendered, Stimulus, entity_from_mask, prompt_spans

SYSTEM = "You are a helpful assistant. You respond in one token."
PREPOSITION = {"left": "to the left of", "right": "to the right of",
               "above": "above", "below": "below"}
AXIS_OF = {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
BACKGROUND = (255, 255, 255)


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """Where the three slots are, in tokens."""

    axis: str
    """``horizontal`` (a row) or ``vertical`` (a column)."""
    size: int
    spacing: int
    cross: int
    """Row (horizontal) or column (vertical) of the slots' top / left cell."""
    offset: int
    """First slot's start along the axis."""

    def origin(self, slot: int) -> tuple[int, int]:
        """Token ``(col, row)`` of slot ``slot``'s top-left cell."""
        along = self.offset + slot * (self.size + self.spacing)
        return (along, self.cross) if self.axis == "horizontal" else (self.cross, along)

    def cells(self, slot: int) -> list[int]:
        """Token box ``[x0, y0, x1, y1]`` (half-open) of slot ``slot``."""
        c, r = self.origin(slot)
        return [c, r, c + self.size, r + self.size]

    def key(self) -> str:
        return f"{self.axis[0]}-s{self.size}-sp{self.spacing}-c{self.cross}-o{self.offset}"

    def to_dict(self, mode: str) -> dict:
        return {"mode": mode, "axis": self.axis, "size": self.size, "spacing": self.spacing,
                "cross": self.cross, "offset": self.offset,
                "cells": [self.cells(i) for i in range(3)]}


def centred_layout(num_tokens: int, size: int, spacing: int, axis: str) -> Layout:
    """The paper's layout: the three slots centred on the canvas."""
    check_fits(num_tokens, size, spacing, where="centred_layout")
    return Layout(axis=axis, size=size, spacing=spacing, cross=(num_tokens - size) // 2,
                  offset=(num_tokens - (3 * size + 2 * spacing)) // 2)


def all_layouts(num_tokens: int, sizes, spacings, axis: str) -> list[Layout]:
    """Every layout that fits: each size x spacing x row/column x offset."""
    out = []
    for s in sizes:
        for sp in spacings:
            span = 3 * s + 2 * sp
            if span > num_tokens:
                continue
            for cross in range(num_tokens - s + 1):
                for off in range(num_tokens - span + 1):
                    out.append(Layout(axis=axis, size=s, spacing=sp, cross=cross, offset=off))
    return out


def random_layout(num_tokens: int, sizes, spacings, axis: str, rng) -> Layout:
    """Draw one layout uniformly from :func:`all_layouts` (every fitting layout equally likely)."""
    choices = _layouts(num_tokens, tuple(sizes), tuple(spacings), axis)
    if not choices:
        raise ConfigError(f"no layout of sizes {list(sizes)} and spacings {list(spacings)} fits "
                          f"a grid of {num_tokens} tokens; lower them or raise num_tokens")
    return choices[int(rng.integers(len(choices)))]


@functools.lru_cache(maxsize=32)
def _layouts(num_tokens, sizes, spacings, axis):
    return tuple(all_layouts(num_tokens, sizes, spacings, axis))


# --------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=64)
def sprite(kind: str, side: int, fill: bool = False) -> np.ndarray:
    """Boolean ``(side, side)`` footprint of a shape drawn in a ``side``-pixel cell block.

    ``fill=True`` (the Squares task) fills the whole block; otherwise the paper's shape
    geometry is used. PIL rasterises without anti-aliasing, so the footprint is exact.
    """
    if fill:
        return np.ones((side, side), dtype=bool)
    img = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(img)
    if kind == "square":
        s = 0.8 * side
        o = (side - s) / 2
        d.rectangle([o, o, o + s - 1, o + s - 1], fill=255)
    elif kind == "circle":
        s = 0.9 * side
        o = (side - s) / 2
        d.ellipse([o, o, o + s - 1, o + s - 1], fill=255)
    elif kind == "triangle":
        h = side * math.sqrt(3) / 2
        d.polygon([(side / 2, 0), (0, h), (side - 1, h)], fill=255)
    elif kind == "star":
        c = r = (side - 1) / 2
        pts = [((1.0 if i % 2 == 0 else 0.381966) * math.cos(i * math.pi / 5 - math.pi / 2),
                (1.0 if i % 2 == 0 else 0.381966) * math.sin(i * math.pi / 5 - math.pi / 2))
               for i in range(10)]
        sx = 1.0 / max(abs(x) for x, _ in pts)  # stretch horizontally to fill the width
        d.polygon([(c + x * r * sx, c + y * r) for x, y in pts], fill=255)
    elif kind == "cross":
        w = side // 3
        o = (side - w) / 2
        d.rectangle([o, 0, o + w - 1, side - 1], fill=255)
        d.rectangle([0, o, side - 1, o + w - 1], fill=255)
    elif kind == "heart":
        t = 2 * np.pi * np.arange(100) / 100
        xs = 16 * np.sin(t) ** 3
        ys = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        xn = (xs - xs.min()) / (xs.max() - xs.min())
        yn = (ys - ys.min()) / (ys.max() - ys.min())
        d.polygon([(float(x) * (side - 1), (1 - float(y)) * (side - 1)) for x, y in zip(xn, yn)],
                  fill=255)
    else:
        raise ConfigError(f"unknown shape {kind!r} for the flat renderer")
    out = np.asarray(img) > 0
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class Placed:
    """One entity to draw: identity, attributes and token cell origin."""

    mask_id: int
    kind: str
    color: str
    rgb: tuple[int, int, int]
    origin: tuple[int, int]
    size: int
    ordinal: int | None


def draw(grid: GridConfig, placed, *, fill: bool,
         objects=None) -> tuple[np.ndarray, np.ndarray]:
    """Render entities onto a white canvas; return ``(rgb uint8 HxWx3, mask uint8 HxW)``.

    With ``objects`` (a :class:`scenegen.objects.ObjectSet`), each entity's ``kind`` names a
    sprite that is drawn instead of a shape.
    """
    px = grid.canvas_px
    image = np.full((px, px, 3), 255, dtype=np.uint8)
    mask = np.zeros((px, px), dtype=np.uint8)
    t = grid.token_px
    for p in placed:
        side = p.size * t
        x0, y0 = p.origin[0] * t, p.origin[1] * t
        if objects is not None:
            from .objects import sprite_pixels

            fp, rgb = sprite_pixels(objects, p.kind, side)
            image[y0:y0 + side, x0:x0 + side][fp] = rgb[fp]
        else:
            fp = sprite(p.kind, side, fill)
            image[y0:y0 + side, x0:x0 + side][fp] = p.rgb
        mask[y0:y0 + side, x0:x0 + side][fp] = p.mask_id
    return image, mask


# --------------------------------------------------------------------------- prompts

def make_prompts(kinds, *, task: str, direction: str, names: list[str], colors: list[str],
                 rng_choice: tuple[bool, bool]) -> tuple[Prompt, ...]:
    """The prompts of one stimulus. ``names``/``colors`` are in slot order (0 = left / top).

    ``rng_choice`` = (ask yes/no about the true target?, put the answer first in ``choice``?).
    The Objects task's answer is the object's name (the paper's ``"The object {prep} the
    {middle} is a(n) "``, ``behavioral_analysis/src/tasks/objects.py``); every other task's is
    the target's colour.
    """
    objects = task == "objects"
    noun = {"squares": "square", "objects": "object"}.get(task, "shape")
    tgt = 0 if direction in ("left", "above") else 2
    other = 2 - tgt
    prep, ref = PREPOSITION[direction], names[1]
    answers = names if objects else colors  # what a completion / choice answers with

    def prompt(kind, text, answer, options, subject):
        return Prompt(kind=kind, text=text, answer=answer, options=tuple(options), system=SYSTEM,
                      spans=prompt_spans(text, {"subject": subject, "relation": prep,
                                                "reference": ref},
                                         ("subject", "relation", "reference")))

    out = []
    for kind in kinds:
        if kind == "completion":
            text = (f"The object {prep} the {ref} is a(n) " if objects
                    else f"The color of the {noun} {prep} the {ref} is ")
            out.append(prompt(kind, text, answers[tgt], answers, noun))
        elif kind == "yesno":
            asked = tgt if rng_choice[0] else other
            text = f"Is the {names[asked]} {prep} the {ref}? Answer yes or no."
            out.append(prompt(kind, text, "yes" if asked == tgt else "no", ("yes", "no"),
                              names[asked]))
        elif kind == "choice":
            a, b = ((answers[tgt], answers[other]) if rng_choice[1]
                    else (answers[other], answers[tgt]))
            text = (f"Which object is {prep} the {ref}: {a} or {b}? Answer with one word."
                    if objects else f"What is the color of the {noun} {prep} the {ref}: {a} or "
                    f"{b}? Answer with one word.")
            out.append(prompt(kind, text, answers[tgt], (a, b), noun))
    return tuple(out)


# --------------------------------------------------------------------------- splits
def assign_splits(keys, split: SplitConfig, seed: int) -> dict[str, str]:
    """Deterministically map each group key to ``train``/``val``/``test`` with exact counts.

    Keys are sorted, shuffled with ``default_rng([seed, 0x5B1])`` and cut at the rounded
    cumulative fractions, so a group (e.g. a colour triple and its mirror) never straddles splits.
    """
    keys = sorted(set(keys))
    order = np.random.default_rng([seed, 0x5B1]).permutation(len(keys))
    n_train = int(round(split.train * len(keys)))
    n_val = min(len(keys) - n_train, int(round(split.val * len(keys))))
    out = {}
    for rank, i in enumerate(order):
        out[keys[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def group_key(by: str, items: tuple[str, ...], layout: Layout, index: int) -> str:
    """Split group of a scene (see :class:`~scenegen.config.SplitConfig`)."""
    if by == "mirror":
        return "|".join(min(items, items[::-1]))
    if by == "colorset":
        return "|".join(sorted(items))
    if by == "triple":
        return "|".join(items)
    if by == "layout":
        return layout.key()
    return f"{index:09d}"


# --------------------------------------------------------------------------- generator
class FlatGenerator:
    """Generator protocol of :mod:`scenegen.dataset` for the paper's flat stimuli.

    Parameters
    ----------
    config
        The flat options.
    seed
        Master seed: unit ``i`` depends only on ``(config, seed, i)``.
    n
        Number of base stimuli. None = the full enumeration (ordered triples x directions;
        480 for the paper's tasks). Smaller ``n`` takes a seeded subset in enumeration order.
        With ``layout="random"`` every unit draws its triple, direction and layout, and any
        ``n`` is allowed.
    twins
        Twin kinds to add to each unit (``swap``, ``crisscross``, ``isolated``) and ``blank``
        for the dataset-wide white canvas.
    splits
        How to assign train/val/test.
    """

    def __init__(self, config: FlatConfig, *, seed: int = 0, n: int | None = None,
                 twins=("swap", "crisscross", "isolated", "blank"),
                 splits: SplitConfig | None = None):
        self.config = config
        self.seed = int(seed)
        self.twins = tuple(twins)
        self.splits = splits or SplitConfig()
        task = config.task
        self.objects = None
        if task == "squares":
            self.items = tuple(config.colors)
        elif task == "objects":
            from .objects import load_objects

            self.objects = load_objects(config.objects_dir, config.objects,
                                        config.objects_sha256)
            self.items = self.objects.names
        else:
            self.items = tuple(config.shapes)
        unknown = [list(t) for t in config.triples if not set(t) <= set(self.items)]
        if unknown:
            raise ConfigError(f"flat.triples {unknown} name entities outside this config's "
                              f"{task} ({', '.join(self.items)}); use names from that list")
        self.triples = (tuple(config.triples) if config.triples
                        else tuple(itertools.permutations(self.items, 3)))
        self.enumeration = [(t, d) for t in self.triples for d in config.directions]
        total = len(self.enumeration)
        if config.layout == "centred":
            if n is None or n == total:
                self.chosen = list(range(total))
            elif n > total:
                which = (f"{len(self.triples)} triples of flat.triples" if config.triples else
                         f"{len(self.items)} {dict(squares='colours').get(task, task)}")
                raise ConfigError(
                    f"n={n} exceeds the {total} distinct {task} items of this config "
                    f"({which}, {len(config.directions)} directions, centred layout); lower "
                    f"--n to at most {total} or set flat.layout: random")
            else:
                pick = np.random.default_rng([self.seed, 0x5EB]).choice(total, n, replace=False)
                self.chosen = sorted(int(i) for i in pick)
        else:
            self.chosen = None
            self.n_random = total if n is None else n
        g = config.grid
        axes = sorted({AXIS_OF[d] for d in config.directions})
        if config.layout == "grid":  # every grid is its own group (random contents)
            keys = [f"{i:09d}" for i in range(len(self))]
        elif self.splits.by == "layout":
            if config.layout == "centred":
                lay = [centred_layout(g.num_tokens, g.size, g.spacing, a) for a in axes]
            else:
                lay = [x for a in axes for x in all_layouts(
                    g.num_tokens, config.size_choices, config.spacing_choices, a)]
            keys = [x.key() for x in lay]
        elif self.splits.by == "scene":
            keys = [f"{i:09d}" for i in range(len(self))]
        else:
            dummy = Layout("horizontal", 1, 0, 0, 0)
            keys = [group_key(self.splits.by, t, dummy, 0)
                    for t in itertools.permutations(self.items, 3)]
        self.split_of = assign_splits(keys, self.splits, self.seed)

    def __len__(self) -> int:
        return len(self.chosen) if self.chosen is not None else self.n_random

    # -- entity attributes
    def _attrs(self, item: str) -> tuple[str, str]:
        """(kind, colour) of one enumeration item."""
        if self.config.task == "squares":
            return "square", item
        if self.config.task == "objects":
            return item, ""
        return item, self.config.shape_color(item)

    def _name(self, kind: str, color: str) -> str:
        return kind if self.config.task == "objects" else f"{color} {kind}"

    def _spec(self, index: int, rng):
        cfg, g = self.config, self.config.grid
        if self.chosen is not None:
            triple, direction = self.enumeration[self.chosen[index]]
            layout = centred_layout(g.num_tokens, g.size, g.spacing, AXIS_OF[direction])
        else:
            if self.config.triples:
                triple = self.triples[int(rng.integers(len(self.triples)))]
            else:
                triple = tuple(self.items[i] for i in rng.permutation(len(self.items))[:3])
            direction = cfg.directions[int(rng.integers(len(cfg.directions)))]
            layout = random_layout(g.num_tokens, cfg.size_choices, cfg.spacing_choices,
                                   AXIS_OF[direction], rng)
        return triple, direction, layout

    def unit(self, index: int) -> list[Rendered]:
        """Base stimulus ``index`` and its twins, from ``default_rng([seed, index])`` alone."""
        if not 0 <= index < len(self):
            raise IndexError(f"unit {index} out of range [0, {len(self)})")
        if self.config.layout == "grid":
            return [self._grid_unit(index)]
        cfg, g = self.config, self.config.grid
        rng = np.random.default_rng([self.seed, index])
        triple, direction, layout = self._spec(index, rng)
        kinds_colors = [self._attrs(x) for x in triple]
        rgbs = []
        for k, c in kinds_colors:
            if self.objects is not None:
                from .objects import mean_rgb

                rgbs.append(mean_rgb(self.objects, k))
                continue
            base = np.array(PALETTE[c], dtype=int)
            if cfg.jitter:
                base = np.clip(base + rng.integers(-cfg.jitter, cfg.jitter + 1, 3), 0, 255)
            rgbs.append(tuple(int(v) for v in base))
        choice_bits = (bool(rng.integers(2)), bool(rng.integers(2)))
        sid = f"{cfg.task}-{index:06d}"
        split = self.split_of[group_key(self.splits.by, triple, layout, index)]
        common = dict(task=cfg.task, direction=direction, layout=layout, split=split,
                      scene_id=sid, index=index, choice_bits=choice_bits)
        ents = [Placed(mask_id=i + 1, kind=k, color=c, rgb=rgbs[i], origin=layout.origin(i),
                       size=layout.size, ordinal=i) for i, (k, c) in enumerate(kinds_colors)]
        items = [self._stimulus(sid, ents, triple=triple, **common)]
        if "swap" in self.twins:
            # same entities (same mask ids), outer two exchange places
            sw = [_moved(ents[0], layout.origin(2), 2), ents[1], _moved(ents[2], layout.origin(0), 0)]
            items.append(self._stimulus(f"{sid}-swap", sw, triple=triple[::-1], twin="swap",
                                        **common))
        if "crisscross" in self.twins:
            # the paper's criss-cross partner: attributes reversed along the axis, ids by slot
            cc = [Placed(mask_id=i + 1, kind=e.kind, color=e.color, rgb=e.rgb,
                         origin=layout.origin(i), size=e.size, ordinal=i)
                  for i, e in enumerate(ents[::-1])]
            items.append(self._stimulus(f"{sid}-cc", cc, triple=triple[::-1], twin="crisscross",
                                        **common))
        if "isolated" in self.twins:
            centre = (g.num_tokens - layout.size) // 2
            for k, e in enumerate(ents):
                iso = [_moved(e, (centre, centre), e.ordinal)]  # keeps its base slot
                items.append(self._stimulus(f"{sid}-iso{k}", iso, triple=triple, twin="isolated",
                                            isolates=e.mask_id, names_from=ents, **common))
        return items

    def _stimulus(self, sid, placed, *, task, direction, layout, split, scene_id, index,
                  choice_bits, triple, twin=None, isolates=None, names_from=None) -> Rendered:
        g = self.config.grid
        image, mask = draw(g, placed, fill=task == "squares", objects=self.objects)
        entities = tuple(
            _measure(mask, p, g.token_px, role="target", ordinal=p.ordinal, kind=p.kind,
                     color=p.color, rgb=p.rgb, size=float(p.size),
                     name=self._name(p.kind, p.color))
            for p in sorted(placed, key=lambda p: p.mask_id))
        # prompt words follow slot order; isolated images keep the base question
        slots = sorted((p for p in (names_from or placed)), key=lambda p: p.ordinal)
        names = [self._name(p.kind, p.color) for p in slots]
        colors = [p.color for p in slots]
        prompts = make_prompts(self.config.prompts, task=task, direction=direction,
                               names=names, colors=colors, rng_choice=choice_bits)
        factors = {
            "task": task, "direction": direction,
            "grid": {"num_tokens": g.num_tokens, "token_px": g.token_px},
            "triple": list(triple),
            "layout": layout.to_dict(self.config.layout),
        }
        if task != "objects":
            factors["colors"] = colors
        if task == "shapes":
            factors["shapes"] = [p.kind for p in slots]
        if task == "objects":
            factors["objects"] = [p.kind for p in slots]
            factors["objects_sha256"] = self.objects.sha256
        stim = Stimulus(
            id=sid, file_name=f"images/{sid}.png", mask_file_name=f"masks/{sid}.png",
            width=g.canvas_px, height=g.canvas_px, generator="flat", task=task,
            relation=direction, axis=AXIS_OF[direction], entities=entities, prompts=prompts,
            counterfactual_of=None if twin is None else scene_id, counterfactual_kind=twin,
            isolates=isolates, scene_id=scene_id, index=index, split=split, factors=factors)
        return Rendered(stimulus=stim, image=image, mask=mask)

    def _grid_unit(self, index: int) -> Rendered:
        """One ``k x k`` grid (paper App. C.6, the authors' ``probing/src/grids.py``): every cell
        an entity drawn uniformly (with replacement) from the task's items, cells of ``size``
        tokens ``spacing`` apart, centred. The stimulus axis (from a direction drawn per grid)
        says what ``ordinal`` means: the column (horizontal) or the row (vertical), so a probe of
        ``ordinal`` has ``k`` classes. No twins."""
        cfg, g = self.config, self.config.grid
        k, S, sp = cfg.grid_k, g.size, g.spacing
        rng = np.random.default_rng([self.seed, index])
        picks = [self.items[int(i)] for i in rng.integers(len(self.items), size=k * k)]
        direction = cfg.directions[int(rng.integers(len(cfg.directions)))]
        axis = AXIS_OF[direction]
        first = (g.num_tokens - (k * S + (k - 1) * sp)) // 2
        offs = [first + i * (S + sp) for i in range(k)]
        placed = []
        for cell, item in enumerate(picks):
            r, c = divmod(cell, k)
            kind, color = self._attrs(item)
            rgb = (mean_rgb_of(self.objects, kind) if self.objects is not None
                   else tuple(PALETTE[color]))
            placed.append(Placed(mask_id=cell + 1, kind=kind, color=color, rgb=rgb,
                                 origin=(offs[c], offs[r]), size=S,
                                 ordinal=c if axis == "horizontal" else r))
        image, mask = draw(g, placed, fill=cfg.task == "squares", objects=self.objects)
        entities = tuple(
            _measure(mask, p, g.token_px, role="target", ordinal=p.ordinal, kind=p.kind,
                     color=p.color, rgb=p.rgb, size=float(p.size),
                     name=self._name(p.kind, p.color))
            for p in placed)
        corner = placed[0]
        noun = {"squares": "square", "objects": "object"}.get(cfg.task, "shape")
        text = f"The {noun} in the top left corner is " if cfg.task == "objects" else \
            f"The color of the {noun} in the top left corner is "
        answer = corner.kind if cfg.task == "objects" else corner.color
        prompt = Prompt(kind="completion", text=text, answer=answer,
                        options=tuple(dict.fromkeys(self._name(p.kind, p.color) if
                                                    cfg.task == "objects" else p.color
                                                    for p in placed)),
                        system=SYSTEM,
                        spans=prompt_spans(text, {"subject": noun}, ("subject",)))
        sid = f"grid{k}-{index:06d}"
        factors = {
            "task": cfg.task, "direction": direction,
            "grid": {"num_tokens": g.num_tokens, "token_px": g.token_px},
            "layout": {"mode": "grid", "k": k, "axis": axis, "size": S, "spacing": sp,
                       "cells": [[p.origin[0], p.origin[1], p.origin[0] + S, p.origin[1] + S]
                                 for p in placed]},
            "items": list(picks),
        }
        stim = Stimulus(
            id=sid, file_name=f"images/{sid}.png", mask_file_name=f"masks/{sid}.png",
            width=g.canvas_px, height=g.canvas_px, generator="flat", task=cfg.task,
            relation=direction, axis=axis, entities=entities, prompts=(prompt,), scene_id=sid,
            index=index, split=self.split_of[f"{index:09d}"], factors=factors)
        return Rendered(stimulus=stim, image=image, mask=mask)

    def extras(self) -> list[Rendered]:
        """The dataset-wide white canvas (``blank``), if requested."""
        if "blank" not in self.twins:
            return []
        return [blank(self.config.grid, task=self.config.task)]


def mean_rgb_of(objects, name: str) -> tuple[int, int, int]:
    from .objects import mean_rgb

    return mean_rgb(objects, name)


def _measure(mask: np.ndarray, p: Placed, token_px: int, **attrs) -> Entity:
    """:func:`entity_from_mask` on the entity's cell block only (its pixels never leave it)."""
    side = p.size * token_px
    x0, y0 = p.origin[0] * token_px, p.origin[1] * token_px
    e = entity_from_mask(mask[y0:y0 + side, x0:x0 + side], p.mask_id, **attrs)
    if e.centroid is None:
        return e
    bx = e.box
    return dataclasses.replace(e, box=(bx[0] + x0, bx[1] + y0, bx[2] + x0, bx[3] + y0),
                               centroid=(e.centroid[0] + x0, e.centroid[1] + y0))


def _moved(p: Placed, origin, ordinal) -> Placed:
    return Placed(mask_id=p.mask_id, kind=p.kind, color=p.color, rgb=p.rgb, origin=tuple(origin),
                  size=p.size, ordinal=ordinal)


def blank(grid: GridConfig, *, task: str = "squares", generator: str = "flat") -> Rendered:
    """An all-white canvas with an empty mask (the background source for ablations)."""
    px = grid.canvas_px
    stim = Stimulus(
        id="blank", file_name="images/blank.png", mask_file_name="masks/blank.png", width=px,
        height=px, generator=generator, task=task, relation=None, axis=None, entities=(),
        counterfactual_kind="blank", scene_id="blank", index=-1, split="train",
        factors={"grid": {"num_tokens": grid.num_tokens, "token_px": grid.token_px}})
    return Rendered(stimulus=stim, image=np.full((px, px, 3), 255, np.uint8),
                    mask=np.zeros((px, px), np.uint8))
