"""``python -m heta_fast``: the ``heta-fast`` command line (also what ``torchrun -m heta_fast attribute ... --split-work``
starts on every rank)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
