"""``python -m diffode``: the ``diffode`` command, and what ``torchrun -m diffode`` runs on each rank."""

import sys

from diffode.cli import main

if __name__ == "__main__":
    sys.exit(main())
