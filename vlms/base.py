"""The VLM adapter base class: named sites, hooks, prompt preparation, token geometry.

An adapter wraps one loaded transformers model and its processor. Family files
(``qwen2_vl.py``, ``gemma3.py``) only *declare* things: module paths of the sites, how image
tokens map to pixels, the chat template of tiny builds, a tiny config. Everything that works
the same for every family lives here: site parsing (one vocabulary, DESIGN.md), forward hooks,
``prepare`` (chat template, left padding, token positions of text roles), ``capture`` and the
scoring helpers (:mod:`vlms.scoring`).

Sites
-----
Names are parsed by the store's one parser (:func:`actstore.schema.parse_site`); module paths
come only from the adapters' declarations (:meth:`VLMAdapter.site_module`).

``vision.blocks.{i}``  output of vision block ``i`` (patches, family's native patch order)
``projector``          the image embeddings the LM receives (one row per LM image token);
                       not layered: its layer is 0, as in the store
``lm.resid.{i}``       LM residual stream: ``lm.resid.0`` = input of layer 0 (pre-hook),
                       ``lm.resid.{i}`` = output of layer ``i-1`` (before the final norm)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from .errors import InputError, SiteError, suggest

#: the site families every adapter can hook (the store's built-in families)
SITE_FAMILIES = ("vision.blocks", "projector", "lm.resid")
#: families whose token axis is the image (not the text sequence)
IMAGE_FAMILIES = ("vision.blocks", "projector")
TEXT_SPAN_ROLES = ("subject", "reference", "relation")


@dataclass
class Batch:
    """Prepared model inputs plus the token bookkeeping extraction needs.

    Attributes
    ----------
    inputs
        Keyword arguments for ``model(**inputs)`` (``input_ids``, ``attention_mask``,
        ``pixel_values`` and the family's multimodal ids).
    image_positions
        ``(B, n_image_tokens)`` int64: sequence positions of each item's image tokens, in
        row-major token-grid order.
    grids
        ``(rows, cols)`` of each item's LM image-token grid.
    sizes
        ``(width, height)`` of each original image.
    text_positions
        Per item: role name -> sequence positions (``subject``, ``reference``, ``relation``
        from the prompt's char spans; ``last`` = final input token).
    n_pad
        Per item: number of left-padding tokens.
    """

    inputs: dict[str, Any]
    image_positions: np.ndarray
    grids: list[tuple[int, int]]
    sizes: list[tuple[int, int]]
    text_positions: list[dict[str, np.ndarray]] = field(default_factory=list)
    n_pad: list[int] = field(default_factory=list)

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[0])


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def to_pil(image):
    """PIL RGB image from a PIL image or an ``(H, W, 3)`` uint8 array."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"image must be PIL or an (H, W, 3) uint8 array, got shape {arr.shape}")
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def first_module(model, paths: Sequence[str]):
    """The first of the dotted attribute ``paths`` that exists on ``model`` (None if none does).

    Module layouts move between transformers versions, so adapters list fallbacks."""
    for p in paths:
        obj = model
        try:
            for part in p.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    return None


class VLMAdapter:
    """Base class of model adapters (declarations in subclasses, mechanics here).

    Subclasses set the class attributes below and implement :meth:`token_grid`,
    :meth:`pool_vision`, :meth:`_split_vision` / :meth:`_split_projector` and the tiny build
    classmethods.
    """

    family: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[dict[str, str]] = {}
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    #: candidate module paths (first that resolves wins; older transformers layouts follow)
    vision_blocks_paths: ClassVar[tuple[str, ...]] = ()
    projector_paths: ClassVar[tuple[str, ...]] = ()
    lm_layers_paths: ClassVar[tuple[str, ...]] = ()
    final_norm_paths: ClassVar[tuple[str, ...]] = ()
    #: model-input keys the forward needs besides ids, mask and pixels
    mm_input_keys: ClassVar[tuple[str, ...]] = ()
    #: the site where vision embeddings enter the LM ("add a direction to vision embeddings")
    vision_entry_site: ClassVar[str] = "projector"

    def __init__(self, model, processor, *, name: str | None = None, source: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = None if processor is None else processor.tokenizer
        if self.tokenizer is not None:
            self.tokenizer.padding_side = "left"
        self.name = name or self.family
        self.source = source

    @classmethod
    def for_model(cls, model) -> "VLMAdapter":
        """An adapter around a bare model (no processor): sites, hooks and geometry work;
        :meth:`prepare` and scoring need a processor. See :func:`vlms.registry.adapter_for`."""
        return cls(model, None, name=type(model).__name__)

    # ------------------------------------------------------------------ declarations
    @property
    def config(self):
        return self.model.config

    @property
    def image_token_id(self) -> int:
        cfg = self.config
        tid = getattr(cfg, "image_token_id", None)
        return int(tid if tid is not None else cfg.image_token_index)

    @property
    def n_vision_blocks(self) -> int:
        return len(self._resolve(self.vision_blocks_paths, "vision blocks"))

    @property
    def n_lm_layers(self) -> int:
        return len(self._resolve(self.lm_layers_paths, "LM layers"))

    @property
    def d_lm(self) -> int:
        return int(self.config.text_config.hidden_size)

    @property
    def d_vision(self) -> int:
        vc = self.config.vision_config
        return int(getattr(vc, "embed_dim", None) or vc.hidden_size)

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """``(rows, cols)`` of the LM image-token grid for an image of this size.

        Token ``k`` (row-major) covers the original-image box
        ``[j*W/cols, (j+1)*W/cols) x [i*H/rows, (i+1)*H/rows)`` with ``i, j = divmod(k, cols)``.
        """
        raise NotImplementedError

    def token_boxes(self, width: int, height: int) -> np.ndarray:
        """``(rows*cols, 4)`` float pixel boxes ``[x0, y0, x1, y1]`` of the image tokens."""
        rows, cols = self.token_grid(width, height)
        i, j = np.divmod(np.arange(rows * cols), cols)
        return np.stack([j * width / cols, i * height / rows,
                         (j + 1) * width / cols, (i + 1) * height / rows], 1)

    def pool_vision(self, acts, grid: tuple[int, int]):
        """Mean-pool vision-block patches ``(B, n_patches, d)`` to the LM token grid
        ``(B, rows*cols, d)`` (row-major, same order as the projector's tokens)."""
        raise NotImplementedError

    def patch_token_index(self, grid: tuple[int, int]) -> np.ndarray:
        """LM token (row-major index) of each vision-block patch, in native patch order."""
        raise NotImplementedError

    def image_grid(self, inputs: dict[str, Any], row: int = 0) -> tuple[int, int]:
        """``(rows, cols)`` of the LM image-token grid of item ``row`` of processor ``inputs``."""
        raise NotImplementedError

    def site_tokens(self, site: str, tokens: Sequence[int] | None,
                    grid: tuple[int, int]) -> np.ndarray:
        """Indices in ``site``'s own token axis for ``tokens`` given in the intervention
        vocabulary: sequence positions for ``lm.resid.*``, LM image-token indices (row-major
        over ``grid``) for the image sites.

        ``projector`` rows are the image tokens themselves. ``vision.blocks.{i}`` holds patches
        in the family's native order (Qwen2-VL: 2x2 merge blocks; Gemma-3: row-major over
        the patch grid): each token becomes its patches, token by token, each token's patches
        in native order, so two lists of tokens of equal length map to patch lists that pair
        patch for patch at the same place inside the token. ``None`` means every token of the
        site (for LM sites None passes through: the caller knows the sequence length).
        """
        from actstore.schema import parse_site

        family, _ = parse_site(site)
        if family == "projector" and tokens is None:
            return np.arange(int(grid[0] * grid[1]), dtype=np.int64)
        if family != "vision.blocks":
            return None if tokens is None else np.asarray(list(tokens), dtype=np.int64)
        owner = np.asarray(self.patch_token_index(grid))
        n_tok = int(grid[0] * grid[1])
        per = len(owner) // n_tok
        table = np.argsort(owner, kind="stable").reshape(n_tok, per)
        if tokens is None:
            return table.reshape(-1)
        tokens = np.asarray(list(tokens), dtype=np.int64)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= n_tok):
            raise SiteError(f"image token {int(tokens.max())} is outside the {grid[0]}x{grid[1]} "
                            f"token grid at {site}; give image-token indices 0..{n_tok - 1}")
        return table[tokens].reshape(-1)

    def sites(self) -> list[str]:
        """Every site this model has, in forward order."""
        return ([f"vision.blocks.{i}" for i in range(self.n_vision_blocks)] + ["projector"]
                + [f"lm.resid.{i}" for i in range(self.n_lm_layers + 1)])

    # ------------------------------------------------------------------ module resolution
    def _resolve(self, paths: Sequence[str], what: str):
        obj = first_module(self.model, paths)
        if obj is not None:
            return obj
        raise SiteError(f"{what} not found in {type(self.model).__name__} (tried "
                        f"{', '.join(paths)}); this transformers version has another layout: "
                        f"update {type(self).__module__}")

    def check_site(self, site: str) -> str:
        """Validate a site name against this model; return it unchanged.

        Raises
        ------
        SiteError
            Unknown site grammar, or a block/layer index the model does not have.
        """
        self._parse(site)
        return site

    def _parse(self, site: str) -> tuple[str, int]:
        """``(family, layer)`` of a concrete site of this model (the store's parser)."""
        from actstore.errors import StoreError
        from actstore.schema import parse_site

        try:
            kind, i = parse_site(site, require_layer=True)
        except StoreError as e:
            raise SiteError(f"{e}.{suggest(str(site), self.sites())} Sites are "
                            "'vision.blocks.{i}', 'projector', 'lm.resid.{i}'") from None
        if kind not in SITE_FAMILIES:
            raise SiteError(f"unknown site {site!r}.{suggest(site, self.sites())} Sites are "
                            "'vision.blocks.{i}', 'projector', 'lm.resid.{i}'")
        if kind == "projector":
            return kind, i
        top = self.n_vision_blocks - 1 if kind == "vision.blocks" else self.n_lm_layers
        if i > top:
            what = "vision blocks" if kind == "vision.blocks" else "LM layers + 1"
            raise SiteError(f"site {site!r} is out of range: {self.name} has {kind}.0 .. "
                            f"{kind}.{top} ({what}); pick a smaller index")
        return kind, i

    def site_module(self, site: str):
        """``(module, hook kind)`` of a site; kind is ``"pre"``, ``"post"`` or ``"pooler"``
        (post hook on the module's ``pooler_output``)."""
        kind, i = self._parse(site)
        if kind == "projector":
            return self._resolve(self.projector_paths, "projector"), "post"
        if kind == "vision.blocks":
            return self._resolve(self.vision_blocks_paths, "vision blocks")[i], "post"
        layers = self._resolve(self.lm_layers_paths, "LM layers")
        return (layers[0], "pre") if i == 0 else (layers[i - 1], "post")

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooks(self, fns: dict[str, Callable], *, batch: int | None = None,
              seq_len: int | None = None) -> Iterator[None]:
        """Install hooks for the duration of a ``with`` block (the toolkit's one hook installer:
        extraction, scoring and the interventions all come through here).

        ``fns[site](act)`` receives the site's activation tensor and returns ``None`` (observe)
        or a tensor of the same shape that replaces it downstream.

        Parameters
        ----------
        fns
            site -> function.
        batch
            When given, image-site activations without a batch dim (Qwen2-VL's vision blocks
            and projector: all images' rows concatenated) are handed to ``fn`` viewed as
            ``batch x rows_per_image x hidden`` (and the result is viewed back). Without it
            they come as the module returns them.
        seq_len
            When given, ``lm.resid.*`` hooks ignore calls with another sequence length (decode
            steps after a prefill of ``seq_len`` tokens).
        """
        handles = []
        try:
            for site, fn in fns.items():
                mod, kind = self.site_module(site)
                family, _ = self._parse(site)
                handles.append(_install(mod, kind, _shaped(fn, family, batch, seq_len)))
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, inputs: Batch | dict, *, hooks: dict[str, Callable] | None = None, **kw):
        """Forward pass (no grad) with optional hooks; returns the model output."""
        import torch

        args = self.to_model(inputs.inputs if isinstance(inputs, Batch) else inputs)
        with torch.no_grad(), self.hooks(hooks or {}):
            return self.model(**args, **kw)

    def to_model(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with every tensor on the model's device and pixels in the model's dtype.

        The one place inputs meet the model's placement: :meth:`prepare` returns inputs that
        went through it and :meth:`run` / :meth:`capture` pass any dict through it again (a
        no-op for tensors already placed). Floating ``pixel_values*`` tensors are cast to the
        model's dtype (e.g. bfloat16 weights); ids, masks and grid tensors keep their dtype.

        Parameters
        ----------
        inputs
            Keyword arguments for ``model(**inputs)``.

        Returns
        -------
        dict
            A new dict (the given one is not modified).
        """
        import torch

        device = getattr(self.model, "device", None)
        dtype = getattr(self.model, "dtype", None)
        if device is None:  # not a transformers model (test doubles): leave inputs as they are
            return dict(inputs)
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                if k.startswith("pixel_values") and v.is_floating_point():
                    v = v.to(device=device, dtype=dtype)
                else:
                    v = v.to(device)
            out[k] = v
        return out

    def capture(self, inputs: Batch | dict, sites: Sequence[str], **kw):
        """Run the model and return ``(output, {site: activation})``.

        Activations are detached. LM sites are ``(B, seq, d)``; ``projector`` is
        ``(B, n_image_tokens, d)``; ``vision.blocks.{i}`` is ``(B, n_patches, d)`` in the
        family's native patch order (use :meth:`pool_vision` for the token grid). When the
        images of one batch have different grids, the image sites are lists of per-item
        tensors instead.
        """
        got: dict[str, Any] = {}

        def saver(site):
            def fn(act):
                got[site] = act.detach()
            return fn

        for s in sites:
            self.check_site(s)
        args = inputs.inputs if isinstance(inputs, Batch) else inputs
        out = self.run(args, hooks={s: saver(s) for s in sites}, **kw)
        res = {}
        for s in sites:
            if s not in got:
                raise SiteError(f"site {s!r} did not fire during the forward; the module "
                                "path is wrong for this transformers version")
            a = got[s]
            if s == "projector":
                a = self._split_projector(a, args)
            elif s.startswith("vision."):
                a = self._split_vision(a, args)
            res[s] = a
        return out, res

    def _split_projector(self, act, inputs):
        return act

    def _split_vision(self, act, inputs):
        return act

    # ------------------------------------------------------------------ prompts
    def messages(self, prompt: str, system: str | None) -> list[dict]:
        """Chat messages of one image + one text turn (image first, as in the paper)."""
        msgs = []
        if system is not None:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": prompt}]})
        return msgs

    def chat_text(self, prompt: str, *, system: str | None = None,
                  add_generation_prompt: bool = True) -> str:
        """The templated text (image placeholder unexpanded) of one prompt."""
        return self.processor.apply_chat_template(
            self.messages(prompt, system), tokenize=False,
            add_generation_prompt=add_generation_prompt)

    def prepare(self, images: Sequence[Any], prompts: Sequence[Any], *,
                system: str | None = None, add_generation_prompt: bool = True,
                suffixes: Sequence[str] | None = None) -> Batch:
        """Build model inputs for a batch of (image, prompt) pairs.

        Parameters
        ----------
        images
            PIL images or ``(H, W, 3)`` uint8 arrays, one per prompt.
        prompts
            Strings or :class:`scenegen.Prompt` records (whose ``spans`` give the text roles
            and whose ``system`` is used when ``system`` is None).
        system
            System message for every item (None: the prompt's own, else the template default).
        add_generation_prompt
            Append the assistant-turn header (the usual setting for next-token answers).
        suffixes
            Text appended after the template per item (answer continuations for scoring).

        Returns
        -------
        Batch
            Left-padded inputs carrying every multimodal id the forward needs, on the model's
            device with pixels in the model's dtype (:meth:`to_model`).
        """
        import torch

        if len(images) != len(prompts):
            raise InputError(f"prepare got {len(images)} images but {len(prompts)} prompts; "
                             "pass one image per prompt")
        pil = [to_pil(im) for im in images]
        texts, starts, spans = [], [], []
        for i, p in enumerate(prompts):
            ptxt = getattr(p, "text", p)
            psys = system if system is not None else getattr(p, "system", None)
            t = self.chat_text(ptxt, system=psys, add_generation_prompt=add_generation_prompt)
            t += suffixes[i] if suffixes is not None else ""
            texts.append(t)
            starts.append(_locate(t, ptxt, self.name))
            spans.append(dict(getattr(p, "spans", None) or {}))
        enc = self.processor(images=[[im] for im in pil], text=texts, padding=True, return_tensors="pt",
                             return_offsets_mapping=True, return_text_replacement_offsets=True)
        offsets = enc.pop("offset_mapping")
        repl = enc.pop("text_replacement_offsets", None) or [[] for _ in texts]
        inputs = dict(enc)
        ids = inputs["input_ids"]
        mask = inputs["attention_mask"]
        img_pos = [torch.nonzero(ids[b] == self.image_token_id).flatten().numpy()
                   for b in range(len(texts))]
        sizes = [im.size for im in pil]
        grids = [self.token_grid(w, h) for w, h in sizes]
        for b, (g, pos) in enumerate(zip(grids, img_pos)):
            if g[0] * g[1] != len(pos):
                raise InputError(f"item {b}: {len(pos)} image tokens in input_ids but the "
                                 f"{self.family} geometry gives a {g[0]}x{g[1]} grid; the "
                                 "processor's resizing differs from the adapter's")
        lens = {len(p) for p in img_pos}
        image_positions = (np.stack(img_pos) if len(lens) == 1
                           else np.array(img_pos, dtype=object))
        n_pad = [int((mask[b] == 0).sum()) for b in range(len(texts))]
        text_pos = []
        for b in range(len(texts)):
            origin, end = starts[b]
            shift = sum(len(r["replacement"]) - (r["span"][1] - r["span"][0])
                        for r in repl[b] if r["span"][0] < origin)
            text_pos.append(_span_tokens(offsets[b].numpy(), mask[b].numpy(), spans[b],
                                         origin + shift, end + shift, ids.shape[1]))
        return Batch(inputs=self.to_model(inputs), image_positions=image_positions, grids=grids,
                     sizes=sizes, text_positions=text_pos, n_pad=n_pad)

    # ------------------------------------------------------------------ scoring
    def score_options(self, images, prompts, options, *, system=None, batch_size: int = 8):
        """Next-token log-probs of candidate answers; see :func:`vlms.scoring.score_options`."""
        from .scoring import score_options

        return score_options(self, images, prompts, options, system=system,
                             batch_size=batch_size)

    def caption_logprob(self, images, captions, *, prompts=None, system=None,
                        batch_size: int = 8):
        """Summed log-probs of caption options; see :func:`vlms.scoring.caption_logprob`."""
        from .scoring import caption_logprob

        return caption_logprob(self, images, captions, prompts=prompts, system=system,
                               batch_size=batch_size)

    # ------------------------------------------------------------------ building / saving
    @classmethod
    def tiny(cls, *, seed: int = 0, **overrides) -> "VLMAdapter":
        """A tiny random-weight build with the real geometry (see :mod:`vlms.tiny`).

        The family's :meth:`tiny_tokenizer`, :meth:`tiny_config` (``overrides`` routed there),
        its transformers class ``architectures[0]`` with weights seeded by ``seed``, then
        :meth:`init_tiny_weights`, and :meth:`tiny_processor_for` the config.
        """
        import torch
        import transformers

        tok = cls.tiny_tokenizer()
        cfg = cls.tiny_config(tok, **overrides)
        cfg.architectures = list(cls.architectures)
        model_cls = getattr(transformers, cls.architectures[0])
        with torch.random.fork_rng(devices=[]):  # as vlms.tiny.seeded_init (not imported:
            torch.manual_seed(seed)              # vlms.tiny imports the registry, hence base)
            model = model_cls(cfg)
            cls.init_tiny_weights(model)
        return cls(model.eval(), cls.tiny_processor_for(tok, cfg), name=f"tiny-{cls.family}",
                   source=f"tiny-{cls.family}")

    @classmethod
    def tiny_processor_for(cls, tokenizer, config):
        """The tiny processor matching a tiny ``config`` (default: :meth:`tiny_processor`'s own
        defaults)."""
        return cls.tiny_processor(tokenizer)

    @classmethod
    def init_tiny_weights(cls, model) -> None:
        """Family-specific re-initialisation of a freshly built tiny model (default: none)."""

    @classmethod
    def from_pretrained(cls, source: str, *, dtype="auto", device_map=None) -> "VLMAdapter":
        """Load weights and processor from a hub id or a local directory.

        ``dtype="auto"`` keeps the checkpoint's dtype; ``device_map`` (``"cpu"``, ``"cuda"``,
        ``"auto"`` for several GPUs, or an accelerate map) places the weights while they load,
        so a model never has to fit in host RAM first.
        """
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype="auto" if dtype is None else dtype, device_map=device_map,
            trust_remote_code=False)
        return cls(model, cls.load_processor(source), name=source, source=source)

    @classmethod
    def load_processor(cls, source: str):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, trust_remote_code=False)

    def save(self, directory) -> None:
        """``save_pretrained`` of model and processor into ``directory``."""
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)


def _shaped(fn: Callable, family: str, batch: int | None, seq_len: int | None) -> Callable:
    """``fn`` seeing batch views of flat image activations and skipping decode steps."""
    if family in IMAGE_FAMILIES:
        if batch is None:
            return fn

        def image(act):
            # flat (Qwen: rows, hidden) or packed (Pixtral: 1, batch*rows, hidden)
            flat = act.ndim == 2 or act.shape[0] != batch
            view = act.reshape(batch, -1, act.shape[-1]) if flat else act
            new = fn(view)
            if new is None or new is view:
                return None
            return new.reshape(act.shape)
        return image
    if seq_len is None:
        return fn

    def lm(act):
        if act.shape[1] != seq_len:
            return None
        new = fn(act)
        return None if new is act else new
    return lm


def _install(mod, kind: str, fn: Callable):
    """Register a forward (post) or pre hook calling ``fn(tensor)``; handles tuple outputs.

    ``kind="pooler"``: a post hook on a module returning a model output whose
    ``pooler_output`` is the site's tensor (Qwen2.5-VL's vision model, whose merged tokens are
    put back in row-major order after the merger module)."""
    if kind == "pooler":
        def pooled(module, args, out):
            new = fn(out.pooler_output)
            if new is not None:
                out.pooler_output = new
                return out
            return None
        return mod.register_forward_hook(pooled)
    if kind == "pre":
        def pre(module, args, kwargs):
            if args:
                new = fn(args[0])
                if new is not None:
                    return (new,) + tuple(args[1:]), kwargs
            else:
                new = fn(kwargs["hidden_states"])
                if new is not None:
                    return args, dict(kwargs, hidden_states=new)
            return None
        return mod.register_forward_pre_hook(pre, with_kwargs=True)

    def post(module, args, out):
        new = fn(_first(out))
        if new is None:
            return None
        if isinstance(out, tuple):
            return (new,) + tuple(out[1:])
        return new
    return mod.register_forward_hook(post)


def _locate(text: str, prompt: str, model: str) -> tuple[int, int]:
    """``(origin, end)`` of ``prompt`` in templated ``text``: char ``c`` of the prompt is at
    ``origin + c``; ``end`` bounds what the template kept (templates may trim whitespace)."""
    if not prompt.strip():  # no text: nothing to locate (spans must be empty)
        return len(text), len(text)
    pos = text.rfind(prompt)
    if pos >= 0:
        return pos, pos + len(prompt)
    core = prompt.strip()
    pos = text.rfind(core) if core else -1
    if pos < 0:
        raise InputError(f"the chat template of {model} rewrote the prompt {prompt[:40]!r} "
                         "beyond whitespace; text-role positions cannot be found")
    lead = len(prompt) - len(prompt.lstrip())
    return pos - lead, pos + len(core)


def _span_tokens(offsets: np.ndarray, mask: np.ndarray, spans: dict, start: int, stop: int,
                 seq: int) -> dict[str, np.ndarray]:
    """Token positions overlapping each char span (prompt-relative, shifted by ``start``,
    clipped to ``stop``)."""
    out: dict[str, np.ndarray] = {}
    valid = mask.astype(bool) & (offsets[:, 1] > offsets[:, 0])
    for role in TEXT_SPAN_ROLES:
        if role not in spans:
            continue
        s, e = spans[role]
        if not (0 <= s <= e):
            raise InputError(f"text span {role}={spans[role]} is not a valid [start, end) "
                             "char range; fix the prompt's spans")
        s, e = s + start, min(e + start, stop)
        hit = valid & (offsets[:, 0] < e) & (offsets[:, 1] > s)
        pos = np.nonzero(hit)[0]
        if len(pos) == 0 and e > s:
            raise InputError(f"text span {role}={spans[role]} covers no token of the prompt; "
                             "check the prompt's char spans")
        out[role] = pos.astype(np.int64)
    out["last"] = np.array([seq - 1], dtype=np.int64)
    return out
