"""Image degradations with a strength knob: blur, noise, contrast loss, occluder.

Used by every generator (flat and scene3d) through :func:`degrade`, or, for a whole unit (a base
stimulus and its twins), through :func:`sample_params` once on the base and :func:`apply` on every
item, so twins stay pixel-comparable (the same blur, the same noise field, the same occluder).
The applied parameters are recorded in ``Stimulus.degradation``.

Strength is in [0, 1] (0 = no change):

- ``blur``: Gaussian blur with sigma = ``strength * 0.02 * image side`` pixels (6.7 px at 336 px).
  The mask is unchanged: it keeps the objects' exact geometry.
- ``noise``: additive Gaussian noise with std = ``strength * 64`` grey levels, clipped to
  [0, 255]; the noise field is drawn from a recorded seed. Mask unchanged.
- ``contrast``: every pixel moves towards the image's mean grey level,
  ``out = mean + (1 - strength) * (in - mean)`` (strength 1 = a uniform grey). Mask unchanged.
- ``occluder``: a grey rectangle (RGB 90, 90, 90) covers a band of ``strength`` of one target's
  box (the side the band grows from is random). The occluder is a visible object of its own: its
  pixels get a new mask id (one more than the largest), it is listed as an entity with
  ``role="distractor"``, ``kind="occluder"``; every entity's box, centroid and area are
  recomputed from the new mask (a fully hidden target keeps its record with area 0, box
  ``[0, 0, 0, 0]`` and centroid None).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageFilter

from .config import DEGRADATION_KINDS
from .errors import ConfigError, unknown
from .record import Entity, Rendered, entity_from_mask

OCCLUDER_RGB = (90, 90, 90)
BLUR_SIGMA_PER_SIDE = 0.02
NOISE_STD = 64.0


def _check(kind: str, strength: float) -> None:
    if kind not in DEGRADATION_KINDS:
        raise unknown("degradation kind", kind, DEGRADATION_KINDS)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
            0.0 <= float(strength) <= 1.0):
        raise ConfigError(f"degradation strength must be a float in [0, 1]; got {strength!r} "
                          f"for {kind!r}")


def sample_params(rendered: Rendered, kind: str, strength: float, rng) -> dict:
    """Draw the random parameters of one degradation for ``rendered``.

    Parameters
    ----------
    rendered
        The stimulus the parameters are chosen on (the base of a unit).
    kind
        ``blur``, ``noise``, ``contrast`` or ``occluder``.
    strength
        In [0, 1].
    rng
        ``numpy.random.Generator``; the only source of randomness.

    Returns
    -------
    dict
        JSON-able; ``{"kind", "strength", ...}`` as recorded in ``Stimulus.degradation``.
    """
    _check(kind, strength)
    strength = float(strength)
    h, w = rendered.mask.shape
    p: dict = {"kind": kind, "strength": strength}
    if kind == "blur":
        p["sigma"] = round(strength * BLUR_SIGMA_PER_SIDE * max(h, w), 4)
    elif kind == "noise":
        p["std"] = strength * NOISE_STD
        p["noise_seed"] = int(rng.integers(2**31))
    elif kind == "occluder":
        targets = [e for e in rendered.stimulus.entities if e.role == "target" and e.area > 0]
        if not targets:
            p["box"] = [0, 0, 0, 0]
            p["covers"] = None
            return p
        e = targets[int(rng.integers(len(targets)))]
        x0, y0, x1, y1 = e.box
        side = ("left", "right", "top", "bottom")[int(rng.integers(4))]
        if side in ("left", "right"):
            k = int(round(strength * (x1 - x0)))
            box = [x0, y0, x0 + k, y1] if side == "left" else [x1 - k, y0, x1, y1]
        else:
            k = int(round(strength * (y1 - y0)))
            box = [x0, y0, x1, y0 + k] if side == "top" else [x0, y1 - k, x1, y1]
        p["box"] = box
        p["side"] = side
        p["covers"] = e.mask_id
    return p


def apply(rendered: Rendered, params: dict) -> Rendered:
    """Apply degradation ``params`` (from :func:`sample_params`) to ``rendered``.

    Deterministic: the same params give the same pixels, so a unit's twins get the same
    degradation.
    """
    kind, strength = params["kind"], params["strength"]
    _check(kind, strength)
    img = np.asarray(rendered.image, dtype=np.uint8)
    mask = rendered.mask
    entities = rendered.stimulus.entities
    if kind == "blur":
        if params["sigma"] > 0:
            img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(params["sigma"])))
    elif kind == "noise":
        noise = np.random.default_rng(params["noise_seed"]).standard_normal(img.shape)
        img = np.clip(np.rint(img.astype(np.float64) + params["std"] * noise), 0, 255).astype(
            np.uint8)
    elif kind == "contrast":
        mean = float(img.mean())
        img = np.clip(np.rint(mean + (1.0 - strength) * (img.astype(np.float64) - mean)), 0,
                      255).astype(np.uint8)
    elif kind == "occluder":
        x0, y0, x1, y1 = params["box"]
        if x1 > x0 and y1 > y0:
            img = img.copy()
            img[y0:y1, x0:x1] = OCCLUDER_RGB
            occ_id = int(max([e.mask_id for e in entities] + [int(mask.max())])) + 1
            dtype = np.uint8 if occ_id < 256 else np.uint16
            mask = mask.astype(dtype, copy=True)
            mask[y0:y1, x0:x1] = occ_id
            entities = tuple(_remeasure(e, mask) for e in entities) + (
                entity_from_mask(mask, occ_id, role="distractor", ordinal=None, kind="occluder",
                                 color="occluder-grey", rgb=OCCLUDER_RGB, name="grey patch"),)
    stim = dataclasses.replace(rendered.stimulus, entities=entities, degradation=dict(params))
    return dataclasses.replace(rendered, stimulus=stim, image=img, mask=mask)


def _remeasure(e: Entity, mask: np.ndarray) -> Entity:
    m = entity_from_mask(mask, e.mask_id, role=e.role, ordinal=e.ordinal, kind=e.kind,
                         color=e.color, rgb=e.rgb)
    return dataclasses.replace(e, box=m.box, centroid=m.centroid, area=m.area)


def degrade(rendered: Rendered, kind: str, strength: float, rng) -> Rendered:
    """Degrade one stimulus; the applied parameters land in ``Stimulus.degradation``.

    Parameters
    ----------
    rendered
        Image, mask and record.
    kind
        ``blur``, ``noise``, ``contrast`` or ``occluder`` (see the module docstring).
    strength
        In [0, 1]; 0 leaves the pixels unchanged.
    rng
        ``numpy.random.Generator`` for the random parameters (noise field, occluder place).

    Returns
    -------
    Rendered
        A new item; ``rendered`` is not modified.

    Examples
    --------
    >>> import numpy as np
    >>> from scenegen.flat import FlatGenerator
    >>> from scenegen.config import FlatConfig
    >>> r = FlatGenerator(FlatConfig(), twins=()).unit(0)[0]
    >>> d = degrade(r, "contrast", 1.0, np.random.default_rng(0))
    >>> d.stimulus.degradation["kind"], int(d.image.std())
    ('contrast', 0)
    """
    return apply(rendered, sample_params(rendered, kind, strength, rng))


def degrade_unit(items: list[Rendered], specs, fraction: float, rng) -> list[Rendered]:
    """Maybe degrade a unit: with probability ``fraction`` pick one spec, apply it to every item.

    ``specs`` are :class:`~scenegen.config.DegradationSpec`; a ``(lo, hi)`` strength is drawn
    uniformly. Parameters are sampled on ``items[0]`` (the base) and reused for the twins.
    """
    if not specs or not items or rng.random() >= fraction:
        return items
    spec = specs[int(rng.integers(len(specs)))]
    s = spec.strength
    strength = float(rng.uniform(s[0], s[1])) if isinstance(s, tuple) else float(s)
    params = sample_params(items[0], spec.kind, round(strength, 6), rng)
    return [apply(r, params) for r in items]


class DegradedGenerator:
    """Wrap any generator so each unit is degraded per :func:`degrade_unit`.

    Degradation randomness comes from ``default_rng([seed, index, 0xDE6])``, independent of the
    inner generator's draws, so adding degradations never changes which scenes are generated.
    Extras (the blank canvas) are left clean.
    """

    def __init__(self, inner, specs, *, fraction: float = 1.0, seed: int = 0):
        self.inner, self.specs, self.fraction, self.seed = inner, tuple(specs), fraction, seed

    def __len__(self) -> int:
        return len(self.inner)

    def unit(self, index: int) -> list[Rendered]:
        rng = np.random.default_rng([self.seed, index, 0xDE6])
        return degrade_unit(self.inner.unit(index), self.specs, self.fraction, rng)

    def extras(self) -> list[Rendered]:
        return self.inner.extras()
