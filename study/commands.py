"""CLI commands of the study layer (registered in ``cli.py``'s ``COMMANDS``): ``evaluate``
(behavioural evaluation, E1 and What'sUp). ``demo`` lives in :mod:`study.demo_commands`."""
from __future__ import annotations

import click


# =========================================================================== evaluate (E1)
@click.command("evaluate")
@click.option("--model", "model", required=True,
              help="Adapter name (tiny-qwen2-vl, tiny-gemma-3, ...), hub id or local directory.")
@click.option("--data", "data", required=True,
              help="A dataset directory, or whatsup:ROOT[:SUBSET] for the What'sUp release "
                   "(SUBSET: Controlled_Images_A, Controlled_Images_B, COCO_QA_one_obj, "
                   "COCO_QA_two_obj, VG_QA_one_obj, VG_QA_two_obj; all found when omitted).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder: predictions.parquet, summary.csv, summary.png, config.json.")
@click.option("--protocol", type=click.Choice(["caption", "two-option", "completion"]),
              default=None,
              help="caption: What'sUp caption log-likelihood (argmax); two-option: the paper's "
                   "two-option question in both orders, strict; completion: top-1 next token "
                   "vs the answer (paper's E1). Default: caption for What'sUp, else completion.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Items per forward pass (memory grows linearly).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N items (per What'sUp subset).")
@click.option("--coco-annotations", type=click.Path(dir_okay=False), default=None,
              help="COCO instances_val2017.json: attaches object boxes/masks to COCO subsets.")
@click.option("--template", type=click.Choice(["auto", "anchor", "direct"]), default="auto",
              show_default=True,
              help="Two-option wording: anchor (paper's Qwen2-VL prompt), direct (its Gemma-3 "
                   "prompt); auto picks direct for Gemma models.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--quiet", is_flag=True, help="No progress bar (alias of --no-progress).")
@click.option("--recipe", type=click.Choice(["paper", "robust"]), default=None,
              help="paper: the authors' exact protocol; robust: spatialbind's own (see "
                   "interventions/RECIPES.md). Default: paper for the paper's presets.")
def evaluate(model, data, out, protocol, batch_size, limit, coco_annotations, template, progress,
             quiet, recipe):
    """Behavioural accuracy of a VLM on a dataset or on What'sUp, with per-item predictions."""
    from .evaluate import EvalConfig, evaluate as run_evaluation
    from .evaluate_report import format_table

    cfg = EvalConfig(model=model, data=data, protocol=protocol or "auto", batch_size=batch_size,
                     limit=limit, coco_annotations=coco_annotations, template=template,
                     recipe=recipe)
    res = run_evaluation(cfg, out=out, progress=progress and not quiet)
    click.echo(format_table(res.summary))
    click.echo(f"protocol {res.protocol}; recipe {res.extra.get('recipe')}; wrote "
               f"{res.out}/predictions.parquet, summary.csv, summary.png, metrics.json, "
               "config.json")
