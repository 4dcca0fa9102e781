"""Command-line tools of ``python -m synthrel_lightning``: one thin module per command (options + main)."""
