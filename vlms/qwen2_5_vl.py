"""Qwen2.5-VL adapter (Qwen/Qwen2.5-VL-7B-Instruct, -3B-Instruct; tiny builds).

What is new against Qwen2-VL (``vlms/qwen2_vl.py``, which this file extends):

- **window attention in the vision tower.** Before the first block the patches are re-ordered
  window by window (``get_vision_window_index``: windows of ``window_size`` px = 4x4 merged
  tokens at the real 112 px / 28 px, each merge unit's 2x2 patches kept together); most blocks
  attend inside a window, the blocks in ``fullatt_block_indexes`` (7, 15, 23, 31 in the 7B)
  over the whole image. So ``vision.blocks.{i}`` rows come in *window order of merge units*, not
  in Qwen2-VL's row-major merge-block order: :meth:`pool_vision` and :meth:`patch_token_index`
  undo that permutation with the model's own window index.
- **its own merger** (RMSNorm + 2-layer MLP, ``out_hidden_size`` = LM width) runs on the
  window-ordered patches, and the vision model then puts the merged tokens back in row-major
  order (``reverse_indices``). The merger module's output is therefore *not* row-major; the
  ``projector`` site hooks the vision model's output instead (its ``pooler_output``, hook kind
  ``"pooler"``), which is the tensor the LM receives, row-major like every other family.

Everything else is Qwen2-VL's: 14-px patches, 2x2 merge, one LM token per 28x28 px after
``smart_resize``, outputs without a batch dimension, ``image_grid_thw`` + ``mm_token_type_ids``
(M-RoPE), the same chat template and special tokens; the processor is the image-only subclass of
``Qwen2_5_VLProcessor`` (no torchvision needed; saves as plain ``Qwen2_5_VLProcessor``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .qwen2_vl import QWEN_CHAT_TEMPLATE, SPECIAL_TOKENS, Qwen2VLAdapter, image_only_processor_class
from .registry import register
from .tiny import route_overrides


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Adapter for ``Qwen2_5_VLForConditionalGeneration`` (transformers 5.x module layout)."""

    family = "qwen2.5-vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    aliases = {"qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
               "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
               "tiny-qwen2.5-vl": "tiny-qwen2.5-vl"}
    #: the vision model: its output's ``pooler_output`` is the merged, row-major image embedding
    projector_paths = ("model.visual", "visual")

    @property
    def d_vision(self) -> int:
        return int(self.config.vision_config.hidden_size)

    def site_module(self, site: str):
        mod, kind = super().site_module(site)
        return (mod, "pooler") if site == "projector" else (mod, kind)

    def window_index(self, grid: tuple[int, int]) -> np.ndarray:
        """For a ``rows x cols`` token grid: the row-major token of each merge unit, in the
        vision blocks' (window) order -- the model's own ``get_vision_window_index``."""
        import torch
        from transformers.vision_utils import get_vision_window_index

        vc = self.config.vision_config
        m = int(vc.spatial_merge_size)
        idx, _ = get_vision_window_index(torch.tensor([[1, grid[0] * m, grid[1] * m]]),
                                         spatial_merge_size=m, window_size=int(vc.window_size),
                                         patch_size=int(vc.patch_size))
        return idx.numpy()

    def pool_vision(self, acts, grid):
        # each run of merge**2 rows is one merge unit; units come in window order
        k = self.merge ** 2
        b, n, d = acts.shape
        units = acts.reshape(b, n // k, k, d).mean(2)
        order = np.argsort(self.window_index(grid))
        import torch

        return units[:, torch.as_tensor(order, device=units.device)]

    def patch_token_index(self, grid):
        return np.repeat(self.window_index(grid), self.merge ** 2)

    @classmethod
    def load_processor(cls, source: str):
        return image_only_processor_class("Qwen2_5_VLProcessor").from_pretrained(
            source, trust_remote_code=False)

    # ------------------------------------------------------------------ tiny build
    @classmethod
    def tiny_processor(cls, tokenizer, *, min_pixels: int = 56 * 56,
                       max_pixels: int = 28 * 28 * 1280):
        """Image-only ``Qwen2_5_VLProcessor`` with the real image geometry and chat template."""
        from transformers import Qwen2VLImageProcessorPil

        ip = Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels,
                                            "longest_edge": max_pixels})
        return image_only_processor_class("Qwen2_5_VLProcessor")(
            image_processor=ip, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """2 vision blocks (64 wide; block 0 windowed, block 1 full attention, as the last block
        of each group of 8 in the 7B), the real window (112 px) and merge; 2 LM layers (128)."""
        from transformers import Qwen2_5_VLConfig

        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        text = dict(vocab_size=max(512, len(tokenizer)), hidden_size=128, intermediate_size=256,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                         mrope_section=[4, 6, 6]),
                    bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                    pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
        vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                      out_hidden_size=128, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])
        top = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"],
                   vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
        route_overrides(overrides, text=text, vision=vision, top=top,
                        config_cls=Qwen2_5_VLConfig, family=cls.family)
        vision["out_hidden_size"] = text["hidden_size"]  # merger output = LM width
        return Qwen2_5_VLConfig(vision_config=vision, text_config=text, **top)



register(Qwen2_5_VLAdapter)
