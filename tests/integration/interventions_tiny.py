"""Tiny random Qwen2-VL / Gemma-3 builds fed with raw tensors (no processor, no hub), for the
intervention tests. Grids are 4x4 LM image tokens so a forward takes milliseconds."""
from __future__ import annotations

import torch

VOCAB = 96
IMG, VSTART, VEND, BOI, EOI = 90, 91, 92, 93, 94


def tiny_qwen(layers: int = 3):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, num_heads=2, hidden_size=32, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters=dict(rope_type="default", rope_theta=1e4,
                                              mrope_section=[2, 3, 3]),
                         bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_id=IMG, video_token_id=95, vision_start_token_id=VSTART,
        vision_end_token_id=VEND)
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(cfg).eval()


def qwen_inputs(seed: int, n_text: int = 5, grid: int = 4, batch: int = 1):
    """input_ids = [text, <vs>, grid*grid image tokens, <ve>, text]; random pixels."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    n_img = grid * grid
    for _ in range(batch):
        pre = torch.randint(3, 80, (3,), generator=g)
        post = torch.randint(3, 80, (n_text,), generator=g)
        rows.append(torch.cat([pre, torch.tensor([VSTART]), torch.full((n_img,), IMG),
                               torch.tensor([VEND]), post]))
    ids = torch.stack(rows)
    pix = torch.randn(batch * n_img * 4, 3 * 2 * 14 * 14, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": pix, "image_grid_thw": torch.tensor([[1, 2 * grid, 2 * grid]] * batch),
            "mm_token_type_ids": (ids == IMG).int()}


def tiny_gemma(layers: int = 3):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    cfg = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32,
                           intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=224, patch_size=14, vision_use_head=False),
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        mm_tokens_per_image=16, boi_token_index=BOI, eoi_token_index=EOI, image_token_index=IMG)
    torch.manual_seed(0)
    m = Gemma3ForConditionalGeneration(cfg).eval()
    # a fresh Gemma-3 projector is all zeros (MODELS.md): give it weights
    m.model.multi_modal_projector.mm_input_projection_weight.data.normal_(0, 0.5)
    return m


def gemma_inputs(seed: int, n_text: int = 5, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        pre = torch.randint(3, 80, (3,), generator=g)
        post = torch.randint(3, 80, (n_text,), generator=g)
        rows.append(torch.cat([pre, torch.tensor([BOI]), torch.full((16,), IMG),
                               torch.tensor([EOI]), post]))
    ids = torch.stack(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(batch, 3, 224, 224, generator=g),
            "token_type_ids": (ids == IMG).long()}
