"""`delineo bench review-gui`: what correcting outlines feels like in the real window.

Measures, in the real main window (offscreen unless a display is set) on the bundled sample:
the GUI time of each mouse move while brushing over a selected 5,000-vertex outline and of the
edit made on release, and the longest gap of a 5 ms heartbeat timer while 1,000 outlines are
autosaved (the save runs on its own thread; this is the stall a user would feel).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon


def wobbly_outline(cx: float, cy: float, r: float, vertices: int) -> Polygon:
    """A gland-like outline with `vertices` vertices (a circle with a wavy edge)."""
    t = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    rr = r * (1 + 0.08 * np.sin(37 * t) + 0.04 * np.sin(11 * t))
    return Polygon(np.column_stack([cx + rr * np.cos(t), cy + rr * np.sin(t)]))


def bench_review_gui(progress=None, vertices: int = 5000, outlines: int = 1000, moves: int = 120) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QPoint, QSettings, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from app.core.annotations import Annotation
    from app.paths import SAMPLE_SLIDE
    from app.ui.heartbeat import Heartbeat
    from app.ui.main_window import MainWindow

    say = progress or (lambda _msg: None)
    tmp = tempfile.TemporaryDirectory()
    slide = Path(tmp.name) / SAMPLE_SLIDE.name
    shutil.copy(SAMPLE_SLIDE, slide)
    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(Path(tmp.name) / "bench.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings)
    win.resize(1280, 820)
    win.show()

    def spin_until(cond, timeout_s: float = 60) -> None:
        end = time.perf_counter() + timeout_s
        while not cond() and time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)

    win.open_slide(str(slide))
    spin_until(lambda: win.slide is not None and win.autosaver.store is not None)
    spin_until(win.view.visible_tiles_loaded)

    # Brush over a selected 5,000-vertex outline.
    w, h = win.slide.dimensions
    outline = Annotation(wobbly_outline(w / 2, h / 2, min(w, h) / 4, vertices))
    win.add_annotations([outline])
    win.layer.select([outline.id])
    win.view.set_zoom(0.5)
    win.view.centre_on(w / 2, h / 2)
    win.editor.set_tool("Brush")
    win.editor.set_brush_um(80)
    app.processEvents()
    vp = win.view.viewport()
    c = win.view.mapFromScene(w / 2 + min(w, h) / 4 * 0.9, h / 2)
    path = [
        QPoint(c.x() + round(60 * math.cos(i / 12)), c.y() + round(40 * math.sin(i / 9)))
        for i in range(moves)
    ]
    QTest.mousePress(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, path[0])
    move_ms = []
    for p in path[1:]:
        t = time.perf_counter()
        QTest.mouseMove(vp, p)
        app.processEvents()
        move_ms.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    QTest.mouseRelease(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, path[-1])
    app.processEvents()
    release_ms = (time.perf_counter() - t) * 1000
    grown = win.layer.by_id(outline.id)
    say(f"brush: {statistics.median(move_ms):.2f} ms a move (median), edit on release {release_ms:.1f} ms")

    # Autosave of 1,000 outlines while a heartbeat watches the GUI thread.
    win.editor.set_tool("Select / move")
    side = int(math.sqrt(outlines)) + 1
    step = min(w, h) / side
    many = [
        Annotation(wobbly_outline((i % side + 0.5) * step, (i // side + 0.5) * step, step / 3, 64))
        for i in range(outlines)
    ]
    heartbeat = Heartbeat()
    saved: list[float] = []
    win.autosaver.flush()  # the brush edit's save is not this one
    win.autosaver.saved.connect(lambda _p: saved.append(time.perf_counter()))
    heartbeat.start()
    spin_until(lambda: len(heartbeat.gaps) > 20, 5)
    heartbeat.reset()
    t_add = time.perf_counter()
    win.layer.add(many, "bench")
    add_ms = (time.perf_counter() - t_add) * 1000
    heartbeat.reset()  # from here on the GUI thread only waits for the save on its own thread
    spin_until(lambda: bool(saved), 60)
    spin_until(lambda: False, 0.2)
    heartbeat.stop()
    save_s = (saved[0] - t_add) if saved else float("nan")
    stall = heartbeat.longest if heartbeat.longest is not None else float("nan")
    say(f"autosave of {outlines} outlines: written {save_s:.2f} s after the change, GUI gap {stall:.0f} ms")
    result = {
        "outline vertices": vertices,
        "brush: GUI time per mouse move (median / p95)": f"{statistics.median(move_ms):.2f} / "
        f"{np.percentile(move_ms, 95):.2f} ms",
        "brush: edit on release": f"{release_ms:.1f} ms",
        "brush: outline grew": bool(grown is not None and grown.geometry.area > outline.geometry.area),
        "autosave: outlines": outlines,
        "autosave: adding them to the window (GUI thread)": f"{add_ms:.0f} ms",
        "autosave: written after the change": f"{save_s:.2f} s",
        "autosave: longest GUI gap while it ran": f"{stall:.0f} ms",
    }
    win.close()
    tmp.cleanup()
    return result
