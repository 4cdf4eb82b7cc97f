"""``python -m incdsl`` (and ``torchrun -m incdsl train ...``)."""

import sys

from incdsl.tools.cli import main

sys.exit(main())
