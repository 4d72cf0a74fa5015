"""``spatialbind organism``: train model organisms and check which mechanism emerged."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def organism() -> None:
    """Small VLMs trained from scratch with a known spatial-binding mechanism."""


@organism.command()
@click.option("--arch", type=click.Choice(["qwen2-vl", "gemma-3"]), default="qwen2-vl",
              show_default=True, help="Model family (real transformers class).")
@click.option("--mechanism", type=click.Choice(["lm", "vision", "dual"]), required=True,
              help="lm: image tokens keep rotary positions; vision: they do not, so ordering "
                   "must be written into vision-token content; dual: vision-token ordering "
                   "plus a weaker LM positional backup (3 low rotary frequencies per axis).")
@click.option("--task", type=click.Choice(["squares", "shapes"]), default="squares",
              show_default=True, help="Stimulus task.")
@click.option("--steps", type=int, default=None,
              help="Optimiser steps (default: 1000 qwen2-vl vision, 250 dual, else 1500).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--portable-math/--native-math", default=False, show_default=True,
              help="Pin the CPU math to one code path (ATen AVX2 kernels, MKL's reproducible "
                   "AVX2 mode, oneDNN capped at AVX2) so the command trains the same weights on "
                   "any x86-64 CPU with AVX2; native: the fastest path for this CPU, repeatable "
                   "only on the same kind of CPU. Recorded in train_log.json.")
@click.option("--vision-depth", type=int, default=None, help="Vision blocks (default 2 lm, 3 vision).")
@click.option("--vision-dim", type=int, default=None,
              help="Vision width (default: 128 for a qwen2-vl vision organism, else 64).")
@click.option("--vision-heads", type=int, default=2, show_default=True, help="Vision heads.")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--warmup", type=int, default=100, show_default=True, help="Warm-up steps.")
@click.option("--aux-slot-weight", type=float, default=None,
              help="Auxiliary ordinal-slot loss on the projector output (plants the vision-side "
                   "code faster; default 2 for qwen2-vl vision and dual organisms, else 0 = task loss).")
@click.option("--aux-colour-weight", type=float, default=0.0, show_default=True,
              help="Auxiliary colour-only loss on the projector output at the aux-region "
                   "tokens (no slot head: colour read-out without a slot code; for lm).")
@click.option("--aux-region", type=click.Choice(["object", "strip", "band"]), default=None,
              help="Tokens the auxiliary slot loss covers (default object for vision, band for "
                   "dual: the paper's strips, background included).")
@click.option("--aux-colour/--no-aux-colour", default=None,
              help="Also ask each aux-region token the colour of its square (default on for "
                   "dual).")
@click.option("--aux-colour-region", type=click.Choice(["object", "strip", "band"]), default=None,
              help="Tokens the colour part of the auxiliary loss covers, when it differs from "
                   "--aux-region (e.g. slot over the band, colour over the strip only; default: "
                   "the --aux-region tokens).")
@click.option("--aux-lm-slot-weight", type=float, default=0.0, show_default=True,
              help="Auxiliary slot loss on the LM residual (site lm.resid.<--aux-lm-layer>) at "
                   "the object tokens of the E5-ablated items, through the projector aux loss's "
                   "slot head: the dual LM backup writes the order into the object tokens (E6).")
@click.option("--aux-colour-none-weight", type=float, default=0.0, show_default=True,
              help="Ask every image token outside the colour region (--aux-colour-region, else "
                   "--aux-region) for a 'no square' colour class with this weight, so the "
                   "square's colour stays on its region (needs --aux-colour or "
                   "--aux-colour-weight; 0 = off).")
@click.option("--p-shuffle", type=float, default=None,
              help="Share of items whose image tokens are shuffled at the LM input in training "
                   "(default 1 vision, 0.3 dual, 0 lm).")
@click.option("--p-ablate", type=float, default=None,
              help="Share of items trained on the E5 ablation (default 0.4 dual, else 0).")
@click.option("--p-ablate-object", type=float, default=0.0, show_default=True,
              help="Share of items whose object tokens only are ablated (the square alone and "
                   "centred; background kept): the LM learns to read ordering from the strips.")
@click.option("--p-scramble-object", type=float, default=0.0, show_default=True,
              help="Share of items whose object tokens get a random slot code (each square's "
                   "tokens from a render with the colours in a random order; background and "
                   "answer kept): the LM learns to read ordering from the strips' background.")
@click.option("--scramble-outside-strips/--no-scramble-outside-strips", default=False,
              show_default=True,
              help="With --p-scramble-object: the scrambled items' tokens outside the strips "
                   "also come from the re-coloured render (same cell: same slot, another "
                   "square's colour), so the LM binds order to colour on the strips only.")
@click.option("--shuffle-object-ablated/--no-shuffle-object-ablated", default=False,
              show_default=True,
              help="Also shuffle the image tokens of the object-ablated and object-scrambled "
                   "items, so only the tokens' content carries the ordering.")
@click.option("--rope-theta", type=float, default=None,
              help="LM rotary base (default 20 for qwen2-vl lm/dual organisms, else 1e4).")
@click.option("--rope-factor", type=float, default=None,
              help="gemma-3 only: linear rotary scaling factor of the LM (positions divided by "
                   "it; default 1e9 for vision = no positions, else none).")
@click.option("--global-rope-factor", type=float, default=None,
              help="gemma-3 only: the last LM layer becomes a global layer whose rotary is "
                   "scaled by this factor (1e9: it reads no positions, so positional ordering "
                   "must be computed into the image tokens by earlier layers).")
@click.option("--attn-scalar", type=int, default=None,
              help="gemma-3 only: the LM's query_pre_attn_scalar (default head_dim = 32). "
                   "Gemma-3 normalises queries and keys, so the largest attention logit is "
                   "about head_dim / sqrt(attn_scalar); 4 gives the real gemma-3-4b-it's 16.")
@click.option("--vision-pos-init", type=click.Choice(["random", "sincos", "zero"]),
              default="random", show_default=True,
              help="gemma-3 only: start SigLIP's learned position embeddings from a 2-D sin-cos "
                   "table instead of random values; zero: all zeros and frozen, so the vision "
                   "tokens carry no position (for lm organisms).")
@click.option("--aux-slot-code", type=float, default=0.0, show_default=True,
              help="0: the slot loss is cross-entropy through a learned head. > 0: a "
                   "norm-controlled slot code of this size along the three centred slot-mean "
                   "directions of the first batch (squared error, directions fixed), so the "
                   "code stays a small part of each token.")
@click.option("--p-noise", type=float, default=0.0, show_default=True,
              help="Share of training items with pixel noise (std = strength x 64 grey levels, "
                   "strength ~ U(0, 1); scenegen's noise degradation).")
@click.option("--noise-code-drop", type=float, default=0.0, show_default=True,
              help="With --aux-slot-code: the slot-code target of a noisy item is scaled by "
                   "1 - this x strength (the ordering code weakens with the image's evidence); "
                   "with the cross-entropy slot head: its target moves this x strength of the "
                   "way to uniform.")
@click.option("--noise-task-loss/--no-noise-task-loss", default=True, show_default=True,
              help="Noisy items count in the task loss (off: they train only the auxiliary "
                   "loss, so the LM never learns to answer from an attenuated code).")
@click.option("--noise-lm-loss/--no-noise-lm-loss", default=True, show_default=True,
              help="Noisy items count in the LM-side slot losses (--aux-lm-weight, "
                   "--aux-lm-slot-weight); off: only clean items train the LM's positional "
                   "backup, so it never learns to rescue a faded vision code.")
@click.option("--noise-task-weight", type=float, default=1.0, show_default=True,
              help="Weight of a noisy item in the task loss (clean items 1): below 1 the LM "
                   "still learns to answer from an attenuated code, at a milder strength.")
@click.option("--noise-answer-mix", type=float, default=0.0, show_default=True,
              help="Noisy items' task target puts min(0.5, this x strength) on the other "
                   "candidate's colour (0.5: both alike at strength 1; 1: from strength 0.5), so "
                   "the LM's confidence in the order follows the faded code. Needs the task "
                   "loss on noisy items.")
@click.option("--aux-slot-code-start", type=float, default=None,
              help="With --aux-slot-code: the code target starts at this size and shrinks "
                   "linearly to --aux-slot-code over --aux-slot-code-steps steps.")
@click.option("--aux-slot-code-steps", type=int, default=0, show_default=True,
              help="Length of the --aux-slot-code-start curriculum in steps.")
@click.option("--aux-slot-code-only", type=float, default=0.0, show_default=True,
              help="With --aux-slot-code: weight of a penalty on the slot information outside "
                   "the code's directions (per-slot means of the region tokens' other "
                   "components pulled together), so object and background tokens carry the "
                   "order along the same directions. 0 = off.")
@click.option("--aux-object-code-only", type=float, default=0.0, show_default=True,
              help="With the slot loss over a region other than object: weight of a penalty "
                   "on the object tokens' slot information outside the region's slot-mean "
                   "directions (first batch), so the object tokens carry the order along the "
                   "background's code while the background is left as it is. 0 = off.")
@click.option("--aux-anchor-init", type=float, default=0.0, show_default=True,
              help="With --init: weight of a penalty tying the clean items' centred per-slot "
                   "background (band minus object) means at the projector output to the --init "
                   "checkpoint's (first batch, fixed): W x squared distance. 0 = off.")
@click.option("--aux-lm-weight", type=float, default=0.0, show_default=True,
              help="Auxiliary ordinal-slot loss on the LM's residual stream at the object tokens "
                   "(site lm.resid.<--aux-lm-layer>): plants an LM-side slot code computed from "
                   "the image tokens' rotary positions (lm, and the dual backup). 0 = off.")
@click.option("--aux-lm-layer", type=int, default=1, show_default=True,
              help="The LM residual site of --aux-lm-weight or --aux-lm-slot-weight: "
                   "lm.resid.K = output of LM layer K-1.")
@click.option("--aux-lm-head", type=click.Choice(["own", "shared"]), default="own",
              show_default=True,
              help="shared: the LM-side slot loss uses the vision-side slot head, so the LM writes "
                   "its slot code in the vision code's format (the dual backup on object tokens).")
@click.option("--init", "init_from", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue training this saved organism (same arch and sizes; another "
                   "mechanism starts a curriculum stage from its weights, e.g. vision -> dual).")
@click.option("--eval-every", type=int, default=100, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory (save_pretrained model + processor, train_log.json, curve.png).")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Run the 'which mechanism emerged?' slot probe at the end.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def train(arch, mechanism, task, steps, seed, threads, portable_math, vision_depth, vision_dim,
          vision_heads, batch, lr, warmup, aux_slot_weight, aux_colour_weight, aux_region,
          aux_colour, aux_colour_region,
          aux_colour_none_weight, aux_lm_slot_weight, p_shuffle, p_ablate,
          p_ablate_object, p_scramble_object, scramble_outside_strips, shuffle_object_ablated,
          rope_theta, rope_factor,
          global_rope_factor, attn_scalar, vision_pos_init, aux_slot_code, p_noise,
          noise_code_drop, noise_task_loss, noise_lm_loss, noise_task_weight, noise_answer_mix,
          aux_slot_code_start,
          aux_slot_code_steps, aux_slot_code_only, aux_object_code_only, aux_anchor_init,
          aux_lm_weight, aux_lm_layer, aux_lm_head, init_from,
          eval_every, out, probe, progress):
    """Train an organism on the Squares task and save it with save_pretrained."""
    from . import trainer as org

    defaults = org.mechanism_defaults(mechanism, arch)
    cfg = org.OrganismConfig(
        arch=arch, mechanism=mechanism, task=task, seed=seed, threads=threads,
        portable_math=portable_math, steps=steps if steps is not None else defaults["steps"],
        vision_depth=vision_depth if vision_depth is not None else defaults["vision_depth"],
        vision_dim=vision_dim if vision_dim is not None else defaults["vision_dim"],
        vision_heads=vision_heads, batch=batch, lr=lr, warmup=warmup,
        aux_slot_weight=(aux_slot_weight if aux_slot_weight is not None
                         else defaults["aux_slot_weight"]),
        aux_colour_weight=aux_colour_weight,
        aux_region=aux_region if aux_region is not None else defaults["aux_region"],
        aux_colour=aux_colour if aux_colour is not None else defaults["aux_colour"],
        aux_colour_region=aux_colour_region,
        aux_colour_none_weight=aux_colour_none_weight, aux_lm_slot_weight=aux_lm_slot_weight,
        p_shuffle=p_shuffle if p_shuffle is not None else defaults.get("p_shuffle"),
        p_ablate=p_ablate if p_ablate is not None else defaults["p_ablate"],
        p_ablate_object=p_ablate_object, p_scramble_object=p_scramble_object,
        scramble_outside_strips=scramble_outside_strips,
        shuffle_object_ablated=shuffle_object_ablated,
        rope_theta=rope_theta, rope_factor=rope_factor, global_rope_factor=global_rope_factor,
        attn_scalar=attn_scalar, vision_pos_init=vision_pos_init,
        aux_slot_code=aux_slot_code, p_noise=p_noise, noise_code_drop=noise_code_drop,
        noise_task_loss=noise_task_loss, noise_lm_loss=noise_lm_loss,
        noise_task_weight=noise_task_weight, noise_answer_mix=noise_answer_mix,
        aux_slot_code_start=aux_slot_code_start, aux_slot_code_steps=aux_slot_code_steps,
        aux_slot_code_only=aux_slot_code_only, aux_object_code_only=aux_object_code_only,
        aux_anchor_init=aux_anchor_init,
        aux_lm_weight=aux_lm_weight, aux_lm_layer=aux_lm_layer,
        aux_lm_head=aux_lm_head, init_from=init_from, eval_every=eval_every, eval_items=64)
    res = org.train(cfg, out=out, final_eval_items=384, progress=progress)
    if probe:
        from .probe import mechanism_report
        rep = mechanism_report(res.model, res.processor, cfg=cfg)
        res.log["mechanism_check"] = rep
        org.save_log(out, res.log)
    f = res.log["final"]
    click.echo(f"saved {out}: held-out triples {f['heldout']:.3f} (canonical {f['ht_canon']:.3f}), "
               f"held-out layouts {f['hl']:.3f}, train {f['train']:.3f}; "
               f"{res.log.get('total_train_time_s', res.log['train_time_s']) / 60:.1f} min training")
    if probe:
        click.echo(json.dumps(res.log["mechanism_check"]["summary"]))


@organism.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--images", type=int, default=200, show_default=True, help="Probe images per split.")
@click.option("--items", type=int, default=128, show_default=True,
              help="Held-out items for the ablation and criss-cross tests.")
@click.option("--threads", type=int, default=1, show_default=True)
def check(path, images, items, threads):
    """Which mechanism does PATH have? Slot probe on the projector output (object and strip
    tokens), shuffle test, E5 ablation, object/strip criss-cross at the LM input and E6 (object
    criss-cross of the ablated runs at each LM residual site), classified
    with the thresholds of organisms.criteria (vision, dual, lm or unclear)."""
    import torch

    from . import trainer as org
    from .probe import mechanism_report

    torch.set_num_threads(threads)
    model, proc, log = org.load(path)
    cfg = org.OrganismConfig(**{k: v for k, v in log["config"].items() if k != "resolved"}) \
        if log.get("config") else org.OrganismConfig()
    rep = mechanism_report(model, proc, cfg=cfg, n_images=images, n_items=items)
    click.echo(json.dumps(rep["summary"], indent=1))
    s = rep["summary"]
    click.echo(f"mechanism: {s['mechanism']} (projector probe object {s['probe_projector_slot']:.2f}"
               f" / strip {s['probe_projector_slot_strip']:.2f}; accuracy {s['accuracy_base']:.2f}"
               f" -> {s['accuracy_ablated_vision_ordering']:.2f} with vision ordering ablated; "
               f"criss-cross flips object {s['flip_object']:.2f} / band {s['flip_band']:.2f}; "
               f"E6 flip layers {s['e6_flip_layers'] or 'none'})")
    from .probe import criteria_of

    for c in criteria_of(cfg.mechanism, s):
        verdict = {True: "holds", False: "fails", None: "not measured"}[c["holds"]]
        click.echo(f"criterion {c['criterion']} ({cfg.mechanism}): {verdict}; measured "
                   + ", ".join(f"{k} {round(v, 3) if isinstance(v, float) else v}"
                               for k, v in c["measured"].items())
                   + f"; expected {c['expected']}")
