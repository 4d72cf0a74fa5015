"""Save/load round trips of tiny builds through plain transformers conventions, and the
``spatialbind model`` commands."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vlms
from cli import spatialbind
from tests.helpers_vlms import squares

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


#: square test canvas per family (a 16x16 token grid; LLaVA-1.5: its 24x24)
SIZES = {"tiny-qwen2-vl": (448, 28), "tiny-gemma-3": (448, 28), "tiny-pixtral": (256, 16),
         "tiny-llava": (336, 14), "tiny-qwen2.5-vl": (448, 28)}
#: families whose plain AutoProcessor loads without torchvision (Qwen's video processor and
#: transformers' PixtralProcessor module need it)
NO_TORCHVISION_OK = {"tiny-gemma-3", "tiny-llava"}


@pytest.mark.parametrize("name", list(SIZES))
def test_model_save_cli_round_trip_identical_logits(tmp_path, name):
    torch.set_num_threads(1)
    d = tmp_path / name
    res = CliRunner().invoke(spatialbind, ["model", "save", name, str(d)])
    assert res.exit_code == 0, res.output
    assert (d / "config.json").exists() and (d / "model.safetensors").exists()
    assert (d / "tokenizer.json").exists() and (d / "chat_template.jinja").exists()

    ref = vlms.build_tiny(name, seed=0)
    size, cell = SIZES[name]
    r = squares(0, size=size, cell=cell)
    b = ref.prepare([r.image], [r.stimulus.prompts[0]])
    want = ref.run(b).logits

    back = vlms.load_adapter(str(d))  # --model DIR path
    assert type(back) is type(ref)
    b2 = back.prepare([r.image], [r.stimulus.prompts[0]])
    for k in b.inputs:
        torch.testing.assert_close(b2.inputs[k], b.inputs[k], rtol=0, atol=0)
    torch.testing.assert_close(back.run(b2).logits, want, rtol=0, atol=0)

    # plain transformers, without our code
    from transformers import AutoModelForImageTextToText

    plain = AutoModelForImageTextToText.from_pretrained(str(d), trust_remote_code=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**b.inputs).logits, want, rtol=0, atol=0)
    if name in NO_TORCHVISION_OK or HAS_TORCHVISION:
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(str(d))
        text = ref.chat_text(r.stimulus.prompts[0].text, system=r.stimulus.prompts[0].system)
        enc = proc(images=[[r.image]], text=[text], return_tensors="pt")
        np.testing.assert_array_equal(enc["input_ids"].numpy(), b.inputs["input_ids"].numpy())


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed here")
def test_qwen_autoprocessor_needs_torchvision():
    pytest.skip("Qwen2-VL's AutoProcessor needs torchvision (its video processor); not "
                "installed, so the plain-AutoProcessor load of a Qwen directory is not tested")


def test_model_save_refuses_non_empty_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    res = CliRunner().invoke(spatialbind, ["model", "save", "tiny-qwen2-vl", str(tmp_path)])
    assert res.exit_code == 1
    assert "not empty" in res.output and (tmp_path / "keep.txt").read_text() == "mine"


def test_model_list_shows_aliases():
    res = CliRunner().invoke(spatialbind, ["model", "list"])
    assert res.exit_code == 0, res.output
    for name in ("qwen2-vl-7b", "qwen2-vl-2b", "gemma-3-4b", "tiny-qwen2-vl", "tiny-gemma-3",
                 "pixtral-12b", "llava-1.5-7b", "qwen2.5-vl-7b", "tiny-pixtral", "tiny-llava",
                 "tiny-qwen2.5-vl"):
        assert name in res.output
    assert "google/gemma-3-4b-it" in res.output and "Qwen/Qwen2-VL-7B-Instruct" in res.output
    assert "mistral-community/pixtral-12b" in res.output
    assert "llava-hf/llava-1.5-7b-hf" in res.output
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in res.output
    rows = {r["name"]: r for r in vlms.known_models()}
    assert rows["pixtral-12b"]["adapter"] == "PixtralAdapter"
    assert rows["llava-1.5-7b"]["adapter"] == "LlavaAdapter"
    assert (rows["pixtral-12b"]["family"], rows["llava-1.5-7b"]["family"]) == ("pixtral", "llava")
    line = next(x for x in res.output.splitlines() if x.startswith("pixtral-12b "))
    assert " pixtral " in line
    assert rows["pixtral-12b"]["architecture"] == rows["llava-1.5-7b"]["architecture"] \
        == "LlavaForConditionalGeneration"


def test_unknown_model_suggests_close_names(tmp_path):
    with pytest.raises(vlms.AdapterNotFoundError, match="Did you mean 'qwen2-vl-7b'"):
        vlms.load_adapter("qwen2-vl-8b")
    res = CliRunner().invoke(spatialbind, ["model", "save", "tiny-gema-3", str(tmp_path / "x")])
    assert res.exit_code == 1
    assert "unknown model 'tiny-gema-3'" in res.output and "tiny-gemma-3" in res.output
    assert len(res.output.strip().splitlines()) == 1
    # a directory whose architecture has no adapter
    d = tmp_path / "paligemma"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["PaliGemmaForConditionalGeneration"]}')
    with pytest.raises(vlms.AdapterNotFoundError, match="has no adapter"):
        vlms.load_adapter(str(d))
