"""Start the Qt application."""

from __future__ import annotations

import sys

from app.paths import SAMPLE_SLIDE


def run_gui(slide: str | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from app.ui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("Delineo")
    app.setApplicationName("Delineo")
    from app import __version__

    app.setApplicationVersion(__version__)
    win = MainWindow()
    win.show()
    target = slide or (str(SAMPLE_SLIDE) if SAMPLE_SLIDE.exists() else None)
    if target:
        win.open_slide(target)
    return app.exec()
