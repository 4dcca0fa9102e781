"""Command modules: argument parsing and main of each ``python -m synthrel_lightning`` tool."""
