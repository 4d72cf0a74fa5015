"""CLI commands of vlms: ``spatialbind model save|list`` and ``spatialbind extract``.

Thin wrappers: parse options, call one library function, print a short result. Errors from
``vlms.errors`` (and ``actstore.errors``) become one line with exit status 1 in ``cli.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def model() -> None:
    """Known models, and saving tiny builds as plain transformers directories."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def list_models(as_json: bool) -> None:
    """Show the known model names, their architecture, family (adapter) and source."""
    from .registry import known_models

    rows = known_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    w = max(len(r["name"]) for r in rows)
    a = max(len(r["architecture"]) for r in rows)
    f = max(len(r["family"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{w}}  {r['architecture']:<{a}}  {r['family']:<{f}}  "
                   f"{r['source']}  [{r['status']}]")


@model.command("save")
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True,
              help="Weight seed of tiny builds (same seed, same weights).")
@click.option("--dtype", default="auto", show_default=True,
              help="Weights dtype to save: auto (the model's own; tiny builds are float32), "
                   "float32, bfloat16 or float16.")
@click.option("--force", is_flag=True, help="Write into a non-empty directory.")
def save(name: str, directory: str, seed: int, dtype: str, force: bool) -> None:
    """Save model NAME (e.g. tiny-qwen2-vl) to DIRECTORY with save_pretrained.

    The directory loads back with ``--model DIRECTORY`` in any command and with plain
    ``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained``.
    """
    from .errors import VLMError
    from .registry import load_adapter

    from common.io import check_writable

    out = Path(directory)
    if out.exists() and any(out.iterdir()) and not force:
        raise VLMError(f"{out} is not empty; choose an empty directory or pass --force")
    check_writable(out, what="DIRECTORY", error=VLMError)
    ad = load_adapter(name, dtype=dtype, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    ad.save(out)
    files = sorted(p.name for p in out.iterdir())
    click.echo(f"saved {name} ({type(ad.model).__name__}) to {out}: {', '.join(files)}")


@click.command()
@click.option("--model", "model_name", required=True,
              help="Alias (tiny-qwen2-vl, qwen2-vl-7b, ...), hub id or saved directory.")
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset directory made by `spatialbind generate` (or an importer).")
@click.option("--store", "store", required=True, help="Store path or fsspec URL (created).")
@click.option("--sites", default="projector,lm.resid", show_default=True,
              help="Comma-separated sites: projector, lm.resid[.i], vision.blocks[.i].")
@click.option("--layers", default=None,
              help="Layers for layered sites without an index, e.g. '0,4,8' or '0-8' "
                   "(default: all).")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Samples per forward (and per store shard, unless --shard-samples).")
@click.option("--shard-samples", type=int, default=None,
              help="Samples per store shard when the store is created (default: --batch-size). "
                   "Forwards accumulate until a shard is complete, then it is written: fewer, "
                   "larger shard files make cold role queries cheaper (see actstore's README); "
                   "--shard, --scheduler blocks and resumption work per shard.")
@click.option("--shard", default=None, help="i/n: this process fills batches b with b % n == i "
              "(default: from launcher variables RANK/WORLD_SIZE, SLURM_ARRAY_TASK_ID/"
              "SLURM_ARRAY_TASK_COUNT, SLURM_PROCID/SLURM_NTASKS, when set).")
@click.option("--scheduler", default=None, help="Run on a dask.distributed cluster: a scheduler "
              "address (tcp://host:8786) or local:N (N local worker processes); one task per "
              "block of store shards, failed blocks retried.")
@click.option("--block-batches", type=int, default=None,
              help="--scheduler: write batches (store shards) per task (default: ~4 tasks per worker).")
@click.option("--retries", type=int, default=2, show_default=True,
              help="--scheduler: times a failed block is retried.")
@click.option("--pool-vision/--no-pool-vision", default=True, show_default=True,
              help="Mean-pool vision-block patches to the LM token grid (4x/16x smaller).")
@click.option("--dtype", default="auto", show_default=True,
              help="Model compute dtype: auto (the checkpoint's own dtype, e.g. bf16 for "
                   "Pixtral-12B), float32, bfloat16, float16. The paper ran Qwen2-VL and "
                   "Gemma-3 in float32 and Pixtral in bfloat16.")
@click.option("--store-dtype", default="float16", show_default=True,
              help="Stored activation dtype: float16 or float32.")
@click.option("--object-fraction", type=float, default=0.5, show_default=True,
              help="Share of a token's cell an object must cover for the token to be 'object'.")
@click.option("--prompt-kind", default="completion", show_default=True,
              help="Which prompt of each stimulus to run (completion, yesno, choice).")
@click.option("--device", default=None,
              help="cpu (default), cuda, cuda:<i>, or auto (spread over all GPUs); weights "
                   "load straight onto it.")
@click.option("--limit", type=int, default=None, hidden=True,
              help="Stop after this many batches (for resume tests).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def extract(model_name, data, store, sites, layers, batch_size, shard_samples, shard, scheduler,
            block_batches, retries, pool_vision, dtype, store_dtype, object_fraction, prompt_kind,
            device, limit, progress) -> None:
    """Run a model over a dataset with hooks and write activations + token roles to a store.

    Resumable and idempotent: rerun the same command after an interruption; a finished store
    is left untouched. Several processes can share one store with --shard i/n, or with no flag
    under torchrun / Slurm arrays / srun / mpirun; --scheduler runs it on a dask cluster.
    """
    from .errors import ExtractError
    from .extract import ExtractConfig, run_extract

    cfg = ExtractConfig(model=model_name, data=data, store=store,
                        sites=tuple(s for s in sites.split(",") if s.strip()),
                        layers=layers, batch_size=batch_size, shard_samples=shard_samples,
                        shard=shard,
                        pool_vision=pool_vision, dtype=dtype, store_dtype=store_dtype,
                        object_fraction=object_fraction, prompt_kind=prompt_kind,
                        device=device)
    if scheduler is not None:
        from .launch import run_extract_cluster

        if shard is not None:
            raise ExtractError("--shard and --scheduler exclude each other: the cluster's blocks "
                               "cover every pending batch; drop one of them")
        res = run_extract_cluster(cfg, scheduler, progress=progress, echo=click.echo,
                                  retries=retries, block_batches=block_batches)
    else:
        res = run_extract(cfg, progress=progress, limit=limit, echo=click.echo)
    click.echo(f"wrote {res['written']} samples ({res['done']}/{res['total']} done) to {store}")
