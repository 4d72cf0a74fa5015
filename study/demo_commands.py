"""``spatialbind demo``: the whole study in one command (see :mod:`study.demo`)."""
from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", default="out/demo", show_default=True, type=click.Path(file_okay=False),
              help="Output folder; report.html lands at its top. Rerunning resumes.")
@click.option("--model", "models", multiple=True,
              help="Model(s) to study (repeatable). Default: every shipped organism (Qwen2-VL "
                   "vision, dual and lm; Gemma-3 vision, dual and lm, those shipped in this checkout).")
@click.option("--whatsup", default=None, type=click.Path(file_okay=False),
              help="What'sUp root: also evaluate E1 on the real release (see README).")
@click.option("--preset", default=None,
              help="Stimulus preset (e.g. squares-qwen2-vl for the paper's geometry). Default: "
                   "the organisms' 8x8-token Squares canvas.")
@click.option("--n", default=96, show_default=True, help="Base stimuli (each with twins).")
@click.option("--n-degraded", default=96, show_default=True, help="Degraded stimuli for E7.")
@click.option("--degraded", type=click.Choice(["hard", "mild", "noise"]), default="hard",
              show_default=True,
              help="Degradation preset of the E7 set: hard (noise 0.8-1, occluder 0.6-1, contrast "
                   "0.5-0.7: the organisms err on a substantial share), mild (blur, noise, "
                   "contrast at 0.3-0.7) or noise (hard's noise alone: the colours stay "
                   "readable, so errors are not colour errors).")
@click.option("--items", type=click.Choice(["heldout", "all"]), default="heldout",
              show_default=True,
              help="Squares items to study: heldout (the colour triples every studied organism "
                   "held out of its training, 24 triples = 96 base items for the shipped ones; "
                   "all triples when no model is an organism) or all (every ordered triple).")
@click.option("--alphas", default="0:8:1", show_default=True, help="E7 alpha range a:b:step.")
@click.option("--seed", default=0, show_default=True, help="Stimulus seed.")
@click.option("--batch-size", default=16, show_default=True, help="Items per forward pass.")
@click.option("--scheduler", default="serial", show_default=True,
              help="Probe sweeps: serial, local (dask LocalCluster) or a scheduler address.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--recipe", type=click.Choice(["both", "paper", "robust"]), default="both",
              show_default=True,
              help="Recipes E1 and E3-E7 run under: both side by side, or one (the robust E1, E3 "
              "and E7 always run: the organism criteria read them; interventions/RECIPES.md).")
@click.option("--tasks", default="objects,grids,controls,whatsup-stitched", show_default=True,
              help="The paper's other tasks to add: objects (E1), grids (App. C.6 probes), "
                   "controls (E7 sanity controls), whatsup-stitched (E1; needs --whatsup); "
                   "comma-separated, or 'none'.")
def demo(out, models, whatsup, preset, n, n_degraded, degraded, items, alphas, seed, batch_size,
         scheduler, progress, recipe, tasks):
    """Generate -> extract -> E1 -> E3 -> E4 -> E5/E6 -> E7 -> one HTML report."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(out=out, models=models, whatsup=whatsup, preset=preset, n=n,
                     n_degraded=n_degraded, degraded=degraded, items=items, alphas=alphas, seed=seed,
                     batch_size=batch_size,
                     scheduler=scheduler, recipe=recipe,
                     tasks=() if tasks.strip() == "none" else
                     tuple(t.strip() for t in tasks.split(",") if t.strip()))
    path = run_demo(cfg, progress=progress, echo=click.echo)
    click.echo(f"open {path}")
