"""The frozen app's GUI launcher (no console window on Windows; the .app on macOS)."""

import sys

from app.cli import gui_main

if __name__ == "__main__":
    sys.exit(gui_main())
