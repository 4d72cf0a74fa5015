"""Stitched What'sUp: the paper's Table 1 What'sUp task, built from a What'sUp download.

The authors do not use What'sUp's caption format for Table 1 (PAPER-NOTES 1.4; their
``shared/whatsup.py`` and ``behavioral_analysis/src/tasks/whatsup.py``). Each image is stitched
from two ``controlled_images`` photos of the same reference object (``middle``: chair, table,
armchair):

- ``<side_l>_left_of_<middle>.jpeg`` and ``<side_r>_right_of_<middle>.jpeg`` are each resized
  first to ``size x size`` (PIL bilinear; Qwen2-VL 336, Gemma-3 896, Pixtral 512);
- the image is the left half (``x < size // 2``) of the first plus the right half of the second;
- for every ordered (target, distractor) pair of the middle's kept side objects and each direction:
  ``left`` shows the target on the left (``stitch(target, middle, distractor)``), ``right`` on the
  right (``stitch(distractor, middle, target)``);
- the prompt is ``"The object on the floor {to the left of|to the right of} the {middle} is a(n) "``
  with the system message ``"You are a helpful assistant. You respond in one token."``;
- side objects come from the authors' fixed lists (:data:`SIDE_OBJECTS`) and are kept only when
  their name is one token for the model's tokenizer in lower-case and Capitalised form
  (:func:`filter_sides`); with the real tokenizers the authors get 628 items for Qwen2-VL and
  2148 for Gemma-3. Names whose two photos are missing under ROOT are dropped and listed too.

Item order is the authors': middles in order, ``itertools.permutations(kept, 2)``, then
``left``, ``right``. Each item may carry a ``crisscross`` twin (``<id>-cc``: the two side objects
exchanged, same question), the counterfactual E4 patches from.

Regions (what E3/E4 use as each entity's tokens): entity 1 is the left side object (ordinal 0),
2 the middle reference (ordinal 1), 3 the right side object (ordinal 2). By default (``regions:
halves``) entity 1 is the left half, 3 the right half and the middle has no region (area 0). A
regions file (``--regions FILE``) gives boxes instead; its format (``spatialbind.whatsup-regions/1``)::

    {"format": "spatialbind.whatsup-regions/1",
     "units": "fraction",                 # or "pixels" (of the stitched size x size image)
     "boxes": {
        "chair": {"left": [x0, y0, x1, y1], "middle": [...], "right": [...]},   # per middle
        "whatsup-stitched-000017": {"left": [...], "right": [...]}              # per image id
     }}

A key that is a stimulus id wins over its middle's key; any of left/middle/right may be left out
(that entity then has no region). Boxes are half-open ``[x0, y0, x1, y1]``. The authors' hand
boxes (``probing/src/whatsup.py``, 64-grid units / 64) ship as
``scenegen/data/whatsup_regions_paper.json``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..record import Entity, Prompt, Rendered, Stimulus, entity_from_mask, prompt_spans
from .whatsup import WhatsUpError

SYSTEM = "You are a helpful assistant. You respond in one token."
PREPOSITION = {"left": "to the left of", "right": "to the right of"}
MIDDLES: tuple[str, ...] = ("chair", "table", "armchair")
#: Model input size of the stitched image (the authors' ``WHATSUP_IMAGE_SIZE``).
SIZES: dict[str, int] = {"qwen2-vl": 336, "gemma-3": 896, "pixtral": 512}
#: The authors' candidate side objects per middle, in their order (before the token filter).
SIDE_OBJECTS: dict[str, tuple[str, ...]] = {
    "chair": (
        "bottle-of-orange-juice", "oven-mitt", "toy-cactus", "plate", "headphones", "pot",
        "water-bottle", "box", "plant", "banana", "mug", "blanket", "beer-bottle", "book",
        "cap", "orange", "bottle", "laptop", "knife", "scissors", "cup", "pan",
        "bottle-of-mustard", "pillow", "vase", "kettle", "bowl", "sunglasses", "water-filter",
        "lemon", "hat", "toilet-roll", "dragonfruit", "remote", "spatula", "painting",
        "helmet", "photograph", "shoes", "microphone", "scarf", "wineglass", "can",
        "ball-of-yarn"),
    "table": (
        "kettle", "bowl", "dog", "sunglasses", "lamp", "chair", "toilet-roll", "dragonfruit",
        "spatula", "lemon", "helmet", "painting", "scarf", "wineglass", "ball-of-yarn",
        "plate", "plant", "banana", "chair2", "mug", "book", "phone", "orange", "cap",
        "bottle", "scissors", "cup", "pillow", "knife"),
    "armchair": (
        "yarn", "water-bottle", "pan", "orange", "scarf", "cap", "bowl", "apple", "mug",
        "book", "soda-can", "beer-bottle", "glass", "cup", "glove", "tape", "bread",
        "bottle", "wineglass", "glasses", "can", "rose", "phone", "notepad", "plate",
        "headphones", "banjo", "remote", "sunglasses", "pillow", "laptop"),
}
REGIONS_FORMAT = "spatialbind.whatsup-regions/1"
POSITIONS = ("left", "middle", "right")


def paper_regions_file() -> Path:
    """The authors' hand-labelled boxes per middle, in our regions format."""
    return Path(__file__).resolve().parents[1] / "data" / "whatsup_regions_paper.json"


# --------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class StitchedConfig:
    """Options of the ``whatsup_stitched`` generator (the ``whatsup_stitched`` config section)."""

    root: str = ""
    """What'sUp download root (``--whatsup ROOT``): holds ``controlled_images/`` (or
    ``data/controlled_images/``, or the JPEGs directly)."""
    size: int = 336
    """Side of the stitched image (Qwen2-VL 336, Gemma-3 896, Pixtral 512)."""
    middles: tuple[str, ...] = MIDDLES
    sides: dict[str, list[str]] | None = None
    """Kept side objects per middle, in order. None = unresolved (the authors' full lists before
    the token filter); ``spatialbind generate`` fills it from ``--tokenizer``."""
    dropped: dict[str, dict[str, str]] = field(default_factory=dict)
    """Dropped side objects per middle with the reason (``split: a|b``, ``missing image``)."""
    tokenizer: str | None = None
    """The tokenizer the side objects were filtered with (a record; not used to generate)."""
    directions: tuple[str, ...] = ("left", "right")
    regions: str | None = None
    """Regions file (``--regions FILE``); None = half-image regions."""
    regions_sha256: str | None = None

    def __post_init__(self):
        c = "whatsup_stitched"
        for name in ("middles", "directions"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if not isinstance(self.root, str):
            raise ConfigError(f"{c}.root must be a folder path; got {self.root!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 2 <= self.size <= 8192:
            raise ConfigError(f"{c}.size must be an int in [2, 8192]; got {self.size!r}")
        for m in self.middles:
            if m not in SIDE_OBJECTS and not (self.sides and m in self.sides):
                raise ConfigError(f"{c}.middles: unknown middle {m!r}; known: {list(MIDDLES)} "
                                  "(or list its side objects under sides)")
        for d in self.directions:
            if d not in PREPOSITION:
                raise ConfigError(f"{c}.directions: {d!r} is not left or right")
        if self.sides is not None:
            if not isinstance(self.sides, dict):
                raise ConfigError(f"{c}.sides must map middle -> list of side objects")
            object.__setattr__(self, "sides", {k: list(v) for k, v in self.sides.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "size": self.size, "middles": list(self.middles),
                "sides": self.sides, "dropped": self.dropped, "tokenizer": self.tokenizer,
                "directions": list(self.directions), "regions": self.regions,
                "regions_sha256": self.regions_sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "StitchedConfig":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        bad = [k for k in d if k not in known]
        if bad:
            from ..errors import suggest

            raise ConfigError(f"unknown option {bad[0]!r} in whatsup_stitched."
                              f"{suggest(bad[0], known)} Known: {', '.join(sorted(known))}.")
        return cls(**d)


# --------------------------------------------------------------------------- files
def image_dir(root: str | Path) -> Path:
    """The folder holding ``controlled_images`` JPEGs under ``root`` (release layouts)."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise WhatsUpError(f"--whatsup {r}: no such directory; pass the folder you extracted "
                           "the What'sUp data into (it holds controlled_images/)")
    for cand in (r / "controlled_images", r / "data" / "controlled_images", r):
        if cand.is_dir() and any(cand.glob("*_left_of_*.jpeg")):
            return cand
    raise WhatsUpError(f"--whatsup {r}: no controlled_images/*_left_of_*.jpeg found (looked in "
                       f"{r / 'controlled_images'}, {r / 'data' / 'controlled_images'}, {r}); "
                       "download controlled_images.tar.gz from the What'sUp release and extract "
                       "it there")


def source_name(side: str, direction: str, middle: str) -> str:
    return f"{side}_{direction}_of_{middle}.jpeg"


def filter_sides(tokenizer: Any | None, root: str | Path, middles=MIDDLES,
                 candidates: dict[str, Any] | None = None):
    """Kept and dropped side objects per middle.

    A name is kept when it is one token in lower-case and Capitalised form (the authors' rule;
    skipped when ``tokenizer`` is None) and both its photos (``_left_of_`` and ``_right_of_``
    the middle) exist under ``root``.

    Returns
    -------
    (kept, dropped)
        ``{middle: [name, ...]}`` and ``{middle: {name: reason}}``.
    """
    from ..objects import is_single_token

    d = image_dir(root)
    cands = candidates or SIDE_OBJECTS
    kept: dict[str, list[str]] = {}
    dropped: dict[str, dict[str, str]] = {}
    for m in middles:
        kept[m], dropped[m] = [], {}
        for n in cands[m]:
            if tokenizer is not None and not is_single_token(tokenizer, n):
                pieces = "|".join(tokenizer.tokenize(n)) + " / " + "|".join(
                    tokenizer.tokenize(n.capitalize()))
                dropped[m][n] = f"not one token ({pieces})"
                continue
            miss = [source_name(n, r, m) for r in ("left", "right")
                    if not (d / source_name(n, r, m)).is_file()]
            if miss:
                dropped[m][n] = "missing image " + ", ".join(miss)
                continue
            kept[m].append(n)
    return kept, dropped


def expected_items(kept: dict[str, list[str]], n_directions: int = 2) -> int:
    """The rule: sum over middles of k (k - 1) ordered pairs times the directions."""
    return sum(len(v) * (len(v) - 1) * n_directions for v in kept.values())


@lru_cache(maxsize=16)
def _resized(path: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        img = im.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out = np.asarray(img).copy()
    out.flags.writeable = False
    return out


def stitch(directory: Path, left: str, middle: str, right: str, size: int) -> np.ndarray:
    """Left half of ``<left>_left_of_<middle>`` + right half of ``<right>_right_of_<middle>``,
    each resized to ``size x size`` first."""
    a = _resized(str(directory / source_name(left, "left", middle)), size)
    b = _resized(str(directory / source_name(right, "right", middle)), size)
    out = np.empty((size, size, 3), np.uint8)
    h = size // 2
    out[:, :h] = a[:, :h]
    out[:, h:] = b[:, h:]
    return out


# --------------------------------------------------------------------------- regions
def load_regions(path: str | Path) -> tuple[dict[str, dict[str, tuple[float, ...]]], str, str]:
    """Read a regions file; return ``(boxes, units, sha256)``. Errors name the file and field."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--regions {p}: no such file; pass a JSON file in the format "
                          f"{REGIONS_FORMAT} (see scenegen/importers/whatsup_stitched.py)")
    raw = p.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--regions {p}: not valid JSON ({e.msg} at line {e.lineno}); fix "
                          "the syntax") from None
    if not isinstance(data, dict) or data.get("format") != REGIONS_FORMAT:
        raise ConfigError(f"--regions {p}: field 'format' must be {REGIONS_FORMAT!r}; see the "
                          "format in scenegen/importers/whatsup_stitched.py")
    units = data.get("units", "fraction")
    if units not in ("fraction", "pixels"):
        raise ConfigError(f"--regions {p}: field 'units' must be 'fraction' or 'pixels', got "
                          f"{units!r}")
    boxes = data.get("boxes")
    if not isinstance(boxes, dict) or not boxes:
        raise ConfigError(f"--regions {p}: field 'boxes' must map a middle or image id to "
                          "{left|middle|right: [x0, y0, x1, y1]}")
    out: dict[str, dict[str, tuple[float, ...]]] = {}
    for key, per in boxes.items():
        if not isinstance(per, dict) or not per:
            raise ConfigError(f"--regions {p}: boxes[{key!r}] must map left/middle/right to a box")
        out[key] = {}
        for pos, b in per.items():
            where = f"--regions {p}: boxes[{key!r}][{pos!r}]"
            if pos not in POSITIONS:
                raise ConfigError(f"{where}: position must be one of {list(POSITIONS)}")
            ok = (isinstance(b, list) and len(b) == 4
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
                  and b[0] < b[2] and b[1] < b[3] and min(b) >= 0
                  and (units == "pixels" or max(b) <= 1.0))
            if not ok:
                lim = "[0, 1]" if units == "fraction" else "the image"
                raise ConfigError(f"{where}: {b!r} must be [x0, y0, x1, y1] with x0 < x1, "
                                  f"y0 < y1, inside {lim}")
            out[key][pos] = tuple(float(v) for v in b)
    return out, units, hashlib.sha256(raw).hexdigest()


def _box_px(b, units: str, size: int) -> tuple[int, int, int, int]:
    if units == "pixels":
        x0, y0, x1, y1 = (int(round(v)) for v in b)
    else:
        x0, y0 = int(b[0] * size), int(b[1] * size)
        x1, y1 = int(round(b[2] * size)), int(round(b[3] * size))
    x0, y0 = max(0, min(x0, size - 1)), max(0, min(y0, size - 1))
    return x0, y0, max(x0 + 1, min(x1, size)), max(y0 + 1, min(y1, size))


# --------------------------------------------------------------------------- generator
class StitchedGenerator:
    """Generator protocol of :mod:`scenegen.dataset` for the stitched What'sUp task.

    Parameters
    ----------
    config
        Resolved options (``sides`` must be filled: the kept side objects per middle).
    seed
        Seeds the subset when ``n`` is smaller than the enumeration, and the splits.
    n
        Number of items; None = all (the rule of :func:`expected_items`).
    """

    def __init__(self, config: StitchedConfig, *, seed: int = 0, n: int | None = None,
                 splits=None, twins=("crisscross",)):
        from ..config import SplitConfig
        from ..flat import assign_splits

        self.config = config
        self.seed = int(seed)
        self.twins = tuple(t for t in twins if t == "crisscross")
        if config.sides is None:
            raise ConfigError("whatsup_stitched.sides is not resolved; generate through "
                              "`spatialbind generate --preset whatsup-stitched-<model> --whatsup "
                              "ROOT` (which filters the side objects with --tokenizer)")
        self.dir = image_dir(config.root)
        self.enumeration = [(m, t, d, r) for m in config.middles
                            for t, d in itertools.permutations(config.sides.get(m, []), 2)
                            for r in config.directions]
        total = len(self.enumeration)
        if total == 0:
            kept = {m: len(config.sides.get(m, [])) for m in config.middles}
            tok = sum(1 for v in config.dropped.values() for r in v.values()
                      if r.startswith("not one token"))
            miss = sum(1 for v in config.dropped.values() for r in v.values()
                       if r.startswith("missing"))
            raise ConfigError(f"whatsup_stitched: no items: side objects kept per middle {kept} "
                              f"(need 2+); {tok} dropped as not one token for "
                              f"{config.tokenizer}, {miss} for missing photos under "
                              f"{config.root}; use the model's tokenizer or check the download")
        if n is None or n == total:
            self.chosen = list(range(total))
        elif n > total:
            raise ConfigError(f"n={n} exceeds the {total} stitched What'sUp items; lower --n")
        else:
            pick = np.random.default_rng([self.seed, 0x5EB]).choice(total, n, replace=False)
            self.chosen = sorted(int(i) for i in pick)
        self.regions = None
        if config.regions:
            boxes, units, digest = load_regions(config.regions)
            if config.regions_sha256 and digest != config.regions_sha256:
                raise ConfigError(f"--regions {config.regions}: the file changed since this "
                                  "dataset was started; restore it or use a new --out")
            self.regions = (boxes, units)
        splits = splits or SplitConfig()
        keys = {self._group(m, t, d) for m, t, d, _ in self.enumeration}
        self.split_of = assign_splits(keys, splits, self.seed)

    @staticmethod
    def _group(middle, target, distractor) -> str:
        return "|".join([middle, *sorted((target, distractor))])

    def __len__(self) -> int:
        return len(self.chosen)

    def extras(self) -> list[Rendered]:
        return []

    def unit(self, index: int) -> list[Rendered]:
        if not 0 <= index < len(self):
            raise IndexError(f"unit {index} out of range [0, {len(self)})")
        cfg = self.config
        middle, target, distractor, direction = self.enumeration[self.chosen[index]]
        left, right = (target, distractor) if direction == "left" else (distractor, target)
        sid = f"whatsup-stitched-{index:06d}"
        split = self.split_of[self._group(middle, target, distractor)]
        out = [self._item(sid, sid, index, split, middle, left, right, direction, twin=None)]
        if "crisscross" in self.twins:
            # the paper's criss-cross partner: the side objects exchanged (the same question)
            out.append(self._item(f"{sid}-cc", sid, index, split, middle, right, left, direction,
                                  twin="crisscross"))
        return out

    def _item(self, sid, scene_id, index, split, middle, left, right, direction, *, twin):
        cfg = self.config
        S = cfg.size
        target, distractor = (left, right) if direction == "left" else (right, left)
        image = stitch(self.dir, left, middle, right, S)
        boxes, kind = self._boxes(scene_id, middle)
        mask = np.zeros((S, S), np.uint8)
        for k in (2, 1, 3):  # sides drawn over the middle where boxes overlap
            if k in boxes:
                x0, y0, x1, y1 = boxes[k]
                mask[y0:y1, x0:x1] = k
        names = {1: left, 2: middle, 3: right}
        ents = []
        for k in (1, 2, 3):
            attrs = dict(role="target", ordinal=k - 1, kind=names[k], color="", rgb=(0, 0, 0),
                         name=names[k])
            if (mask == k).any():
                ents.append(entity_from_mask(mask, k, **attrs))
            else:
                ents.append(Entity(mask_id=k, box=(0, 0, 0, 0), centroid=None, area=0, **attrs))
        prep = PREPOSITION[direction]
        text = f"The object on the floor {prep} the {middle} is a(n) "
        prompt = Prompt(kind="completion", text=text, answer=target,
                        options=(left, middle, right), system=SYSTEM,
                        spans=prompt_spans(text, {"subject": "object", "relation": prep,
                                                  "reference": middle},
                                           ("subject", "relation", "reference")))
        factors = {
            "task": "whatsup-stitched", "direction": direction, "middle": middle,
            "target": target, "distractor": distractor, "size": S,
            "left_source": source_name(left, "left", middle),
            "right_source": source_name(right, "right", middle),
            "regions": kind,
            "grid": {"canvas_px": S},
        }
        stim = Stimulus(
            id=sid, file_name=f"images/{sid}.png", mask_file_name=f"masks/{sid}.png", width=S,
            height=S, generator="whatsup_stitched", task="whatsup-stitched", relation=direction,
            axis="horizontal", entities=tuple(ents), prompts=(prompt,), scene_id=scene_id,
            index=index, split=split, factors=factors,
            counterfactual_of=None if twin is None else scene_id, counterfactual_kind=twin)
        return Rendered(stimulus=stim, image=image, mask=mask)

    def _boxes(self, sid: str, middle: str) -> tuple[dict[int, tuple[int, int, int, int]], str]:
        S = self.config.size
        if self.regions is None:
            return {1: (0, 0, S // 2, S), 3: (S // 2, 0, S, S)}, "halves"
        boxes, units = self.regions
        per = boxes.get(sid, boxes.get(middle))
        if per is None:
            return {}, "none"
        out = {POSITIONS.index(pos) + 1: _box_px(b, units, S) for pos, b in per.items()}
        return out, "file"
