"""Names that become file or folder names (the check lives in :mod:`synthrel_lightning.paths`)."""

from __future__ import annotations

from synthrel_lightning.paths import check_name, path_within

__all__ = ["check_name", "path_within"]
