"""Command-line tools: one module per command, holding only its argument parsing and ``main``."""
