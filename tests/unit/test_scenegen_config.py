"""Config validation: sklearn-style messages, unknown keys with suggestions, round trips."""
from __future__ import annotations

import dataclasses

import pytest

from scenegen.config import (DegradationSpec, FlatConfig, GenerateConfig, GridConfig, SplitConfig,
                             load_config_file)
from scenegen.errors import ConfigError, SceneGenError
from scenegen.presets import PRESETS, preset, preset_config, preset_names


def test_defaults_are_the_paper_qwen_geometry():
    g = GridConfig()
    assert (g.num_tokens, g.token_px, g.size, g.spacing, g.canvas_px) == (12, 28, 2, 2, 336)
    cfg = GenerateConfig()
    assert cfg.generator == "flat" and cfg.flat == FlatConfig() and cfg.n is None


def test_sklearn_style_message():
    with pytest.raises(ConfigError) as e:
        GridConfig(num_tokens=0)
    assert str(e.value) == ("The 'num_tokens' parameter of GridConfig must be an int in the range "
                            "[1, 512]. Got 0 instead.")
    assert isinstance(e.value, ValueError) and isinstance(e.value, SceneGenError)


def test_frozen_and_keyword_only():
    g = GridConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.size = 3
    with pytest.raises(TypeError):
        GridConfig(12, 28)  # noqa: positional args refused


def test_replace_revalidates():
    with pytest.raises(ConfigError, match="impossible layout"):
        GridConfig().replace(size=4)


def test_impossible_layout_names_numbers_and_fix():
    with pytest.raises(ConfigError) as e:
        GridConfig(num_tokens=12, size=3, spacing=2)
    msg = str(e.value)
    assert "need 13 tokens" in msg and "has 12" in msg and "raise num_tokens to at least 13" in msg
    with pytest.raises(ConfigError, match="impossible layout"):
        FlatConfig(grid=GridConfig(num_tokens=8, size=1, spacing=1), layout="random",
                   sizes=(3, 4), spacings=(1,))  # 3 objects of 3 + 2 gaps of 1 = 11 > 8
    # some (size, spacing) pairs fitting is enough: random layouts draw among those
    FlatConfig(grid=GridConfig(num_tokens=8, size=1, spacing=1), layout="random",
               sizes=(1, 2), spacings=(1, 2))


@pytest.mark.parametrize("d,needle", [
    ({"flat": {"task": "squares", "colors": ["red", "grene", "blue"]}},
     "unknown colour 'grene' in the 'colors' parameter of FlatConfig. Did you mean 'green'?"),
    ({"flat": {"task": "shapes", "shapes": ["circle", "hart", "star"]}},
     "unknown shape 'hart'"),
    ({"flat": {"task": "sqares"}}, "Did you mean 'squares'?"),
    ({"flat": {"grid": {"num_token": 12}}}, "unknown option 'num_token' in flat.grid. Did you mean "
                                             "'num_tokens'?"),
    ({"sed": 3}, "unknown option 'sed' in the generate config. Did you mean 'seed'?"),
    ({"twins": ["swap", "criscross"]}, "Did you mean 'crisscross'?"),
    ({"degradations": [{"kind": "blurr"}]}, "Did you mean 'blur'?"),
    ({"degradations": [{"kind": "noise", "strength": 1.5}]}, "Got 1.5 instead"),
    ({"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}, "sum to 0.7"),
    ({"n": 0}, "The 'n' parameter of GenerateConfig must be an int"),
    ({"generator": "scene3d", "flat": {}}, "has a 'flat' section but generator is 'scene3d'"),
    ({"flat": {"layout": "centred", "sizes": [1, 2]}}, "need layout='random'"),
    ({"flat": {"task": "shapes", "shape_colors": {"circle": "red"}}}, "repeated colours"),
])
def test_bad_configs_give_one_line(d, needle):
    with pytest.raises(ConfigError) as e:
        GenerateConfig.from_dict(d)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_round_trip_to_dict_from_dict():
    cfg = GenerateConfig.from_dict({
        "seed": 3, "n": 7, "twins": ["swap"],
        "degradations": [{"kind": "blur", "strength": [0.1, 0.4]}, "noise"],
        "splits": {"by": "colorset", "train": 0.6, "val": 0.2, "test": 0.2},
        "flat": {"task": "shapes", "grid": {"num_tokens": 16, "token_px": 56, "size": 3,
                                            "spacing": 3}, "layout": "random", "sizes": [2, 3]}})
    d = cfg.to_dict()
    assert GenerateConfig.from_dict(d) == cfg
    assert d["degradations"][0] == {"kind": "blur", "strength": [0.1, 0.4]}
    assert d["degradations"][1] == {"kind": "noise", "strength": 0.5}
    import json

    json.dumps(d)  # plain JSON


def test_presets():
    assert set(preset_names()) >= {"squares-qwen2-vl", "squares-gemma-3", "shapes-qwen2-vl",
                                   "shapes-gemma-3", "scene3d"}
    g = preset_config("squares-gemma-3").flat.grid
    assert (g.num_tokens, g.token_px, g.size, g.spacing) == (16, 56, 3, 3)
    assert preset_config("shapes-qwen2-vl", n=5).n == 5
    p = preset("squares-qwen2-vl")
    p["n"] = 1
    assert PRESETS["squares-qwen2-vl"]["n"] is None  # a copy
    with pytest.raises(ConfigError) as e:
        preset("squares-qwen2vl")
    assert "unknown preset 'squares-qwen2vl' in --preset. Did you mean 'squares-qwen2-vl'?" in str(
        e.value)


def test_scene3d_preset_valid_against_their_config():
    scene3d = pytest.importorskip("scenegen.scene3d")
    cfg = preset_config("scene3d")
    scene3d.Scene3DConfig.from_dict(cfg.scene3d)


def test_load_config_file(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("generator: flat\nflat:\n  task: shapes\n")
    assert GenerateConfig.from_dict(load_config_file(y)).flat.task == "shapes"
    j = tmp_path / "c.json"
    j.write_text('{"seed": 4')
    with pytest.raises(ConfigError, match=r"c.json is not valid JSON"):
        load_config_file(j)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.yaml")
    l = tmp_path / "l.yaml"
    l.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of options at the top level"):
        load_config_file(l)


def test_degradation_spec_string_shorthand():
    assert DegradationSpec.from_dict("occluder") == DegradationSpec(kind="occluder", strength=0.5)
    assert SplitConfig().by == "mirror"


def test_scene3d_dispatch_is_lazy_and_matches_their_generator():
    import subprocess
    import sys

    code = ("import sys; from scenegen.presets import preset_config; "
            "from scenegen.generate import build_generator; "
            "g = build_generator(preset_config('squares-qwen2-vl', n=2)); g.unit(0); "
            "print(sorted(m for m in ('pyrender', 'trimesh', 'OpenGL', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # flat generation never imports the 3D stack
    scene3d = pytest.importorskip("scenegen.scene3d")
    from scenegen.generate import build_generator, resolve

    cfg = preset_config("scene3d", n=3)
    g = build_generator(cfg)
    assert isinstance(g, scene3d.Scene3DGenerator) and len(g) == 3
    assert g.twins == cfg.twins and g.splits == cfg.splits
    # the resolved config round-trips through GenerateConfig (what worker processes rebuild)
    assert GenerateConfig.from_dict(resolve(cfg)).scene3d == resolve(cfg)["scene3d"]
    with pytest.raises(ConfigError, match="unknown scene3d option"):
        build_generator(GenerateConfig.from_dict({"generator": "scene3d",
                                                  "scene3d": {"image_sise": 64}}))
