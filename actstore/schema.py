"""The one vocabulary of the activation store: dims, site families, token roles, label arrays.

Everything that names a thing in a store is declared here once and shared by the writer
(``actstore.writer``, used by ``vlms`` extraction), the reader (``actstore.reader``, used by
``probes`` and ``interventions``) and ``actstore.validate``. See ``actstore/README.md`` for the
on-disk layout this module describes.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from .errors import StoreError, unknown

SCHEMA_VERSION = 1
"""Bumped whenever the layout or the meaning of a stored array changes."""

# ---------------------------------------------------------------- dims
SAMPLE, LAYER, TOKEN, HIDDEN, ITEM = "sample", "layer", "token", "hidden", "item"
ACTS_DIMS = (SAMPLE, LAYER, TOKEN, HIDDEN)
TOKEN_DIMS = (SAMPLE, TOKEN)

# ---------------------------------------------------------------- sites
SITE_FAMILIES = {
    "vision.blocks": True,   # layered: output of vision encoder block i
    "projector": False,      # not layered: the vision embeddings the LM receives (stored as layer 0)
    "lm.resid": True,        # layered: lm.resid.0 = input to LM layer 0, lm.resid.i = output of layer i-1
}
"""Built-in site families -> whether they carry a layer index. Users may add more families."""

_FAMILY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# ---------------------------------------------------------------- roles
ROLE_NAMES: tuple[str, ...] = (
    "pad",                                             # 0: padding (no token)
    "object", "strip", "distractor", "background",     # image roles
    "subject", "reference", "relation", "last", "text",  # text roles
)
ROLE_CODES: dict[str, int] = {name: code for code, name in enumerate(ROLE_NAMES)}
IMAGE_ROLES = ("object", "strip", "distractor", "background")
TEXT_ROLES = ("subject", "reference", "relation", "last", "text")
PAD = ROLE_CODES["pad"]

# ---------------------------------------------------------------- per-token labels
TOKEN_LABELS: dict[str, tuple[str, int]] = {
    # name: (dtype, value meaning "none"/padding)
    "role": ("int8", PAD),
    "ordinal": ("int8", -1),
    "entity": ("int16", 0),
    "row": ("int16", -1),
    "col": ("int16", -1),
    "position": ("int32", -1),
}
"""Label arrays stored per site family with dims (sample, token)."""

# ---------------------------------------------------------------- per-sample labels
STANDARD_SAMPLE_LABELS = ("sample_id", "scene_id", "relation", "axis", "task", "split",
                          "counterfactual_of")
"""Columns every store has (missing ones are stored as empty strings); more may be added."""

PROVENANCE_KEYS = ("model_id", "revision", "adapter", "dtype", "data_hash")
"""Keys the writer requires in ``provenance``; ``toolkit_version``/``schema_version`` are added."""

ACT_DTYPES = ("float16", "float32")


def toolkit_version() -> str:
    """Installed spatialbind version (``"unknown"`` when running from a bare checkout)."""
    try:
        return metadata.version("spatialbind")
    except metadata.PackageNotFoundError:  # pragma: no cover - editable installs have metadata
        return "unknown"


def is_layered(family: str) -> bool:
    """Whether a site family carries a layer index (user-added families are layered)."""
    return SITE_FAMILIES.get(family, True)


def parse_site(site: str, layer: int | None = None, *,
               require_layer: bool = False) -> tuple[str, int | None]:
    """Split a site name into (family, layer): the one site parser of the toolkit (the store,
    the adapters in ``vlms`` and the hooks in ``interventions`` all use it).

    ``"lm.resid.3"`` -> ``("lm.resid", 3)``; ``("lm.resid", 3)`` -> ``("lm.resid", 3)``;
    ``"vision.blocks.7"`` -> ``("vision.blocks", 7)``;
    ``"projector"`` -> ``("projector", 0)`` (not layered: always layer 0, everywhere).
    A layered family without a layer (``"lm.resid"``) gives ``("lm.resid", None)`` (a family
    query), or an error with ``require_layer=True`` (a concrete site is needed, e.g. to hook it).

    Raises
    ------
    StoreError
        If the name is malformed, gives a layer twice with different values, or (with
        ``require_layer``) names a layered family without a layer.
    """
    if not isinstance(site, str) or not site:
        raise StoreError(f"site must be a non-empty string such as 'lm.resid.3'; got {site!r}")
    parts = site.split(".")
    family, lay = site, None
    if len(parts) > 1 and parts[-1].isdigit():
        family, lay = ".".join(parts[:-1]), int(parts[-1])
    if not _FAMILY_RE.match(family):
        raise StoreError(f"malformed site name {site!r}: use dotted identifiers such as "
                         f"'lm.resid.3', 'projector' or 'vision.blocks.7'")
    if layer is not None:
        layer = int(layer)
        if lay is not None and lay != layer:
            raise StoreError(f"site {site!r} names layer {lay} but layer={layer} was also given; "
                             f"give the layer once")
        lay = layer
    if not is_layered(family):
        if lay not in (None, 0):
            raise StoreError(f"site family {family!r} has no layers; got layer {lay}. "
                             f"Use site={family!r} without a layer")
        lay = 0
    if require_layer and lay is None:
        raise StoreError(f"unknown site {site!r}: {family!r} is a layered site family; name one "
                         f"layer, e.g. '{family}.0'")
    return family, lay


def site_name(family: str, layer: int | None) -> str:
    """Inverse of :func:`parse_site`: ``("lm.resid", 3)`` -> ``"lm.resid.3"``."""
    return family if (layer is None or not is_layered(family)) else f"{family}.{int(layer)}"


def model_key(model: str) -> str:
    """Group name of a model inside a store (``/`` becomes ``--`` as in the HF cache)."""
    if not isinstance(model, str) or not model.strip():
        raise StoreError(f"model must be a non-empty string; got {model!r}")
    return model.strip().replace("/", "--")


def role_code(role: str | int) -> int:
    """Code of a role given by name or code; raises a StoreError with a suggestion if unknown."""
    if isinstance(role, (int, np.integer)) and 0 <= int(role) < len(ROLE_NAMES):
        return int(role)
    if role in ROLE_CODES:
        return ROLE_CODES[role]
    raise unknown("role", role, ROLE_NAMES)


@dataclass(frozen=True, kw_only=True, slots=True)
class SiteSpec:
    """What the writer pre-allocates for one site family."""

    name: str
    """Site family: ``lm.resid``, ``projector``, ``vision.blocks`` or a user-added dotted name."""
    n_tokens: int
    """Token axis length: image-token grid, patch count, or the longest (padded) sequence."""
    hidden: int
    """Width of one activation vector."""
    layers: tuple[int, ...] = (0,)
    """The model's layer numbers stored (e.g. ``(0, 4, 8)``); ``(0,)`` for unlayered families."""
    dtype: str = "float16"
    """Stored dtype: ``float16`` or ``float32`` (bfloat16 inputs are cast)."""

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not _FAMILY_RE.match(name) or name.split(".")[-1].isdigit():
            raise StoreError(f"The 'name' parameter of SiteSpec must be a site family such as "
                             f"'lm.resid' or 'projector' (no layer suffix). Got {name!r} instead.")
        for field in ("n_tokens", "hidden"):
            v = getattr(self, field)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise StoreError(f"The {field!r} parameter of SiteSpec({name!r}) must be an int "
                                 f">= 1. Got {v!r} instead.")
        layers = tuple(self.layers) if not isinstance(self.layers, (int, np.integer)) else (self.layers,)
        if not layers or any(not isinstance(l, (int, np.integer)) or l < 0 for l in layers) \
                or len(set(layers)) != len(layers):
            raise StoreError(f"The 'layers' parameter of SiteSpec({name!r}) must be distinct ints "
                             f">= 0. Got {self.layers!r} instead.")
        if not is_layered(name) and layers != (0,):
            raise StoreError(f"site family {name!r} has no layers: give layers=(0,) "
                             f"(the default). Got {self.layers!r} instead.")
        object.__setattr__(self, "layers", tuple(int(l) for l in layers))
        if self.dtype not in ACT_DTYPES:
            raise StoreError(f"The 'dtype' parameter of SiteSpec({name!r}) must be one of "
                             f"{ACT_DTYPES}. Got {self.dtype!r} instead.")

    def to_dict(self) -> dict:
        """JSON-able form stored in the model group's ``sites`` attr."""
        d = dataclasses.asdict(self)
        d["layers"] = list(d["layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SiteSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(name=d["name"], n_tokens=int(d["n_tokens"]), hidden=int(d["hidden"]),
                   layers=tuple(d["layers"]), dtype=d["dtype"])


# ---------------------------------------------------------------- storage helpers

def resolve_store(path, *, mode: str = "r", storage_options: dict | None = None):
    """Return a zarr store for a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``).

    ``file://`` URLs go through fsspec (with ``auto_mkdir``) so that the fsspec code path is the one
    exercised; plain paths use zarr's ``LocalStore``.
    """
    import zarr.storage

    p = str(path)
    if "://" not in p:
        return zarr.storage.LocalStore(p, read_only=(mode == "r"))
    opts = dict(storage_options or {})
    if p.startswith("file://"):
        opts.setdefault("auto_mkdir", True)
    return zarr.storage.FsspecStore.from_url(p, storage_options=opts, read_only=(mode == "r"))


def encode_strings(values) -> tuple[np.ndarray, list[str]]:
    """Strings -> (int32 codes, categories); ``None``/NaN become ``""``."""
    vals = ["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in values]
    cats = sorted(set(vals))
    lookup = {c: i for i, c in enumerate(cats)}
    return np.array([lookup[v] for v in vals], dtype="int32"), cats


def decode_strings(codes: np.ndarray, categories: list[str]) -> np.ndarray:
    """Inverse of :func:`encode_strings` (object array of str)."""
    cats = np.array(categories, dtype=object)
    return cats[np.asarray(codes, dtype=np.int64)] if len(cats) else np.array([""] * len(codes), object)
