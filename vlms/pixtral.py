"""Pixtral adapter (mistral-community/pixtral-12b; tiny builds): ``LlavaForConditionalGeneration``
with a Pixtral vision tower.

Geometry: the processor keeps an image's own size unless its longest edge exceeds 1024 px (then
it scales it down), and rounds each side up to whole 16-px patches; every patch is one LM token
(Pixtral-12B has no spatial merge), row-major. In the text, each row of ``[IMG]`` tokens ends with
``[IMG_BREAK]`` and the last with ``[IMG_END]`` (those are text tokens; the image positions are the
``[IMG]`` ones, row-major). Token (i, j) covers ``[jW/cols, (j+1)W/cols) x [iH/rows, (i+1)H/rows)``
of the original image. The authors' flat stimuli are 15x15 tokens of 16 px (240 px; presets
``squares-pixtral`` / ``shapes-pixtral``).

Vision-block outputs and the projector output have a batch dimension of 1: all images of a batch
are concatenated along the patch axis (the vision tower attends within each image through a block
mask). The adapter splits them per image (``image_sizes`` gives each image's patches). The forward
needs ``image_sizes``. The authors ran Pixtral in bfloat16 (the checkpoint's dtype, so
``--dtype auto`` gives it).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .llava import LlavaAdapter
from .registry import register
from .tiny import route_overrides, train_tokenizer

#: The Pixtral-12B chat template (mistral-community/pixtral-12b): ``<s>[INST]{system}\n\n[IMG]
#: {text}[/INST]``.
PIXTRAL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST]' + system_message + '\n\n' }}"
    "{%- else %}{{- '[INST]' }}{%- endif %}"
    "{%- if message['content'] is not string %}{%- for chunk in message['content'] %}"
    "{%- if chunk['type'] == 'text' %}{{- chunk['text'] }}"
    "{%- elif chunk['type'] == 'image' %}{{- '[IMG]' }}{%- endif %}{%- endfor %}"
    "{%- else %}{{- message['content'] }}{%- endif %}{{- '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- endif %}{%- endfor %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "<pad>", "[IMG_BREAK]",
                  "[IMG_END]"]


def pixtral_processor_class() -> type:
    """transformers' own ``PixtralProcessor`` class, also where torchvision is not installed.

    Its module imports one helper (``get_resize_output_image_size``) from the torchvision image
    processor; without torchvision we import it with the same helper of the PIL image processor
    (the same function) in that module's place, so the processor code that runs is the real one.
    """
    import importlib
    import sys
    import types

    name = "transformers.models.pixtral.processing_pixtral"
    try:
        return importlib.import_module(name).PixtralProcessor
    except ModuleNotFoundError as e:
        if "torchvision" not in str(e):
            raise
    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    tv = "transformers.models.pixtral.image_processing_pixtral"
    shim = types.ModuleType(tv)
    shim.get_resize_output_image_size = pil.get_resize_output_image_size
    saved = sys.modules.get(tv)
    sys.modules[tv] = shim
    try:
        sys.modules.pop(name, None)
        return importlib.import_module(name).PixtralProcessor
    finally:
        if saved is None:
            sys.modules.pop(tv, None)
        else:
            sys.modules[tv] = saved


class PixtralAdapter(LlavaAdapter):
    """Adapter for ``LlavaForConditionalGeneration`` with a Pixtral tower (transformers 5.x)."""

    family = "pixtral"
    architectures = ("LlavaForConditionalGeneration",)
    vision_model_types = ("pixtral",)
    aliases = {"pixtral-12b": "mistral-community/pixtral-12b", "tiny-pixtral": "tiny-pixtral"}
    vision_blocks_paths = ("model.vision_tower.transformer.layers",
                           "vision_tower.transformer.layers")
    mm_input_keys = ("image_sizes",)

    @property
    def n_prefix(self) -> int:
        return 0

    @property
    def patch_size(self) -> int:
        p = self.processor
        return int(getattr(p, "patch_size", 16)) * int(getattr(p, "spatial_merge_size", 1) or 1)

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """Patches per side after the processor's resize (longest edge <= ``longest_edge``,
        sides rounded up to whole patches)."""
        size = getattr(self.processor.image_processor, "size", None) or {}
        longest = int(size.get("longest_edge", 1024))
        ratio = max(height / longest, width / longest)
        if ratio > 1:
            height, width = int(math.floor(height / ratio)), int(math.floor(width / ratio))
        p = self.patch_size
        return (height - 1) // p + 1, (width - 1) // p + 1

    def patch_token_index(self, grid):
        return np.arange(grid[0] * grid[1])

    def image_grid(self, inputs, row: int = 0) -> tuple[int, int]:
        h, w = (int(x) for x in inputs["image_sizes"][row])
        p = int(self.config.vision_config.patch_size)
        return h // p, w // p

    def _per_image(self, inputs) -> list[int]:
        p = int(self.config.vision_config.patch_size)
        return [int(h) // p * (int(w) // p) for h, w in inputs["image_sizes"].tolist()]

    def _split(self, act, inputs):
        counts = self._per_image(inputs)
        flat = act.reshape(-1, act.shape[-1])
        if len(set(counts)) == 1:
            return flat.reshape(len(counts), counts[0], act.shape[-1])
        return list(flat.split(counts, dim=0))

    def _split_vision(self, act, inputs):
        return self._split(act, inputs)

    def _split_projector(self, act, inputs):
        return self._split(act, inputs)

    @classmethod
    def load_processor(cls, source: str):
        return pixtral_processor_class().from_pretrained(source, trust_remote_code=False)

    # ------------------------------------------------------------------ tiny build
    @classmethod
    def tiny_tokenizer(cls, *, corpus=(), vocab_size: int = 512):
        """Byte-level BPE tokenizer with Pixtral's special tokens."""
        return train_tokenizer(SPECIAL_TOKENS, pad="<pad>", eos="</s>", bos="<s>", unk="<unk>",
                               vocab_size=vocab_size, corpus=corpus)

    @classmethod
    def tiny_processor(cls, tokenizer, *, longest_edge: int = 1024, patch_size: int = 16):
        """``PixtralProcessor`` with Pixtral-12B's real geometry (16-px patches, longest edge
        1024) and chat template."""
        from transformers import PixtralImageProcessorPil

        ip = PixtralImageProcessorPil(size={"longest_edge": longest_edge},
                                      patch_size={"height": patch_size, "width": patch_size})
        return pixtral_processor_class()(image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
                                spatial_merge_size=1, chat_template=PIXTRAL_CHAT_TEMPLATE)

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """2 Pixtral vision layers (64 wide, 16-px patches, up to 1024 px), 2 Mistral layers
        (128 wide); Pixtral-12B's feature selection (last vision layer, all patches) and GELU
        projector. Overrides route as in :func:`vlms.tiny.route_overrides`."""
        from transformers import LlavaConfig

        tid = tokenizer.convert_tokens_to_ids
        text = dict(model_type="mistral", vocab_size=max(512, len(tokenizer)), hidden_size=128,
                    intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, rope_theta=1e9, sliding_window=None,
                    pad_token_id=tid("<pad>"), bos_token_id=tid("<s>"), eos_token_id=tid("</s>"),
                    max_position_embeddings=8192)
        vision = dict(model_type="pixtral", hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, head_dim=32, image_size=1024,
                      patch_size=16, rope_theta=10000.0)
        top = dict(image_token_index=tid("[IMG]"), vision_feature_layer=-1,
                   vision_feature_select_strategy="full", projector_hidden_act="gelu",
                   tie_word_embeddings=False)
        route_overrides(overrides, text=text, vision=vision, top=top, config_cls=LlavaConfig,
                        family=cls.family)
        if "image_token_id" in top:
            top["image_token_index"] = top.pop("image_token_id")
        return LlavaConfig(vision_config=vision, text_config=text, **top)

    @classmethod
    def tiny_processor_for(cls, tokenizer, config):
        return cls.tiny_processor(tokenizer, longest_edge=int(config.vision_config.image_size),
                                  patch_size=int(config.vision_config.patch_size))


register(PixtralAdapter)
