"""Files shipped inside the package: the embedded demo's configuration."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
"""The packaged configuration folder (``synthrel_lightning/configs``)."""

DEMO_CONFIG = CONFIGS / "demo.yaml"
"""The packaged demo configuration: ``demo`` runs it; ``--config demo`` names it."""

__all__ = ["CONFIGS", "DEMO_CONFIG"]
