"""`python -m app` is the `delineo` command (the viewer by default)."""

import sys

from app.cli import main

sys.exit(main())
