"""Extraction: stream a dataset through a model with hooks and write activations + token roles
into an activation store (``actstore``), batch by batch.

Where it sits: ``scenegen`` dataset directory -> :func:`run_extract` -> ``actstore`` store. The
sample order, site families, layers and token axes are fixed up front from the dataset's
metadata (no image is decoded for that), so every process and every rerun pre-allocates the same
store; batches are the store's shards, written whole and marked done only after their data, so a
killed run resumed with the same command equals a clean run, a finished store is left untouched,
and ``shard=(i, n)`` lets several processes fill disjoint batches. A batch is one forward of
``batch_size`` samples, or, with ``shard_samples`` larger, several forwards whose outputs are
gathered until the shard is complete (:func:`_forwards`). Memory holds the forward in the model,
the shard being filled and the (at most ``WRITES_IN_FLIGHT``) shards being written.

Token axes per site family
--------------------------
``projector``      the image tokens, row-major over the token grid;
``vision.blocks``  pooled (default): the same token grid (mean of each token's patches);
                   unpooled: the patches in the family's native order (labels of their token);
``lm.resid``       the whole unpadded sequence (position = index in it), text roles included.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ExtractError, InputError

FAMILIES = ("vision.blocks", "projector", "lm.resid")
WRITES_IN_FLIGHT = 2
"""Batches whose store writes may be in flight while the next batch runs through the model."""


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """What to extract, from where, into which store."""

    model: str
    """Alias, hub id or saved directory (see ``spatialbind model list``)."""
    data: str
    """Dataset directory (``metadata.jsonl`` + images + masks)."""
    store: str
    """Store path or fsspec URL."""
    sites: tuple[str, ...] = ("projector", "lm.resid")
    """Sites or site families: ``projector``, ``lm.resid[.i]``, ``vision.blocks[.i]``."""
    layers: str | tuple[int, ...] | None = None
    """Layers for families given without an index ('0,4,8' or '0-8'); None = all."""
    batch_size: int = 8
    """Samples per forward (and per store shard unless ``shard_samples`` is given)."""
    shard_samples: int | None = None
    """Samples per store shard when the store is created (None: ``batch_size``, one forward per
    shard). Forwards of ``batch_size`` samples accumulate until a shard is complete, then it is
    written: fewer, larger shard files (cheaper cold role queries) without larger forwards. An
    existing store keeps its own shards (another value here is refused)."""
    shard: str | tuple[int, int] | None = None
    """``"i/n"``: fill only batches ``b`` with ``b % n == i``."""
    pool_vision: bool = True
    """Mean-pool vision-block patches to the LM token grid."""
    dtype: str = "auto"
    """Model compute dtype (``auto``: the checkpoint's own; the store records the resolved one)."""
    store_dtype: str = "float16"
    """Stored activation dtype (float16 or float32)."""
    object_fraction: float = 0.5
    """Share of a token's cell a mask must cover for the token to be ``object``."""
    prompt_kind: str = "completion"
    """Prompt of each stimulus to run (its first of this kind; else its first; else none)."""
    device: str | None = None
    """torch device."""
    seed: int = 0
    """Weight seed of tiny builds."""

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ExtractError(f"The 'batch_size' parameter of ExtractConfig must be an int >= 1. "
                               f"Got {self.batch_size!r} instead.")
        if self.shard_samples is not None and (not isinstance(self.shard_samples, int)
                                               or self.shard_samples < 1):
            raise ExtractError(f"The 'shard_samples' parameter of ExtractConfig must be an int "
                               f">= 1 or None. Got {self.shard_samples!r} instead.")
        if not 0.0 < float(self.object_fraction) <= 1.0:
            raise ExtractError(f"The 'object_fraction' parameter of ExtractConfig must be in "
                               f"(0, 1]. Got {self.object_fraction!r} instead.")
        if self.store_dtype not in ("float16", "float32"):
            raise ExtractError(f"The 'store_dtype' parameter of ExtractConfig must be 'float16' "
                               f"or 'float32'. Got {self.store_dtype!r} instead.")
        if not self.sites:
            raise ExtractError(f"sites={self.sites!r} gives no site; pass e.g. "
                               "sites=('projector', 'lm.resid')")
        object.__setattr__(self, "sites", tuple(s.strip() for s in self.sites))
        object.__setattr__(self, "layers", parse_layers(self.layers))
        object.__setattr__(self, "shard", parse_shard(self.shard))


def parse_layers(spec) -> tuple[int, ...] | None:
    """``'0,4,8'`` / ``'0-3'`` / ``'0:3'`` / ``(0, 4)`` / None or ``'all'`` (None: every layer) ->
    sorted tuple of ints (:func:`common.parse_layers`, the grammar every command shares)."""
    from common import parse_layers as parse

    return parse(spec, error=ExtractError)


def parse_shard(spec) -> tuple[int, int] | None:
    """``'i/n'`` or ``(i, n)`` -> ``(i, n)`` with ``0 <= i < n``."""
    if spec is None or spec == "":
        return None
    try:
        i, n = (int(x) for x in (spec.split("/") if isinstance(spec, str) else spec))
    except (ValueError, TypeError):
        raise ExtractError(f"shard={spec!r} must be i/n, e.g. 0/2 and 1/2 for two "
                           "processes") from None
    if not (n >= 1 and 0 <= i < n):
        raise ExtractError(f"shard={spec!r} must satisfy 0 <= i < n")
    return i, n


def plan_sites(adapter, sites, layers) -> dict[str, tuple[int, ...]]:
    """Site family -> layers to extract, validated against the model.

    Raises
    ------
    SiteError
        Unknown site, or a block/layer the model lacks (with the valid range).
    """
    plan: dict[str, set[int]] = {}
    for s in sites:
        if s in ("lm.resid", "vision.blocks"):
            top = adapter.n_lm_layers if s == "lm.resid" else adapter.n_vision_blocks - 1
            ls = layers if layers is not None else tuple(range(top + 1))
            for i in ls:
                adapter.check_site(f"{s}.{i}")
            plan.setdefault(s, set()).update(ls)
        elif s == "projector":
            plan.setdefault(s, set()).add(0)
        else:
            adapter.check_site(s)
            fam, i = s.rsplit(".", 1)
            plan.setdefault(fam, set()).add(int(i))
    return {f: tuple(sorted(plan[f])) for f in FAMILIES if f in plan}


def choose_prompt(stim, kind: str):
    """The stimulus' first prompt of ``kind``, else its first prompt, else None (image only)."""
    for p in stim.prompts:
        if p.kind == kind:
            return p
    return stim.prompts[0] if stim.prompts else None


def samples_frame(stimuli, prompts):
    """One row of labels per sample (the store's ``samples`` table)."""
    import pandas as pd

    rows = []
    for s, p in zip(stimuli, prompts):
        rows.append({
            "sample_id": s.id, "scene_id": s.scene_id or s.id, "relation": s.relation or "",
            "axis": s.axis or "", "task": s.task, "split": s.split,
            "counterfactual_of": s.counterfactual_of or "",
            "counterfactual_kind": s.counterfactual_kind or "", "generator": s.generator,
            "index": int(s.index), "width": int(s.width), "height": int(s.height),
            "prompt_kind": p.kind if p else "", "prompt": p.text if p else "",
            "answer": p.answer if p else "",
            # slots along the axis, whether or not each entity owns a token (probes' 'side')
            "n_targets": sum(e.role == "target" and e.ordinal is not None for e in s.entities),
        })
    return pd.DataFrame(rows)


def _seq_lengths(adapter, stimuli, prompts) -> np.ndarray:
    """Exact unpadded sequence length of every sample, without decoding any image.

    Text is tokenized alone; the image-token overhead is measured once per image size with a
    blank image of that size.
    """
    texts = [adapter.chat_text(p.text if p else "", system=p.system if p else None)
             for p in prompts]
    lens = np.array([len(x) for x in adapter.tokenizer(texts)["input_ids"]], dtype=np.int64)
    over: dict[tuple[int, int], int] = {}
    for s in stimuli:
        key = (int(s.width), int(s.height))
        if key not in over:
            blank = np.full((key[1], key[0], 3), 255, np.uint8)
            b = adapter.prepare([blank], ["x"])
            over[key] = b.seq_len - len(adapter.tokenizer([adapter.chat_text("x")])["input_ids"][0])
    return lens + np.array([over[(int(s.width), int(s.height))] for s in stimuli])


def site_specs(adapter, plan, stimuli, prompts, *, pool_vision: bool, store_dtype: str):
    """``actstore.SiteSpec`` per family (token axes fixed from metadata alone)."""
    from actstore import SiteSpec

    grids = {adapter.token_grid(int(s.width), int(s.height)) for s in stimuli}
    n_img = max(r * c for r, c in grids)
    specs = []
    for fam, layers in plan.items():
        if fam == "projector":
            specs.append(SiteSpec(name=fam, n_tokens=n_img, hidden=adapter.d_lm, dtype=store_dtype))
        elif fam == "vision.blocks":
            n = n_img if pool_vision else max(
                len(adapter.patch_token_index(g)) for g in grids)
            specs.append(SiteSpec(name=fam, n_tokens=n, hidden=adapter.d_vision, layers=layers,
                                  dtype=store_dtype))
        else:
            n = int(_seq_lengths(adapter, stimuli, prompts).max())
            specs.append(SiteSpec(name=fam, n_tokens=n, hidden=adapter.d_lm, layers=layers,
                                  dtype=store_dtype))
    return specs


def provenance(adapter, cfg: ExtractConfig, ds) -> dict[str, Any]:
    """Provenance attrs of the store's model group."""
    src = adapter.source or cfg.model
    if src.startswith("tiny-"):
        revision = f"tiny-seed{cfg.seed}"
    elif Path(src).is_dir():
        h = hashlib.sha256()
        for f in sorted(Path(src).glob("*.json")) + sorted(Path(src).glob("*.safetensors")):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            h.update(f.read_bytes()[:1 << 20])
        revision = "dir-" + h.hexdigest()[:16]
    else:
        revision = str(getattr(adapter.config, "_commit_hash", None) or "main")
    data_hash = ds.config_hash or hashlib.sha256(
        (Path(ds.root) / "metadata.jsonl").read_bytes()).hexdigest()[:16]
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("shard", "device", "store")
            and not (k == "shard_samples" and v is None)}  # unset: as before the option existed
    return {"model_id": src, "revision": revision, "adapter": type(adapter).__name__,
            "dtype": str(getattr(getattr(adapter, "model", None), "dtype", cfg.dtype)
                         ).removeprefix("torch."), "data_hash": data_hash, "extract": keep}


def run_extract(cfg: ExtractConfig, *, progress: bool = True, limit: int | None = None,
                echo: Callable[[str], Any] = print, adapter=None,
                write_options: dict | None = None,
                on_batch: Callable[[int], Any] | None = None) -> dict[str, int]:
    """Extract activations of every pending sample (of this shard) into the store.

    Parameters
    ----------
    cfg
        What to extract (see :class:`ExtractConfig`).
    progress
        Show a tqdm bar (samples, items/s).
    limit
        Stop after this many batches (tests of resumption).
    echo
        Where the size estimate and notes go.
    adapter
        An already loaded adapter (default: ``load_adapter(cfg.model)``).
    write_options
        How the store is written (the stored bytes are the same either way): ``in_flight``
        (batches whose writes overlap the next forward, default :data:`WRITES_IN_FLIGHT`),
        ``io_threads`` and ``direct`` (see :meth:`actstore.StoreWriter.open_or_create`).
    on_batch
        Called with the number of samples of each batch once it is written and marked done.

    Returns
    -------
    dict
        ``written`` (samples this call), ``done`` and ``total`` (samples in the store).
    """
    from actstore import check_target, estimate_bytes
    from common.io import check_writable
    from tqdm.auto import tqdm

    from .launchvars import launcher_device, launcher_shard
    from .registry import load_adapter

    if cfg.shard is None:  # an explicit --shard wins over launcher variables
        shard, var = launcher_shard()
        if shard is not None:
            cfg = _replace(cfg, shard=shard)
            echo(f"shard {shard[0]}/{shard[1]} from {var}")
    if cfg.device is None and (dev := launcher_device()) is not None:
        cfg = _replace(cfg, device=dev)
        echo(f"device {dev} from LOCAL_RANK")
    _read_stimuli(cfg)  # a bad --data fails before the model loads
    check_target(cfg.store)  # refuse a bad --store before the model loads
    check_writable(cfg.store, what="--store", error=ExtractError)
    opts = dict(write_options or {})
    in_flight = opts.pop("in_flight", WRITES_IN_FLIGHT)
    if not isinstance(in_flight, int) or in_flight < 1 or set(opts) - {"io_threads", "direct"}:
        raise ExtractError(f"write_options={write_options!r}: known keys are in_flight (int >= 1), "
                           f"io_threads, direct")
    ad = adapter or load_adapter(cfg.model, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed)
    w, ctx = open_writer(cfg, ad, **opts)
    todo = list(w.batches(cfg.shard))
    n_todo = int(sum(len(b) for b in todo))
    total = len(ctx["stimuli"])
    specs = ctx["specs"]
    est = estimate_bytes(specs, total)
    echo(f"store estimate: {est / 2**20:.1f} MiB for {total} samples "
         f"({', '.join(f'{s.name}{list(s.layers)}x{s.n_tokens}x{s.hidden}' for s in specs)}, "
         f"{cfg.store_dtype}); {n_todo} samples to extract")
    if limit is not None:
        todo = todo[:limit]
    bar = tqdm(total=n_todo, desc="extract", unit="sample", disable=not progress,
               dynamic_ncols=True)
    try:
        def done_batch(n):
            bar.update(n)
            if on_batch is not None:
                on_batch(n)

        written = _write_batches(cfg, ad, w, ctx, todo, on_batch=done_batch,
                                 in_flight=in_flight)
    finally:
        bar.close()
        w.close()
    return {"written": written, "done": int(w.done().sum()), "total": total}


def _replace(cfg: ExtractConfig, **kw) -> ExtractConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def _read_stimuli(cfg: ExtractConfig):
    from scenegen import read_dataset

    ds = read_dataset(cfg.data)
    stimuli = list(ds.stimuli)
    if not stimuli:
        raise ExtractError(f"{cfg.data} holds no stimuli; nothing to extract")
    return ds, stimuli


def open_writer(cfg: ExtractConfig, ad, **writer):
    """Create (or reopen) the store for ``cfg`` with the loaded adapter ``ad``.

    Returns ``(writer, ctx)``; ``ctx`` holds the dataset, stimuli, prompts and site specs that
    :func:`extract_batches` needs. Every process computes the same layout from the metadata.
    ``writer`` goes to :meth:`actstore.StoreWriter.open_or_create` (``io_threads``, ``direct``).
    """
    from actstore import StoreWriter

    ds, stimuli = _read_stimuli(cfg)
    prompts = [choose_prompt(s, cfg.prompt_kind) for s in stimuli]
    plan = plan_sites(ad, cfg.sites, cfg.layers)
    specs = site_specs(ad, plan, stimuli, prompts, pool_vision=cfg.pool_vision,
                       store_dtype=cfg.store_dtype)
    params = {"object_coverage": float(cfg.object_fraction), "pool_vision": bool(cfg.pool_vision),
              "prompt_kind": cfg.prompt_kind}
    w = StoreWriter.open_or_create(cfg.store, model=cfg.model, provenance=provenance(ad, cfg, ds),
                                   samples=samples_frame(stimuli, prompts), sites=specs,
                                   params=params, batch_size=cfg.shard_samples or cfg.batch_size,
                                   creator=_creator(cfg), **writer)
    if cfg.shard_samples is not None and w.batch_size != cfg.shard_samples:
        w.close()
        raise ExtractError(f"{cfg.store} was created with shards of {w.batch_size} samples, not "
                           f"{cfg.shard_samples}; drop --shard-samples to resume it, or use "
                           f"another --store path")
    return w, {"ds": ds, "stimuli": stimuli, "prompts": prompts, "specs": specs}


def _creator(cfg: ExtractConfig) -> bool | None:
    """On an object store (no atomic create) only shard 0 of several creates the store; on a
    local disk the writer's creation lock elects a creator among processes started together."""
    url = str(cfg.store)
    remote = "://" in url and not url.startswith("file://")
    return None if cfg.shard is None or not remote else cfg.shard[0] == 0


def extract_batches(cfg: ExtractConfig, ad, batches) -> int:
    """Extract and write the given batches (lists of sample indices, each one store shard) of an
    existing store; batches already done are skipped. Returns samples written."""
    w, ctx = open_writer(cfg, ad)
    try:
        done = w.done()
        todo = [np.asarray(b, np.int64) for b in batches]
        todo = [b[~done[b]] for b in todo]
        return _write_batches(cfg, ad, w, ctx, [b for b in todo if len(b)])
    finally:
        w.close()


def _write_batches(cfg: ExtractConfig, ad, w, ctx, todo, on_batch=None,
                   in_flight: int = WRITES_IN_FLIGHT) -> int:
    from collections import deque

    from common.io import test_point

    ds, stimuli, prompts, specs = ctx["ds"], ctx["stimuli"], ctx["prompts"], ctx["specs"]
    written = 0
    # the store writes of the last ``in_flight`` batches (store shards) overlap the forwards of
    # the next one (memory holds at most in_flight + 1 shards); each batch is marked done only
    # after its own data are written (batches are disjoint shards, so writes in flight never
    # touch the same stored object), and batches are reported done in order
    pool = ThreadPoolExecutor(max_workers=in_flight)
    pending: deque = deque()

    def finish_one():
        nonlocal written
        fut, n = pending.popleft()
        written += fut.result()
        if on_batch is not None:
            on_batch(n)
        test_point("extract-batch")

    try:
        for idx in todo:
            acts, tokens = _forwards(cfg, ad, ds, stimuli, prompts, specs, idx)
            while len(pending) >= in_flight:
                finish_one()
            pending.append((pool.submit(w.write, idx, acts, tokens), len(idx)))
            del acts, tokens
        while pending:
            finish_one()
    finally:
        for fut, _ in pending:  # an error elsewhere: let the writes in flight finish cleanly
            fut.exception()
        pool.shutdown(wait=True)
    return written


def _forwards(cfg: ExtractConfig, ad, ds, stimuli, prompts, specs, idx):
    """``(acts, tokens)`` of the store shard ``idx`` in the writer's format, from forwards of at
    most ``cfg.batch_size`` samples each (one forward when the shard is no larger), copied into
    one buffer per array in sample order as they come (memory: the shard and one forward's
    output); nothing of the shard is written before all its forwards are done, so a killed run
    redoes the whole shard."""
    from common.io import test_point

    n, B = len(idx), cfg.batch_size
    acts = tokens = None
    for a in range(0, n, B):
        sub = idx[a:a + B]
        pa, pt = extract_batch(ad, ds, [stimuli[i] for i in sub], [prompts[i] for i in sub],
                               specs=specs, pool_vision=cfg.pool_vision,
                               object_fraction=cfg.object_fraction)
        test_point("extract-forward")
        if n <= B:
            return pa, pt
        if acts is None:
            acts = {f: np.empty((n, *v.shape[1:]), v.dtype) for f, v in pa.items()}
            tokens = {f: {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in d.items()}
                      for f, d in pt.items()}
        for f, v in pa.items():
            acts[f][a:a + len(sub)] = v
        for f, d in pt.items():
            for k, v in d.items():
                tokens[f][k][a:a + len(sub)] = v
        del pa, pt
    return acts, tokens


def extract_batch(ad, ds, stims, prompts, *, specs, pool_vision: bool,
                  object_fraction: float):
    """Run one batch and return ``(acts, tokens)`` in the writer's format."""
    from actstore import ROLE_CODES

    from .roles import image_roles

    images, masks = [], []
    for s in stims:
        img = ds.image(s)
        if img.shape[:2] != (s.height, s.width):
            raise InputError(f"image of stimulus {s.id} ({ds.root / s.file_name}) is "
                             f"{img.shape[1]}x{img.shape[0]} but metadata says "
                             f"{s.width}x{s.height}; regenerate the dataset")
        images.append(img)
        masks.append(ds.mask(s))
    batch = ad.prepare(images, [p if p is not None else "" for p in prompts])
    spec = {s.name: s for s in specs}
    sites = [f"{f}.{i}" if f != "projector" else f for f, sp in spec.items() for i in sp.layers]
    _, got = ad.capture(batch, sites, logits_to_keep=1)
    B = len(stims)
    code = np.vectorize(ROLE_CODES.__getitem__, otypes=[np.int8])
    acts: dict[str, Any] = {}
    tokens: dict[str, dict[str, np.ndarray]] = {}
    per_item = [image_roles(s, masks[b], batch.grids[b], object_fraction=object_fraction)
                for b, s in enumerate(stims)]
    for b in range(B):
        if batch.seq_len - batch.n_pad[b] > spec.get("lm.resid", _Inf()).n_tokens:
            raise ExtractError(f"stimulus {stims[b].id}: sequence longer than the store's token "
                               "axis; the length estimate is wrong for this model (report it)")
    for fam, sp in spec.items():
        if fam == "lm.resid":
            acts[fam], tokens[fam] = _lm_family(ad, batch, got, sp, per_item, code)
        else:
            acts[fam], tokens[fam] = _image_family(ad, batch, got, fam, sp, per_item, code,
                                                   pool_vision)
    return acts, tokens


class _Inf:
    n_tokens = 1 << 62


def _image_family(ad, batch, got, fam, sp, per_item, code, pool_vision):
    B = len(batch)
    T = sp.n_tokens
    out, tdt = _stored_buffer(B, sp)
    lab = {k: np.full((B, T), v, dt) for k, (dt, v) in _LABELS.items()}
    for li, layer in enumerate(sp.layers):
        site = fam if fam == "projector" else f"{fam}.{layer}"
        a = got[site]
        for b in range(B):
            x = a[b][None].float()
            if fam == "vision.blocks" and pool_vision:
                x = ad.pool_vision(x, batch.grids[b])
            x = x[0].to(tdt).cpu().numpy()
            out[b, li, : len(x)] = x
    for b in range(B):
        ir = per_item[b]
        rows, cols = batch.grids[b]
        tok = np.arange(rows * cols)
        if fam == "vision.blocks" and not pool_vision:
            tok = ad.patch_token_index(batch.grids[b])
        r, c = np.divmod(tok, cols)
        n = len(tok)
        lab["role"][b, :n] = code(ir.role[tok])
        lab["ordinal"][b, :n] = ir.slot[tok]
        lab["entity"][b, :n] = ir.entity[tok]
        lab["row"][b, :n], lab["col"][b, :n] = r, c
        pos = np.asarray(batch.image_positions[b], dtype=np.int64) - batch.n_pad[b]
        lab["position"][b, :n] = pos[tok]
    return out, lab


def _stored_buffer(B: int, sp):
    """A zeroed ``(B, L, n_tokens, hidden)`` host buffer in the store's dtype (padding = 0, as the
    writer pads) and the matching torch dtype for the device-side cast."""
    import torch

    out = np.zeros((B, len(sp.layers), sp.n_tokens, sp.hidden), np.dtype(sp.dtype))
    return out, getattr(torch, str(sp.dtype))


def _host(t) -> np.ndarray:
    """``t`` as a host numpy array: a CPU tensor is shared as it is; a GPU tensor lands in
    page-locked memory in one copy (torch caches those blocks, so later batches reuse them;
    faster than a pageable copy), or in ordinary memory if pinning is refused."""
    import torch

    if t.device.type == "cpu":
        return t.numpy()
    try:
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    except RuntimeError:
        return t.cpu().numpy()
    h.copy_(t)
    return h.numpy()


_LABELS = {"role": (np.int8, 0), "ordinal": (np.int8, -1), "entity": (np.int16, 0),
           "row": (np.int16, -1), "col": (np.int16, -1), "position": (np.int32, -1)}


def _lm_family(ad, batch, got, sp, per_item, code):
    import torch

    from .roles import sequence_roles

    B = len(batch)
    T = sp.n_tokens  # extract_batch checked that every sequence fits
    tdt = getattr(torch, str(sp.dtype))
    first = got[f"lm.resid.{sp.layers[0]}"]
    # the whole (B, L, T, H) batch in the stored dtype is assembled on the model's device (cast
    # float32 first, as the store's own cast would; left padding dropped, the store's padding
    # is 0) and crosses to the host in one copy, so the writer copies nothing more
    dev = torch.zeros((B, len(sp.layers), T, sp.hidden), dtype=tdt, device=first.device)
    for li, layer in enumerate(sp.layers):
        a = got[f"lm.resid.{layer}"].float().to(tdt)
        for b in range(B):
            p = batch.n_pad[b]
            dev[b, li, : a.shape[1] - p] = a[b, p:]
    out = _host(dev)
    lab = {k: np.full((B, T), v, dt) for k, (dt, v) in _LABELS.items()}
    for b in range(B):
        p = batch.n_pad[b]
        n = batch.seq_len - p
        roles = sequence_roles(batch, b, per_item[b])[p:]
        lab["role"][b, :n] = code(roles)
        lab["position"][b, :n] = np.arange(n)
        pos = np.asarray(batch.image_positions[b], dtype=np.int64) - p
        ir = per_item[b]
        cols = batch.grids[b][1]
        lab["ordinal"][b, pos] = ir.slot
        lab["entity"][b, pos] = ir.entity
        r, c = np.divmod(np.arange(len(pos)), cols)
        lab["row"][b, pos], lab["col"][b, pos] = r, c
    return out, lab
