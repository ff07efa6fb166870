"""``python -m firmware_sim`` runs the ``tcusim`` command line."""

import sys

from firmware_sim.cli import main

sys.exit(main())
