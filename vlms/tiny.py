"""Tiny random-weight VLM builds for tests, CPU demos and model organisms (no hub access).

A tiny build keeps the real family's image geometry (Qwen2-VL: 14-px patches, 2x2 merge; Gemma-3:
896 px, 16x16 pooled grid) and the real transformers classes, with a few-hundred-token byte-level
BPE tokenizer trained locally on the prompt vocabulary. Builds are deterministic: the same seed
gives the same weights and the same tokenizer.

Public helpers, shared with the organism trainer:

- :func:`train_tokenizer` – a byte-level BPE ``PreTrainedTokenizerFast`` with given special tokens;
- :func:`build_tiny` – ``tiny-qwen2-vl`` / ``tiny-gemma-3`` as a ready :class:`~vlms.base.VLMAdapter`;
- each adapter class has ``tiny_tokenizer()``, ``tiny_processor(tokenizer)`` and
  ``tiny_config(tokenizer, **overrides)`` for custom builds (see ``vlms/README.md``).
"""
from __future__ import annotations

from typing import Any, Iterable

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "magenta", "black",
           "white", "gray", "brown", "pink")
SHAPES = ("square", "circle", "triangle", "star", "cross", "diamond", "cube", "sphere",
          "cylinder", "cone", "object")
RELATION_WORDS = ("left", "right", "above", "below", "front", "behind", "top", "bottom",
                  "middle", "on", "under", "of", "to", "the", "in")

#: Sentences the tiny tokenizers are trained on: the paper's prompt forms and answers, so that
#: colour and relation words (with and without a leading space, in both cases) are single tokens.
CORPUS: tuple[str, ...] = (
    "The color of the square to the left of the red square is",
    "The color of the square to the right of the red square is",
    "The color of the square above the red square is",
    "The color of the square below the red square is",
    "You are a helpful assistant. You respond in one token.",
    "Is the red square to the left or to the right of the blue square? Answer with one word.",
    "Is the red square above or below the blue square? Answer with one word.",
    "Answer yes or no. Yes. No. yes no",
    "A photo of a dog to the left of a cat. A mug on top of a table. A cup under a chair.",
    "Which caption is correct? The sphere is in front of the cube, behind the cylinder.",
)


def _corpus(extra: Iterable[str] = ()) -> list[str]:
    words = COLOURS + SHAPES + RELATION_WORDS + ("yes", "no", "assistant", "user", "model",
                                                 "system")
    lines = list(CORPUS) + list(extra)
    for w in words:
        lines += [w, " " + w, w.capitalize(), " " + w.capitalize(), w.upper()]
    # repeat so that whole words win the merges over rare byte pairs
    return lines * 8


def train_tokenizer(special_tokens: list[str], *, named: dict[str, str] | None = None,
                    pad: str, eos: str, bos: str | None = None, unk: str | None = None,
                    vocab_size: int = 512, corpus: Iterable[str] = ()) -> Any:
    """Train a deterministic byte-level BPE tokenizer and wrap it for transformers.

    Parameters
    ----------
    special_tokens
        Every special token (added as atomic, never split).
    named
        Named special tokens stored as tokenizer attributes (e.g. Gemma's
        ``{"boi_token": "<start_of_image>", ...}``); they survive ``save_pretrained``.
    pad, eos, bos, unk
        The usual special tokens (must be among ``special_tokens``).
    vocab_size
        Upper bound of the BPE vocabulary (bytes + merges + specials).
    corpus
        Extra sentences to learn merges from (prompt words of a custom task).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(_corpus(corpus), trainer=trainer)
    named = dict(named or {})
    plain = [t for t in special_tokens if t not in named.values() and t not in (pad, eos, bos, unk)]
    kwargs: dict[str, Any] = {"pad_token": pad, "eos_token": eos}
    if bos is not None:
        kwargs["bos_token"] = bos
    if unk is not None:
        kwargs["unk_token"] = unk
    extra: Any = dict(named) if named else plain
    if named and plain:
        # named attributes and anonymous specials cannot share one argument: add the rest after
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, extra_special_tokens=extra, **kwargs)
        tok.add_special_tokens({"additional_special_tokens": plain})
        return tok
    return PreTrainedTokenizerFast(tokenizer_object=tk, extra_special_tokens=extra, **kwargs)


def build_tiny(name: str, *, seed: int = 0, **overrides: Any):
    """Build a tiny random-weight model with its processor, wrapped in its adapter.

    Parameters
    ----------
    name
        ``tiny-qwen2-vl`` or ``tiny-gemma-3`` (or the family name ``qwen2-vl`` / ``gemma-3``).
    seed
        Seeds the weight initialisation; the same seed gives identical weights.
    **overrides
        Passed to the adapter's ``tiny_config`` (e.g. ``num_hidden_layers=3``).

    Returns
    -------
    vlms.base.VLMAdapter
    """
    from .registry import adapter_class

    cls = adapter_class(name if name.startswith("tiny-") else f"tiny-{name}")
    return cls.tiny(seed=seed, **overrides)


def route_overrides(overrides: dict[str, Any], *, text: dict[str, Any], vision: dict[str, Any],
                    top: dict[str, Any], config_cls: type, family: str) -> None:
    """Send ``tiny_config(**overrides)`` keys to the sub-config they belong to (in place).

    A top-level field goes to the top level (also ``vision_feature_layer``,
    ``vision_start_token_id``, ...). Else ``vision_<key>`` goes to the vision config,
    ``text_<key>`` to the text config; a bare key
    goes to the text config when the family's text config has that field (``hidden_size``,
    ``num_hidden_layers``, ...), else to the top-level config when that has it
    (``image_token_id``, ``mm_tokens_per_image``, ``image_seq_length``, ...). Any other key
    is refused with one line naming the close matches (it was silently dropped before).

    Raises
    ------
    InputError
        A key neither config has.
    """
    from .errors import InputError, suggest

    ref = config_cls()
    text_cfg = ref.text_config
    text_keys = set(text_cfg.to_dict()) | {k for k in dir(text_cfg) if not k.startswith("_")}
    top_keys = (set(ref.to_dict()) | set(getattr(ref, "attribute_map", {}))) - {
        "text_config", "vision_config"}
    vis_keys = set(ref.vision_config.to_dict()) if getattr(ref, "vision_config", None) else set()
    for k, v in overrides.items():
        if k in top or (k in top_keys and k not in text_keys):  # vision_feature_layer, ...
            top[k] = v
        elif k.startswith("vision_"):
            key = k.removeprefix("vision_")
            if vis_keys and key not in vis_keys and key not in vision:
                raise InputError(
                    f"tiny_config of {family}: the vision config has no field {key!r} (from "
                    f"{k!r}).{suggest(key, sorted(vis_keys))} Prefix vision fields with 'vision_'")
            vision[key] = v
        elif k.startswith("text_") and k.removeprefix("text_") in text_keys:
            text[k.removeprefix("text_")] = v
        elif k in text_keys or k in text:
            text[k] = v
        elif k in top_keys or k in top:
            top[k] = v
        else:
            raise InputError(
                f"tiny_config of {family}: unknown override {k!r} (neither the text nor the "
                f"top-level config has it).{suggest(k, sorted(text_keys | top_keys))} Use "
                "'vision_<field>' for the vision config")


def seeded_init(seed: int):
    """Context manager: fork torch's RNG and seed it (so building does not disturb callers)."""
    import torch

    class _Ctx:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(seed)

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Ctx()
