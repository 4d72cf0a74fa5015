"""Token roles from masks on a token grid (no model): hand-computed oracles."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.helpers_vlms import squares
from vlms.errors import InputError
from vlms.roles import IMAGE_ROLES, ROLES, TEXT_ROLES, cell_coverage, image_roles


def test_role_vocabulary_matches_actstore():
    from actstore.schema import IMAGE_ROLES as A_IMG, ROLE_NAMES, TEXT_ROLES as A_TXT

    assert IMAGE_ROLES == A_IMG and TEXT_ROLES == A_TXT and set(ROLES) == set(ROLE_NAMES)


def test_cell_coverage_by_hand():
    m = np.zeros((4, 6), np.uint8)
    m[0:2, 0:3] = 1          # exactly cell (0, 0) of a 2x2 grid (cells 2x3 px)
    m[2, 3] = 2              # one pixel of cell (1, 1)
    cov = cell_coverage(m, (2, 2))
    np.testing.assert_allclose(cov[0], [0, 1, 0])
    np.testing.assert_allclose(cov[3], [5 / 6, 0, 1 / 6])
    np.testing.assert_allclose(cov.sum(1), 1)


@pytest.mark.parametrize("axis", ["horizontal", "vertical"])
def test_roles_on_grid_aligned_squares(axis):
    r = squares(0, axis=axis)
    ir = image_roles(r.stimulus, r.mask, (16, 16))
    role = ir.role.reshape(16, 16)
    assert (role == "object").sum() == 12 and (role == "distractor").sum() == 1
    # the distractor cell (1, 1); objects 2x2 at slots 2, 7, 12 on rows/cols 7-8
    assert role[1, 1] == "distractor"
    slots = ir.slot.reshape(16, 16)
    for k, s in enumerate((2, 7, 12)):
        blk = (slice(7, 9), slice(s, s + 2)) if axis == "horizontal" else (slice(s, s + 2), slice(7, 9))
        assert (role[blk] == "object").all() and (slots[blk] == k).all()
        band = role[:, s:s + 2] if axis == "horizontal" else role[s:s + 2, :]
        bslot = slots[:, s:s + 2] if axis == "horizontal" else slots[s:s + 2, :]
        assert set(band.ravel()) == {"object", "strip"} and (bslot == k).all()
    other = [c for c in range(16) if c not in (2, 3, 7, 8, 12, 13)]
    rest = role[:, other] if axis == "horizontal" else role[other, :]
    assert set(rest.ravel()) <= {"background", "distractor"}
    assert (ir.entity[ir.role == "background"] == 0).all()


def test_object_fraction_threshold():
    r = squares(0)
    # shift the mask by half a cell: every object cell is covered 50% or 100%
    m = np.roll(r.mask, 14, axis=1)
    half = image_roles(r.stimulus, m, (16, 16), object_fraction=0.5)
    strict = image_roles(r.stimulus, m, (16, 16), object_fraction=0.75)
    assert (half.role == "object").sum() == 18 and (strict.role == "object").sum() == 6
    with pytest.raises(InputError, match="object_fraction"):
        image_roles(r.stimulus, m, (16, 16), object_fraction=0)


def test_depth_axis_has_no_strip_and_unknown_mask_id_is_an_error():
    r = squares(0)
    st = dataclasses.replace(r.stimulus, axis="depth")
    ir = image_roles(st, r.mask, (16, 16))
    assert "strip" not in set(ir.role)
    bad = r.mask.copy()
    bad[0:28, 0:28] = 9
    with pytest.raises(InputError, match="mask id 9"):
        image_roles(r.stimulus, bad, (16, 16))
