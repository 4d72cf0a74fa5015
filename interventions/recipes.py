"""The two named recipes every experiment runs under: ``paper`` (the authors' exact protocol,
frozen here) and ``robust`` (the toolkit's own improvements). RECIPES.md beside this file says
what differs and why; this module is the one place the ``paper`` definitions live.

Every experiment command takes ``--recipe paper|robust`` and records the resolved recipe in its
``config.json`` and ``summary.json``. When ``--recipe`` is not given the default is ``paper`` for
the paper's presets (the flat generator's centred layout at a paper geometry: what
``spatialbind generate --preset squares-qwen2-vl`` etc. write) and ``robust`` for anything else.

Fixes that apply to every recipe (not recipe switches): no probe split puts one image in train
and test; isolated twins never enter probe data with their base slot label; items an experiment
cannot run are counted and listed in its summary.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import InterventionError

RECIPES = ("paper", "robust")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What one recipe fixes for the experiments (E2-E7). Frozen: the ``paper`` values are the
    authors' public code (GitHub ``Nix07/spatial-variable-binding`` at 4b1f70d8)."""

    name: str
    regions: str
    """How an entity's image tokens are found: ``layout`` (flat stimuli: the entity's
    ``size x size`` layout cells, whatever the drawn shape covers) or ``coverage`` (tokens at
    least half covered by the entity's mask; also the fallback of ``layout`` for stimuli without
    layout cells, e.g. 3D scenes)."""
    strip: str
    """E4 ``strip`` region: ``tiled`` (the grid tiled into three fixed strips along the axis,
    widths from :func:`interventions.regions.strip_widths`; clean A+B <- source B+A in index
    order) or ``own`` (the rows/columns the object's own tokens span, paired by translation
    between object anchors)."""
    e5_metric: str
    """E5 score: ``vocab_top1`` (the top-1 token over the whole vocabulary must be the answer, so
    below-chance collapses show) or ``options`` (argmax over the colours in the image)."""
    e6_keep: str
    """E6 pairs: ``ablated_correct`` (keep only pairs the model still answers right under the
    ablation) or ``all``."""
    description: str


PAPER = Recipe(
    name="paper", regions="layout", strip="tiled", e5_metric="vocab_top1",
    e6_keep="ablated_correct",
    description="the authors' exact protocol (Nix07/spatial-variable-binding): layout-cell "
                "regions, fixed tiled strips paired in index order, whole-vocabulary top-1 "
                "(E5), E6 on pairs still right under ablation")
ROBUST = Recipe(
    name="robust", regions="coverage", strip="own", e5_metric="options", e6_keep="all",
    description="spatialbind's own protocol: mask-coverage regions, the object's own strip, "
                "forced choice over the options, every pair kept, broken items counted")

_BY_NAME = {"paper": PAPER, "robust": ROBUST}


def get(name: str) -> Recipe:
    """The recipe called ``name``."""
    if name not in _BY_NAME:
        raise InterventionError(f"unknown recipe {name!r}; use one of {', '.join(RECIPES)} "
                                "(see interventions/RECIPES.md)")
    return _BY_NAME[name]


def is_paper_preset(ds) -> bool:
    """True when ``ds`` was generated like the paper's presets: the flat generator with the
    centred layout at a paper geometry (Qwen2-VL 12x12 of 28 px, objects 2, spacing 2; Gemma-3
    16x16 of 56 px, 3, 3)."""
    from common.paper import is_paper_config
    from scenegen.presets import GEOMETRY

    return is_paper_config(getattr(ds, "config", None), GEOMETRY)


def resolve(name: str | None, ds=None) -> str:
    """The recipe to run: ``name`` when given, else ``paper`` for the paper's presets and
    ``robust`` for anything else."""
    if name is not None:
        return get(name).name
    return "paper" if ds is not None and is_paper_preset(ds) else "robust"


def describe(name: str) -> dict:
    """The recipe as a plain dict (what ``config.json`` / ``summary.json`` record)."""
    return asdict(get(name))
