"""Every transformers ``from_pretrained`` call in the toolkit passes ``trust_remote_code=False``
(issue 8, item 8), and a model directory whose config asks for remote code is refused in one line
before transformers sees it."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "scenegen", "vlms", "actstore", "probes", "interventions", "study",
            "organisms")


def _calls():
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            tree = ast.parse(f.read_text(), filename=str(f))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "from_pretrained":
                    yield f.relative_to(ROOT), node


def test_every_from_pretrained_refuses_remote_code():
    seen, bad = 0, []
    for f, node in _calls():
        recv = node.func.value
        if isinstance(recv, ast.Name) and recv.id == "cls":
            continue  # our adapters' own classmethod (VLMAdapter.from_pretrained passes False)
        seen += 1
        kw = {k.arg: k.value for k in node.keywords}
        v = kw.get("trust_remote_code")
        if not (isinstance(v, ast.Constant) and v.value is False):
            bad.append(f"{f}:{node.lineno}")
    assert seen >= 6, "the scan found too few from_pretrained calls: is it looking at the code?"
    assert not bad, f"from_pretrained without trust_remote_code=False at {bad}"


@pytest.mark.parametrize("cfg, why", [
    ({"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
      "auto_map": {"AutoConfig": "configuration_x.XConfig"}}, "auto_map"),
    ({"architectures": ["XForCausalLM"], "model_type": "x_unknown_to_transformers"}, "x_unknown"),
])
def test_config_asking_for_remote_code_is_refused(tmp_path, cfg, why):
    pytest.importorskip("transformers")
    from vlms.errors import AdapterNotFoundError
    from vlms.registry import refuse_remote_code, resolve

    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for call in (refuse_remote_code, resolve):
        with pytest.raises(AdapterNotFoundError) as e:
            call(str(tmp_path))
        msg = str(e.value)
        assert "\n" not in msg and "remote code is refused" in msg and why in msg


def test_a_plain_config_is_not_refused(tmp_path):
    pytest.importorskip("transformers")
    from vlms.registry import refuse_remote_code, resolve

    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl"}))
    refuse_remote_code(tmp_path)
    assert resolve(str(tmp_path))[0].__name__ == "Qwen2VLAdapter"
