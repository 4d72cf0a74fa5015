"""Degradations: strength 0 is identity, effects scale with strength, occluder relabels the mask."""
from __future__ import annotations

import numpy as np
import pytest

from scenegen.config import DegradationSpec, FlatConfig
from scenegen.degrade import (OCCLUDER_RGB, DegradedGenerator, apply, degrade, degrade_unit,
                              sample_params)
from scenegen.errors import ConfigError
from scenegen.flat import FlatGenerator


@pytest.fixture(scope="module")
def unit():
    return FlatGenerator(FlatConfig(), seed=0).unit(0)


@pytest.mark.parametrize("kind", ["blur", "noise", "contrast", "occluder"])
def test_strength_zero_is_identity_and_input_untouched(unit, kind):
    r = unit[0]
    before = r.image.copy(), r.mask.copy()
    d = degrade(r, kind, 0.0, np.random.default_rng(0))
    assert (d.image == r.image).all() and (d.mask == r.mask).all()
    assert d.stimulus.degradation["kind"] == kind and d.stimulus.degradation["strength"] == 0.0
    assert (r.image == before[0]).all() and (r.mask == before[1]).all()
    assert r.stimulus.degradation is None


def test_blur_spreads_edges_and_keeps_mask(unit):
    r = unit[0]
    d = degrade(r, "blur", 0.5, np.random.default_rng(0))
    assert d.stimulus.degradation["sigma"] == pytest.approx(0.5 * 0.02 * 336)
    grad = lambda im: np.abs(np.diff(im.astype(int), axis=1)).max()  # noqa: E731
    assert grad(d.image) < grad(r.image)
    assert (d.mask == r.mask).all()
    # the image mean is (nearly) preserved by a normalised blur
    assert abs(d.image.mean() - r.image.mean()) < 1.0


def test_noise_std_matches_strength(unit):
    r = unit[0]
    # on a mid-grey canvas nothing clips, so the measured std is the requested one
    grey = type(r)(stimulus=r.stimulus, image=np.full_like(r.image, 128), mask=r.mask)
    d = degrade(grey, "noise", 0.25, np.random.default_rng(1))
    assert np.std(d.image.astype(float) - 128) == pytest.approx(16.0, rel=0.03)
    d2 = degrade(grey, "noise", 0.25, np.random.default_rng(1))
    assert (d.image == d2.image).all()  # same rng, same field


def test_contrast_hand_computed(unit):
    r = unit[0]
    d = degrade(r, "contrast", 0.5, np.random.default_rng(0))
    mean = r.image.mean()
    expect = np.clip(np.rint(mean + 0.5 * (r.image.astype(float) - mean)), 0, 255)
    assert (d.image == expect).all()
    assert degrade(r, "contrast", 1.0, np.random.default_rng(0)).image.std() == 0


def test_occluder_relabels_and_remeasures(unit):
    r = unit[0]
    for seed in range(8):
        d = degrade(r, "occluder", 0.5, np.random.default_rng(seed))
        p = d.stimulus.degradation
        x0, y0, x1, y1 = p["box"]
        assert (d.image[y0:y1, x0:x1] == OCCLUDER_RGB).all()
        occ = d.stimulus.entities[-1]
        assert occ.kind == "occluder" and occ.role == "distractor" and occ.mask_id == 4
        assert occ.area == (x1 - x0) * (y1 - y0) == 56 * 28  # half of a 56x56 target
        covered = next(e for e in d.stimulus.entities if e.mask_id == p["covers"])
        orig = next(e for e in r.stimulus.entities if e.mask_id == p["covers"])
        assert covered.area == orig.area - occ.area
        ys, xs = np.nonzero(d.mask == covered.mask_id)
        assert covered.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert covered.centroid == pytest.approx((xs.mean() + 0.5, ys.mean() + 0.5))
        # untouched entities keep their records
        for e, o in zip(d.stimulus.entities, r.stimulus.entities):
            if e.mask_id != p["covers"]:
                assert e == o
    full = degrade(r, "occluder", 1.0, np.random.default_rng(0))
    hidden = next(e for e in full.stimulus.entities
                  if e.mask_id == full.stimulus.degradation["covers"])
    assert hidden.area == 0 and hidden.centroid is None


def test_unit_degradation_keeps_twins_comparable(unit):
    specs = (DegradationSpec(kind="noise", strength=0.3),)
    out = degrade_unit(unit, specs, 1.0, np.random.default_rng(5))
    assert len({repr(o.stimulus.degradation) for o in out}) == 1
    base, swap = out[0], out[1]
    assert swap.stimulus.counterfactual_kind == "swap"
    diff = (base.image != swap.image).any(-1)
    allowed = np.zeros_like(diff)
    for e in base.stimulus.entities:
        if e.ordinal != 1:
            x0, y0, x1, y1 = e.box
            allowed[y0:y1, x0:x1] = True
    assert diff.any() and not (diff & ~allowed).any()
    assert degrade_unit(unit, specs, 0.0, np.random.default_rng(5)) is unit


def test_degraded_generator_is_deterministic_and_does_not_change_scenes():
    inner = FlatGenerator(FlatConfig(), seed=3, n=10)
    g = DegradedGenerator(inner, (DegradationSpec(kind="blur", strength=(0.2, 0.6)),), seed=3)
    a, b = g.unit(4), g.unit(4)
    assert all((x.image == y.image).all() for x, y in zip(a, b))
    assert 0.2 <= a[0].stimulus.degradation["strength"] <= 0.6
    assert [x.stimulus.id for x in a] == [x.stimulus.id for x in inner.unit(4)]
    assert g.extras()[0].stimulus.degradation is None


def test_bad_degradation_inputs(unit):
    with pytest.raises(ConfigError, match="Did you mean 'noise'"):
        degrade(unit[0], "nois", 0.5, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"strength must be a float in \[0, 1\]"):
        degrade(unit[0], "blur", 2, np.random.default_rng(0))
    p = sample_params(unit[0], "occluder", 0.2, np.random.default_rng(0))
    assert apply(unit[0], p).stimulus.degradation == p
