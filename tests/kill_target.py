"""Run by test_autosave as a separate process: the real app, making one change every 1.5 s (or
every INTERVAL_MS given as the third argument), printing each with its wall-clock time, until the
test kills it with SIGKILL."""

import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication
from shapely.geometry import box

from app.core.annotations import Annotation
from app.ui.main_window import MainWindow

slide, settings = sys.argv[1], sys.argv[2]
interval_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
app = QApplication([])
win = MainWindow(QSettings(settings, QSettings.Format.IniFormat))
win.show()
step = [0]


def change() -> None:
    i = step[0] = step[0] + 1
    if i % 2:  # alternate: an annotation, then a stroke of the painted region
        win.add_annotations([Annotation(box(100 * i, 100, 100 * i + 80, 180), name=f"change {i}")])
    else:
        win.editor.model.add(box(100 * i, 300, 100 * i + 80, 380), f"change {i}")
    print(f"CHANGE {i} {time.time():.3f}", flush=True)


def start() -> None:
    print("READY", flush=True)
    change()
    timer.start()


timer = QTimer()
timer.setInterval(interval_ms)
timer.timeout.connect(change)
win.slideOpened.connect(lambda _path: QTimer.singleShot(500, start))
win.open_slide(slide)
app.exec()
