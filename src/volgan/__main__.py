"""``python -m volgan`` (also what ``torchrun -m volgan`` runs)."""

import sys

from volgan.cli import main

sys.exit(main())
