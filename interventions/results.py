"""Writing an experiment's outputs: the per-row table (Parquet + CSV), the summary (JSON and a
flat CSV), the resolved config with versions, and the plots. Files are written under temporary
names and renamed, so an interrupted run never leaves a half-written file under a final name."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .errors import InterventionError


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def versions() -> dict[str, str]:
    """Versions of the toolkit and of the libraries that change numbers."""
    from importlib import metadata

    out = {}
    for pkg in ("spatialbind", "torch", "transformers", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def check_out(out: str | os.PathLike) -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be written; creates
    nothing (a run that fails validation leaves no empty folder behind)."""
    from common.io import check_writable

    return check_writable(out, what="--out", kind="dir", error=InterventionError)


def prepare_out(out: str | os.PathLike) -> Path:
    """Create the output folder; refuse a path that is an existing file."""
    out = check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_results(out: str | os.PathLike, name: str, table: pd.DataFrame, summary: dict[str, Any],
                  *, config: dict[str, Any], model: str, data: str,
                  flat: pd.DataFrame | None = None,
                  regions: list[pd.DataFrame] | pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``<name>.parquet``, ``<name>.csv``, ``summary.json``, ``summary.csv``, ``config.json``
    and, for experiments that patch image tokens, ``regions.parquet`` (columns ``id``,
    ``region``, ``clean_token``, ``source_token``, ``source``: every token pair used).

    Returns
    -------
    dict
        kind -> written path.
    """
    out = prepare_out(out)
    paths = {"table": out / f"{name}.parquet", "csv": out / f"{name}.csv",
             "summary": out / "summary.json", "summary_csv": out / "summary.csv",
             "config": out / "config.json"}
    _atomic(paths["table"], lambda p: table.to_parquet(p, index=False))
    _atomic(paths["csv"], lambda p: table.to_csv(p, index=False))
    _atomic(paths["summary"], lambda p: p.write_text(json.dumps(summary, indent=1, default=_plain)))
    flat = flat if flat is not None else _flat_summary(summary)
    _atomic(paths["summary_csv"], lambda p: flat.to_csv(p, index=False))
    cfg = {"experiment": name, "model": model, "data": str(data), "config": config,
           "recipe": (config or {}).get("recipe", summary.get("recipe")),
           "versions": versions()}
    _atomic(paths["config"], lambda p: p.write_text(json.dumps(cfg, indent=1, default=_plain)))
    if regions is not None:
        from .regions import COLUMNS, empty_frame

        if isinstance(regions, list):
            regions = pd.concat(regions, ignore_index=True) if regions else empty_frame()
        paths["regions"] = out / "regions.parquet"
        _atomic(paths["regions"], lambda p: regions[list(COLUMNS)].to_parquet(p, index=False))
    return paths


def _flat_summary(summary: dict[str, Any]) -> pd.DataFrame:
    for key in ("selections", "by_layer", "dose_response"):
        if key in summary:
            return pd.DataFrame(summary[key])
    return pd.DataFrame([{k: v for k, v in summary.items() if not isinstance(v, (dict, list))}])


def _plain(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (tuple, set)):
        return list(x)
    return str(x)
