"""`delineo bench slide`: what a pathologist feels when opening and panning a slide.

Runs the real main window (offscreen unless a display is set) and measures: cold open to the
first full frame, tile read+decode time on a cache miss, lookup on a hit, and the longest gap
of a 5 ms heartbeat timer while the view pans across the slide at full resolution (the GUI
stall a user would see as a stutter).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from app.core.pyramid_tiff import level_sizes, periodic_source, write_pyramidal_tiff

LARGE_SIDE = 20_000


def make_large_pyramid(out: Path, side: int = LARGE_SIDE) -> Path:
    """A side x side pyramid repeating the bundled sample slide's tissue, 0.25 µm/px."""
    from app.core.slide import Slide
    from app.paths import SAMPLE_SLIDE

    with Slide.open(SAMPLE_SLIDE) as s:
        tissue = s.read_region(400, 600, 0, 1536, 1536)
    sizes = level_sizes(side, side, 2, 256)
    return write_pyramidal_tiff(out, periodic_source(tissue, sizes), sizes, mpp=0.25)


def bench_slide(path: str | None, progress=None, pan_steps: int = 240) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from app.ui.heartbeat import Heartbeat
    from app.ui.main_window import MainWindow

    say = progress or (lambda _msg: None)
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        say(f"building a {LARGE_SIDE} x {LARGE_SIDE} pyramid from the sample slide…")
        path = str(make_large_pyramid(Path(tmp.name) / "large.tif"))
    app = QApplication.instance() or QApplication([])
    settings = QSettings(str(Path(tempfile.gettempdir()) / "delineo-bench.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings)
    win.resize(1280, 820)
    win.show()

    def spin_until(cond, timeout_s: float = 30) -> None:
        end = time.perf_counter() + timeout_s
        while not cond() and time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)

    # Cold open: from the request to every visible tile of the chosen level painted.
    t0 = time.perf_counter()
    win.open_slide(path)
    spin_until(lambda: win.slide is not None)
    t_open = time.perf_counter() - t0
    spin_until(win.view.visible_tiles_loaded)
    app.processEvents()
    win.view.viewport().repaint()
    t_first_frame = time.perf_counter() - t0
    say(f"opened in {t_open * 1000:.0f} ms, first full frame at {t_first_frame * 1000:.0f} ms")

    # Pan across the slide at full resolution, one step per 16 ms frame, with a heartbeat.
    view = win.view
    view.set_zoom(1.0)
    w, h = win.slide.dimensions
    view.centre_on(w * 0.1, h * 0.5)
    spin_until(view.visible_tiles_loaded)
    hb = Heartbeat()
    hb.start()
    step_px = (w * 0.8) / pan_steps
    steps = [0]
    paint_ms: list[float] = []

    def pan() -> None:
        steps[0] += 1
        t = time.perf_counter()
        view.centre_on(w * 0.1 + steps[0] * step_px, h * 0.5 + 200 * np.sin(steps[0] / 20))
        view.viewport().repaint()
        paint_ms.append((time.perf_counter() - t) * 1000)

    pan_timer = QTimer()
    pan_timer.setInterval(16)
    pan_timer.timeout.connect(pan)
    pan_timer.start()
    t_pan = time.perf_counter()
    spin_until(lambda: steps[0] >= pan_steps, 120)
    pan_s = time.perf_counter() - t_pan
    pan_timer.stop()
    hb.stop()
    loader = view.loader
    misses = list(loader.fetch_times_ms)
    # Cache hits: look up every cached tile.
    keys = loader.cache.keys()
    t = time.perf_counter()
    for k in keys:
        loader.cache.get(k)
    hit_us = (time.perf_counter() - t) / max(1, len(keys)) * 1e6
    result = {
        "slide": str(path),
        "dimensions": list(win.slide.dimensions),
        "levels": win.slide.level_count,
        "open_ms": round(t_open * 1000, 1),
        "first_full_frame_ms": round(t_first_frame * 1000, 1),
        "tile_miss_ms_median": round(statistics.median(misses), 2) if misses else None,
        "tile_miss_ms_p95": round(float(np.percentile(misses, 95)), 2) if misses else None,
        "tile_hit_us": round(hit_us, 2),
        "tiles_read": len(misses),
        "pan_steps": pan_steps,
        "pan_fps": round(pan_steps / pan_s, 1),
        "paint_ms_median": round(statistics.median(paint_ms), 2),
        "longest_gui_stall_ms": round(hb.longest, 1) if hb.gaps else None,
        "heartbeat_gaps_over_50ms": sum(g > 50 for g in hb.gaps),
        "qpa_platform": os.environ.get("QT_QPA_PLATFORM", ""),
    }
    win.close()
    if tmp is not None:
        tmp.cleanup()
    return result
