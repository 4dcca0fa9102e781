"""``python -m synthrel_lightning``: see :mod:`synthrel_lightning.cli`."""

from synthrel_lightning.cli import main

if __name__ == "__main__":
    main()
