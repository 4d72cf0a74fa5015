"""Shared by the extraction e2e tests: the CLI arguments and a byte-for-byte store comparison."""
from __future__ import annotations

import zarr


def extract_args(data, store, *extra):
    return ["extract", "--model", "tiny-qwen2-vl", "--data", str(data), "--store", str(store),
            "--sites", "projector,lm.resid.0,lm.resid.2", "--batch-size", "2", "--no-progress",
            *extra]


def store_arrays(store, attrs: bool = False) -> dict:
    """Every array of a Zarr store, by its path in the group tree (and, with ``attrs``, every
    group's attributes under ``<path>@attrs``). The persisted role index is taken by what it
    gives, not by its pieces (one per writer, so their number depends on how many writers there
    were): every site family's role index of every role, as the reader builds it from the
    pieces and labels, under ``<model>/@role_index/<family>/<role>/<array>``."""
    from actstore import ROLE_NAMES, open_store

    out = {}
    root = zarr.open_group(str(store), mode="r")

    def walk(g, prefix):
        if attrs:
            out[f"{prefix}@attrs"] = dict(g.attrs)
        for name, a in g.arrays():
            out[f"{prefix}{name}"] = a[:]
        for name, sub in g.groups():
            if name == "role_index" and prefix.count("/") == 1:
                continue
            walk(sub, f"{prefix}{name}/")
    walk(root, "")
    s = open_store(str(store))
    for model in s.models:
        g = s.group(model)
        for fam in s.sites(model):
            for code, role in enumerate(ROLE_NAMES):
                counts, idx, labels = s._role_index(g, fam, code)
                key = f"{g.path}/@role_index/{fam}/{role}/"
                out.update({key + "counts": counts, key + "idx": idx,
                            **{key + k: v for k, v in labels.items()}})
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
