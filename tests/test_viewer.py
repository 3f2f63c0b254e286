"""The viewer as a pathologist uses it: a real window (offscreen), real slides, real tiles."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import SAMPLE_SVS, TCGA_SVS, open_and_wait
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication

from app.core import resample
from app.core.slide import Slide
from app.ui.image_convert import qimage_to_array
from app.ui.main_window import MainWindow


def wait_tiles(qtbot, win: MainWindow) -> None:
    qtbot.waitUntil(win.view.visible_tiles_loaded, timeout=15_000)
    qtbot.wait(50)  # let the queued repaints land


def grab_view(win: MainWindow) -> np.ndarray:
    return qimage_to_array(win.view.viewport().grab().toImage())


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.corrcoef((a @ luma).ravel(), (b @ luma).ravel())[0, 1])


def view_crop(win: MainWindow, x: float, y: float, w: float, h: float) -> np.ndarray:
    """The part of the viewport grab that shows level-0 rectangle (x, y, w, h)."""
    img = grab_view(win)
    p0 = win.view.mapFromScene(QPointF(x, y))
    p1 = win.view.mapFromScene(QPointF(x + w, y + h))
    return img[p0.y() : p1.y(), p0.x() : p1.x()]


def shows_the_slide_pixels(win: MainWindow, inset: int, w: int, h: int) -> bool:
    """Whether a (w, h) level-0 patch `inset` px inside the view's top left corner looks like
    the sample slide's own pixels there (read through OpenSlide, resized to the screen)."""
    r = win.view.visible_rect()
    x, y = int(r.x()) + inset, int(r.y()) + inset
    shown = view_crop(win, x, y, w, h)
    with Slide.open(SAMPLE_SVS) as s:
        s._direct = None  # the reference: OpenSlide itself
        truth = s.read_region(x, y, 0, w, h)
    shrink = shown.shape[1] < w
    resize = resample.area_downscale if shrink else resample.bilinear
    truth = resize(truth, (shown.shape[1], shown.shape[0]))
    return correlation(shown, truth) > 0.9


def test_open_sample_shows_the_slide(qtbot, window):
    open_and_wait(qtbot, window, SAMPLE_SVS)
    assert window.windowTitle().startswith("CMU-1-Small-Region.svs")
    img = grab_view(window)
    assert img.std() > 20, "the view is blank"
    # At fit zoom the view shows the whole slide: it must look like the slide's thumbnail.
    with Slide.open(SAMPLE_SVS) as s:
        thumb = s.thumbnail(512)
    w, h = window.slide.dimensions
    shown = view_crop(window, 0, 0, w, h)
    shown = resample.area_downscale(shown, (thumb.shape[1], thumb.shape[0]))
    assert correlation(shown, thumb) > 0.9
    assert window.view.overview.isVisible()
    assert window.info_panel.fields["Vendor"].text() == "aperio"
    assert "0.4990" in window.info_panel.fields["Pixel size"].text()


def test_zoomed_tiles_match_the_slide_pixels(qtbot, window):
    open_and_wait(qtbot, window, SAMPLE_SVS)
    window.view.centre_on(1100, 1500)
    window.view.set_zoom(2.0)
    wait_tiles(qtbot, window)
    assert shows_the_slide_pixels(window, 20, 200, 150)


def test_zoomed_out_views_read_jpeg_levels_at_reduced_size(qtbot, window):
    """CMU-1 stores only full resolution. At a third of it the view reads level 0 decoded at
    half size (a quarter of the pixels of level 0), and it still shows the slide's pixels."""
    open_and_wait(qtbot, window, SAMPLE_SVS)
    view = window.view
    view.centre_on(1100, 1500)
    view.set_zoom(0.34)
    wait_tiles(qtbot, window)
    assert view.grid.describe(view.level_for_zoom()) == "level 0 at 1/2"
    assert "level 0 at 1/2" in window.level_label.text()
    cached = view.loader.cache.keys()  # (grid level, column, row) of the tiles read
    assert {view.grid.source(k[0]) for k in cached} == {(0, 2)}
    assert shows_the_slide_pixels(window, 40, 900, 700)


def test_keys_zoom_fit_native_and_pan(qtbot, window):
    open_and_wait(qtbot, window, SAMPLE_SVS)
    view = window.view
    fit = view.zoom
    qtbot.keyClick(view, Qt.Key.Key_Plus)
    assert view.zoom == pytest.approx(fit * 1.25)
    qtbot.keyClick(view, Qt.Key.Key_Minus)
    assert view.zoom == pytest.approx(fit)
    qtbot.keyClick(view, Qt.Key.Key_1)
    assert view.zoom == pytest.approx(1.0)
    before = view.visible_rect().center()
    qtbot.keyClick(view, Qt.Key.Key_Right)
    qtbot.keyClick(view, Qt.Key.Key_Down)
    after = view.visible_rect().center()
    assert after.x() > before.x() + 50 and after.y() > before.y() + 50
    qtbot.keyClick(view, Qt.Key.Key_0)
    assert view.zoom == pytest.approx(fit)


def test_wheel_zooms_towards_the_cursor(qtbot, window):
    from PySide6.QtGui import QWheelEvent

    open_and_wait(qtbot, window, SAMPLE_SVS)
    view = window.view
    pos = QPointF(300, 250)
    under = view.mapToScene(pos.toPoint())
    zoom = view.zoom
    ev = QWheelEvent(
        pos,
        view.mapToGlobal(pos),
        QPoint(0, 0),
        QPoint(0, 240),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(view.viewport(), ev)
    assert view.zoom == pytest.approx(zoom * 1.25**2)
    after = view.mapToScene(pos.toPoint())
    assert abs(after.x() - under.x()) < 3 / view.zoom + 1
    assert abs(after.y() - under.y()) < 3 / view.zoom + 1


def test_drag_pans(qtbot, window):
    open_and_wait(qtbot, window, SAMPLE_SVS)
    view = window.view
    view.set_zoom(1.0)
    before = view.visible_rect().center()
    vp = view.viewport()
    qtbot.mousePress(vp, Qt.MouseButton.LeftButton, pos=QPoint(400, 400))
    for x in range(400, 199, -20):
        qtbot.mouseMove(vp, QPoint(x, 400 - (400 - x) // 2))
    qtbot.mouseRelease(vp, Qt.MouseButton.LeftButton, pos=QPoint(200, 300))
    after = view.visible_rect().center()
    assert after.x() - before.x() == pytest.approx(200, abs=25)
    assert after.y() - before.y() == pytest.approx(100, abs=25)


def test_overview_click_and_drag_move_the_view(qtbot, window):
    open_and_wait(qtbot, window, SAMPLE_SVS)
    view, ov = window.view, window.view.overview
    view.set_zoom(1.0)
    target = QPoint(round(ov.width() * 0.25), round(ov.height() * 0.75))
    qtbot.mouseClick(ov, Qt.MouseButton.LeftButton, pos=target)
    c = view.visible_rect().center()
    w, h = window.slide.dimensions
    assert c.x() == pytest.approx(w * 0.25, abs=w * 0.03)
    assert c.y() == pytest.approx(h * 0.75, abs=h * 0.03)
    qtbot.mousePress(ov, Qt.MouseButton.LeftButton, pos=target)
    qtbot.mouseMove(ov, QPoint(round(ov.width() * 0.7), round(ov.height() * 0.3)))
    qtbot.mouseRelease(ov, Qt.MouseButton.LeftButton)
    c = view.visible_rect().center()
    assert c.x() == pytest.approx(w * 0.7, abs=w * 0.03)
    assert c.y() == pytest.approx(h * 0.3, abs=h * 0.03)


def test_scale_bar_and_magnification(qtbot, window):
    open_and_wait(qtbot, window, SAMPLE_SVS)
    window.view.set_zoom(0.5)
    bar = window.view.scale_bar
    assert bar.mag_text == "10.0x"  # 20x scan shown at half resolution
    # The bar's length is what its label says, at 0.499 µm/px and 0.5 screen px per pixel.
    value, unit = bar.label.split()
    um = float(value) * (1000 if unit == "mm" else 1)
    assert bar.bar_px == pytest.approx(um / 0.499 * 0.5, rel=1e-6)


def test_slide_without_mpp_says_so(qtbot, window):
    open_and_wait(qtbot, window, TCGA_SVS)
    assert "not recorded" in window.info_panel.fields["Pixel size"].text()
    assert window.view.scale_bar.label.endswith(" px")


def test_large_pyramid_picks_the_level_for_the_zoom(qtbot, window, large_pyramid):
    open_and_wait(qtbot, window, large_pyramid)
    view = window.view
    assert view.level_for_zoom() >= 4  # fit: 20000 px into ~800 px
    for zoom, level in ((1.0, 0), (0.5, 1), (0.3, 1), (0.125, 3)):
        view.set_zoom(zoom)
        assert view.level_for_zoom() == level
        wait_tiles(qtbot, window)
        assert grab_view(window).std() > 20
    # Tiles of the level in use were read; far away ones were not.
    cached = set(view.loader.cache.keys())
    assert any(k[0] == 3 for k in cached)
    assert not any(k[0] == 0 and k[1] > 30 for k in cached)


def test_no_seams_at_fractional_zoom(qtbot, window, large_pyramid):
    """A tile boundary at a fractional zoom shows no line of glass colour between tiles."""
    open_and_wait(qtbot, window, large_pyramid)
    view = window.view
    view.set_zoom(0.8371)
    view.centre_on(2048, 2048)  # a corner shared by four level-0 tiles
    wait_tiles(qtbot, window)
    img = grab_view(window).astype(np.int16)
    col = view.mapFromScene(QPointF(2048, 2048)).x()
    # Glass is (244, 244, 242); a seam would be a bright near-grey column at the tile edge.
    for x in range(col - 1, col + 2):
        column = img[100:-100, x]
        glass = (np.abs(column - np.array([244, 244, 242])).sum(axis=1) < 6).mean()
        assert glass < 0.2


def test_recent_files_and_drop(qtbot, window, tmp_path):
    open_and_wait(qtbot, window, SAMPLE_SVS)
    assert window.recent_files()[0] == str(SAMPLE_SVS.resolve())
    assert window.recent_menu.actions()[0].text() == SAMPLE_SVS.name
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(TCGA_SVS))])
    drop = QDropEvent(
        QPointF(100, 100),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    with qtbot.waitSignal(window.slideOpened, timeout=15_000):
        window.dropEvent(drop)
    assert window.slide.path == TCGA_SVS
    assert [a.text() for a in window.recent_menu.actions()][:2] == [TCGA_SVS.name, SAMPLE_SVS.name]


@pytest.mark.parametrize("kind", ["text", "truncated", "missing", "folder", "run-map"])
def test_bad_files_show_a_dialog_and_the_window_stays_usable(qtbot, window, tmp_path, kind):
    bad = {
        "text": tmp_path / "notes.svs",
        "run-map": tmp_path / "case.svs.run-0123abcd.likelihood.tif",  # a run's map, beside its slide
        "truncated": tmp_path / "cut.svs",
        "missing": tmp_path / "gone.ndpi",
        "folder": tmp_path / "empty-folder",
    }[kind]
    if kind == "text":
        bad.write_text("not a slide\n" * 100)
    elif kind == "truncated":
        bad.write_bytes(SAMPLE_SVS.read_bytes()[:700_000])
    elif kind == "folder":
        bad.mkdir()
    elif kind == "run-map":
        bad.write_bytes(SAMPLE_SVS.read_bytes())  # a TIFF OpenSlide opens: refused by what it is
    with qtbot.waitSignal(window.openFailed, timeout=15_000):
        window.open_slide(bad)
    dialog = window.error_dialog
    assert dialog is not None and dialog.isVisible()
    assert str(bad) in dialog.text()
    if kind == "run-map":
        assert "not a slide: open the slide it was made on" in dialog.text()
    dialog.accept()
    open_and_wait(qtbot, window, SAMPLE_SVS)  # still usable
    assert window.slide is not None


def test_unreadable_tile_shows_placeholder_and_status(qtbot, window, corrupt_pyramid):
    path, (bx, by) = corrupt_pyramid
    open_and_wait(qtbot, window, path)
    with qtbot.waitSignal(window.view.tileFailed, timeout=15_000):
        window.view.set_zoom(1.0)
        window.view.centre_on(bx + 256, by + 256)
    wait_tiles(qtbot, window)
    assert "could not be read" in window.statusBar().currentMessage()
    centre = view_crop(window, bx + 200, by + 200, 100, 100)
    grey = np.abs(centre.astype(int) - (225, 225, 225)).sum(axis=2) < 10
    assert grey.mean() > 0.8  # the placeholder (grey with a red cross), not tissue or glass
    # Neighbouring tiles are still real tissue.
    neighbour = view_crop(window, bx - 140, by + 100, 120, 200)
    assert neighbour.size > 0
    assert neighbour.std() > 20


def test_pyside_does_not_leak_none_references(qtbot):
    """PySide6 6.12.0 dropped a reference to None per void static call and aborted Python 3.11
    after a few thousand calls; pyproject pins it out. This fails if such a build comes back."""
    before = sys.getrefcount(None)
    for _ in range(2000):
        QApplication.processEvents()
    assert sys.getrefcount(None) - before > -100
