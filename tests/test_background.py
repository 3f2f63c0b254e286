"""Work handed to a superqt worker reports back on the GUI thread, result or error: every
slot the window connects to a worker relies on it (Qt objects are touched only there)."""

from __future__ import annotations

import threading

from PySide6.QtCore import QThread
from PySide6.QtWidgets import QApplication
from superqt.utils import create_worker


def test_result_and_error_callbacks_run_on_the_gui_thread(qtbot):
    gui = QApplication.instance().thread()
    seen = {}

    def work():
        seen["worker"] = threading.current_thread().name
        return 42

    def fail():
        raise ValueError("bad input")

    create_worker(
        work,
        _start_thread=True,
        _connect={"returned": lambda r: seen.update(result=r, result_gui=QThread.currentThread() is gui)},
    )
    create_worker(
        fail,
        _start_thread=True,
        _connect={"errored": lambda e: seen.update(error=str(e), error_gui=QThread.currentThread() is gui)},
    )
    qtbot.waitUntil(lambda: "result" in seen and "error" in seen, timeout=5000)
    assert seen["worker"] != threading.main_thread().name
    assert seen["result"] == 42 and seen["result_gui"]
    assert seen["error"] == "bad input" and seen["error_gui"]
