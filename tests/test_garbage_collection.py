"""Reference cycles are collected on the GUI thread, never on a worker thread (where deleting a
Qt object crashes the process: CI saw it once in a few runs)."""

from __future__ import annotations

import gc
import threading

from app.ui.garbage_collection import collect_garbage_on_gui_thread


class Cycle:
    """A reference cycle that records the thread it was collected on."""

    collected_on: list[str] = []  # noqa: RUF012 - shared by design: __del__ appends to it

    def __init__(self):
        self.me = self

    def __del__(self):
        Cycle.collected_on.append(threading.current_thread().name)


def test_cycles_made_anywhere_are_collected_on_the_gui_thread(qtbot):
    collector = collect_garbage_on_gui_thread()
    assert collector is collect_garbage_on_gui_thread()  # one per application
    Cycle.collected_on.clear()
    Cycle()  # garbage from the GUI thread, like a closed dialog

    def allocate_on_a_worker():
        # Enough new cycles that CPython's automatic collector would run here, on this thread.
        for _ in range(20 * collector.thresholds[0]):
            Cycle()

    worker = threading.Thread(target=allocate_on_a_worker, name="worker")
    worker.start()
    worker.join()
    assert Cycle.collected_on == []  # nothing collected on the worker
    qtbot.waitUntil(lambda: len(Cycle.collected_on) > 0, timeout=5_000)
    gc.collect()
    assert set(Cycle.collected_on) == {threading.main_thread().name}
