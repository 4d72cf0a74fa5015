"""Shared by the extraction e2e tests: the CLI arguments and a byte-for-byte store comparison."""
from __future__ import annotations

import zarr


def extract_args(data, store, *extra):
    return ["extract", "--model", "tiny-qwen2-vl", "--data", str(data), "--store", str(store),
            "--sites", "projector,lm.resid.0,lm.resid.2", "--batch-size", "2", "--no-progress",
            *extra]


def store_arrays(store, attrs: bool = False) -> dict:
    """Every array of a Zarr store, by its path in the group tree (and, with ``attrs``, every
    group's attributes under ``<path>@attrs``)."""
    out = {}
    root = zarr.open_group(str(store), mode="r")

    def walk(g, prefix):
        if attrs:
            out[f"{prefix}@attrs"] = dict(g.attrs)
        for name, a in g.arrays():
            out[f"{prefix}{name}"] = a[:]
        for name, sub in g.groups():
            walk(sub, f"{prefix}{name}/")
    walk(root, "")
    return out


def assert_same_stores(a: dict, b: dict, what: str = ""):
    """Same attributes, arrays, dtypes and bytes (NaN payloads included)."""
    assert sorted(a) == sorted(b), what
    for k in a:
        if k.endswith("@attrs"):
            assert a[k] == b[k], f"{what}: {k}"
            continue
        assert a[k].dtype == b[k].dtype, f"{what}: {k}"
        assert a[k].tobytes() == b[k].tobytes(), f"{what}: {k}"
