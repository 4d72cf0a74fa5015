"""CLI commands of the interventions package (registered in ``cli.py``'s ``COMMANDS``): the
patching / ablation / amplification commands. ``evaluate`` lives in :mod:`study.commands`.
"""
from __future__ import annotations

import click


# =========================================================================== interventions
# (patch / ablate / amplify commands live below this line)

_COMMON = [
    click.option("--model", "model", required=True,
                 help="Adapter name (tiny-qwen2-vl, tiny-gemma-3, ...), hub id or local directory."),
    click.option("--data", "data", required=True, type=click.Path(file_okay=False),
                 help="Dataset directory from `spatialbind generate` (with twins and blank); "
                     "amplify also takes whatsup:ROOT:COCO_QA_two_obj."),
    click.option("--out", "out", required=True, type=click.Path(file_okay=False),
                 help="Output folder: <exp>.parquet/.csv, summary.json/.csv, config.json, PNGs."),
    click.option("--limit", type=click.IntRange(min=1), default=None,
                 help="Use only the first N base stimuli."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                 help="Patched variants per batched forward (memory grows linearly)."),
    click.option("--prompt-kind", "--prompt", "prompt", default=None,
                 help="Prompt kind to ask (completion, choice, yesno); --prompt is an alias."),
    click.option("--progress/--no-progress", default=True, help="Show a progress bar."),
    click.option("--quiet", is_flag=True, help="No progress bar (alias of --no-progress)."),
    click.option("--recipe", type=click.Choice(["paper", "robust"]), default=None,
                 help="paper: the authors' exact protocol; robust: spatialbind's own (see "
                      "interventions/RECIPES.md). Default: paper for the paper's presets."),
]


def _common(f):
    for opt in reversed(_COMMON):
        f = opt(f)
    return f


_SCHEDULER = click.option("--scheduler", default=None,
                          help="Run the sweep's independent chunks (E4/E6: layer x region cells; "
                               "E7: alphas) on a dask cluster: local:N or a scheduler address. "
                               "Results equal a serial run.")


@click.command("patch")
@_common
@_SCHEDULER
@click.option("--experiment", type=click.Choice(["e2", "e4", "e6"]), default="e4",
              show_default=True,
              help="e2: last-token patching per layer; e4: criss-cross of object vs strip regions "
                   "per layer; e6: object criss-cross under E5's vision-ordering ablation.")
@click.option("--layers", default="all", show_default=True,
              help="Residual sites: all, 0-3 or 0:3 (inclusive; step: 0:12:4) or 0,4,8 "
                   "(0 = LM input).")
@click.option("--regions", default="object,strip", show_default=True,
              help="E4 regions to criss-cross, comma-separated: object, strip (the object's "
                   "rows/columns, as the store's role), band (the paper's tiled strips).")
@click.option("--partner", type=click.Choice(["opposite", "swap", "crisscross"]),
              default="opposite", show_default=True,
              help="E2 counterfactual: a stimulus asking the opposite direction (paper), or a twin.")
@click.option("--pairs", type=click.Choice(["authors", "dataset"]), default=None,
              help="E4/E6 items. authors: the authors' pairs (random triples from their pool, "
                   "their seed and draw rule, rendered at the dataset's geometry, kept when the "
                   "model answers right; --limit = pairs wanted per direction, default 50); "
                   "dataset: the dataset's own items (--limit = first N). Default: authors "
                   "with --recipe paper on a flat dataset, else dataset.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=None,
              help="--pairs authors: draws per direction at most (default: the authors' 2000).")
def patch(model, data, out, limit, batch_size, prompt, progress, quiet, recipe, scheduler,
          experiment, layers, regions, partner, pairs, max_attempts):
    """Interchange patching: E2 last token, E4 criss-cross regions, E6 criss-cross under ablation."""
    from .experiments import patch_to_dir
    from .patching import PatchConfig

    cfg = PatchConfig(experiment=experiment, layers=layers,
                      regions=tuple(r.strip() for r in regions.split(",") if r.strip()),
                      partner=partner, prompt=prompt or "completion", limit=limit,
                      batch_size=batch_size, recipe=recipe, pairs=pairs,
                      max_attempts=max_attempts)
    s = patch_to_dir(model, data, out, cfg, progress=progress and not quiet, scheduler=scheduler)
    skipped = len(s.get("skipped") or s.get("skipped_no_partner") or ())
    click.echo(f"{s['experiment']} ({s['recipe']} recipe): {s['n_items']} items, "
               f"{skipped} could not run, {s['forwards']} forwards "
               f"(naive {s['naive_forwards']}); wrote {out}")


@click.command("ablate")
@_common
def ablate(model, data, out, limit, batch_size, prompt, progress, quiet, recipe):
    """E5: accuracy with the vision ordering ablated at the LM input (chance 1/3)."""
    from .ablation import AblateConfig
    from .experiments import ablate_to_dir

    cfg = AblateConfig(prompt=prompt or "completion", limit=limit, batch_size=batch_size,
                       recipe=recipe)
    s = ablate_to_dir(model, data, out, cfg, progress=progress and not quiet)
    click.echo(f"E5 ({s['recipe']} recipe, {s['metric']}, {s['n_skipped']} could not run): "
               f"baseline {s['base_accuracy']:.3f}, ablated {s['ablated_accuracy']:.3f}, "
               f"chance {s['chance']:.3f} ({s['n_items']} items); wrote {out}")
    ex = s.get("excluding_reference") or {}
    if ex.get("accuracy") is not None:
        click.echo(f"    ablated choice names the reference in {ex['reference_rate']:.3f}; on the "
                   f"other {ex['n_other']} items: accuracy {ex['accuracy']:.3f}, chance "
                   f"{ex['chance']:.3f} (binomial p {ex['p_value']:.2g})")


@click.command("amplify")
@_common
@_SCHEDULER
@click.option("--alphas", default="0:15:1", show_default=True,
              help="Amplification strengths: start:stop:step (inclusive) or a list 0,2,4.")
@click.option("--direction", multiple=True,
              help="Probe direction directory (repeat for one per axis), or 'mean-diff'.")
@click.option("--select-split", default="val", show_default=True,
              help="Split on which the held-out alpha is chosen (reported on the others).")
@click.option("--cv-folds", type=int, default=4, show_default=True,
              help="Folds of the cross-fitted alpha selection: items grouped by colour triple "
                   "with its mirror (else scene), each fold scored at the alpha chosen on the "
                   "other folds.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random-direction control and of the cross-fitting folds.")
@click.option("--controls/--no-controls", default=False, show_default=True,
              help="Also run the authors' sanity controls (shuffled images, swapped objects; "
                   "no amplification): controls.json beside the probe / random rows.")
@click.option("--controls-n", type=int, default=60, show_default=True,
              help="Items per axis for the sanity controls (the authors' 60).")
def amplify(model, data, out, limit, batch_size, prompt, progress, quiet, recipe, scheduler,
            alphas, direction, select_split, cv_folds, seed, controls, controls_n):
    """E7: amplify the ordering component of every image token before LM layer 0 (alpha sweep)."""
    from .amplification import AmplifyConfig
    from .controls import ControlsConfig, control_lines
    from .experiments import amplify_to_dir

    cfg = AmplifyConfig(alphas=alphas, prompt=prompt or "choice", select_split=select_split,
                        cv_folds=cv_folds, limit=limit, batch_size=batch_size, seed=seed,
                        recipe=recipe)
    ctl = ControlsConfig(n_per_axis=controls_n, seed=seed, limit=limit) if controls else None
    s = amplify_to_dir(model, data, out, cfg, direction=list(direction),
                       progress=progress and not quiet, scheduler=scheduler, controls=ctl)
    for r in s["selections"]:
        acc = "n/a" if r.get("accuracy") is None else f"{r['accuracy']:.3f}"
        extra = ""
        if r.get("fold_alphas") is not None:  # the cross-fitted selection
            extra = f" fold alphas={r['fold_alphas']} (alpha: {r['alpha_summary']})"
            if r.get("random_changed") is not None:
                extra += f" random changes {r['random_changed']:.3f} of answers"
        elif str(r.get("selection", "")).startswith("cross-fitted"):
            extra = f" ({r.get('note')})"
        click.echo(f"{r['control']:>6} | {r['selection']}: alpha={r['alpha']} fixed={r['fixed']} "
                   f"broken={r['broken']} accuracy={acc}{extra} ({s['recipe']} recipe)")
    for line in control_lines(s.get("sanity_controls")):
        click.echo(line)
    click.echo(f"wrote {out}")
