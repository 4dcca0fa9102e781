"""Command modules of ``python -m synthrel_lightning <tool>``: argument parsing and ``main`` only."""
