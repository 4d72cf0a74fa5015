"""The demo's items are the organisms' held-out colour triples (``--items heldout``, issue 11:
the criteria are the paper's effects on held-out items), and ``flat.triples`` restricts a Squares
set to given triples."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from interventions.errors import InterventionError
from scenegen.config import ConfigError, FlatConfig, GenerateConfig
from scenegen.flat import FlatGenerator
from study.demo import DemoConfig, heldout_items, shipped_organisms, stimulus_config
from study.report import items_sentence

RGB = [["red", "green", "blue"], ["blue", "green", "red"]]


def test_flat_triples_restrict_the_enumeration_and_the_random_draws():
    gen = FlatGenerator(FlatConfig(triples=RGB), n=None)
    assert len(gen) == 2 * 4                                   # 2 triples x 4 directions
    for i in range(len(gen)):
        base, *twins = gen.unit(i)
        assert base.stimulus.factors["triple"] in RGB
        # the swap / criss-cross twins are the mirror, also in the list
        assert all(t.stimulus.factors["triple"] in RGB for t in twins
                   if t.stimulus.counterfactual_kind in ("swap", "crisscross"))
        # the image's slots hold the triple's colours in order (left->right / top->bottom)
        ents = sorted(base.stimulus.entities, key=lambda e: e.ordinal)
        assert [e.color for e in ents] == base.stimulus.factors["triple"]
    rnd = FlatGenerator(FlatConfig(triples=[RGB[0]], layout="random"), n=20)
    assert {tuple(rnd.unit(i)[0].stimulus.factors["triple"]) for i in range(20)} == {tuple(RGB[0])}
    with pytest.raises(ConfigError, match="n=9 exceeds the 8 distinct squares items .*2 triples"):
        FlatGenerator(FlatConfig(triples=RGB), n=9)


@pytest.mark.parametrize("bad,match", [
    ([["red", "red", "blue"]], "3 distinct names"),
    ([["red", "pink", "blue"]], "unknown colour 'pink'"),
    ([["red", "green"]], "3 distinct names"),
    ([["red", "green", "blue"]] * 2, "without repeated triples"),
    ("red", "list of"),
])
def test_flat_triples_bad_values_get_one_clear_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        FlatConfig(triples=bad)


def test_flat_triples_do_not_change_existing_configs():
    """An empty list is left out of the dict (so dataset hashes from before the option stay the
    same); a given list round-trips through the dict form."""
    d = GenerateConfig.from_dict({"generator": "flat", "n": 8}).to_dict()
    assert "triples" not in d["flat"]
    g = GenerateConfig.from_dict({"generator": "flat", "n": 8, "flat": {"triples": RGB}})
    assert g.to_dict()["flat"]["triples"] == RGB
    assert GenerateConfig.from_dict(g.to_dict()) == g


@pytest.mark.skipif(not shipped_organisms(), reason="organisms not shipped")
def test_heldout_items_are_the_organisms_split_recomputed():
    """Oracle: the split the trainer makes (``organisms.data.make_splits`` with the organisms'
    grid and split seed), recomputed here, not read from the logs."""
    from organisms.data import make_splits

    models = tuple(m for m, _ in shipped_organisms())
    it = heldout_items(DemoConfig(), models)
    split = make_splits(8, seed=0)
    assert sorted(map(tuple, it["triples"])) == sorted(split.heldout_triples)
    assert not set(map(tuple, it["triples"])) & set(split.train_triples)
    assert it["n_triples"] == 24 and it["available"] == 24 * 4 and it["not_organisms"] == []
    # every triple's mirror is held out too (mirror pairs go together)
    assert {tuple(t[::-1]) for t in it["triples"]} == set(map(tuple, it["triples"]))
    # the generate config carries them; a model that is no organism leaves them as they are
    cfg = GenerateConfig.from_dict(stimulus_config(DemoConfig(), degraded=True,
                                                   triples=it["triples"]))
    assert [list(t) for t in cfg.flat.triples] == it["triples"]
    mixed = heldout_items(DemoConfig(), models[:1] + ("tiny-qwen2-vl",))
    assert mixed["triples"] == it["triples"] and mixed["not_organisms"] == ["tiny-qwen2-vl"]
    assert heldout_items(DemoConfig(items="all"), models)["triples"] is None
    none = heldout_items(DemoConfig(), ("tiny-qwen2-vl",))
    assert none["triples"] is None and "not an organism" in none["note"]
    assert "held-out items" in items_sentence({"items": {"result": it}})
    assert "training triples" in items_sentence({"items": {"result": none}})
    with pytest.raises(InterventionError, match="--n 97 exceeds the 96 held-out items"):
        heldout_items(DemoConfig(n=97), models)
    with pytest.raises(InterventionError, match="--n-degraded 120 exceeds"):
        heldout_items(DemoConfig(n_degraded=120), models)


def _organism_copy(tmp_path, name, held):
    """A model directory whose train_log.json records ``held`` as its held-out triples (only the
    log is read, so config.json is all the rest it needs)."""
    d = tmp_path / name
    d.mkdir()
    from vlms.registry import SHIPPED

    shutil.copy(SHIPPED / "qwen2-vl-lm" / "config.json", d / "config.json")
    (d / "train_log.json").write_text(json.dumps({"splits": {"heldout_triples": held}}))
    return str(d)


@pytest.mark.skipif(not shipped_organisms(), reason="organisms not shipped")
def test_heldout_items_intersect_and_refuse_disjoint_splits(tmp_path):
    a = _organism_copy(tmp_path, "a", RGB + [["black", "brown", "gray"]])
    b = _organism_copy(tmp_path, "b", RGB)
    assert heldout_items(DemoConfig(n=8, n_degraded=8), (a, b))["triples"] == sorted(RGB)
    with pytest.raises(InterventionError, match="--n 96 exceeds the 8 held-out items"):
        heldout_items(DemoConfig(), (a, b))
    c = _organism_copy(tmp_path, "c", [["black", "brown", "gray"]])
    with pytest.raises(InterventionError, match="no colour triple in common"):
        heldout_items(DemoConfig(n=4, n_degraded=4), (b, c))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train_log.json").write_text("{}")
    with pytest.raises(InterventionError, match="records no readable splits.heldout_triples"):
        heldout_items(DemoConfig(), (str(bad),))
    with pytest.raises(InterventionError, match="not a Squares set"):
        heldout_items(DemoConfig(preset="shapes-qwen2-vl", n=4, n_degraded=4), (b,))


def test_demo_cli_refuses_too_many_heldout_items(tmp_path):
    from cli import spatialbind

    if not shipped_organisms():
        pytest.skip("organisms not shipped")
    res = CliRunner().invoke(spatialbind, ["demo", "--out", str(tmp_path / "d"), "--n", "200",
                                           "--no-progress"])
    assert res.exit_code != 0
    assert "Error: --n 200 exceeds the 96 held-out items" in res.output
    assert not (tmp_path / "d").exists()                       # refused before writing anything
