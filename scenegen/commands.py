"""CLI commands of scenegen: ``spatialbind generate`` and ``spatialbind show``.

Thin: parse options, resolve the config, call one library function, print one line.
"""
from __future__ import annotations

import click


@click.command("generate")
@click.option("--preset", "preset_name", metavar="NAME",
              help="Named config: squares-qwen2-vl, squares-gemma-3, shapes-qwen2-vl, "
                   "shapes-gemma-3, squares-pixtral, shapes-pixtral, scene3d.")
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
def generate(preset_name, config_file, n, seed, workers, out, progress):
    """Generate a spatial stimulus dataset (images, masks, labels, twins) into --out."""
    from .config import GenerateConfig, load_config_file
    from .dataset import read_dataset
    from .errors import ConfigError
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
    cfg = GenerateConfig.from_dict(d)
    path = run(cfg, out, workers=workers, progress=progress)
    ds = read_dataset(path)
    base = len(ds.base())
    click.echo(f"wrote {len(ds)} items ({base} base stimuli, {len(ds) - base} twins/extras) "
               f"to {path}")


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
