"""Paint a region, click Delineate, watch tiles arrive: the real window, the real shipped model."""

from __future__ import annotations

import math
import time

import pytest
from conftest import open_and_wait
from PySide6.QtCore import QElapsedTimer, QPoint, QPointF, Qt, QTimer


def stroke(qtbot, win, points: list[tuple[int, int]]) -> None:
    vp = win.view.viewport()
    qtbot.mousePress(vp, Qt.MouseButton.LeftButton, pos=QPoint(*points[0]))
    for p in points[1:]:
        qtbot.mouseMove(vp, QPoint(*p))
    qtbot.mouseRelease(vp, Qt.MouseButton.LeftButton, pos=QPoint(*points[-1]))


def test_brush_paints_a_region_of_the_brush_width(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    qtbot.keyClick(window.view, Qt.Key.Key_B)
    assert window.editor.active.name == "Brush"
    window.editor.set_brush_um(100)
    stroke(qtbot, window, [(300 + 10 * i, 300) for i in range(31)])
    g = window.editor.model.geometry
    z, mpp = window.view.zoom, 0.499
    length = 300 / z  # level-0 px
    width = 100 / mpp
    expected = length * width + math.pi * (width / 2) ** 2
    assert g.area == pytest.approx(expected, rel=0.05)
    # [ and ] resize the brush.
    qtbot.keyClick(window.view, Qt.Key.Key_BracketRight)
    assert window.editor.brush_um == pytest.approx(125)
    assert window.brush_size.value() == pytest.approx(125)


def test_eraser_polygon_rectangle_undo_redo(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    model = window.editor.model
    qtbot.keyClick(window.view, Qt.Key.Key_R)
    stroke(qtbot, window, [(200, 200), (300, 260), (400, 400)])
    rect_area = model.geometry.area
    assert rect_area == pytest.approx((200 / window.view.zoom) ** 2, rel=0.02)
    qtbot.keyClick(window.view, Qt.Key.Key_E)
    window.editor.set_brush_um(60)
    stroke(qtbot, window, [(180, 300), (420, 300)])
    erased = model.geometry.area
    assert erased < rect_area * 0.95
    qtbot.keyClick(window.view, Qt.Key.Key_P)
    vp = window.view.viewport()
    for x, y in [(500, 200), (650, 220), (620, 380)]:
        qtbot.mouseClick(vp, Qt.MouseButton.LeftButton, pos=QPoint(x, y))
    qtbot.mouseDClick(vp, Qt.MouseButton.LeftButton, pos=QPoint(560, 390))
    with_polygon = model.geometry.area
    assert with_polygon > erased
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert model.geometry.area == pytest.approx(erased)
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert model.geometry.area == pytest.approx(rect_area)
    ctrl_shift = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(window, Qt.Key.Key_Z, ctrl_shift)
    assert model.geometry.area == pytest.approx(erased)


def test_delineate_tiles_arrive_one_by_one_and_annotations_appear(qtbot, window, sample_copy):
    ready: list[str] = []
    window.worker.worker.slideReady.connect(ready.append)
    open_and_wait(qtbot, window, sample_copy)
    qtbot.keyClick(window.view, Qt.Key.Key_R)
    stroke(qtbot, window, [(250, 150), (600, 500), (700, 650)])
    assert not window.editor.model.empty
    # As a user sees it, a few seconds after opening: the status bar names the engine once it is
    # compiled and warm, and the slide's tissue mask has been computed in the background.
    qtbot.waitUntil(lambda: window.engine_label.text() != "", timeout=60_000)
    qtbot.waitUntil(lambda: str(sample_copy) in ready, timeout=30_000)
    # The GUI thread's heartbeat: any stall shows as a long gap between beats. It also samples
    # how many tiles the overlay shows, to see them arrive one by one.
    gaps, beat = [], QElapsedTimer()
    beat.start()
    last = [0]
    seen: list[tuple[float, int]] = []

    def tick():
        now = beat.elapsed()
        gaps.append(now - last[0])
        last[0] = now
        n = len(window.overlay.tiles) if window.overlay is not None else 0
        if not seen or seen[-1][1] != n:
            seen.append((time.perf_counter(), n))

    hb = QTimer()
    hb.setInterval(5)
    hb.timeout.connect(tick)
    hb.start()
    t0 = time.perf_counter()
    with qtbot.waitSignal(window.delineationFinished, timeout=120_000) as sig:
        qtbot.keyClick(window, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
        assert window.controller.progress.isVisible() and window.controller.cancel_button.isVisible()
    hb.stop()
    result = sig.args[0]
    assert result.tiles_done >= 4
    counts = [c for _, c in seen]
    assert counts == sorted(counts) and counts[-1] == result.tiles_done
    assert len([c for c in counts if 0 < c < result.tiles_done]) >= 2  # seen part-way, growing
    first_tile = next(t for t, c in seen if c > 0) - t0
    longest = max(gaps[1:]) if len(gaps) > 1 else 0
    print(f"\nfirst tile {first_tile * 1000:.0f} ms after the click; longest GUI gap {longest} ms")
    # A gap this long would mean the GUI thread did inference or disk work itself.
    assert longest < 250
    assert not window.controller.progress.isVisible()
    # Annotations with their areas in the panel, as many as the result's polygons.
    assert len(window.annotations) == len(result.polygons)
    if window.annotations:
        table = window.annotations_panel.table
        assert table.rowCount() == len(window.annotations)
        assert table.item(0, 1).text().endswith(("mm²", "µm²"))
        a = window.annotations[0]
        table.selectRow(0)
        c = window.view.visible_rect().center()
        assert abs(c.x() - a.geometry.centroid.x) < 2 and abs(c.y() - a.geometry.centroid.y) < 2


def test_cancel_stops_within_a_tile_and_keeps_what_is_done(qtbot, window, large_pyramid):
    open_and_wait(qtbot, window, large_pyramid)
    qtbot.keyClick(window.view, Qt.Key.Key_R)
    stroke(qtbot, window, [(100, 100), (500, 400), (800, 700)])  # most of the slide: many tiles
    # Like a user: watch two tiles appear, then click Cancel (on the GUI thread, as a click is).
    with qtbot.waitSignal(window.delineationFinished, timeout=120_000) as sig:
        window.delineate()
        qtbot.waitUntil(lambda: window.overlay is not None and len(window.overlay.tiles) >= 2, timeout=60_000)
        shown_at_cancel = len(window.overlay.tiles)
        qtbot.mouseClick(window.controller.cancel_button, Qt.MouseButton.LeftButton)
    result = sig.args[0]
    assert result.cancelled
    # Stops within a tile: the one in inference when Cancel was clicked may finish, and one
    # finished tile's signal may still have been on its way to the screen.
    assert result.tiles_done <= shown_at_cancel + 2
    assert result.tiles_done < result.tiles_total - 10
    assert len(window.overlay.tiles) == result.tiles_done
    assert "Cancelled" in window.statusBar().currentMessage()
    assert window.delineate_action.isEnabled()


def test_overlay_toggle_and_opacity(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    qtbot.keyClick(window.view, Qt.Key.Key_R)
    stroke(qtbot, window, [(300, 300), (500, 500)])
    with qtbot.waitSignal(window.delineationFinished, timeout=120_000):
        window.delineate()
    window.opacity.setValue(80)
    assert window.overlay.opacity() == pytest.approx(0.8)
    qtbot.keyClick(window, Qt.Key.Key_H)
    assert not window.overlay_action.isChecked()
    assert all(not i.isVisible() for i in window.layer.items.values())
    qtbot.keyClick(window, Qt.Key.Key_H)
    assert all(i.isVisible() for i in window.layer.items.values())


def test_delineate_without_a_region_says_what_to_do(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    window.delineate()
    assert any("Paint a region first" in t for t in window.banners.texts())  # shown whole, not cut off
    assert not window.running


def test_clicking_an_annotation_selects_it_without_moving_the_view(qtbot, window, sample_copy):
    from shapely.geometry import box

    from app.core.annotations import Annotation

    open_and_wait(qtbot, window, sample_copy)
    window.add_annotations([Annotation(box(900, 1300, 1300, 1700)), Annotation(box(200, 200, 400, 400))])
    before = window.view.visible_rect().center()
    pos = window.view.mapFromScene(1100, 1500)
    qtbot.mouseClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    assert window.annotations_panel.selected_ids() == [window.annotations[0].id]
    assert window.layer.items[window.annotations[0].id].zValue() > 25  # highlighted
    assert window.view.visible_rect().center() == before
    # Delete from the list removes it from the view and the list.
    qtbot.keyClick(window.annotations_panel, Qt.Key.Key_Delete)
    assert len(window.annotations) == 1 and window.annotations_panel.table.rowCount() == 1


def ready_at_15000(qtbot, window, slide):
    """The slide open at 8x fit zoom around (15000, 15000), its engine warm and its tissue mask
    computed, as a user sees it a few seconds after opening: the view."""
    ready: list[str] = []
    window.worker.worker.slideReady.connect(ready.append)
    open_and_wait(qtbot, window, slide)
    view = window.view
    view.set_zoom(view.fit_zoom() * 8)
    view.centre_on(15000, 15000)
    qtbot.waitUntil(lambda: window.engine_label.text() != "", timeout=60_000)
    qtbot.waitUntil(lambda: str(slide) in ready, timeout=30_000)
    return view


def watch_first_paint(window) -> tuple[list[float], QTimer]:
    """A 2 ms heartbeat that notes when the overlay first shows a tile, coarse or fine
    ([perf_counter time], the timer to stop)."""
    first_at: list[float] = []

    def watch():
        if not first_at and window.overlay is not None and window.overlay.shown:
            first_at.append(time.perf_counter())

    hb = QTimer()
    hb.setInterval(2)
    hb.timeout.connect(watch)
    hb.start()
    return first_at, hb


def test_whole_slide_runs_what_is_on_screen_first_and_follows_the_view(
    qtbot, window, large_pyramid, qsettings
):
    """Ctrl+Shift+D on a slide of tissue everywhere, every tile at full resolution (the coarse
    pass off in Settings): the first tiles are under the middle of the view; after a pan, the
    next ones are under its new middle. Cancelled once that is seen."""
    qsettings.setValue("inference/adaptive", False)
    view = ready_at_15000(qtbot, window, large_pyramid)
    first_at, hb = watch_first_paint(window)
    with qtbot.waitSignal(window.delineationFinished, timeout=180_000) as sig:
        t0 = time.perf_counter()
        qtbot.keyClick(
            window, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
        )
        qtbot.waitUntil(lambda: window.overlay is not None and len(window.overlay.tiles) >= 2, timeout=60_000)
        hb.stop()
        print(f"\nwhole slide: first tile under the view {(first_at[0] - t0) * 1000:.0f} ms after the click")
        first = [r.center() for r, _ in window.overlay.tiles[:2]]
        view.centre_on(4000, 4000)  # the pathologist moves on
        qtbot.waitUntil(lambda: len(window.overlay.tiles) >= 12, timeout=60_000)
        later = [r.center() for r, _ in window.overlay.tiles[-3:]]
        window.controller.cancel()
    result = sig.args[0]
    assert result.cancelled and result.tiles_total > 50  # the whole slide's tissue was planned
    for c in first:
        assert math.hypot(c.x() - 15000, c.y() - 15000) < 3000, c
    for c in later:
        assert math.hypot(c.x() - 4000, c.y() - 4000) < 4000, c
    assert window.controller._run_region.area > 0.9 * 20000 * 20000  # the region is the tissue


def test_whole_slide_of_the_sample_outlines_its_tissue(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    with qtbot.waitSignal(window.delineationFinished, timeout=180_000) as sig:
        window.whole_slide_action.trigger()
    result = sig.args[0]
    assert not result.cancelled and result.tiles_done > 4
    assert len(window.annotations) == len(result.polygons) > 0
    assert window.controller.current is not None  # re-traceable like any run


def test_whole_slide_shows_the_coarse_answer_first_under_the_view_then_sharpens_it(
    qtbot, window, large_pyramid, tmp_path
):
    """With the shipped model's coarse companion (the default): the first tiles painted are
    coarse ones under the middle of the view, each over 16x a fine tile's area; the fine tiles
    that follow replace the coarse answer beneath them; tiles the coarse pass rules out are not
    run, and the count in the progress bar covers both passes."""
    import os

    slide = tmp_path / "large.tif"  # its own folder: the outlines it saves stay out of other tests
    os.link(large_pyramid, slide)
    ready_at_15000(qtbot, window, slide)
    first_at, hb = watch_first_paint(window)
    with qtbot.waitSignal(window.delineationFinished, timeout=300_000) as sig:
        t0 = time.perf_counter()
        qtbot.keyClick(
            window, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
        )
        qtbot.waitUntil(lambda: window.overlay is not None and window.overlay.shown >= 1, timeout=60_000)
        hb.stop()
        print(f"\nadaptive whole slide: first coarse tile {(first_at[0] - t0) * 1000:.0f} ms after the click")
        overlay = window.overlay
        first = overlay.coarse[0][0]
        assert not overlay.tiles, "the coarse answer comes first"
    result = sig.args[0]
    assert first.contains(QPointF(15000, 15000)), "the first coarse tile is under the view"
    assert result.coarse_tiles == len(overlay.coarse) > 0
    assert len(overlay.tiles) == result.tiles_done < result.tiles_total
    done, total = result.tiles_done, result.tiles_total
    print(f"\nadaptive whole slide: {result.coarse_tiles} coarse tiles, {done} of {total} fine")
    fine_side = overlay.tiles[0][0].width() if overlay.tiles else None
    if fine_side:
        assert first.width() > 3.5 * fine_side
        # Every fine tile is cut out of the coarse tiles it lies on.
        _, _, covered = next(c for c in overlay.coarse if c[0].intersects(overlay.tiles[0][0]))
        assert covered.contains(overlay.tiles[0][0].center())
