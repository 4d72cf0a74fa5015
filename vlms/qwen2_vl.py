"""Qwen2-VL adapter (Qwen/Qwen2-VL-7B-Instruct, -2B-Instruct; tiny builds).

Geometry: 14-px patches, 2x2 merge -> one LM token per 28x28 px of the (resized) image; LM image
tokens are row-major over the merged grid. Inside the vision blocks patches come in 2x2
merge-block order (4 consecutive rows = one LM token) with no batch dimension (all images of a
batch concatenated). The forward needs ``image_grid_thw`` and ``mm_token_type_ids`` (M-RoPE).

We install no torchvision, so the processor is :class:`ImageOnlyQwen2VLProcessor` (no video
processor); it saves as a plain ``Qwen2VLProcessor`` directory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import VLMAdapter
from .registry import register
from .tiny import route_overrides, train_tokenizer

#: The Qwen2-VL-Instruct chat template (as shipped with the hub checkpoints).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _image_only_processor_class(base: str = "Qwen2VLProcessor"):
    import transformers

    Base = getattr(transformers, base)
    name = "ImageOnly" + base

    class ImageOnlyProcessor(Base):
        """``Qwen2VLProcessor`` (or ``Qwen2_5_VLProcessor``) without the video processor
        (which needs torchvision).

        Saves a directory whose ``processor_class`` is the plain transformers class, so it
        also loads with plain ``AutoProcessor`` wherever torchvision is installed.
        """

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer,
                             video_processor=None, chat_template=chat_template)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            cfg = Path(save_directory) / "processor_config.json"
            if cfg.exists():
                d = json.loads(cfg.read_text())
                d["processor_class"] = base
                cfg.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
            return out

    ImageOnlyProcessor.__name__ = name
    ImageOnlyProcessor.__module__ = __name__
    ImageOnlyProcessor.__qualname__ = name
    return ImageOnlyProcessor


_CLS: dict[str, type] = {}


def __getattr__(name: str):
    # the class is built on first use so that importing vlms does not import transformers
    if name == "ImageOnlyQwen2VLProcessor":
        return image_only_processor_class()
    raise AttributeError(name)


def image_only_processor_class(base: str = "Qwen2VLProcessor") -> type:
    """The image-only subclass of processor class ``base`` (``ImageOnlyQwen2VLProcessor``
    by default; ``Qwen2_5_VLProcessor`` for Qwen2.5-VL)."""
    if base not in _CLS:
        _CLS[base] = _image_only_processor_class(base)
    return _CLS[base]


class Qwen2VLAdapter(VLMAdapter):
    """Adapter for ``Qwen2VLForConditionalGeneration`` (transformers 5.x module layout)."""

    family = "qwen2-vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    aliases = {"qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
               "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
               "tiny-qwen2-vl": "tiny-qwen2-vl"}
    vision_blocks_paths = ("model.visual.blocks", "visual.blocks")
    projector_paths = ("model.visual.merger", "visual.merger")
    lm_layers_paths = ("model.language_model.layers", "model.layers")
    final_norm_paths = ("model.language_model.norm", "model.norm")
    mm_input_keys = ("image_grid_thw", "mm_token_type_ids")

    @property
    def patch_size(self) -> int:
        return int(self.config.vision_config.patch_size)

    @property
    def merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """Rows and columns of merged tokens after the processor's ``smart_resize``."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = self.processor.image_processor
        size = getattr(ip, "size", None) or {}
        lo = size.get("shortest_edge", getattr(ip, "min_pixels", 56 * 56))
        hi = size.get("longest_edge", getattr(ip, "max_pixels", 28 * 28 * 1280))
        f = self.patch_size * self.merge
        h, w = smart_resize(height, width, factor=f, min_pixels=lo, max_pixels=hi)
        return h // f, w // f

    def image_grid(self, inputs, row: int = 0) -> tuple[int, int]:
        # image_grid_thw holds (t, h, w) in patches; one LM token per merge x merge patches
        _, h, w = (int(x) for x in inputs["image_grid_thw"][row])
        return h // self.merge, w // self.merge

    def pool_vision(self, acts, grid):
        # patches are in 2x2 merge-block order: each run of merge**2 rows is one LM token
        k = self.merge ** 2
        b, n, d = acts.shape
        return acts.reshape(b, n // k, k, d).mean(2)

    def patch_token_index(self, grid):
        # merge-block order: patches 4k .. 4k+3 form token k
        return np.arange(grid[0] * grid[1] * self.merge ** 2) // self.merge ** 2

    def _per_image(self, inputs, per_token: int) -> list[int]:
        thw = inputs["image_grid_thw"]
        return [int(x) // per_token for x in thw.prod(-1)]

    def _stack_or_list(self, act, counts):
        parts = list(act.split(counts, dim=0))
        if len(set(counts)) == 1:
            return act.reshape(len(counts), counts[0], act.shape[-1])
        return parts

    def _split_vision(self, act, inputs):
        return self._stack_or_list(act, self._per_image(inputs, 1))

    def _split_projector(self, act, inputs):
        return self._stack_or_list(act, self._per_image(inputs, self.merge ** 2))

    @classmethod
    def load_processor(cls, source: str):
        return image_only_processor_class().from_pretrained(source, trust_remote_code=False)

    # ------------------------------------------------------------------ tiny build
    @classmethod
    def tiny_tokenizer(cls, *, corpus=(), vocab_size: int = 512):
        """Byte-level BPE tokenizer with the Qwen2-VL special tokens."""
        return train_tokenizer(SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>",
                               vocab_size=vocab_size, corpus=corpus)

    @classmethod
    def tiny_processor(cls, tokenizer, *, min_pixels: int = 56 * 56,
                       max_pixels: int = 28 * 28 * 1280):
        """Image-only processor with the real Qwen2-VL image geometry and chat template."""
        from transformers import Qwen2VLImageProcessorPil

        ip = Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels,
                                            "longest_edge": max_pixels})
        return image_only_processor_class()(image_processor=ip, tokenizer=tokenizer,
                                         chat_template=QWEN_CHAT_TEMPLATE)

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """A ~0.6M-parameter config: 2 vision blocks (64 wide), 2 LM layers (128 wide).

        ``overrides``: ``vision_<field>`` to the vision config, text-config fields as they are,
        top-level fields (``image_token_id``, ...) to the top level; unknown keys are refused
        (:func:`vlms.tiny.route_overrides`).
        """
        from transformers import Qwen2VLConfig

        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        text = dict(vocab_size=max(512, len(tokenizer)), hidden_size=128, intermediate_size=256,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                         mrope_section=[4, 6, 6]),
                    bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                    pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
        vision = dict(depth=2, embed_dim=64, num_heads=2, hidden_size=128, mlp_ratio=4,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        top = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"],
                   vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
        route_overrides(overrides, text=text, vision=vision, top=top, config_cls=Qwen2VLConfig,
                        family=cls.family)
        vision["hidden_size"] = text["hidden_size"]  # merger output = LM width
        return Qwen2VLConfig(vision_config=vision, text_config=text, **top)



register(Qwen2VLAdapter)
