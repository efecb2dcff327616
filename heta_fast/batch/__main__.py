"""``python -m heta_fast.batch IN.jsonl OUT.jsonl [options]`` (what ``torchrun -m`` launches)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
