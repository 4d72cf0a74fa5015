"""``spatialbind probe``: a layers × roles probe sweep from an activation store, with plots, probe
maps and (optionally) exported directions. Thin: parses options, builds the configs, calls
:func:`probes.sweep.sweep` and :func:`probes.maps.heldout_probe_map`, writes the outputs.

Outputs under ``--out DIR``::

    results.parquet, results.csv   one row per (layer, role): accuracy, CI, control, selectivity,
                                   position-only baseline, init_accuracy (--baseline-store), n,
                                   data hash, error
    accuracy_heatmap.png           accuracy by layer × role (selectivity_heatmap.png with --control)
    accuracy_lines.png             accuracy by layer, one line per role, CI bands and baselines
    maps/layer<NNN>.png            probe maps of held-out images (object-token probe on every token);
                                   paper recipe: maps/<orientation>/layer<NNN>.png
    maps/summary.csv               mean P(object's class) over object / strip / background tokens
    config.json                    resolved configs and versions
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .errors import ConfigError


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def parse_layers(value: str | None, available: list[int] | None = None) -> tuple[int, ...]:
    """``"0,4,8"`` / ``"2-5"`` / ``"2:5"`` / ``"all"`` (or None) -> layer tuple, checked against
    ``available`` (:func:`common.parse_layers`, the grammar every command shares)."""
    from common import parse_layers as parse

    if value in (None, "", "all") and not available:
        raise ConfigError(f"layers={value!r}: the store lists no layers for this site; give "
                          "layers explicitly")
    return parse(value, available, where="the store for this site", error=ConfigError)


def _where(pairs: tuple[str, ...]) -> dict:
    out: dict = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--where: {p!r} is not key=value (e.g. --where axis=horizontal).")
        k, v = p.split("=", 1)
        # empty values are kept: "counterfactual_kind=,swap" = base stimuli ("") and swaps
        out.setdefault(k.strip(), []).extend(x.strip() for x in v.split(","))
    return out


TOKEN_COLUMNS = ("ordinal", "entity", "row", "col", "role", "position", "mask_id", "side")


def _check_names(store, model: str, sconf, pconf, data_dir=None) -> None:
    """Unknown roles, label or group-by columns fail here, before any cluster starts."""
    from .errors import suggest

    known_roles = list(getattr(store, "roles", {}).values())
    for r in sconf.roles:
        if known_roles and r not in known_roles:
            raise ConfigError(f"--roles: unknown role {r!r}.{suggest(r, known_roles)} "
                              f"Known: {', '.join(known_roles)}.")
    if not hasattr(store, "labels"):
        return
    columns = [*store.labels(model).columns, *TOKEN_COLUMNS]
    if data_dir is not None:
        from .dataset import scene_labels

        samples, _ = scene_labels(data_dir)
        columns += [*samples.columns, "color", "kind"]
    for opt, names in (("--label", (sconf.label,)), ("--group-by", pconf.group_by)):
        for name in names:
            if name not in columns:
                raise ConfigError(f"{opt}: unknown label column {name!r}.{suggest(name, columns)} "
                                  f"Known: {', '.join(map(str, columns))}.")


def _open(store_path: str):
    from .dataset import open_store

    return open_store(store_path)


@click.command("probe")
@click.option("--store", "store_path", required=True, help="Activation store (path or fsspec URL).")
@click.option("--model", required=True, help="Model key in the store.")
@click.option("--site", default="projector", show_default=True,
              help="Site family (projector, vision.blocks, lm.resid).")
@click.option("--layers", default=None, help="Layers: '0,4,8', '0-12' or 'all' (default: all "
              "layers the store holds for the site).")
@click.option("--roles", default="object,strip", show_default=True,
              help="Comma-separated token roles; one probe per (layer, role).")
@click.option("--label", default="ordinal", show_default=True,
              help="Label to predict: ordinal (3 slots), side (first vs last slot) or any label column.")
@click.option("--pool", type=click.Choice(["token", "entity"]), default="token", show_default=True,
              help="token: one sample per token (paper); entity: mean over each entity's tokens.")
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False),
              help="Dataset directory the store was extracted from: adds its scene factors "
              "(color_set, layout, ...) for --group-by and entity colours for the control task.")
@click.option("--group-by", default="", help="Comma-separated label columns that must not straddle "
              "train and test (scene_id always). E.g. color_set,layout.")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also train a Hewitt & Liang control task and report selectivity.")
@click.option("--token-type", default="", help="Columns defining a token type for the control task "
              "(default: color,row,col where present).")
@click.option("--split", type=click.Choice(["group_kfold", "group_shuffle"]), default="group_kfold",
              show_default=True, help="Grouped k-fold, or one grouped train/test split.")
@click.option("--n-splits", default=5, show_default=True, help="Folds of group_kfold.")
@click.option("--ci", type=click.Choice(["wilson", "bootstrap"]), default="wilson",
              show_default=True, help="Accuracy CI: Wilson over samples or bootstrap over groups.")
@click.option("--where", "where", multiple=True, help="Sample filter key=value[,value] (repeatable); "
              "an empty value matches unset labels, e.g. counterfactual_kind=,swap.")
@click.option("--scheduler", default="local", show_default=True,
              help="'local' (LocalCluster of --workers), 'local:N' (of N workers), 'serial' (no "
                   "dask), or a scheduler address. Both recipes run on a cluster.")
@click.option("--workers", default=2, show_default=True, help="Workers of the local cluster.")
@click.option("--engine", type=click.Choice(["sklearn", "torch"]), default="sklearn",
              show_default=True, help="sklearn: one probe per cell; torch: every fold, the control "
              "task and the refit of a block of layers as one batched model (fast at full width).")
@click.option("--layers-per-block", default=1, show_default=True,
              help="torch engine: layers fitted together (memory: that many layers' rows).")
@click.option("--device", default=None, help="torch engine: torch device (cpu, cuda).")
@click.option("--warm-start/--cold-start", default=False, show_default=True,
              help="torch engine: start each block of layers from the previous block's weights "
              "(a little faster, but at model width the accuracy then drifts ~0.01 from "
              "scikit-learn's), or from zero as scikit-learn.")
@click.option("--threads", default=None, type=int, help="BLAS/torch threads, set once "
              "(serial: default all cores; dask workers: default 1).")
@click.option("--map-samples", default=4, show_default=True,
              help="Held-out images per probe map (0 = no maps).")
@click.option("--export-directions", "export_dir", default=None, type=click.Path(file_okay=False),
              help="Write each cell's direction (labelled arrays + JSON) under this directory.")
@click.option("--baseline-store", default=None, help="Store extracted from a random-init build of "
              "the same model on the same stimuli: the same sweep runs there and its accuracy is "
              "reported as init_accuracy (the init-weight baseline).")
@click.option("--baseline-model", default=None, help="Model key in --baseline-store "
              "(default: --model).")
@click.option("--seed", default=0, show_default=True, help="Seed of splits, control labels, bootstrap.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory (results table, plots, maps, config).")
@click.option("--recipe", type=click.Choice(["paper", "robust"]), default=None,
              help="paper: the authors' E3 (base images only, one probe per orientation, split by "
              "image 75/25, their torch linear probe, no control; with --label side the exported "
              "directions are E7's: rank-2 per axis, golden items, 95/5 split by item); robust: "
              "the options above. "
              "Default: paper when the store was extracted from a paper preset. See "
              "interventions/RECIPES.md.")
@click.option("--golden", "golden_path", default=None, type=click.Path(dir_okay=False, exists=True),
              help="With --recipe paper --label side --export-directions: a text file of the "
              "item ids the model answers right (one per line: the golden.txt that "
              "`spatialbind evaluate` writes); E7's directions are trained on these golden items "
              "only, as the authors do.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def probe(store_path, model, site, layers, roles, label, pool, data_dir, group_by, control,
          token_type, split, n_splits, ci, where, scheduler, workers, engine, layers_per_block,
          device, warm_start, threads, map_samples, export_dir, baseline_store, baseline_model, seed, out_dir,
          recipe, golden_path, progress):
    """Train linear probes for every (layer, role) of a store and plot where the label is decodable."""
    from .config import ProbeConfig, SweepConfig
    from .sweep import add_baseline, sweep
    from .outputs import write_outputs

    from common.io import check_writable

    check_writable(out_dir, what="--out", error=ConfigError)  # before the sweep, not after
    store = _open(store_path)
    available = list(store.layers(model, site)) if hasattr(store, "layers") else None
    data_dir = data_dir or store_data_dir(store, model)
    recipe = recipe or ("paper" if _paper_preset(data_dir) else "robust")
    pconf = ProbeConfig(split=split, n_splits=n_splits, group_by=_csv(group_by), control=control,
                        token_type=_csv(token_type), ci=ci, random_state=seed)
    if recipe == "paper":
        pconf = paper_probe_config(seed, group_by=_csv(group_by))
    sconf = SweepConfig(model=model, site=site, layers=parse_layers(layers, available),
                        roles=_csv(roles), label=label, pool=pool,
                        baselines=("position",) if pool == "token" else (),
                        scheduler=scheduler, n_workers=workers, engine=engine,
                        layers_per_block=layers_per_block, device=device, threads=threads,
                        # paper: an entity's tokens are its layout cells (flat stimuli)
                        region="layout" if recipe == "paper" and data_dir is not None else "role",
                        warm_start=warm_start)
    wh = _where(where) or None
    _check_names(store, model, sconf, pconf, data_dir)
    if baseline_store is not None:  # open it first: a bad baseline store fails before any work
        _open(baseline_store)
    if data_dir is None:
        click.echo("warning: no --data and the store does not name an existing dataset: "
                   "identical images (left/right questions share one) cannot be kept on one side "
                   "of the split"
                   + (" and object tokens are the store's coverage role, not the authors' "
                      "layout cells" if recipe == "paper" else "")
                   + "; pass --data DATASET_DIR", err=True)
    # paper: one probe per orientation, base images only
    runs = [(None, wh)] if recipe != "paper" else [
        (axis, {**(wh or {}), "axis": [axis], "counterfactual_of": [""]})
        for axis in ("horizontal", "vertical")]
    # paper + side: the exported directions are E7's (rank-2 probes on golden items, 95/5 split)
    e7_export = recipe == "paper" and label == "side" and export_dir is not None
    golden = _read_golden(golden_path) if golden_path else None
    tables = []
    for axis, w in runs:
        exp = None if export_dir is None or e7_export else (
            export_dir if axis is None else str(Path(export_dir) / axis))
        t = sweep(store_path, sconf, pconf, where=w, export_dir=exp, data=data_dir,
                  progress=progress)
        if exp is not None and axis is not None:
            tag_axis(exp, axis)
        if baseline_store is not None:
            bconf = dataclasses.replace(sconf, model=baseline_model or model)
            t = add_baseline(t, sweep(baseline_store, bconf, pconf, where=w, data=data_dir,
                                        progress=progress),
                             name="init")
        tables.append(t if axis is None else t.assign(orientation=axis))
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    if table["error"].notna().all():
        first = table.iloc[0]
        where_ = f"layer {first['layer']} role {first['role']}" + (
            f" ({first['orientation']})" if "orientation" in table else "")
        raise ConfigError(f"every (layer, role) cell failed ({len(table)} of {len(table)}, "
                          f"nothing written); first: {where_}: {first['error']}"
                          + (" (the paper recipe splits each orientation's images 75/25: it "
                             "needs at least two distinct images per orientation; add items or "
                             "use --recipe robust)" if recipe == "paper" else ""))
    e7_report = None
    if e7_export:
        if golden is None:
            click.echo("warning: --recipe paper exports E7 directions from golden items only; "
                       "without --golden every item is used (recorded as golden_only=false)",
                       err=True)
        e7_report = export_paper_axis_directions(store, export_dir, model=model, site=site,
                                                 layers=sconf.layers, roles=sconf.roles,
                                                 items=golden, data=data_dir, seed=seed)
        if e7_report["n_exported"] == 0:
            first = e7_report["not_exported"][0]
            raise ConfigError(
                f"--export-directions {export_dir}: no E7 direction could be trained "
                f"({e7_report['n_not_exported']} of {e7_report['n_not_exported']} (layer, role, "
                f"axis) failed; first: {first['axis']} layer {first['layer']} {first['role']}: "
                f"{first['reason']}); the paper recipe needs, per axis, at least two distinct "
                "images with both sides among the "
                + ("--golden items" if golden is not None else "items")
                + ": add items (a larger dataset or golden file) or use --recipe robust")
        click.echo(e7_export_message(e7_report, export_dir),
                   err=e7_report["n_not_exported"] > 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(store, table, sconf, pconf, wh, map_samples, out, data_dir, recipe=recipe,
                  e7_directions=e7_report)
    ok = table.dropna(subset=["accuracy"])
    best = ok.loc[ok["accuracy"].idxmax()]
    from .outputs import failed_cells

    bad = failed_cells(table)
    if bad:
        click.echo(f"warning: {len(bad)} of {len(table)} cells could not be fitted (listed in "
                   f"{out / 'config.json'} failed_cells): " + "; ".join(
                       f"layer {b['layer']} {b['role']}"
                       + (f" ({b['orientation']})" if b['orientation'] else "")
                       + f": {b['error']}" for b in bad[:3]) + ("; ..." if len(bad) > 3 else ""),
                   err=True)
    click.echo(f"{len(ok)}/{len(table)} cells probed ({recipe} recipe); best accuracy "
               f"{best['accuracy']:.3f} at layer {best['layer']} role {best['role']}"
               + (f" ({best['orientation']})" if "orientation" in table else "")
               + f"; results in {out}")


def paper_probe_config(seed: int = 0, *, group_by: tuple[str, ...] = ()):
    """The authors' E3 probe and split: their torch linear probe (AdamW lr 1e-3, wd 1e-4, 200
    full-batch epochs, seed 0), one 75/25 split by image (90/30 of the 120 Squares images per
    orientation; identical images share a group), no control task."""
    from .config import ProbeConfig

    return ProbeConfig(classifier="torch_linear", epochs=200, lr=1e-3, weight_decay=1e-4,
                       split="group_shuffle", test_size=0.25, control=False, group_by=group_by,
                       random_state=seed)


def _read_golden(path) -> list[str]:
    ids = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not ids:
        raise ConfigError(f"--golden {path}: no item ids in the file; write one id per line.")
    return ids


def export_paper_axis_directions(store, export_dir, *, model: str, site: str, layers, roles,
                                 items=None, data=None, seed: int = 0,
                                 region: str | None = None) -> dict:
    """E7's paper directions for every (layer, role): per axis, both columns of the authors'
    2-class probe (:func:`probes.directions.axis_directions` with ``recipe='paper'``), written to
    ``export_dir/<axis>/<site>__<role>__layer<NNN>/`` with an ``index.json`` per axis, each
    direction tagged with its axis (what ``amplify`` reads).

    A (layer, role, axis) that cannot be trained (too few items or images on that axis, one
    side only, ...) is not written; it is counted and listed, never skipped silently.

    Returns
    -------
    dict
        ``n_exported``, ``exported`` (``{axis, layer, role, path}``), ``n_not_exported`` and
        ``not_exported`` (``{axis, layer, role, reason}``), ``golden_only``, ``region``; also
        written to ``export_dir/export.json``.
    """
    import json
    import warnings

    from .directions import axis_directions, save_direction
    from .errors import DataError

    root = Path(export_dir)
    index: dict[str, list] = {}
    exported, failed = [], []
    used_region = region
    for layer in layers:
        for role in roles:
            for axis in ("horizontal", "vertical"):
                try:
                    with warnings.catch_warnings():  # the CLI has already said when items is None
                        warnings.simplefilter("ignore", UserWarning)
                        d = axis_directions(store, model=model, site=site, layer=layer,
                                            role=role, items=items, data=data, recipe="paper",
                                            seed=seed, axes=(axis,), region=region)[axis]
                except (DataError, ConfigError) as e:
                    failed.append({"axis": axis, "layer": int(layer), "role": role,
                                   "reason": str(e)})
                    continue
                used_region = d.extra.get("region", used_region)
                family = d.site.rsplit(".", 1)[0] if d.site.rsplit(".", 1)[-1].isdigit() \
                    else d.site
                name = f"{family}__{d.role}__layer{d.layer:03d}"
                save_direction(d, root / axis / name)
                exported.append({"axis": axis, "layer": int(layer), "role": role,
                                 "path": f"{axis}/{name}"})
                index.setdefault(axis, []).append(
                    {"path": name, "model": d.model, "site": d.site, "layer": d.layer,
                     "role": d.role, "label": d.label, "cv_accuracy": d.cv_accuracy,
                     "components": list(d.components), "width": d.width, "axis": axis,
                     "recipe": "paper", "rank": d.extra["rank"],
                     "region": d.extra.get("region")})
    for axis, entries in index.items():
        (root / axis / "index.json").write_text(json.dumps(entries, indent=1))
    report = {"n_exported": len(exported), "exported": exported,
              "n_not_exported": len(failed), "not_exported": failed,
              "golden_only": items is not None, "n_golden": None if items is None else len(items),
              "region": used_region}
    if exported:
        root.mkdir(parents=True, exist_ok=True)
        (root / "export.json").write_text(json.dumps(report, indent=1))
    return report


def e7_export_message(report: dict, export_dir) -> str:
    """One line on what the paper E7 export did and did not write."""
    miss = "; ".join(f"{f['axis']} layer {f['layer']} {f['role']}: {f['reason']}"
                     for f in report["not_exported"])
    head = (f"E7 directions: {report['n_exported']} of "
            f"{report['n_exported'] + report['n_not_exported']} (layer, role, axis) exported "
            f"to {export_dir}")
    return head + (f"; not exported: {miss}" if miss else "")


def tag_axis(export_dir, axis: str) -> None:
    """Record ``axis`` in every direction an export wrote (``extra["axis"]``), so ``amplify``
    applies each orientation's own direction to that orientation's items only."""
    from .directions import load_direction, save_direction

    root = Path(export_dir)
    index = root / "index.json"
    if not index.is_file():
        return
    import json

    for entry in json.loads(index.read_text()):
        import dataclasses as dc

        d = load_direction(root / entry["path"])
        save_direction(dc.replace(d, extra={**(d.extra or {}), "axis": axis}),
                       root / entry["path"])


def store_data_dir(store, model: str):
    """The dataset directory the store was extracted from, when it still exists (None else)."""
    try:
        d = (store.provenance(model).get("extract") or {}).get("data")
    except Exception:  # noqa: BLE001 - test stores without provenance
        return None
    return d if d and (Path(d) / "metadata.jsonl").is_file() else None


def _paper_preset(data_dir) -> bool:
    """Whether the dataset (its ``config.json``, the scenegen file contract) is a paper preset."""
    if data_dir is None:
        return False
    import json

    from common.paper import is_paper_config

    try:
        doc = json.loads((Path(data_dir) / "config.json").read_text())
        return is_paper_config(doc.get("config") if isinstance(doc, dict) else None)
    except (OSError, ValueError):  # not a dataset: other checks report it
        return False


def _version() -> str:
    from .directions import _version as v

    return v()
