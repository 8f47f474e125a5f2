"""``python -m attnreg`` runs the command line."""

import sys

from attnreg.cli import main

sys.exit(main())
