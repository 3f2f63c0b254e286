"""Python's cyclic garbage collector, run on the GUI thread only.

Automatic collection runs on whichever thread happens to allocate when a collection is due: the
delineation worker, a tile loader, an HTTP client. A reference cycle holding a Qt object (a
closed dialog, a window and its slots) is then destroyed on that thread, and Qt objects deleted
off their own thread crash the process: CI saw a segfault with the worker thread "Garbage-
collecting" while it built the remote engine's HTTP client. So the window switches automatic
collection off and a timer on the GUI thread does the same work, with the same thresholds.
Objects without cycles are still freed at once by reference counting, on any thread.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QTimer

INTERVAL_MS = 250


class GuiThreadGarbageCollector(QObject):
    def __init__(self, parent: QObject, interval_ms: int = INTERVAL_MS):
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        gc.disable()
        # What exists now (modules, classes, Qt's wrappers) lives as long as the app: frozen, a
        # full collection skips it, and stays a few ms on the GUI thread instead of tens.
        gc.collect()
        gc.freeze()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.collect_due)
        self._timer.start(interval_ms)

    def collect_due(self) -> None:
        """Collect the oldest generation whose count has passed its threshold, as CPython would."""
        counts = gc.get_count()
        for generation in (2, 1, 0):
            if counts[generation] > self.thresholds[generation]:
                gc.collect(generation)
                return


def collect_garbage_on_gui_thread() -> GuiThreadGarbageCollector | None:
    """Install the collector once per application (idempotent); None without a Qt application."""
    app = QCoreApplication.instance()
    if app is None:
        return None
    collector = app.findChild(GuiThreadGarbageCollector)
    return collector or GuiThreadGarbageCollector(app)
