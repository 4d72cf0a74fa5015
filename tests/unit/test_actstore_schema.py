"""The store vocabulary: site names, role codes, SiteSpec validation."""
from __future__ import annotations

import pytest

from actstore import ROLE_CODES, ROLE_NAMES, SiteSpec, StoreError, parse_site, role_code, site_name
from actstore.schema import decode_strings, encode_strings, model_key


def test_parse_site_full_names_and_pairs_agree():
    assert parse_site("lm.resid.3") == ("lm.resid", 3)
    assert parse_site("lm.resid", 3) == ("lm.resid", 3)
    assert parse_site("lm.resid.3", 3) == ("lm.resid", 3)
    assert parse_site("vision.blocks.12") == ("vision.blocks", 12)
    assert parse_site("lm.resid") == ("lm.resid", None)
    assert parse_site("projector") == ("projector", 0)
    assert parse_site("projector", 0) == ("projector", 0)
    assert parse_site("lm.attn_out.2") == ("lm.attn_out", 2)  # user-added families are layered
    assert site_name("lm.resid", 3) == "lm.resid.3" and site_name("projector", 0) == "projector"


@pytest.mark.parametrize("bad", ["", "lm..resid", "3", "lm.resid.3x-", "lm resid"])
def test_parse_site_rejects_malformed(bad):
    with pytest.raises(StoreError, match="site"):
        parse_site(bad)


def test_parse_site_conflicts():
    with pytest.raises(StoreError, match="layer 3 but layer=4"):
        parse_site("lm.resid.3", 4)
    with pytest.raises(StoreError, match="has no layers"):
        parse_site("projector", 2)


def test_roles_are_small_codes_with_pad_zero():
    assert ROLE_NAMES[0] == "pad" and ROLE_CODES["object"] == 1
    assert [role_code(n) for n in ROLE_NAMES] == list(range(len(ROLE_NAMES)))
    assert role_code(3) == 3
    with pytest.raises(StoreError, match="Did you mean 'object'"):
        role_code("objct")


def test_sitespec_validates_on_construction():
    s = SiteSpec(name="lm.resid", layers=[0, 2], n_tokens=5, hidden=4)
    assert s.layers == (0, 2) and s.dtype == "float16"
    assert SiteSpec.from_dict(s.to_dict()) == s
    with pytest.raises(StoreError, match="'name' parameter"):
        SiteSpec(name="lm.resid.3", n_tokens=5, hidden=4)
    with pytest.raises(StoreError, match="'hidden' parameter"):
        SiteSpec(name="lm.resid", n_tokens=5, hidden=0)
    with pytest.raises(StoreError, match="'layers' parameter"):
        SiteSpec(name="lm.resid", n_tokens=5, hidden=4, layers=(1, 1))
    with pytest.raises(StoreError, match="has no layers"):
        SiteSpec(name="projector", n_tokens=5, hidden=4, layers=(0, 1))
    with pytest.raises(StoreError, match="'dtype' parameter"):
        SiteSpec(name="projector", n_tokens=5, hidden=4, dtype="bfloat16")
    with pytest.raises(TypeError):
        SiteSpec("projector", 5, 4)  # keyword-only
    with pytest.raises(AttributeError):
        s.hidden = 3  # frozen


def test_string_codes_round_trip_and_model_keys():
    codes, cats = encode_strings(["b", None, "a", "b", float("nan")])
    assert list(decode_strings(codes, cats)) == ["b", "", "a", "b", ""]
    assert model_key("Qwen/Qwen2-VL-7B-Instruct") == "Qwen--Qwen2-VL-7B-Instruct"
    with pytest.raises(StoreError):
        model_key(" ")
