"""Gemma-3 adapter (google/gemma-3-4b-it; tiny builds).

Geometry: every image is squashed to 896x896, cut into 64x64 SigLIP patches of 14 px (row-major),
and the projector average-pools 4x4 patch blocks -> 256 LM tokens, row-major over 16x16; token
(i, j) covers ``[jW/16, (j+1)W/16) x [iH/16, (i+1)H/16)`` of the original image. The forward
needs ``token_type_ids`` (bidirectional attention among image tokens). A freshly built random
Gemma-3 has an all-zero projector weight: tiny builds re-initialise it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import VLMAdapter
from .registry import register
from .tiny import route_overrides, train_tokenizer

#: The Gemma-3-it chat template (as shipped with the hub checkpoints).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
         "image_token": "<image_soft_token>"}
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                  "<start_of_image>", "<end_of_image>", "<image_soft_token>"]


class Gemma3Adapter(VLMAdapter):
    """Adapter for ``Gemma3ForConditionalGeneration`` (transformers 5.x module layout)."""

    family = "gemma-3"
    architectures = ("Gemma3ForConditionalGeneration",)
    aliases = {"gemma-3-4b": "google/gemma-3-4b-it", "tiny-gemma-3": "tiny-gemma-3"}
    vision_blocks_paths = ("model.vision_tower.encoder.layers",
                           "model.vision_tower.vision_model.encoder.layers",
                           "vision_tower.vision_model.encoder.layers")
    projector_paths = ("model.multi_modal_projector", "multi_modal_projector")
    lm_layers_paths = ("model.language_model.layers", "language_model.model.layers")
    final_norm_paths = ("model.language_model.norm", "language_model.model.norm")
    mm_input_keys = ("token_type_ids",)

    @property
    def tokens_per_side(self) -> int:
        return int(math.isqrt(int(self.config.mm_tokens_per_image)))

    @property
    def patches_per_side(self) -> int:
        vc = self.config.vision_config
        return int(vc.image_size) // int(vc.patch_size)

    @property
    def d_vision(self) -> int:
        return int(self.config.vision_config.hidden_size)

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """Always ``16 x 16`` (any aspect ratio is squashed to the square input; no pan-and-scan)."""
        n = self.tokens_per_side
        return n, n

    def image_grid(self, inputs, row: int = 0) -> tuple[int, int]:
        n = self.tokens_per_side
        return n, n

    def pool_vision(self, acts, grid):
        # same pooling as the projector: row-major patches -> k x k average -> row-major tokens
        import torch.nn.functional as F

        b, n, d = acts.shape
        p = self.patches_per_side
        k = p // self.tokens_per_side
        x = acts.transpose(1, 2).reshape(b, d, p, p)
        return F.avg_pool2d(x, k, k).flatten(2).transpose(1, 2)

    def patch_token_index(self, grid):
        p = self.patches_per_side
        k = p // self.tokens_per_side
        r, c = np.divmod(np.arange(p * p), p)
        return (r // k) * self.tokens_per_side + c // k

    # ------------------------------------------------------------------ tiny build
    @classmethod
    def tiny_tokenizer(cls, *, corpus=(), vocab_size: int = 512):
        """Byte-level BPE tokenizer with Gemma-3's special tokens and boi/eoi/image attributes."""
        return train_tokenizer(SPECIAL_TOKENS, named=NAMED, pad="<pad>", eos="<eos>",
                               bos="<bos>", unk="<unk>", vocab_size=vocab_size, corpus=corpus)

    @classmethod
    def tiny_processor(cls, tokenizer, *, image_seq_length: int = 256):
        """Processor with Gemma-3's real image geometry (896 px, 256 tokens) and chat template."""
        from transformers import Gemma3ImageProcessorPil, Gemma3Processor

        ip = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})
        return Gemma3Processor(image_processor=ip, tokenizer=tokenizer,
                               chat_template=GEMMA_CHAT_TEMPLATE,
                               image_seq_length=image_seq_length)

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """2 SigLIP layers (64 wide) at 896 px / 14-px patches, 2 LM layers (128 wide).

        Aligned with google/gemma-3-4b-it where size allows: real image geometry (896 px,
        14-px patches, 256 tokens), ``query_pre_attn_scalar`` = ``head_dim`` (the real model
        has 256 = its head_dim; here 32 = this head_dim), the real sliding window (1024, so
        the ~300-token prompts are seen whole by every layer, as in the real model) and the
        real RoPE (local layers theta 1e4; global layers theta 1e6 with linear scaling x8).
        What differs, by design: width/depth (128 x 2 vs 2560 x 34; with fewer than 6 layers
        every layer is a sliding one, the real 5:1 local:global pattern has no global layer
        at this depth), heads (4/2 of 32 vs 8/4 of 256), the vocabulary (local BPE) and the
        vision tower (64 x 2 vs 1152 x 27). Overrides route as in
        :func:`vlms.tiny.route_overrides` (``mm_tokens_per_image`` goes to the top level).
        """
        from transformers import Gemma3Config

        tid = tokenizer.convert_tokens_to_ids
        text = dict(vocab_size=max(512, len(tokenizer)), hidden_size=128, intermediate_size=256,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=32, query_pre_attn_scalar=32, sliding_window=1024,
                    rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0,
                                           "factor": 8.0}},
                    pad_token_id=tid("<pad>"), bos_token_id=tid("<bos>"),
                    eos_token_id=tid("<eos>"))
        vision = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, image_size=896,
                      patch_size=14, vision_use_head=False)
        top = dict(mm_tokens_per_image=256, boi_token_index=tid("<start_of_image>"),
                   eoi_token_index=tid("<end_of_image>"),
                   image_token_index=tid("<image_soft_token>"))
        route_overrides(overrides, text=text, vision=vision, top=top, config_cls=Gemma3Config,
                        family=cls.family)
        if "image_token_id" in top:  # attribute_map alias of image_token_index
            top["image_token_index"] = top.pop("image_token_id")
        return Gemma3Config(vision_config=vision, text_config=text, **top)

    @staticmethod
    def init_projector(model) -> None:
        """Draw the projector weight with std ``1/sqrt(d_vision)``.

        ``_init_weights`` zeroes it (every image would embed to 0). The projector is
        RMSNorm(pooled patches) @ W, and RMSNorm outputs have unit RMS, so this std gives
        image embeddings of std about 1 at any vision width (a fixed std of 0.5 gave about
        17 at the real width 1152).
        """
        import torch

        w = model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            w.normal_(0.0, 1.0 / math.sqrt(w.shape[0]))

    @classmethod
    def init_tiny_weights(cls, model) -> None:
        cls.init_projector(model)

    @classmethod
    def tiny_processor_for(cls, tokenizer, config):
        return cls.tiny_processor(tokenizer, image_seq_length=config.mm_tokens_per_image)


register(Gemma3Adapter)
