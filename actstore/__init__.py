"""actstore: the activation store (Zarr v3 + xarray + dask): schema, vocabulary, writer, query API.

Writers (``vlms`` extraction) use :class:`StoreWriter`; readers (``probes``, ``interventions``)
use :func:`open_store`. The vocabulary (dims, site families, role codes) lives in
:mod:`actstore.schema`. See ``actstore/README.md``.
"""
from .errors import SchemaError, StoreError
from .reader import Store, format_summary, open_store
from .schema import (ACTS_DIMS, IMAGE_ROLES, PAD, ROLE_CODES, ROLE_NAMES, SCHEMA_VERSION,
                     SITE_FAMILIES, TEXT_ROLES, TOKEN_LABELS, SiteSpec, parse_site, role_code,
                     site_name)
from .validate import problems, validate
from .writer import StoreWriter, check_target, estimate_bytes, reindex

__all__ = [
    "ACTS_DIMS", "IMAGE_ROLES", "PAD", "ROLE_CODES", "ROLE_NAMES", "SCHEMA_VERSION", "SITE_FAMILIES",
    "TEXT_ROLES", "TOKEN_LABELS", "SchemaError", "SiteSpec", "Store", "StoreError", "StoreWriter",
    "check_target", "estimate_bytes", "format_summary", "open_store", "parse_site", "problems", "reindex", "role_code",
    "site_name", "validate",
]
