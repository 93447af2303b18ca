"""The table layout's constants, for the read modules not yet moved into `storage/`.

The tables themselves are defined in `storage/sqlite/schema.py`; this name stays until
the read side moves behind the read model.
"""

from __future__ import annotations

from .storage.sqlite.schema import CHUNK_POINTS, NO_EPOCH, PROJECTION_TABLES, PROJECTION_VERSION

__all__ = ["CHUNK_POINTS", "NO_EPOCH", "PROJECTION_TABLES", "PROJECTION_VERSION"]
