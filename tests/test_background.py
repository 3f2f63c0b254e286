"""Work handed to a pool thread reports back on the GUI thread, result or error."""

from __future__ import annotations

import threading

from PySide6.QtCore import QThread
from PySide6.QtWidgets import QApplication

from app.ui.background import run_in_background


def test_result_and_error_callbacks_run_on_the_gui_thread(qtbot):
    gui = QApplication.instance().thread()
    seen = {}

    def work():
        seen["worker"] = threading.current_thread().name
        return 42

    def fail():
        raise ValueError("bad input")

    run_in_background(
        work,
        lambda r: seen.update(result=r, result_gui=QThread.currentThread() is gui),
        lambda e: seen.update(unexpected=e),
    )
    run_in_background(
        fail,
        lambda r: seen.update(unexpected=r),
        lambda e: seen.update(error=str(e), error_gui=QThread.currentThread() is gui),
    )
    qtbot.waitUntil(lambda: "result" in seen and "error" in seen, timeout=5000)
    assert seen["worker"] != threading.main_thread().name
    assert seen["result"] == 42 and seen["result_gui"]
    assert seen["error"] == "bad input" and seen["error_gui"]
    assert "unexpected" not in seen
