"""Run by test_x11_session under a real X server (Xvfb, Qt's xcb platform): a pathologist's
session in the real window, driven with Qt's input events — open, paint, delineate twice,
select and brush on an outline, delete, undo, screenshot — then it prints what it saw as JSON."""

import json
import os
import sys
import time

os.environ["QT_QPA_PLATFORM"] = "xcb"

from PySide6.QtCore import QPoint, QSettings, Qt, QTimer
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from app.ui.main_window import MainWindow

slide, settings, shot = sys.argv[1], sys.argv[2], sys.argv[3]
app = QApplication([])
win = MainWindow(QSettings(settings, QSettings.Format.IniFormat))
win.show()
report: dict = {"platform": app.platformName()}


def wait_until(condition, timeout_ms: int = 120_000) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_ms} ms")
        QTest.qWait(20)


def drag(points, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    vp = win.view.viewport()
    QTest.mousePress(vp, Qt.MouseButton.LeftButton, modifier, QPoint(*points[0]))
    for p in points[1:]:
        QTest.mouseMove(vp, QPoint(*p))
        QTest.qWait(10)
    QTest.mouseRelease(vp, Qt.MouseButton.LeftButton, modifier, QPoint(*points[-1]))


def run_once() -> int:
    n = [0]
    win.delineationFinished.connect(lambda _r: n.__setitem__(0, 1))
    QTest.keyClick(win, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
    wait_until(lambda: n[0] and not win.running)
    return len(win.annotations)


def session() -> None:
    try:
        wait_until(win.view.visible_tiles_loaded, 30_000)
        wait_until(lambda: win.autosaver.store is not None, 10_000)
        win.activateWindow()
        wait_until(lambda: QApplication.activeWindow() is win, 10_000)
        win.view.setFocus()
        QTest.keyClick(win.view, Qt.Key.Key_R)
        drag([(250, 150), (450, 400), (700, 650)])
        QTest.keyClick(win.view, Qt.Key.Key_S)
        report["first_run"] = run_once()
        report["areas_first"] = sum(a.geometry.area for a in win.annotations)
        report["second_run"] = run_once()
        report["areas_second"] = sum(a.geometry.area for a in win.annotations)
        biggest = max(win.annotations, key=lambda a: a.geometry.area)
        p = biggest.geometry.representative_point()
        QTest.mouseClick(
            win.view.viewport(),
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
            win.view.mapFromScene(p.x, p.y),
        )
        report["selected"] = win.layer.selected == [biggest.id]
        QTest.keyClick(win.view, Qt.Key.Key_B)
        win.editor.set_brush_um(50)
        a, b = win.view.mapFromScene(p.x, p.y), win.view.mapFromScene(p.x + 400, p.y)
        drag([(a.x(), a.y()), ((a.x() + b.x()) // 2, a.y()), (b.x(), b.y())])
        report["brushed_bigger"] = win.layer.by_id(biggest.id).geometry.area > biggest.geometry.area
        QTest.keyClick(win.view, Qt.Key.Key_S)
        QTest.keyClick(win.view, Qt.Key.Key_Delete)
        report["after_delete"] = len(win.annotations)
        QTest.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        report["after_undo"] = len(win.annotations)
        report["brush_kept_after_undo"] = win.layer.by_id(biggest.id) is not None
        QTest.qWait(300)
        win.grab().save(shot)
        win.autosaver.flush()
        report["autosave"] = str(win.store.path)
        report["ids"] = sorted(a.id for a in win.annotations)
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        report["error"] = f"{type(e).__name__}: {e} (after {sorted(report)})"
    print("REPORT " + json.dumps(report), flush=True)
    win.close()
    app.quit()


win.slideOpened.connect(lambda _path: QTimer.singleShot(300, session))
win.open_slide(slide)
app.exec()
