"""Saves a slide's annotations a moment after every change, off the GUI thread.

Changes within the debounce interval are coalesced into one save, but the wait is bounded from
the FIRST unsaved change: a debounce restarted on every change never fires while the user keeps
editing faster than its interval, and "saved within a second" must hold then too. Saves run one
at a time on a dedicated thread, in order, each atomic (see AnnotationStore). The document is
built on the GUI thread when the timer fires, so it is a consistent snapshot of what the user sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from PySide6.QtCore import QObject, QTimer, Signal

from app.core.annotation_store import AnnotationStore

log = logging.getLogger(__name__)
DEBOUNCE_MS = 250  # quiet time after a change before saving
MAX_WAIT_MS = 500  # from the first unsaved change, whatever follows: half the promised second


class Autosaver(QObject):
    saved = Signal(str)  # path
    failed = Signal(str)  # message naming the path

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.store: AnnotationStore | None = None
        self.document: Callable[[], dict] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.save_now)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autosave")
        self._last: Future | None = None
        self._first_unsaved: float | None = None  # time.monotonic() of the oldest unsaved change
        self.last_saved: float | None = None

    def attach(self, store: AnnotationStore | None, document: Callable[[], dict] | None) -> None:
        """Start saving for a slide (None to stop, after flushing what is pending)."""
        self.flush()
        self.store, self.document = store, document

    def changed(self) -> None:
        if self.store is None:
            return
        now = time.monotonic()
        if self._first_unsaved is None:
            self._first_unsaved = now
        left_ms = MAX_WAIT_MS - (now - self._first_unsaved) * 1000
        self._timer.start(max(0, int(min(DEBOUNCE_MS, left_ms))))

    def save_now(self) -> None:
        self._timer.stop()
        self._first_unsaved = None
        if self.store is None or self.document is None:
            return
        store, doc = self.store, self.document()
        self._last = self._pool.submit(self._write, store, doc)

    def _write(self, store: AnnotationStore, doc: dict) -> None:
        try:
            path = store.write(doc)
        except OSError as e:
            log.error("autosave to %s failed: %s", store.path, e)
            self.failed.emit(f"Could not save annotations to {store.path}: {e.strerror or e}")
            return
        self.last_saved = time.time()
        self.saved.emit(str(path))

    def flush(self) -> None:
        """Write a pending change now and wait for it (used when closing a slide or the app)."""
        if self._timer.isActive():
            self.save_now()
        if self._last is not None:
            self._last.result()
            self._last = None

    def shutdown(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)
