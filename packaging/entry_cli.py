"""The frozen app's `delineo` command: the CLI, and the viewer when run without a sub-command."""

import multiprocessing
import sys

from app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
