"""Generator configs: frozen, keyword-only dataclasses validated on construction.

A generation is described by one :class:`GenerateConfig` (what ``spatialbind generate`` resolves
from ``--preset`` / ``--config`` plus ``--n`` / ``--seed``). It names the generator (``flat`` or
``scene3d``) and holds the options shared by every generator (seed, number of items, twins,
degradations, splits); the generator's own options sit in a nested section (``flat``: a
:class:`FlatConfig`; ``scene3d``: a plain dict validated by ``scenegen.scene3d.Scene3DConfig``,
imported only when that generator is used, so flat generation never imports pyrender).

Configs are read from plain dicts (YAML / JSON) with :meth:`from_dict`, which rejects unknown keys
with a close-match suggestion, and written back with :meth:`to_dict`; the resolved dict is what
the dataset directory stores (``config.json``) and hashes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, suggest

# --------------------------------------------------------------------------- vocabularies
#: The paper's palette (PAPER-NOTES 1.4); ``orange`` is the Pixtral substitute for ``brown``.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "brown": (150, 75, 0),
    "gray": (128, 128, 128),
    "orange": (255, 165, 0),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "cyan": (0, 255, 255),
    "pink": (255, 105, 180),
}
#: The six colours of the paper's Squares task, in the paper's order.
PAPER_COLORS: tuple[str, ...] = ("red", "green", "blue", "black", "brown", "gray")
#: Shape names known to the flat renderer.
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "star", "cross", "heart")
#: The paper's Shapes task: fixed (shape, colour) pairs.
PAPER_SHAPES: tuple[tuple[str, str], ...] = (
    ("square", "red"), ("circle", "green"), ("triangle", "blue"),
    ("star", "black"), ("cross", "brown"), ("heart", "gray"),
)
DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")
TASKS: tuple[str, ...] = ("squares", "shapes", "objects")
PROMPT_KINDS: tuple[str, ...] = ("completion", "yesno", "choice")
TWIN_KINDS: tuple[str, ...] = ("swap", "crisscross", "isolated", "blank")
DEGRADATION_KINDS: tuple[str, ...] = ("blur", "noise", "contrast", "occluder")
SPLIT_BY: tuple[str, ...] = ("mirror", "colorset", "triple", "layout", "scene")
GENERATORS: tuple[str, ...] = ("flat", "scene3d", "whatsup_stitched")
LAYOUTS: tuple[str, ...] = ("centred", "random", "grid")


# --------------------------------------------------------------------------- validation helpers
def _param_error(cls: str, name: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(
        f"The {name!r} parameter of {cls} must be {expected}. Got {got!r} instead.")


def _check_int(cls: str, name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f"[{lo}, inf)"
        raise _param_error(cls, name, f"an int in the range {rng}", value)


def _check_choice(cls: str, name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(
            f"The {name!r} parameter of {cls} must be one of "
            f"{', '.join(map(repr, choices))}. Got {value!r} instead.{suggest(value, choices)}")


def _check_names(cls: str, name: str, values, choices, *, what: str) -> None:
    for v in values:
        if v not in choices:
            raise ConfigError(
                f"unknown {what} {v!r} in the {name!r} parameter of {cls}.{suggest(v, choices)} "
                f"Known: {', '.join(choices)}.")
    if len(set(values)) != len(values):
        raise _param_error(cls, name, "a list without repeated names", list(values))


def _from_dict(cls, d: Any, *, where: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with a suggestion."""
    label = where or cls.__name__
    if not isinstance(d, dict):
        raise ConfigError(f"{label} must be a mapping of options, got {type(d).__name__}: {d!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in d if k not in names]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"unknown option {k!r} in {label}.{suggest(k, names)} Known: {', '.join(names)}.")
    return d


def _plain(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return x.to_dict()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class _Base:
    """``to_dict`` / ``replace`` shared by every config."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """Copy with ``changes`` applied (validation runs again)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- flat generator
@dataclass(frozen=True, kw_only=True, slots=True)
class GridConfig(_Base):
    """Canvas geometry, in units of the model's image tokens."""

    num_tokens: int = 12
    """Tokens per side of the square canvas (Qwen2-VL paper setting: 12; Gemma-3: 16)."""
    token_px: int = 28
    """Pixels per token side (Qwen2-VL: 28 = 14-px patches merged 2x2; Gemma-3: 56)."""
    size: int = 2
    """Entity side in tokens (Qwen2-VL: 2; Gemma-3: 3)."""
    spacing: int = 2
    """Gap between neighbouring entities in tokens (Qwen2-VL: 2; Gemma-3: 3)."""

    def __post_init__(self):
        _check_int("GridConfig", "num_tokens", self.num_tokens, 1, 512)
        _check_int("GridConfig", "token_px", self.token_px, 1, 1024)
        _check_int("GridConfig", "size", self.size, 1, 512)
        _check_int("GridConfig", "spacing", self.spacing, 0, 512)
        if self.num_tokens * self.token_px > 8192:
            raise ConfigError(
                f"GridConfig canvas {self.num_tokens}x{self.token_px} = "
                f"{self.num_tokens * self.token_px} px exceeds 8192 px; lower num_tokens or "
                "token_px")
        check_fits(self.num_tokens, self.size, self.spacing, where="GridConfig")

    @property
    def canvas_px(self) -> int:
        """Side of the canvas in pixels."""
        return self.num_tokens * self.token_px

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GridConfig":
        return cls(**_from_dict(cls, d, where="flat.grid"))


def check_fits(num_tokens: int, size: int, spacing: int, *, where: str) -> None:
    """Raise :class:`ConfigError` when three entities in a row do not fit the grid."""
    need = 3 * size + 2 * spacing
    if need > num_tokens:
        raise ConfigError(
            f"impossible layout in {where}: three objects of {size} tokens with spacing "
            f"{spacing} need {need} tokens per row but the grid has {num_tokens}; lower size "
            f"or spacing, or raise num_tokens to at least {need}")


@dataclass(frozen=True, kw_only=True, slots=True)
class FlatConfig(_Base):
    """The paper's flat stimuli: three same-size entities in a row or column on white."""

    task: str = "squares"
    """``squares`` (coloured squares filling their token cells), ``shapes`` (PIL-drawn shapes) or
    ``objects`` (RGBA object sprites, see :mod:`scenegen.objects`)."""
    grid: GridConfig = field(default_factory=GridConfig)
    colors: tuple[str, ...] = PAPER_COLORS
    """Squares: the palette colours to enumerate triples from (at least 3)."""
    shapes: tuple[str, ...] = tuple(s for s, _ in PAPER_SHAPES)
    """Shapes: the shapes to use; each keeps its paper colour (square=red, circle=green, ...)."""
    shape_colors: dict[str, str] = field(default_factory=dict)
    """Shapes: override a shape's colour, e.g. ``{"cross": "orange"}`` (Pixtral)."""
    objects: tuple[str, ...] = ()
    """Objects: the sprite names to use, in enumeration order; empty = the shipped set's order
    (``objects_dir`` unset) or every sprite of ``objects_dir`` in file-name order."""
    objects_dir: str | None = None
    """Objects: folder of RGBA sprites (``--objects DIR``); None = the shipped default set."""
    objects_sha256: str | None = None
    """Objects: digest of the sprites used (filled in when a generation starts; a resumed run
    whose sprite files changed is refused)."""
    directions: tuple[str, ...] = DIRECTIONS
    """Relations to ask about; left/right lay entities out in a row, above/below in a column."""
    prompts: tuple[str, ...] = PROMPT_KINDS
    """Prompt variants per stimulus: ``completion`` (the paper's), ``yesno``, ``choice``."""
    layout: str = "centred"
    """``centred`` (the paper's slots), ``random`` (random size, spacing, row/column, offset) or
    ``grid`` (paper App. C.6: a ``grid_k x grid_k`` grid of random entities for grid probes)."""
    grid_k: int = 3
    """Grid layouts: entities per side (2: 2x2 grids, 2 classes; 3: 3x3 grids, 3 classes)."""
    sizes: tuple[int, ...] = ()
    """Random layouts: entity sizes (tokens) to draw from; empty = ``grid.size`` only."""
    spacings: tuple[int, ...] = ()
    """Random layouts: spacings (tokens) to draw from; empty = ``grid.spacing`` only."""
    jitter: int = 0
    """Per-entity shade jitter: each RGB channel moves by a uniform integer in [-jitter, jitter]."""
    triples: tuple[tuple[str, str, str], ...] = ()
    """Only these ordered triples (entity names in slot order: left to right or top to bottom,
    e.g. ``[["red", "green", "blue"]]``); empty = every ordered triple of the colours / shapes /
    objects. Used to generate a model's held-out triples only (``spatialbind demo --items
    heldout``); twins keep their own triples (a criss-cross or swap twin is the mirror)."""

    def __post_init__(self):
        c = "FlatConfig"
        if not isinstance(self.triples, (list, tuple)):
            raise _param_error(c, "triples", "a list of [name, name, name] triples", self.triples)
        trip = []
        for t in self.triples:
            if (not isinstance(t, (list, tuple)) or len(t) != 3
                    or not all(isinstance(x, str) for x in t) or len(set(t)) != 3):
                raise _param_error(c, "triples", "a list of triples of 3 distinct names, e.g. "
                                   '[["red", "green", "blue"]]', list(self.triples))
            trip.append(tuple(t))
        if len(set(trip)) != len(trip):
            raise _param_error(c, "triples", "a list without repeated triples", list(self.triples))
        object.__setattr__(self, "triples", tuple(trip))
        _check_choice(c, "task", self.task, TASKS)
        if not isinstance(self.grid, GridConfig):
            raise _param_error(c, "grid", "a GridConfig", self.grid)
        for name in ("colors", "shapes", "objects", "directions", "prompts", "sizes",
                     "spacings"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
            elif not isinstance(v, tuple):
                raise _param_error(c, name, "a list", v)
        _check_names(c, "colors", self.colors, tuple(PALETTE), what="colour")
        _check_names(c, "shapes", self.shapes, SHAPES, what="shape")
        _check_names(c, "directions", self.directions, DIRECTIONS, what="direction")
        import re

        for o in self.objects:
            if not isinstance(o, str) or not re.match(r"^[a-z][a-z0-9-]*$", o):
                raise _param_error(c, "objects", "a list of lower-case object names "
                                   "(sprite file names without extension)", list(self.objects))
        if len(set(self.objects)) != len(self.objects):
            raise _param_error(c, "objects", "a list without repeated names", list(self.objects))
        if self.objects and len(self.objects) < 3:
            raise _param_error(c, "objects", "a list of at least 3 objects", list(self.objects))
        if self.objects_dir is not None and not isinstance(self.objects_dir, str):
            raise _param_error(c, "objects_dir", "a folder path (str) or null", self.objects_dir)
        if self.task != "objects" and (self.objects or self.objects_dir):
            raise ConfigError("FlatConfig objects / objects_dir are options of task 'objects'; "
                              f"remove them or set task: objects (task is {self.task!r})")
        _check_names(c, "prompts", self.prompts, PROMPT_KINDS, what="prompt kind")
        if not isinstance(self.shape_colors, dict):
            raise _param_error(c, "shape_colors", "a mapping shape -> colour", self.shape_colors)
        _check_names(c, "shape_colors", tuple(self.shape_colors), SHAPES, what="shape")
        _check_names(c, "shape_colors", tuple(dict.fromkeys(self.shape_colors.values())),
                     tuple(PALETTE), what="colour")
        if not self.directions:
            raise _param_error(c, "directions", "a non-empty list", list(self.directions))
        if self.task == "squares" and len(self.colors) < 3:
            raise _param_error(c, "colors", "a list of at least 3 colours", list(self.colors))
        if self.task == "shapes":
            if len(self.shapes) < 3:
                raise _param_error(c, "shapes", "a list of at least 3 shapes", list(self.shapes))
            cols = [self.shape_color(s) for s in self.shapes]
            if len(set(cols)) != len(cols):
                raise ConfigError(
                    f"FlatConfig shapes {list(self.shapes)} map to repeated colours {cols}; "
                    "the answer is a colour, so give every shape its own colour in shape_colors")
        _check_choice(c, "layout", self.layout, LAYOUTS)
        if self.triples:
            if self.layout == "grid":
                raise ConfigError("FlatConfig triples choose among three-entity rows and do not "
                                  "apply to layout 'grid'; remove triples or set layout: centred")
            names = {"squares": self.colors, "shapes": self.shapes}.get(self.task)
            if names is not None or self.objects:
                names = names if names is not None else self.objects
                what = {"squares": "colour", "shapes": "shape"}.get(self.task, "object")
                for t in self.triples:
                    _check_names(c, "triples", t, tuple(names), what=what)
        _check_int(c, "jitter", self.jitter, 0, 127)
        _check_int(c, "grid_k", self.grid_k, 2, 16)
        if self.layout == "grid":
            g = self.grid
            need = self.grid_k * g.size + (self.grid_k - 1) * g.spacing
            if need > g.num_tokens:
                raise ConfigError(
                    f"impossible grid in FlatConfig: {self.grid_k}x{self.grid_k} entities of "
                    f"{g.size} tokens with spacing {g.spacing} need {need} tokens per side but "
                    f"the grid has {g.num_tokens}; lower grid_k, size or spacing")
        for s in self.sizes:
            _check_int(c, "sizes", s, 1, self.grid.num_tokens)
        for s in self.spacings:
            _check_int(c, "spacings", s, 0, self.grid.num_tokens)
        if self.layout == "centred" and (self.sizes or self.spacings):
            raise ConfigError(
                "FlatConfig sizes/spacings choose among layouts and need layout='random'; set "
                "layout: random, or set grid.size / grid.spacing for a single centred layout")
        # random layouts draw among the (size, spacing) pairs that fit; at least one must
        fits = [(s, sp) for s in self.size_choices for sp in self.spacing_choices
                if 3 * s + 2 * sp <= self.grid.num_tokens]
        if not fits:
            check_fits(self.grid.num_tokens, min(self.size_choices),
                       min(self.spacing_choices), where="FlatConfig sizes/spacings")

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`_Base.to_dict`; an empty ``triples`` is left out, so configs (and the
        dataset hashes) from before the option existed stay the same."""
        d = _Base.to_dict(self)
        if not self.triples:
            d.pop("triples")
        return d

    @property
    def size_choices(self) -> tuple[int, ...]:
        return self.sizes or (self.grid.size,)

    @property
    def spacing_choices(self) -> tuple[int, ...]:
        return self.spacings or (self.grid.spacing,)

    def shape_color(self, shape: str) -> str:
        """Colour name used for ``shape`` in the shapes task."""
        return self.shape_colors.get(shape, dict(PAPER_SHAPES)[shape])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FlatConfig":
        d = dict(_from_dict(cls, d, where="flat"))
        if "grid" in d:
            d["grid"] = GridConfig.from_dict(d["grid"])
        return cls(**d)


# --------------------------------------------------------------------------- shared options
@dataclass(frozen=True, kw_only=True, slots=True)
class DegradationSpec(_Base):
    """One degradation to apply: kind and strength (a number or a ``[lo, hi]`` range)."""

    kind: str
    """``blur``, ``noise``, ``contrast`` or ``occluder`` (see scenegen/degrade.py)."""
    strength: float | tuple[float, float] = 0.5
    """In [0, 1]; a ``[lo, hi]`` pair draws a strength uniformly per scene."""

    def __post_init__(self):
        _check_choice("DegradationSpec", "kind", self.kind, DEGRADATION_KINDS)
        s = self.strength
        if isinstance(s, list):
            s = tuple(s)
            object.__setattr__(self, "strength", s)
        vals = s if isinstance(s, tuple) else (s,)
        ok = len(vals) in (1, 2) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and 0.0 <= v <= 1.0 for v in vals)
        if not ok or (len(vals) == 2 and vals[0] > vals[1]):
            raise _param_error("DegradationSpec", "strength",
                               "a float in [0, 1] or a range [lo, hi] inside [0, 1]", self.strength)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DegradationSpec":
        if isinstance(d, str):
            d = {"kind": d}
        return cls(**_from_dict(cls, d, where="degradations[]"))


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitConfig(_Base):
    """Deterministic train/val/test assignment by group (a group never straddles splits)."""

    by: str = "mirror"
    """Grouping: ``mirror`` (a colour triple and its mirror), ``colorset`` (unordered colours),
    ``triple`` (ordered triple), ``layout`` (size, spacing, row/column, offset) or ``scene``."""
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self):
        _check_choice("SplitConfig", "by", self.by, SPLIT_BY)
        for name in ("train", "val", "test"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise _param_error("SplitConfig", name, "a float in the range [0, 1]", v)
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(
                f"SplitConfig fractions train={self.train}, val={self.val}, test={self.test} "
                f"sum to {total:g}; they must sum to 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SplitConfig":
        return cls(**_from_dict(cls, d, where="splits"))


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerateConfig(_Base):
    """Everything ``spatialbind generate`` needs, resolved (saved as the dataset's config.json)."""

    generator: str = "flat"
    """``flat`` (the paper's grid-aligned canvases) or ``scene3d`` (offscreen 3D scenes)."""
    seed: int = 0
    """Master seed; unit ``i`` is drawn from ``numpy.random.default_rng([seed, i])``."""
    n: int | None = None
    """Number of base stimuli; None = the full enumeration (flat: 480 for the paper's tasks)."""
    twins: tuple[str, ...] = TWIN_KINDS
    """Counterfactual twins per base stimulus: ``swap``, ``crisscross``, ``isolated``; ``blank``
    adds one dataset-wide white canvas."""
    degradations: tuple[DegradationSpec, ...] = ()
    """Degradations to draw from, one per degraded scene (applied identically to its twins)."""
    degrade_fraction: float = 1.0
    """Fraction of scenes that get a degradation when ``degradations`` is not empty."""
    splits: SplitConfig = field(default_factory=SplitConfig)
    flat: FlatConfig | None = None
    """Options of the flat generator (defaults when ``generator`` is flat and this is None)."""
    scene3d: dict[str, Any] | None = None
    """Options of the 3D generator, validated by ``scenegen.scene3d.Scene3DConfig.from_dict``."""
    whatsup_stitched: dict[str, Any] | None = None
    """Options of the stitched What'sUp task, validated by
    ``scenegen.importers.whatsup_stitched.StitchedConfig.from_dict``."""

    def __post_init__(self):
        c = "GenerateConfig"
        _check_choice(c, "generator", self.generator, GENERATORS)
        _check_int(c, "seed", self.seed, 0, 2**63 - 1)
        if self.n is not None:
            _check_int(c, "n", self.n, 1, 10**8)
        tw = tuple(self.twins) if isinstance(self.twins, (list, tuple)) else self.twins
        if not isinstance(tw, tuple):
            raise _param_error(c, "twins", "a list", self.twins)
        object.__setattr__(self, "twins", tw)
        _check_names(c, "twins", tw, TWIN_KINDS, what="twin kind")
        degs = self.degradations
        if not isinstance(degs, (list, tuple)):
            raise _param_error(c, "degradations", "a list", degs)
        degs = tuple(d if isinstance(d, DegradationSpec) else DegradationSpec.from_dict(d)
                     for d in degs)
        object.__setattr__(self, "degradations", degs)
        f = self.degrade_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise _param_error(c, "degrade_fraction", "a float in the range [0, 1]", f)
        if not isinstance(self.splits, SplitConfig):
            raise _param_error(c, "splits", "a SplitConfig", self.splits)
        if self.generator == "flat":
            if self.flat is None:
                object.__setattr__(self, "flat", FlatConfig())
            if not isinstance(self.flat, FlatConfig):
                raise _param_error(c, "flat", "a FlatConfig", self.flat)
            if self.scene3d is not None or self.whatsup_stitched is not None:
                raise ConfigError("GenerateConfig has a 'scene3d' or 'whatsup_stitched' section "
                                  "but generator is 'flat'; remove the section or set generator")
        elif self.generator == "whatsup_stitched":
            for other in ("flat", "scene3d"):
                if getattr(self, other) is not None:
                    raise ConfigError(f"GenerateConfig has a {other!r} section but generator is "
                                      f"'whatsup_stitched'; remove the section")
            if self.whatsup_stitched is None:
                object.__setattr__(self, "whatsup_stitched", {})
            if not isinstance(self.whatsup_stitched, dict):
                raise _param_error(c, "whatsup_stitched", "a mapping of options",
                                   self.whatsup_stitched)
        else:
            if self.whatsup_stitched is not None:
                raise ConfigError("GenerateConfig has a 'whatsup_stitched' section but generator "
                                  "is 'scene3d'; remove the section")
            if self.flat is not None:
                raise ConfigError("GenerateConfig has a 'flat' section but generator is "
                                  "'scene3d'; remove the section or set generator: flat")
            if self.scene3d is None:
                object.__setattr__(self, "scene3d", {})
            if not isinstance(self.scene3d, dict):
                raise _param_error(c, "scene3d", "a mapping of options", self.scene3d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerateConfig":
        """Build from a plain dict (a parsed YAML/JSON file); unknown keys are errors."""
        d = dict(_from_dict(cls, d, where="the generate config"))
        if d.get("flat") is not None:
            d["flat"] = FlatConfig.from_dict(d["flat"])
        if d.get("splits") is not None:
            d["splits"] = SplitConfig.from_dict(d["splits"])
        elif "splits" in d:
            d.pop("splits")
        if d.get("degradations") is not None:
            degs = d["degradations"]
            if not isinstance(degs, (list, tuple)):
                raise _param_error("GenerateConfig", "degradations", "a list", degs)
            d["degradations"] = tuple(DegradationSpec.from_dict(x) for x in degs)
        return cls(**d)


def load_config_file(path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict; errors name the file and the problem."""
    import json
    from pathlib import Path

    from common.io import boundary

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML or JSON file")
    with boundary(p, fix="save it as UTF-8 YAML or JSON", error=ConfigError):
        text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - json and yaml raise different types
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise ConfigError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}"
                          f": {first}; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of options at the top level, "
                          f"got {type(data).__name__}")
    return data
