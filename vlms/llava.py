"""LLaVA adapter (llava-hf/llava-1.5-7b-hf, -13b; tiny builds): ``LlavaForConditionalGeneration``
with a CLIP vision tower.

Geometry (llava-1.5): the processor resizes the shortest edge to 336 px and centre-crops 336x336;
CLIP ViT-L/14 cuts 24x24 patches of 14 px (row-major) plus a CLS token in front; the projector
(2-layer GELU MLP) maps the patches of the second-to-last vision block
(``vision_feature_layer=-2``, CLS dropped: ``vision_feature_select_strategy="default"``) one to
one onto 576 LM image tokens, row-major over 24x24. Token (i, j) of a *square* image covers
``[jW/24, (j+1)W/24) x [iH/24, (i+1)H/24)``; non-square images are refused with one line (the
centre crop would cut their sides off, and roles are computed over the whole image): pad or
resize to a square first. The forward needs nothing besides ids, mask and pixels.

Sites: ``vision.blocks.{i}`` = CLIP encoder layer ``i`` without the CLS row (576 patches, which
are already the token grid); note that the last vision block does not reach the LM
(``vision_feature_layer=-2``). ``projector`` = ``multi_modal_projector``.

This file is also the shared part of every ``LlavaForConditionalGeneration`` family: the
Pixtral adapter (``vlms/pixtral.py``) subclasses :class:`LlavaAdapter` and swaps the vision
tower. The two are told apart by ``vision_config.model_type`` (``vision_model_types``,
:data:`vlms.registry.VARIANTS`). llava-onevision is another architecture
(``LlavaOnevisionForConditionalGeneration``, any-resolution tiles) and is not covered here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import VLMAdapter
from .errors import InputError
from .registry import register
from .tiny import route_overrides, train_tokenizer

#: The llava-1.5-hf chat template ("USER: <image>\n{text} ASSISTANT:"), as shipped with
#: llava-hf/llava-1.5-7b-hf (system turns are dropped by it).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{% if message['role'] != 'system' %}"
    "{{ message['content'] + ' ' }}{% endif %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]


class LlavaAdapter(VLMAdapter):
    """Adapter for ``LlavaForConditionalGeneration`` with a CLIP tower (transformers 5.x)."""

    family = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    vision_model_types = ("clip_vision_model",)
    aliases = {"llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
               "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
               "tiny-llava": "tiny-llava"}
    vision_blocks_paths = ("model.vision_tower.encoder.layers",
                           "model.vision_tower.vision_model.encoder.layers",
                           "vision_tower.vision_model.encoder.layers")
    projector_paths = ("model.multi_modal_projector", "multi_modal_projector")
    lm_layers_paths = ("model.language_model.layers", "language_model.model.layers")
    final_norm_paths = ("model.language_model.norm", "language_model.model.norm")
    mm_input_keys = ()

    @property
    def d_vision(self) -> int:
        return int(self.config.vision_config.hidden_size)

    @property
    def patches_per_side(self) -> int:
        vc = self.config.vision_config
        return int(vc.image_size) // int(vc.patch_size)

    @property
    def n_prefix(self) -> int:
        """Rows in front of the patches in vision-block outputs (CLIP's CLS token)."""
        return 1

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """Always ``24 x 24`` for llava-1.5 (336 px / 14 px); square images only."""
        if width != height:
            raise InputError(
                f"{self.name}: image is {width}x{height}, but LLaVA's processor centre-crops "
                "non-square images (their sides never reach the model); pad or resize the image "
                "to a square first")
        n = self.patches_per_side
        return n, n

    def image_grid(self, inputs, row: int = 0) -> tuple[int, int]:
        n = self.patches_per_side
        return n, n

    def site_tokens(self, site, tokens, grid):
        """As :meth:`VLMAdapter.site_tokens`; hooks on ``vision.blocks`` see the raw tower
        output, whose row 0 is CLIP's CLS token, so patch indices shift by it."""
        from actstore.schema import parse_site

        idx = super().site_tokens(site, tokens, grid)
        if idx is not None and parse_site(site)[0] == "vision.blocks":
            return idx + self.n_prefix
        return idx

    def pool_vision(self, acts, grid):
        # one patch per LM token, already row-major (the CLS row is dropped by _split_vision)
        return acts

    def patch_token_index(self, grid):
        return np.arange(grid[0] * grid[1])

    def _split_vision(self, act, inputs):
        return act[:, self.n_prefix:]

    # ------------------------------------------------------------------ tiny build
    @classmethod
    def tiny_tokenizer(cls, *, corpus=(), vocab_size: int = 512):
        """Byte-level BPE tokenizer with LLaVA-1.5's (Llama) special tokens and ``<image>``."""
        return train_tokenizer(SPECIAL_TOKENS, pad="<pad>", eos="</s>", bos="<s>", unk="<unk>",
                               vocab_size=vocab_size, corpus=corpus)

    @classmethod
    def tiny_processor(cls, tokenizer, *, image_size: int = 336, patch_size: int = 14):
        """``LlavaProcessor`` with llava-1.5's real image geometry and chat template."""
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        ip = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
        return LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
                              vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, image_token="<image>",
                              chat_template=LLAVA_CHAT_TEMPLATE)

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """2 CLIP layers (64 wide) at 336 px / 14-px patches, 2 Llama layers (128 wide).

        Same geometry and feature selection as llava-1.5 (``vision_feature_layer=-2``, CLS
        dropped, GELU MLP projector); width, depth and vocabulary are tiny. Overrides route as
        in :func:`vlms.tiny.route_overrides`.
        """
        from transformers import LlavaConfig

        tid = tokenizer.convert_tokens_to_ids
        text = dict(model_type="llama", vocab_size=max(512, len(tokenizer)), hidden_size=128,
                    intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, pad_token_id=tid("<pad>"), bos_token_id=tid("<s>"),
                    eos_token_id=tid("</s>"), max_position_embeddings=4096)
        vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, image_size=336, patch_size=14,
                      projection_dim=64)
        top = dict(image_token_index=tid("<image>"), image_seq_length=576,
                   vision_feature_layer=-2, vision_feature_select_strategy="default",
                   projector_hidden_act="gelu", tie_word_embeddings=False)
        route_overrides(overrides, text=text, vision=vision, top=top, config_cls=LlavaConfig,
                        family=cls.family)
        if "image_token_id" in top:
            top["image_token_index"] = top.pop("image_token_id")
        return LlavaConfig(vision_config=vision, text_config=text, **top)

    @classmethod
    def tiny_processor_for(cls, tokenizer, config):
        vc = config.vision_config
        return cls.tiny_processor(tokenizer, image_size=int(vc.image_size),
                                  patch_size=int(vc.patch_size))


register(LlavaAdapter)
