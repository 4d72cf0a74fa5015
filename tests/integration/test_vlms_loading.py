"""Loading a model as its users expect: the checkpoint's dtype by default (``--dtype auto``),
weights placed while loading (``device_map``), tiny-config overrides routed to the config that
owns them, and tiny Gemma-3 defaults aligned with the real model."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

import vlms
from cli import spatialbind
from vlms.registry import parse_device, parse_dtype


@pytest.fixture(scope="module")
def saved_bf16(tmp_path_factory):
    d = tmp_path_factory.mktemp("bf16") / "tiny"
    res = CliRunner().invoke(spatialbind, ["model", "save", "tiny-qwen2-vl", str(d),
                                           "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    return d


def test_dtype_auto_keeps_the_checkpoint_dtype(saved_bf16):
    assert parse_dtype(None) == "auto" and parse_dtype("auto") == "auto"
    ad = vlms.load_adapter(str(saved_bf16))  # default: auto
    assert ad.model.dtype == torch.bfloat16
    up = vlms.load_adapter(str(saved_bf16), dtype="float32")
    assert up.model.dtype == torch.float32
    # a tiny build is float32 under auto
    assert vlms.load_adapter("tiny-gemma-3").model.dtype == torch.float32


def test_saved_weights_load_straight_onto_the_device(saved_bf16, monkeypatch):
    """from_pretrained gets device_map; the model is never moved after loading."""
    def no_move(self, *a, **k):
        raise AssertionError("model moved with .to() after loading")

    from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

    seen = {}
    real = AutoModelForImageTextToText.from_pretrained.__func__

    def spy(cls, *a, **k):
        seen.update(k)
        return real(cls, *a, **k)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "to", no_move)
    ad = vlms.load_adapter(str(saved_bf16), device="cpu")
    assert seen["device_map"] == "cpu" and seen["dtype"] == "auto"
    assert seen["trust_remote_code"] is False
    assert {p.device.type for p in ad.model.parameters()} == {"cpu"}


def test_bad_dtype_and_device_are_one_line():
    with pytest.raises(vlms.VLMError, match="unknown dtype 'float33'.*auto"):
        parse_dtype("float33")
    with pytest.raises(vlms.VLMError, match="unknown device 'gpu0'; use cpu, cuda"):
        parse_device("gpu0")
    assert parse_device("cuda:1") == "cuda:1" and parse_device("auto") == "auto"
    res = CliRunner().invoke(spatialbind, ["model", "save", "tiny-qwen2-vl", "/nonexistent/x",
                                           "--dtype", "half-ish"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("name,key,value,read", [
    ("tiny-qwen2-vl", "image_token_id", 7, lambda c: c.image_token_id),
    ("tiny-qwen2-vl", "vision_depth", 3, lambda c: c.vision_config.depth),
    ("tiny-qwen2-vl", "num_hidden_layers", 3, lambda c: c.text_config.num_hidden_layers),
    ("tiny-gemma-3", "mm_tokens_per_image", 64, lambda c: c.mm_tokens_per_image),
    ("tiny-gemma-3", "image_token_id", 9, lambda c: c.image_token_index),
    ("tiny-llava", "image_seq_length", 576, lambda c: c.image_seq_length),
    ("tiny-pixtral", "vision_feature_layer", -2, lambda c: c.vision_feature_layer),
])
def test_tiny_config_routes_top_level_keys(name, key, value, read):
    cls = vlms.adapter_class(name)
    cfg = cls.tiny_config(cls.tiny_tokenizer(), **{key: value})
    assert read(cfg) == value


def test_tiny_config_refuses_unknown_keys():
    cls = vlms.adapter_class("tiny-gemma-3")
    with pytest.raises(vlms.InputError, match="unknown override 'mm_tokens_per_imag'.*Did you "
                                              "mean 'mm_tokens_per_image'"):
        cls.tiny_config(cls.tiny_tokenizer(), mm_tokens_per_imag=64)
    with pytest.raises(vlms.InputError, match="vision config has no field 'dept'"):
        vlms.adapter_class("tiny-qwen2-vl").tiny_config(cls.tiny_tokenizer(), vision_dept=3)


def test_gemma_mm_tokens_override_changes_the_geometry():
    ad = vlms.build_tiny("tiny-gemma-3", mm_tokens_per_image=64)
    import numpy as np

    b = ad.prepare([np.zeros((64, 64, 3), np.uint8)], ["x"])
    assert b.grids == [(8, 8)] and b.image_positions.shape == (1, 64)
    _, acts = ad.capture(b, ["projector"])
    assert tuple(acts["projector"].shape) == (1, 64, ad.d_lm)


@pytest.mark.parametrize("width", [64, 1152])
def test_gemma_projector_init_gives_unit_scale_image_embeddings(width):
    """Image embeddings have std about 1 at the tiny width and at the real width 1152 (a fixed
    std of 0.5 gave about 0.5*sqrt(1152) = 17)."""
    ad = vlms.build_tiny("tiny-gemma-3", vision_hidden_size=width, vision_intermediate_size=32,
                         vision_num_hidden_layers=1, vision_num_attention_heads=2)
    w = ad.model.model.multi_modal_projector.mm_input_projection_weight
    assert w.shape[0] == width
    assert float(w.std()) == pytest.approx(1 / math.sqrt(width), rel=0.05)
    vis = torch.randn(2, 4096, width) * 3.0  # any scale: the projector RMS-normalises first
    with torch.no_grad():
        emb = ad.model.model.multi_modal_projector(vis)
    assert 0.8 < float(emb.std()) < 1.25


def test_tiny_gemma_defaults_aligned_with_gemma_3_4b():
    """Published google/gemma-3-4b-it text config: query_pre_attn_scalar 256 = head_dim 256,
    sliding_window 1024, global RoPE theta 1e6 with linear scaling x8, local theta 1e4."""
    t = vlms.build_tiny("tiny-gemma-3").config.text_config
    assert t.query_pre_attn_scalar == t.head_dim
    assert t.sliding_window == 1024
    full = t.rope_parameters["full_attention"]
    assert full["rope_type"] == "linear" and full["factor"] == 8.0
    assert full["rope_theta"] == 1e6
    assert t.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
