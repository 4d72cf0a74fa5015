"""The ``scene3d`` generator: CLEVR-like offscreen 3D scenes with exact masks, depth and twins.

Each unit is drawn from ``numpy.random.default_rng([seed, index])`` alone (so any worker count
and any resume gives the same bytes): a ground plane and sky, 2 or 3 *targets* in a row
(``horizontal``: left/right), a column (``vertical``: above/below; ``stacked`` on each other or
``floating`` with gaps, a config choice recorded in the factors) or a file (``depth``: in
front/behind, offset sideways so the far ones stay visible), 0..k *distractors* on the ground
away from the targets, a background kind, a jittered light and a jittered camera.

Labels come from geometry in camera space (:mod:`scenegen.geometry`) with a margin; ambiguous
placements are resampled, never mislabelled, and after rendering every item is checked against
its own masks (visible pixels, centroid / depth order). Retries are bounded: the unit fails with
:class:`~scenegen.errors.PlacementError` saying how far it got.

Twins (``counterfactual_of`` = the base id, same ``scene_id``):

- ``swap`` (``-swap``): the outer targets exchange places (whole objects, size included;
  stacks are re-stacked). ``mask_id`` follows the object. Everything else is identical.
- ``crisscross`` (``-cc``): the paper's pair: colour, shape and material of the outer targets
  are exchanged, positions and sizes unchanged; ``mask_id`` stays with the position.
- ``isolated`` (``-iso{k}``): one target alone, moved to the point the camera looks at (the image
  centre, as the paper's centred single-entity images), same camera, light and background; other
  targets and distractors removed. ``isolates`` = its ``mask_id``.
- ``blank`` (``-blank``): the same scene without any object (per unit, because backgrounds differ
  between units).

Twins keep the base prompts' text; answers are recomputed from the twin's own geometry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import geometry as geo
from .config import SplitConfig
from .errors import ConfigError, PlacementError, suggest, unknown
from .record import Rendered, Stimulus, entity_from_mask
from .render import BACKENDS, render
from .scene3d_layout import Sampler
from .scene3d_prompts import PROMPT_KINDS, answer_prompts, choose_query

__all__ = ["Scene3DConfig", "Scene3DGenerator", "make_generator"]

TWIN_KINDS = ("swap", "crisscross", "isolated", "blank")
AXES = ("horizontal", "vertical", "depth")
VERTICAL_MODES = ("stacked", "floating")
BACKGROUNDS = ("plain", "gradient", "textured", "procedural")


def _bad(name: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"scene3d option {name!r} must be {expected}; got {got!r}")


@dataclass(frozen=True, kw_only=True)
class Scene3DConfig:
    """Options of the ``scene3d`` generator (all have defaults: ``from_dict({})`` works).

    Distances are world units (a ``large`` object is 1.15 units across); angles are degrees.
    """

    image_size: int = 448
    """Side of the square images, pixels (448 = 16x16 Qwen2-VL tokens of 28 px)."""
    n_targets: int = 3
    """Targets per scene: 2 or 3."""
    axes: tuple[str, ...] = AXES
    """Axes drawn from per unit: ``horizontal`` (left/right), ``vertical`` (above/below),
    ``depth`` (in front of / behind)."""
    vertical: str = "stacked"
    """Vertical layouts: ``stacked`` (each target rests on the one below; only stackable
    shapes are used) or ``floating`` (gaps of about ``float_gap`` between targets)."""
    float_gap: float = 0.6
    n_distractors: tuple[int, int] = (0, 2)
    """Range (inclusive) of distractors per scene; they sit behind the targets (beside them
    for depth layouts) and never share a target's colour."""
    shapes: tuple[str, ...] = ()
    """Vocabulary shapes to draw from; empty = all."""
    colors: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = BACKGROUNDS
    """Drawn per unit: ``plain``, ``gradient`` (sky), ``textured`` (checker floor),
    ``procedural`` (random colour-noise floor)."""
    spacing: float = 2.0
    """Distance between neighbouring target centres along the axis, world units."""
    spacing_jitter: float = 0.15
    """Relative jitter of ``spacing`` per unit."""
    margin: float = 0.5
    """Minimum camera-space separation of neighbouring targets along the axis; closer
    placements are ambiguous and resampled."""
    off_axis_ratio: float = 0.5
    """A pair is ambiguous when its displacement on another image axis exceeds this
    fraction of its displacement on the asked axis."""
    min_visible_px: int | None = None
    """Minimum visible mask pixels per target (None = 0.2% of the image)."""
    min_centroid_gap_px: float = 4.0
    """Mask centroids of neighbouring targets must differ by this many pixels, in order."""
    camera_distance: float = 10.0
    camera_elevation: float = 24.0
    fov: float = 40.0
    """Vertical field of view, degrees."""
    camera_jitter: float = 1.0
    """Scale of camera jitter: azimuth +-8 deg, elevation +-4 deg, distance +-8 %, look-at
    +-0.3 units, each times this value (0 = fixed camera)."""
    light_jitter: bool = True
    shadows: bool = False
    """Directional shadows (about 1.8x slower; off keeps twins' pixel differences local)."""
    snap_token_px: int | None = None
    """Snap target centres onto the centres of a token grid of this many pixels (e.g. 28)."""
    prompts: tuple[str, ...] = PROMPT_KINDS
    max_attempts: int = 50
    """Bounded retries per unit before :class:`PlacementError`."""
    gl_backend: str = "auto"
    """``auto`` (EGL, then OSMesa), ``egl`` or ``osmesa``; env ``SPATIALBIND_GL`` overrides."""
    vocabulary: str | None = None
    """Path of a vocabulary JSON file; None = the packaged ``scenegen/data/vocabulary.json``."""

    def __post_init__(self):
        for name in ("axes", "shapes", "colors", "materials", "sizes", "backgrounds",
                     "prompts", "n_distractors"):
            v = getattr(self, name)
            if isinstance(v, str) or not isinstance(v, (list, tuple)):
                raise _bad(name, "a list", v)
            object.__setattr__(self, name, tuple(v))
        self._ints()
        self._floats()
        for name, choices in (("axes", AXES), ("backgrounds", BACKGROUNDS),
                              ("prompts", PROMPT_KINDS)):
            vals = getattr(self, name)
            if not vals:
                raise _bad(name, f"a non-empty list of {', '.join(choices)}", list(vals))
            for v in vals:
                if v not in choices:
                    raise unknown(name.rstrip("s") if name != "axes" else "axis", v, choices,
                                  f"scene3d.{name}")
        if self.vertical not in VERTICAL_MODES:
            raise unknown("vertical mode", self.vertical, VERTICAL_MODES, "scene3d.vertical")
        if self.gl_backend not in BACKENDS:
            raise unknown("GL backend", self.gl_backend, BACKENDS, "scene3d.gl_backend")
        # vocabulary names (raises unknown(...) with a suggestion)
        sampler = Sampler(self)
        need = self.n_targets + (1 if self.n_distractors[1] > 0 else 0)
        if len(sampler.colors) < need:
            raise ConfigError(
                f"scene3d.colors lists {len(sampler.colors)} colours but {self.n_targets} "
                f"targets{' plus distractors' if need > self.n_targets else ''} need {need} "
                "distinct ones; add colours or lower n_targets / n_distractors")
        if "vertical" in self.axes and self.vertical == "stacked" and not sampler.stackable:
            raise ConfigError(
                f"scene3d.shapes {list(sampler.shapes)} has no stackable shape for stacked "
                "vertical layouts; add cube or cylinder, set vertical: floating, or drop "
                "'vertical' from axes")

    def _ints(self):
        checks = [("image_size", 32, 4096), ("n_targets", 2, 3), ("max_attempts", 1, 10_000)]
        for name, lo, hi in checks:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise _bad(name, f"an integer in [{lo}, {hi}]", v)
        nd = self.n_distractors
        if (len(nd) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in nd)
                or not 0 <= nd[0] <= nd[1] <= 12):
            raise _bad("n_distractors", "[min, max] integers with 0 <= min <= max <= 12",
                       list(nd))
        for name in ("snap_token_px", "min_visible_px"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise _bad(name, "a positive integer or null", v)
        if self.snap_token_px and self.snap_token_px * 2 > self.image_size:
            raise _bad("snap_token_px", f"at most half of image_size ({self.image_size})",
                       self.snap_token_px)

    def _floats(self):
        checks = [("float_gap", 0.05, 5.0), ("spacing", 0.3, 10.0), ("spacing_jitter", 0.0, 0.9),
                  ("margin", 0.0, 10.0), ("off_axis_ratio", 0.01, 10.0),
                  ("min_centroid_gap_px", 0.0, 1000.0), ("camera_distance", 3.0, 100.0),
                  ("camera_elevation", 0.0, 80.0), ("fov", 10.0, 120.0),
                  ("camera_jitter", 0.0, 3.0)]
        for name, lo, hi in checks:
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                    or not lo <= v <= hi):
                raise _bad(name, f"a number in [{lo}, {hi}]", v)
            object.__setattr__(self, name, float(v))
        for name in ("light_jitter", "shadows"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "true or false", getattr(self, name))

    @property
    def yfov(self) -> float:
        """Vertical field of view in radians."""
        return math.radians(self.fov)

    def min_visible(self) -> int:
        """Minimum visible pixels per target."""
        if self.min_visible_px is not None:
            return self.min_visible_px
        return max(20, int(0.002 * self.image_size ** 2))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Scene3DConfig":
        """Build from a plain dict (YAML / JSON); unknown keys are errors with a suggestion."""
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise ConfigError(f"unknown scene3d option {k!r}.{suggest(k, names)} "
                                  f"Known: {', '.join(names)}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists for tuples); ``from_dict(to_dict())`` round-trips."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


def make_generator(config_dict: dict[str, Any], seed: int, **kwargs) -> "Scene3DGenerator":
    """Picklable factory for worker processes: ``Scene3DGenerator(Scene3DConfig.from_dict(d), seed)``."""
    return Scene3DGenerator(Scene3DConfig.from_dict(dict(config_dict)), seed=seed, **kwargs)


def _split_of(key: str, seed: int, splits: SplitConfig) -> str:
    """Deterministic split of a group key (a hash, so units stay independent)."""
    h = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "train" if u < splits.train else "val" if u < splits.train + splits.val else "test"


class Scene3DGenerator:
    """Generator protocol of :mod:`scenegen.dataset` for 3D scenes.

    Parameters
    ----------
    config
        The 3D options (:class:`Scene3DConfig`).
    seed
        Master seed; unit ``i`` depends only on ``(config, seed, i)``.
    n
        Number of base scenes (default 100).
    twins
        Twin kinds per unit: ``swap``, ``crisscross``, ``isolated``, ``blank``.
    splits
        Train/val/test fractions and grouping (``scene``; ``mirror``, ``colorset``, ``triple``
        group by the targets' colours; ``layout`` by axis, vertical mode and background).

    Examples
    --------
    >>> gen = Scene3DGenerator(Scene3DConfig(image_size=128), seed=0, n=2)  # doctest: +SKIP
    >>> [r.stimulus.id for r in gen.unit(0)][:2]  # doctest: +SKIP
    ['scene3d-000000', 'scene3d-000000-swap']
    """

    def __init__(self, config: Scene3DConfig | None = None, *, seed: int = 0,
                 n: int | None = None, twins=TWIN_KINDS, splits: SplitConfig | None = None):
        self.config = config or Scene3DConfig()
        if not isinstance(self.config, Scene3DConfig):
            raise ConfigError("Scene3DGenerator needs a Scene3DConfig; build one with "
                              "Scene3DConfig.from_dict(...)")
        self.seed = int(seed)
        self.n = 100 if n is None else int(n)
        if self.n < 1:
            raise ConfigError(f"scene3d: n must be >= 1; got {self.n}")
        self.twins = tuple(twins)
        for t in self.twins:
            if t not in TWIN_KINDS:
                raise unknown("twin kind", t, TWIN_KINDS, "scene3d twins")
        self.splits = splits or SplitConfig(by="scene")
        self.sampler = Sampler(self.config)

    def __len__(self) -> int:
        return self.n

    def extras(self) -> list[Rendered]:
        """None: blank scenes are per-unit twins (each unit has its own background)."""
        return []

    # ------------------------------------------------------------------ one unit
    def unit(self, index: int) -> list[Rendered]:
        """Base scene ``index`` and its twins, from ``default_rng([seed, index])`` alone.

        Raises
        ------
        scenegen.errors.PlacementError
            When no valid scene was found within ``config.max_attempts`` attempts.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"unit {index} out of range [0, {len(self)})")
        rng = np.random.default_rng([self.seed, index])
        cfg = self.config
        reasons: dict[str, int] = {}
        best = 0
        for attempt in range(1, cfg.max_attempts + 1):
            scene, placed, why = self.sampler.sample(rng)
            best = max(best, placed)
            if scene is None:
                reasons[why] = reasons.get(why, 0) + 1
                continue
            items, why = self._render_unit(index, scene, rng, attempt)
            if items is not None:
                return items
            reasons[why] = reasons.get(why, 0) + 1
        tally = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        raise PlacementError(
            f"scene3d unit {index}: placed {best}/{cfg.n_targets} targets after "
            f"{cfg.max_attempts} attempts ({tally}); lower n_distractors or object size "
            f"(sizes), raise spacing or lower margin, or raise max_attempts")

    def _render_unit(self, index: int, scene, rng, attempt: int):
        cfg = self.config
        sid = f"scene3d-{index:06d}"
        query = choose_query(scene, rng, cfg.prompts)
        split = _split_of(self._group_key(scene, index), self.seed, self.splits)
        common = dict(sid=sid, index=index, split=split, query=query, attempt=attempt)
        base = self._item(scene, scene.targets, scene.distractors, **common)
        if isinstance(base, str):
            return None, base
        items = [base]
        keep = dict(prompts=base.stimulus.prompts, relation=base.stimulus.relation)
        jobs = []
        if "swap" in self.twins:
            jobs.append((f"{sid}-swap", "swap", self.sampler.swapped(scene),
                         scene.distractors, {}))
        if "crisscross" in self.twins:
            jobs.append((f"{sid}-cc", "crisscross", self.sampler.crisscrossed(scene),
                         scene.distractors, {}))
        if "isolated" in self.twins:
            for k, t in enumerate(sorted(scene.targets, key=lambda p: p.slot)):
                jobs.append((f"{sid}-iso{k}", "isolated", [self.sampler.centred(scene, t)], [],
                             dict(isolates=t.mask_id, **keep)))
        if "blank" in self.twins:
            jobs.append((f"{sid}-blank", "blank", [], [], keep))
        for tid, kind, targets, distractors, extra in jobs:
            r = self._item(scene, targets, distractors, twin=kind, twin_id=tid, **extra,
                           **common)
            if isinstance(r, str):
                return None, f"{kind} twin: {r}"
            items.append(r)
        return items, ""

    def _group_key(self, scene, index: int) -> str:
        cols = tuple(t.color for t in sorted(scene.targets, key=lambda t: t.slot))
        by = self.splits.by
        if by == "mirror":
            return "|".join(min(cols, cols[::-1]))
        if by == "colorset":
            return "|".join(sorted(cols))
        if by == "triple":
            return "|".join(cols)
        if by == "layout":
            return f"{scene.axis}|{scene.vertical_mode}|{scene.background.kind}"
        return f"{index:09d}"

    def _item(self, scene, targets, distractors, *, sid, index, split, query, attempt,
              twin=None, twin_id=None, isolates=None, prompts=None, relation=None):
        """Render one stimulus and check it against its masks; a Rendered or a reason string."""
        cfg = self.config
        objs = list(targets) + list(distractors)
        out = render(self.sampler.scene_spec(scene, objs), heights=self.sampler.heights,
                     backend=cfg.gl_backend)
        boxes = {t.mask_id: t.cam_box(scene.camera_pose) for t in targets}
        relational = twin in (None, "swap", "crisscross")
        if relational:
            ords = geo.ordinals([boxes[t.mask_id] for t in targets], scene.axis)
            ordinal = {t.mask_id: o for t, o in zip(targets, ords)}
        else:  # isolated: the slot it had in the base scene
            ordinal = {t.mask_id: t.base_ordinal for t in targets}
        entities = tuple(entity_from_mask(
            out.mask, o.mask_id, role=o.role,
            ordinal=ordinal[o.mask_id] if o.role == "target" else None,
            kind=o.shape, color=o.color, rgb=tuple(int(v) for v in o.rgb),
            material=o.material, size=float(o.size),
            position_3d=tuple(round(float(v), 6) for v in o.position), name=o.name)
            for o in sorted(objs, key=lambda o: o.mask_id))
        reason = self._check(entities, out, scene.axis, relational=relational)
        if reason:
            return reason
        if relational:
            prompts, relation = answer_prompts(query, targets, boxes, scene.axis)
        stim_id = twin_id or sid
        stim = Stimulus(
            id=stim_id, file_name=f"images/{stim_id}.png", mask_file_name=f"masks/{stim_id}.png",
            depth_file_name=f"depth/{stim_id}.npy", width=cfg.image_size,
            height=cfg.image_size, generator="scene3d", task="scene3d", relation=relation,
            axis=scene.axis, entities=entities, prompts=prompts,
            counterfactual_of=None if twin is None else sid, counterfactual_kind=twin,
            isolates=isolates, scene_id=sid, index=index, split=split,
            factors=scene.factors(attempt=attempt, token_px=cfg.snap_token_px))
        return Rendered(stimulus=stim, image=out.rgb, mask=out.mask, depth=out.depth)

    def _check(self, entities, out, axis: str, *, relational: bool) -> str:
        """Reason to reject a rendered item, or '' if its masks agree with its labels."""
        cfg = self.config
        min_px = cfg.min_visible()
        tg = [e for e in entities if e.role == "target"]
        for e in tg:
            if e.area < min_px:
                return "target hidden"
        for e in entities:
            if e.role == "distractor" and e.area < max(1, min_px // 4):
                return "distractor hidden"
        if not relational or len(tg) < 2:
            return ""
        tg = sorted(tg, key=lambda e: e.ordinal)
        for a, b in zip(tg, tg[1:]):
            if axis == "horizontal" and b.centroid[0] - a.centroid[0] < cfg.min_centroid_gap_px:
                return "mask centroids disagree"
            if axis == "vertical" and b.centroid[1] - a.centroid[1] < cfg.min_centroid_gap_px:
                return "mask centroids disagree"
            if axis == "depth":
                da = float(np.median(out.depth[out.mask == a.mask_id]))
                db = float(np.median(out.depth[out.mask == b.mask_id]))
                if db - da < cfg.margin / 2:
                    return "mask depths disagree"
        return ""

