"""validate lists every problem of a store at once."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from actstore import SchemaError, problems, validate
from actstore.testing import assert_valid, make_store


def test_valid_store_has_no_problems(tmp_path):
    make_store(tmp_path / "s", n_samples=8, stop_after=1)  # half-written stores are valid too
    assert problems(tmp_path / "s") == []
    validate(tmp_path / "s")


def test_validate_lists_several_problems_at_once(tmp_path):
    make_store(tmp_path / "s", n_samples=8)
    root = zarr.open_group(tmp_path / "s", mode="a")
    g = root["tiny"]
    g.attrs["schema_version"] = 0                       # 1: wrong schema version
    g["projector"]["role"][0, :3] = np.array([40, 41, -2], "int8")  # 2: role codes out of range
    g["lm.resid"]["acts"][2, 1, 0, 0] = np.nan          # 3: NaN in a done sample
    del g["lm.resid"]["entity"]                         # 4: missing array
    prov = dict(g.attrs["provenance"]); prov.pop("data_hash"); g.attrs["provenance"] = prov  # 5
    found = problems(tmp_path / "s")
    joined = "\n".join(found)
    assert "schema_version is 0" in joined
    assert "tiny/projector/role: 3 codes outside" in joined
    assert "tiny/lm.resid/acts: 1 done samples hold NaN (e.g. sample 2)" in joined
    assert "tiny/lm.resid: missing array 'entity'" in joined
    assert "provenance lacks ['data_hash']" in joined
    with pytest.raises(SchemaError) as e:
        validate(tmp_path / "s")
    msg = str(e.value)
    assert "\n" not in msg and f"{len(found)} problems" in msg and "1) " in msg and "5) " in msg
    with pytest.raises(AssertionError, match="problems"):
        assert_valid(tmp_path / "s")
    assert problems(tmp_path / "s", check_values=False) == [p for p in found if "NaN" not in p]


def test_shape_and_attr_problems(tmp_path):
    make_store(tmp_path / "s", n_samples=8)
    g = zarr.open_group(tmp_path / "s", mode="a")["tiny"]
    g["projector"].create_array("n_tokens", shape=(5,), dtype="int32", overwrite=True,
                                dimension_names=("sample",))
    del g.attrs["role_names"]
    found = problems(tmp_path / "s")
    assert any("projector/n_tokens: shape (5,), expected (8,)" in p for p in found)
    assert any("missing attrs ['role_names']" in p for p in found)
    assert problems(tmp_path / "nothing")[0].startswith("cannot open")
