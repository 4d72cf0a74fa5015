"""Importers: external spatial benchmarks read into the shared :class:`~scenegen.record.Stimulus`.

Only What'sUp (Kamath et al., EMNLP 2023) for now: :func:`import_whatsup` reads the real release
under a user's root and returns records in memory or writes a dataset directory in our format.
"""
from .whatsup import (
    SUBSETS,
    ImportedItem,
    WhatsUpError,
    import_whatsup,
    parse_caption,
    whatsup_mask,
)

__all__ = ["SUBSETS", "ImportedItem", "WhatsUpError", "import_whatsup", "parse_caption",
           "whatsup_mask"]
