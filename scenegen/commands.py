"""CLI commands of scenegen: ``spatialbind generate`` and ``spatialbind show``.

Thin: parse options, resolve the config, call one library function, print one line.
"""
from __future__ import annotations

import click


@click.command("generate")
@click.option("--preset", "preset_name", metavar="NAME",
              help="Named config: squares-qwen2-vl, squares-gemma-3, shapes-qwen2-vl, "
                   "shapes-gemma-3, squares-pixtral, shapes-pixtral, objects-qwen2-vl, "
                   "objects-gemma-3, grid2-qwen2-vl, grid3-qwen2-vl, grid2-gemma-3, grid3-gemma-3, "
                   "whatsup-stitched-qwen2-vl, whatsup-stitched-gemma-3, "
                   "whatsup-stitched-pixtral, scene3d.")
@click.option("--config", "config_file", metavar="FILE",
              help="YAML or JSON generate config (see scenegen/README.md).")
@click.option("--n", "n", type=int, default=None,
              help="Base stimuli to generate (each with its twins). Default: the preset's; for "
                   "the flat presets the paper's full 480.")
@click.option("--seed", type=int, default=None, help="Master seed (default: the config's, 0).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes; the output is byte-identical for any value.")
@click.option("--out", required=True, metavar="DIR",
              help="Dataset directory; rerunning the same command there resumes a killed run.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--objects", "objects_dir", metavar="DIR", default=None,
              help="Objects task: a folder of RGBA images, one object per file, named by the "
                   "file name (default: the shipped 8 sprites).")
@click.option("--whatsup", "whatsup_root", metavar="ROOT", default=None,
              help="Stitched What'sUp task: the What'sUp download (holds controlled_images/).")
@click.option("--regions", "regions_file", metavar="FILE", default=None,
              help="Stitched What'sUp task: JSON region boxes per middle or image (format in "
                   "scenegen/importers/whatsup_stitched.py; default: half-image regions).")
@click.option("--tokenizer", "tokenizer_name", metavar="NAME|DIR", default=None,
              help="The model whose tokenizer decides single-token names (What'sUp side objects "
                   "kept; Objects names reported). Default: the preset's model.")
def generate(preset_name, config_file, n, seed, workers, out, progress, objects_dir,
             whatsup_root, regions_file, tokenizer_name):
    """Generate a spatial stimulus dataset (images, masks, labels, twins) into --out."""
    import json
    from pathlib import Path

    from .config import GenerateConfig, load_config_file
    from .dataset import read_dataset
    from .errors import ConfigError
    from .generate import apply_task_options, names_report
    from .generate import generate as run
    from .presets import preset

    if (preset_name is None) == (config_file is None):
        raise click.UsageError("give exactly one of --preset NAME or --config FILE")
    d = preset(preset_name) if preset_name else load_config_file(config_file)
    if n is not None:
        d["n"] = n
    if seed is not None:
        d["seed"] = seed
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {workers}")
    tok = None
    is_objects = (d.get("generator", "flat") == "flat"
                  and (d.get("flat") or {}).get("task") == "objects")
    if tokenizer_name is not None or (d.get("generator") == "whatsup_stitched"
                                      and not (d.get("whatsup_stitched") or {}).get("sides")):
        name = tokenizer_name or (d.get("whatsup_stitched") or {}).get("tokenizer")
        if name is not None and (tokenizer_name is not None or not is_objects):
            from .objects import load_tokenizer

            tok = load_tokenizer(name)
            tokenizer_name = name
    d = apply_task_options(d, objects=objects_dir, whatsup=whatsup_root, regions=regions_file,
                           tokenizer=tok, tokenizer_name=tokenizer_name)
    cfg = GenerateConfig.from_dict(d)
    report = names_report(cfg, tok, tokenizer_name)
    path = run(cfg, out, workers=workers, progress=progress)
    ds = read_dataset(path)
    base = len(ds.base())
    click.echo(f"wrote {len(ds)} items ({base} base stimuli, {len(ds) - base} twins/extras) "
               f"to {path}")
    if report is not None:
        if report["task"] == "objects":
            if tok is None:
                click.echo(f"objects: {', '.join(report['objects'])} (single-token check "
                           "skipped: pass --tokenizer NAME|DIR)")
            else:
                split = report["not_single_token"]
                click.echo(f"objects: {len(report['single_token'])}/{len(report['objects'])} "
                           f"single-token for {tokenizer_name}"
                           + (f"; not single-token: {', '.join(split)}" if split else ""))
        else:
            no_region = sum(1 for s in ds.base() if s.factors.get("regions") == "none")
            report["items"], report["items_without_region"] = base, no_region
            for m, kept in (report["kept"] or {}).items():
                drop = report["dropped"].get(m, {})
                short = {k: "split" if v.startswith("not one") else "no photos"
                         for k, v in drop.items()}
                click.echo(f"{m}: kept {len(kept)} ({', '.join(kept)}); dropped {len(drop)}"
                           + (f" ({', '.join(f'{k} [{v}]' for k, v in short.items())})"
                              if drop else ""))
            click.echo(f"items: {base} (rule: {report['items_rule']}; tokenizer "
                       f"{report['tokenizer']}; token pieces in {Path(path) / 'names.json'})"
                       + (f"; {no_region} items have no region in the regions file"
                          if no_region else ""))
        (Path(path) / "names.json").write_text(json.dumps(report, indent=1) + "\n")


@click.command("show")
@click.argument("directory", metavar="DIR")
@click.option("--n", "n", type=int, default=8, show_default=True, help="Samples (rows).")
@click.option("--out", default=None, metavar="PNG",
              help="Where to write the contact sheet [default: DIR/contact_sheet.png].")
def show(directory, n, out):
    """Write a contact-sheet PNG of samples from DIR with their masks, twins and labels."""
    from .dataset import read_dataset
    from .show import contact_sheet, pick

    path = contact_sheet(directory, n=n, out=out)
    rows = len(pick(read_dataset(directory), n))
    click.echo(f"wrote contact sheet of {rows} samples to {path}")
