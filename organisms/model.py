"""Building organism models and feeding them: configs of the real transformers classes,
processors with a chat template that reproduces the training sequence, batching, and the
image-token shuffle hook (see ``organisms.trainer`` for what the organisms are).

Qwen2-VL: vision ``depth x vision_dim`` ViT (14-px patches, 2x2 merge), LM with M-RoPE; the
``vision`` mechanism puts every rotary frequency on the temporal axis (``mrope_section=[h,0,0]``).
Gemma-3: SigLIP at 224 px (16x16 patches, learned absolute position embeddings), 2x2 average pool
-> 64 tokens (28-px cells, aligned with the 8x8 canvas), LM with 1-D RoPE; the ``vision``
mechanism uses linear rotary scaling with factor 1e9 so that every position has the same rotary
phase to float32 precision, and image tokens attend to each other bidirectionally
(``token_type_ids``), so no token order leaks to the LM either. Gemma's fresh projector weight is
all zeros: it is re-initialised here.
"""
from __future__ import annotations

from . import data as od
from vlms.errors import VLMError


QWEN_TEMPLATE = (
    "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' or 'image' in c -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endif -%}{%- endfor -%}")
#: Gemma-3 turn format; the system message is ignored (its words are not in the vocabulary).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
    "{{ '<start_of_turn>user\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- else -%}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' or 'image' in c -%}{{ '<start_of_image>' }}"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")
#: Linear rotary scaling factor of Gemma ``vision`` organisms (all phases equal in float32).
GEMMA_FLAT_ROPE = 1e9

# ----------------------------------------------------------------------------- building

def image_only_processor_class():
    """The toolkit's image-only ``Qwen2VLProcessor`` (``vlms.qwen2_vl``; no torchvision needed).

    It saves ``processor_class: Qwen2VLProcessor`` so that ``AutoProcessor`` loads the organism
    wherever torchvision is installed.
    """
    from vlms.qwen2_vl import image_only_processor_class as cls

    return cls()


def build(cfg):
    """Build the fresh model and processor of an organism (seeded by ``cfg.seed``).

    Parameters
    ----------
    cfg
        :class:`organisms.trainer.OrganismConfig`.

    Returns
    -------
    (model, processor)
    """
    import torch

    torch.manual_seed(cfg.seed)
    tok = od.word_tokenizer(cfg.arch)
    if cfg.arch == "gemma-3":
        return _build_gemma(cfg, tok)
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    ids = {t: tok.convert_tokens_to_ids(t) for t in od.QWEN_SPECIAL}
    mcfg = Qwen2VLConfig(
        vision_config=dict(depth=cfg.vision_depth, embed_dim=cfg.vision_dim,
                           num_heads=cfg.vision_heads, hidden_size=cfg.lm_dim, mlp_ratio=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=len(tok), hidden_size=cfg.lm_dim,
                         intermediate_size=2 * cfg.lm_dim, num_hidden_layers=cfg.lm_layers,
                         num_attention_heads=cfg.lm_heads,
                         num_key_value_heads=max(1, cfg.lm_heads // 2),
                         tie_word_embeddings=False, max_position_embeddings=1024,
                         rope_parameters=dict(rope_type="default",
                                              rope_theta=cfg.resolved_rope_theta(),
                                              mrope_section=list(cfg.resolved_mrope_section())),
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    mcfg.architectures = ["Qwen2VLForConditionalGeneration"]
    model = Qwen2VLForConditionalGeneration(mcfg)
    side = cfg.grid * 28
    ip = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side)
    proc = image_only_processor_class()(image_processor=ip, tokenizer=tok,
                                        chat_template=QWEN_TEMPLATE)
    return model, proc


def _build_gemma(cfg, tok):
    import torch
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration,
                              Gemma3ImageProcessorPil, Gemma3Processor)

    tid = tok.convert_tokens_to_ids
    theta = cfg.resolved_rope_theta()
    factor = cfg.resolved_rope_factor()
    if factor is not None:  # vision: 1e9 (one phase for every position)
        rope = {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    else:
        rope = {"rope_type": "default", "rope_theta": theta}
    side = cfg.grid * 28
    text = dict(vocab_size=len(tok), hidden_size=cfg.lm_dim, intermediate_size=2 * cfg.lm_dim,
                num_hidden_layers=cfg.lm_layers, num_attention_heads=cfg.lm_heads,
                num_key_value_heads=max(1, cfg.lm_heads // 2), head_dim=cfg.lm_dim // cfg.lm_heads,
                query_pre_attn_scalar=cfg.resolved_attn_scalar(), sliding_window=256,
                rope_parameters={"full_attention": dict(rope), "sliding_attention": dict(rope)},
                pad_token_id=tid("<pad>"), bos_token_id=tid("<bos>"), eos_token_id=tid("<eos>"))
    if cfg.global_rope_factor is not None:  # a global last layer with its own rotary
        text["layer_types"] = ["sliding_attention"] * (cfg.lm_layers - 1) + ["full_attention"]
        text["rope_parameters"] = {
            "sliding_attention": dict(rope),
            "full_attention": {"rope_type": "linear", "factor": cfg.global_rope_factor,
                               "rope_theta": theta}}
    vision = dict(model_type="siglip_vision_model", hidden_size=cfg.vision_dim,
                  intermediate_size=4 * cfg.vision_dim, num_hidden_layers=cfg.vision_depth,
                  num_attention_heads=cfg.vision_heads, image_size=side, patch_size=14,
                  vision_use_head=False)
    mcfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=cfg.grid ** 2,
                        boi_token_index=tid("<start_of_image>"), eoi_token_index=tid("<end_of_image>"),
                        image_token_index=tid("<image_soft_token>"))
    mcfg.architectures = ["Gemma3ForConditionalGeneration"]
    model = Gemma3ForConditionalGeneration(mcfg)
    w = projector_module(model).mm_input_projection_weight
    with torch.no_grad():  # a fresh Gemma-3 projector is all zeros (MODELS.md)
        w.normal_(0.0, cfg.vision_dim ** -0.5)
    if cfg.vision_pos_init in ("sincos", "zero"):  # zero: frozen by the trainer (no position)
        init_vision_positions(model, cfg.vision_pos_init)
    ip = Gemma3ImageProcessorPil(size={"height": side, "width": side})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA_TEMPLATE,
                           image_seq_length=cfg.grid ** 2)
    return model, proc


def vision_position_embedding(model):
    """SigLIP's learned absolute position embedding weight of a Gemma-3 organism."""
    return model.model.vision_tower.embeddings.position_embedding.weight


def init_vision_positions(model, how: str) -> None:
    """Set a Gemma-3 organism's SigLIP position embedding to the 2-D sin-cos table
    (``how="sincos"``) or to zero (``"zero"``); whether it is trained is the caller's choice."""
    import torch

    pe = vision_position_embedding(model)
    with torch.no_grad():
        if how == "sincos":
            pe.copy_(sincos_2d(int(round(pe.shape[0] ** 0.5)), pe.shape[1]))
        else:
            pe.zero_()


def sincos_2d(n: int, dim: int):
    """2-D sin-cos position table ``(n * n, dim)`` for a row-major ``n x n`` patch grid: the first
    half of the channels encodes the row, the second the column, each as ``dim / 4`` sines then
    ``dim / 4`` cosines at frequencies ``1 / 10000^(k / (dim / 4))`` (ViT/MAE's fixed table)."""
    import torch

    if dim % 4:
        raise VLMError(f"sin-cos position table needs a width divisible by 4; got {dim}")
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    pos = torch.arange(n, dtype=torch.float64)
    ang = pos[:, None] * omega[None]                       # (n, q)
    one = torch.cat([ang.sin(), ang.cos()], dim=1)        # (n, dim / 2)
    rows = one[:, None, :].expand(n, n, dim // 2)
    cols = one[None, :, :].expand(n, n, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(n * n, dim).float()


def projector_module(model):
    """The module whose output is the image tokens the LM receives (the ``projector`` site of the
    model's ``vlms`` adapter: module paths come only from the adapters)."""
    from vlms.registry import adapter_for

    return adapter_for(model).site_module("projector")[0]


def pixel_norm(model) -> tuple:
    """The (mean, std) the model's processor normalises canvases with (Qwen2-VL: CLIP's;
    Gemma-3: 0.5)."""
    return od.QWEN_NORM if hasattr(model.model, "visual") else od.GEMMA_NORM


def pixel_inputs(model, img) -> dict:
    """The vision inputs of normalised float canvases ``(B, 3, H, W)``: Qwen2-VL's flattened
    patches and grid, or Gemma-3's tensor as it is."""
    if hasattr(model.model, "visual"):
        pv, thw = od.qwen_pixels(img)
        return {"pixel_values": pv, "image_grid_thw": thw}
    return {"pixel_values": img}


def image_tokens(model, inputs: dict):
    """Projector output ``(B, n_tokens, d)`` for a batch (runs the vision side only)."""
    got = {}
    h = projector_module(model).register_forward_hook(lambda m, a, o: got.setdefault("z", o))
    try:
        if hasattr(model.model, "visual"):
            model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        else:
            model.model.get_image_features(pixel_values=inputs["pixel_values"])
    finally:
        h.remove()
    z = got["z"]
    b = inputs["pixel_values"].shape[0] if z.ndim == 3 else len(inputs["image_grid_thw"])
    return z.reshape(b, -1, z.shape[-1])


def paper_messages(text: str) -> list[dict]:
    """The paper's chat (system + user image + question), as the toolkit formats it."""
    return [{"role": "system", "content": [{"type": "text", "text":
             "You are a helpful assistant. You respond in one token."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


class Batcher:
    """Turns :class:`~organisms.data.Item` lists into model inputs (cached prompt ids).

    Prompt token ids come from the organism's own processor and chat template on the paper's
    messages, so training sees exactly what the toolkit's E1 evaluation feeds the model.
    """

    def __init__(self, proc, grid: int):
        self.proc = proc
        self.grid = grid
        self.tok = proc.tokenizer
        self.gemma = type(proc).__name__.startswith("Gemma")
        self.image_token_id = self.tok.convert_tokens_to_ids(
            "<image_soft_token>" if self.gemma else "<|image_pad|>")
        self._ids: dict[str, list[int]] = {}

    def prompt_ids(self, text: str) -> list[int]:
        if text not in self._ids:
            from PIL import Image
            chat = self.proc.apply_chat_template(paper_messages(text), add_generation_prompt=True,
                                                 tokenize=False)
            white = Image.new("RGB", (self.grid * 28, self.grid * 28), "white")
            enc = self.proc(text=[chat], images=[white], return_tensors="pt")
            self._ids[text] = enc["input_ids"][0].tolist()
        return self._ids[text]

    def answer_ids(self, items) -> "torch.Tensor":
        import torch
        return torch.tensor([self.tok.convert_tokens_to_ids(it.answer) for it in items])

    def __call__(self, items, *, jitter: int = 0, rng=None, noise=None) -> dict:
        """Model inputs of ``items``; ``noise`` (one strength in [0, 1] per item, or None)
        adds :func:`organisms.data.add_noise` pixel noise to the canvases (drawn from ``rng``)."""
        import torch
        seqs = [self.prompt_ids(it.text) for it in items]
        width = max(map(len, seqs))
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            att[i, width - len(s):] = 1
        mm = (ids == self.image_token_id).long()
        norm = od.GEMMA_NORM if self.gemma else od.QWEN_NORM
        if noise is not None and any(s > 0 for s in noise):
            img = od.add_noise(od.render(items, n=self.grid, jitter=jitter, rng=rng), noise, rng)
            img = od._normalise(img, *norm)
        else:
            img = od.render(items, n=self.grid, jitter=jitter, rng=rng, normalise=norm)
        if self.gemma:
            return dict(input_ids=ids, attention_mask=att, pixel_values=img, token_type_ids=mm)
        pv, thw = od.qwen_pixels(img)
        return dict(input_ids=ids, attention_mask=att, pixel_values=pv, image_grid_thw=thw,
                    mm_token_type_ids=mm)


def last_logits(model, inputs: dict):
    """Logits of the next token after the prompt, ``(B, vocab)``."""
    return model(**inputs, logits_to_keep=1).logits[:, -1]


class ShuffleImageTokens:
    """Forward hook on the projector: permute each image's tokens at the LM input (for a
    ``vision`` organism all image tokens have the same rotary phase, so only the order moves)."""

    def __init__(self, tokens_per_image: int, seed: int = 0):
        import torch
        self.n = tokens_per_image
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, module, args, out):
        import torch
        if out.ndim == 3:  # Gemma-3: (B, n, d)
            perm = torch.stack([torch.randperm(out.shape[1], generator=self.gen)
                                for _ in range(out.shape[0])])
            return torch.gather(out, 1, perm[..., None].expand_as(out))
        x = out
        k = x.shape[0] // self.n
        perm = torch.stack([torch.randperm(self.n, generator=self.gen) for _ in range(k)])
        perm = (perm + torch.arange(k)[:, None] * self.n).reshape(-1)
        return x[perm]

    def attach(self, model):
        return projector_module(model).register_forward_hook(self)


