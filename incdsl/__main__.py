"""``python -m incdsl`` (and ``torchrun -m incdsl train ...``)."""

import sys

from .cli import main

sys.exit(main())
