"""``spatialbind query``: show what a store holds, or export one selection (npy, parquet, netcdf).

Thin layer over :func:`actstore.open_store`; registered in ``cli.py``'s ``COMMANDS``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

from .errors import StoreError

EXPORTS = ("npy", "parquet", "netcdf")


@click.command("query")
@click.argument("store")
@click.option("--model", help="Model key in the store (optional when it holds one model).")
@click.option("--site", help="Site family or full site name: lm.resid, lm.resid.3, projector, vision.blocks.7.")
@click.option("--layer", type=int, help="Layer number of a layered site (the model's numbering).")
@click.option("--role", help="Token role: object, strip, distractor, background, subject, reference, "
                             "relation, last, text.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Keep samples whose label KEY equals VALUE; repeat a key to allow several values.")
@click.option("--export", "export", type=click.Choice(EXPORTS),
              help="Write the selection: npy (+ JSON sidecar of coords), parquet (one row per "
                   "sample × token, or per pooled item), netcdf.")
@click.option("--out", type=click.Path(dir_okay=False), help="File to export to (needed with --export).")
@click.option("--pool", type=click.Choice(["entity", "sample"]),
              help="Export the mean over each entity's (or sample's) tokens of --role instead of tokens.")
@click.option("--include-pending", is_flag=True, help="Also export samples not marked done (NaN).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--reindex", is_flag=True,
              help="Persist the role index of every done sample in STORE (one piece per model, "
                   "replacing earlier pieces); for stores written before the index existed, or "
                   "to merge many pieces into one.")
def query(store, model, site, layer, role, where, export, out, pool, include_pending, as_json,
          reindex):
    """Show what STORE holds (models, sites, layers, roles, counts, size), or export a selection."""
    from common.io import check_writable

    from .reader import format_summary, open_store

    if reindex:
        from .writer import reindex as _reindex

        for name, r in _reindex(store).items():
            what = "written" if r["written"] else "already there"
            click.echo(f"model {name}: role index of {r['covered']}/{r['n_samples']} done samples "
                       f"{what}; {len(r['removed'])} earlier piece(s) removed")
        return

    s = open_store(store)
    if export is not None and out:
        check_writable(out, kind="file", error=StoreError)
    selecting = any(v is not None for v in (site, layer, role, export, pool)) or bool(where)
    if not selecting:
        summ = s.summary()
        if model is not None:
            key = s.group(model).attrs["model"]
            summ["models"] = {key: summ["models"][key]}
        click.echo(json.dumps(summ, indent=2) if as_json else format_summary(summ))
        return
    filters = _parse_where(where)
    if pool:
        x = s.pooled(model=model, site=site, layer=layer, role=role or "object", by=pool,
                     where=filters, include_pending=include_pending)
    else:
        x = s.select(model=model, site=site, layer=layer, role=role, where=filters,
                     include_pending=include_pending)
    if export is None:
        click.echo(f"{x.name}: dims {dict(x.sizes)} {x.dtype}; add --export {'|'.join(EXPORTS)} "
                   f"--out FILE to write it")
        return
    if not out:
        raise StoreError(f"--export {export} needs --out FILE (where to write the selection)")
    _EXPORTERS[export](x, Path(out))
    click.echo(f"wrote {x.name} dims {dict(x.sizes)} to {out}")


def _parse_where(items) -> dict:
    out: dict[str, list[str]] = {}
    for it in items:
        if "=" not in it or it.startswith("="):
            raise StoreError(f"--where {it!r} must look like KEY=VALUE (e.g. --where axis=horizontal)")
        k, v = it.split("=", 1)
        out.setdefault(k.strip(), []).append(v)
    return out


def _compute(x):
    """Values of a (dask-backed) DataArray, computed in sample blocks with a progress bar."""
    from tqdm.auto import tqdm

    if "sample" not in x.dims or x.chunks is None:
        return np.asarray(x.values)
    ax = x.dims.index("sample")
    blocks = x.chunks[ax]
    parts, start = [], 0
    for n in tqdm(blocks, desc=f"reading {x.name}", unit="block", disable=len(blocks) < 2):
        parts.append(np.asarray(x.isel(sample=slice(start, start + n)).values))
        start += n
    return np.concatenate(parts, axis=ax) if parts else np.asarray(x.values)


def _atomic(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.name}.partial")


def export_npy(x, out: Path) -> None:
    """Raw values to ``out`` (.npy) and dims/coords/attrs to ``out`` with suffix ``.json``."""
    tmp = _atomic(out)
    with open(tmp, "wb") as f:
        np.save(f, _compute(x))
    side = {"name": x.name, "dims": list(x.dims), "shape": list(x.shape), "dtype": str(x.dtype),
            "coords": {k: {"dims": list(c.dims), "values": _jsonable(c.values)}
                       for k, c in x.coords.items()},
            "attrs": {k: _jsonable(v) for k, v in x.attrs.items()}}
    side_path = out.with_suffix(".json")
    side_path.write_text(json.dumps(side))
    os.replace(tmp, out)


def export_parquet(x, out: Path) -> None:
    """One row per (sample[, layer], token) (padding dropped) or per item, labels + h0..h{H-1}."""
    import pandas as pd

    vals = _compute(x)
    row_dims = [d for d in x.dims if d != "hidden"]
    H = x.sizes["hidden"]
    flat = vals.reshape(-1, H)
    grids = np.meshgrid(*[np.arange(x.sizes[d]) for d in row_dims], indexing="ij")
    cols = {}
    for name, c in x.coords.items():
        if "hidden" in c.dims:
            continue
        if not c.dims:  # scalar coord (e.g. the layer of a one-layer selection)
            cols[name] = np.repeat(np.asarray(c.values), flat.shape[0])
            continue
        ix = tuple(grids[row_dims.index(d)].ravel() for d in c.dims)
        cols[name] = np.asarray(c.values)[ix]
    for d, g in zip(row_dims, grids):
        if d not in cols:
            cols[d] = g.ravel()
    df = pd.DataFrame(cols)
    hid = pd.DataFrame(flat.astype(np.float32) if flat.dtype == np.float16 else flat,
                       columns=[f"h{i}" for i in range(H)])
    df = pd.concat([df, hid], axis=1)
    if "pad" in df.columns:
        df = df[~df["pad"].to_numpy(bool)].drop(columns="pad").reset_index(drop=True)
    tmp = _atomic(out)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out)


def export_netcdf(x, out: Path) -> None:
    """The DataArray through xarray (netCDF3 via scipy: float16 -> float32, int64/bool -> int32/int8)."""
    import xarray as xr

    y = xr.DataArray(_compute(x), dims=x.dims, coords=x.coords, name=(x.name or "acts"))
    y = y.astype(np.float32) if y.dtype == np.float16 else y
    coords = {}
    for k, c in y.coords.items():
        v = np.asarray(c.values)
        if v.dtype == bool:
            v = v.astype(np.int8)
        elif v.dtype.kind in "iu" and v.dtype.itemsize > 4:
            v = v.astype(np.int32)
        elif v.dtype == object:
            v = v.astype(str)
        coords[k] = (c.dims, v)
    y = xr.DataArray(y.values, dims=y.dims, coords=coords, name=y.name.replace("/", "|"),
                     attrs={k: (v if isinstance(v, (str, int, float)) else json.dumps(v))
                            for k, v in x.attrs.items()})
    tmp = _atomic(out)
    y.to_netcdf(tmp, engine="scipy")
    os.replace(tmp, out)


_EXPORTERS = {"npy": export_npy, "parquet": export_parquet, "netcdf": export_netcdf}


def _jsonable(v):
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "f":
            return np.where(np.isnan(v), None, v.astype(float)).tolist()
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
