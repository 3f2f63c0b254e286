"""The review loop in the real window: re-runs replace, outlines are corrected as in QuPath,
classes and totals, sensitivity without the model, navigation, panels and the laptop screen."""

from __future__ import annotations

import dataclasses
import json

import pytest
import shapely
from conftest import open_and_wait
from PySide6.QtCore import QPoint, QRect, Qt
from shapely.geometry import box

from app.core.annotation_store import beside_slide
from app.core.annotations import Annotation, Provenance

CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier
ALT = Qt.KeyboardModifier.AltModifier


def drag(qtbot, win, points, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    vp = win.view.viewport()
    qtbot.mousePress(vp, Qt.MouseButton.LeftButton, modifier, QPoint(*points[0]))
    for p in points[1:]:
        qtbot.mouseMove(vp, QPoint(*p))
    qtbot.mouseRelease(vp, Qt.MouseButton.LeftButton, modifier, QPoint(*points[-1]))


def to_view(win, x: float, y: float) -> QPoint:
    return win.view.mapFromScene(x, y)


def paint_rectangle(qtbot, win, a=(250, 150), b=(700, 650)) -> None:
    qtbot.keyClick(win.view, Qt.Key.Key_R)
    drag(qtbot, win, [a, ((a[0] + b[0]) // 2, (a[1] + b[1]) // 2), b])
    qtbot.keyClick(win.view, Qt.Key.Key_S)


def delineate(qtbot, win):
    with qtbot.waitSignal(win.delineationFinished, timeout=120_000) as sig:
        win.delineate()
    qtbot.waitUntil(lambda: not win.running, timeout=5_000)
    return sig.args[0]


def model_outlines(win):
    return [a for a in win.annotations if a.provenance.origin == "model"]


@pytest.fixture
def delineated(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    paint_rectangle(qtbot, window)
    delineate(qtbot, window)
    assert model_outlines(window), "the sample slide should give the model something to outline"
    return window


def test_a_rerun_replaces_the_model_outlines_inside_the_region(qtbot, delineated):
    win = delineated
    first = model_outlines(win)
    area = sum(a.geometry.area for a in first)
    delineate(qtbot, win)
    second = model_outlines(win)
    assert len(second) == len(first)
    total = sum(a.geometry.area for a in second)
    union = shapely.union_all([a.geometry for a in second]).area
    assert total == pytest.approx(union, rel=1e-6)  # nothing stacked
    assert total == pytest.approx(area, rel=1e-6)
    # The whole run is one undo step: undo brings back the first run's outlines, not nothing.
    qtbot.keyClick(win, Qt.Key.Key_Z, CTRL)
    assert {a.id for a in model_outlines(win)} == {a.id for a in first}


def test_hand_edited_and_locked_outlines_survive_a_rerun_unless_replaced(qtbot, delineated):
    win = delineated
    a, *rest = sorted(model_outlines(win), key=lambda a: -a.geometry.area)
    edited = a.edited(a.geometry.buffer(-2))
    win.layer.replace({a.id: edited}, "edit")
    if rest:
        locked = dataclasses.replace(rest[0], locked=True)
        win.layer.replace({rest[0].id: locked}, "lock")
    win.delineate()
    qtbot.waitUntil(lambda: win.controller.replace_box is not None, timeout=5_000)
    assert not win.running  # nothing runs until the pathologist answers
    box_ = win.controller.replace_box
    assert "edited or accepted by hand" in box_.text()
    assert box_.defaultButton().text() == "Cancel"  # Enter neither replaces nor stacks
    with qtbot.waitSignal(win.delineationFinished, timeout=120_000):
        win.controller.keep_both_button.click()
    ids = {x.id for x in win.annotations}
    assert edited.id in ids
    kept = win.layer.by_id(edited.id)
    assert kept.geometry.equals(edited.geometry)
    # Replace on purpose: the edited outline gives way inside the region; a locked one never does.
    win.delineate()
    qtbot.waitUntil(lambda: win.controller.replace_box is not None, timeout=5_000)
    with qtbot.waitSignal(win.delineationFinished, timeout=120_000):
        win.controller.replace_button.click()
    assert win.layer.by_id(edited.id) is None
    if rest:
        assert win.layer.by_id(rest[0].id) is not None
        assert win.layer.by_id(rest[0].id).locked


def _select(qtbot, win, ann) -> None:
    p = ann.geometry.representative_point()
    win.view.centre_on(p.x, p.y)
    qtbot.mouseClick(win.view.viewport(), Qt.MouseButton.LeftButton, pos=to_view(win, p.x, p.y))
    assert win.layer.selected == [ann.id]


def test_brush_adds_to_and_alt_brush_subtracts_from_the_selected_outline(qtbot, delineated):
    win = delineated
    ann = max(model_outlines(win), key=lambda a: a.geometry.area)
    _select(qtbot, win, ann)
    region_before = win.editor.model.geometry
    c = ann.geometry.centroid
    x0, _, x1, _ = ann.geometry.bounds
    qtbot.keyClick(win.view, Qt.Key.Key_B)
    win.editor.set_brush_um(60)
    # A stroke from inside the outline to beyond its right edge adds to it.
    start, end = to_view(win, c.x, c.y), to_view(win, x1 + 80, c.y)
    drag(qtbot, win, [(start.x(), start.y()), (end.x(), end.y())])
    grown = win.layer.by_id(ann.id)
    assert grown.geometry.area > ann.geometry.area
    assert grown.provenance.edited
    assert win.editor.model.geometry.equals(region_before)  # the region is untouched
    # Alt+brush across it subtracts.
    a, b = to_view(win, x0 - 20, c.y), to_view(win, x1 + 100, c.y)
    drag(qtbot, win, [(a.x(), a.y()), (b.x(), b.y())], ALT)
    cut = win.layer.by_id(ann.id)
    assert cut.geometry.area < grown.geometry.area
    # Both edits are undo steps.
    qtbot.keyClick(win, Qt.Key.Key_Z, CTRL)
    assert win.layer.by_id(ann.id).geometry.equals(grown.geometry)


def test_vertex_drag_moves_one_vertex(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    square = Annotation(box(800, 800, 1200, 1200))
    window.add_annotations([square])
    window.view.set_zoom(0.5)
    window.view.centre_on(1000, 1000)
    _select(qtbot, window, square)
    assert window.editor.handles.active
    a = to_view(window, 1200, 1200)
    b = to_view(window, 1400, 1300)
    drag(qtbot, window, [(a.x(), a.y()), ((a.x() + b.x()) // 2, (a.y() + b.y()) // 2), (b.x(), b.y())])
    moved = window.layer.by_id(square.id)
    xs = {round(x) for x, _ in moved.geometry.exterior.coords}
    assert max(xs) == pytest.approx(1400, abs=3)
    assert moved.geometry.area > square.geometry.area
    # Double-click on an edge inserts a vertex; Alt+click on it deletes it again.
    n = len(moved.geometry.exterior.coords)
    e = to_view(window, 1000, 800)
    qtbot.mouseDClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=e)
    inserted = window.layer.by_id(square.id)
    assert len(inserted.geometry.exterior.coords) == n + 1
    qtbot.mouseClick(window.view.viewport(), Qt.MouseButton.LeftButton, ALT, e)
    assert len(window.layer.by_id(square.id).geometry.exterior.coords) == n


def test_merge_split_delete_and_undo(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    a = Annotation(box(500, 500, 700, 700))
    b = Annotation(box(650, 650, 900, 900))
    window.add_annotations([a, b])
    window.layer.select([a.id, b.id])
    window.commands.merge()
    assert len(window.annotations) == 1
    merged = window.annotations[0]
    assert merged.geometry.area == pytest.approx(shapely.union(a.geometry, b.geometry).area)
    # Split along a line across it, with the split-line tool, as a user draws it.
    window.view.set_zoom(0.5)
    window.view.centre_on(700, 700)
    window.layer.select([merged.id])
    window.commands.splitLineRequested.emit()
    assert window.editor.active.name == "Split line"
    vp = window.view.viewport()
    p0, p1 = to_view(window, 400, 760), to_view(window, 1000, 760)
    qtbot.mouseClick(vp, Qt.MouseButton.LeftButton, pos=p0)
    qtbot.mouseClick(vp, Qt.MouseButton.LeftButton, pos=p1)
    window.view.setFocus()
    qtbot.keyClick(window.view, Qt.Key.Key_Return)  # or a double-click on the last point
    assert len(window.annotations) == 2
    assert window.editor.active.name == "Select / move"
    assert sum(x.geometry.area for x in window.annotations) == pytest.approx(merged.geometry.area, rel=1e-3)
    # Delete from the view with the Delete key, then undo.
    window.layer.select([window.annotations[0].id])
    window.view.setFocus()
    qtbot.keyClick(window.view, Qt.Key.Key_Delete)
    assert len(window.annotations) == 1
    qtbot.keyClick(window, Qt.Key.Key_Z, CTRL)
    assert len(window.annotations) == 2
    # Split a two-part outline into its parts.
    two = Annotation(shapely.MultiPolygon([box(0, 0, 10, 10), box(20, 0, 30, 10)]))
    window.add_annotations([two])
    window.layer.select([two.id])
    window.commands.split_parts()
    assert len([x for x in window.annotations if x.geometry.bounds[2] <= 30]) == 2


def test_number_keys_set_the_class_and_totals_are_the_union(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    a = Annotation(box(500, 500, 700, 700))
    b = Annotation(box(600, 500, 800, 700))  # overlaps a by half
    window.add_annotations([a, b])
    summary = window.annotations_panel.summary.text()
    mpp = window.session.mpp()
    union_mm2 = 300 * 200 * mpp * mpp / 1e6
    assert "Tumor: 2 outline(s)" in summary
    assert f"{union_mm2:.3f} mm²" in summary  # the union, not 400 x 200
    window.layer.select([b.id])
    window.view.setFocus()
    qtbot.keyClick(window.view, Qt.Key.Key_2)  # the second class: Stroma
    assert window.layer.by_id(b.id).cls == "Stroma"
    summary = window.annotations_panel.summary.text()
    assert "Tumor: 1 outline(s)" in summary and "Stroma: 1 outline(s)" in summary
    # With nothing selected, 1 is still native resolution.
    window.layer.clear_selection()
    qtbot.keyClick(window.view, Qt.Key.Key_1)
    assert window.view.zoom == pytest.approx(1.0)


def test_sensitivity_retraces_without_calling_the_engine(qtbot, delineated):
    win = delineated
    engine = win.worker.worker._engine
    calls = []
    for name in ("predict", "stream"):
        if hasattr(engine, name):
            original = getattr(engine, name)

            def counting(*a, _o=original, _n=name, **k):
                calls.append(_n)
                return _o(*a, **k)

            setattr(engine, name, counting)
    before = sum(a.geometry.area for a in model_outlines(win))
    panel = win.review_panel
    assert panel.sensitivity.isEnabled()
    panel.sensitivity.setValue(80)  # threshold 0.20: more tumour
    qtbot.waitUntil(lambda: sum(a.geometry.area for a in model_outlines(win)) > before * 1.01, timeout=10_000)
    outlines = model_outlines(win)
    assert all(a.provenance.threshold == pytest.approx(0.2) for a in outlines)
    total = sum(a.geometry.area for a in outlines)
    assert total == pytest.approx(shapely.union_all([a.geometry for a in outlines]).area, rel=1e-6)
    panel.min_area.setValue(100_000)  # drops everything smaller than 0.1 mm²
    qtbot.waitUntil(
        lambda: all(a.area_um2(win.session.mpp()) >= 100_000 for a in model_outlines(win)), timeout=10_000
    )
    assert calls == []


def test_a_drag_over_the_region_pans_and_ctrl_drag_moves_it(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    window.view.set_zoom(0.5)
    paint_rectangle(qtbot, window, (200, 200), (600, 600))
    region = window.editor.model.geometry
    before = window.view.visible_rect()
    drag(qtbot, window, [(400, 400), (380, 380), (300, 300)])
    assert window.editor.model.geometry.equals(region)
    after = window.view.visible_rect()
    assert (after.x(), after.y()) != (before.x(), before.y())
    drag(qtbot, window, [(400, 400), (420, 420), (450, 450)], CTRL)
    assert not window.editor.model.geometry.equals(region)
    # The region can be hidden on its own (Shift+H), the model's outlines with H.
    window.region_action.setChecked(False)
    assert not window.editor.region_item.isVisible()


def test_slide_info_shows_only_the_open_slide(qtbot, window, sample_copy, tmp_path):
    from conftest import TCGA_SVS

    open_and_wait(qtbot, window, sample_copy)
    open_and_wait(qtbot, window, TCGA_SVS)
    texts = window.info_panel.labels()
    assert TCGA_SVS.name in texts
    assert sample_copy.name not in texts
    assert texts.count("2220 × 2967 px") == 0


def test_the_window_fits_a_1366x768_laptop_at_150_percent(qtbot, window, sample_copy):
    screen = QRect(0, 0, 911, 512)  # 1366 x 768 device pixels at 150 % scaling
    window.fit_to(screen)
    qtbot.wait(50)
    assert window.width() <= screen.width() and window.height() <= screen.height()
    open_and_wait(qtbot, window, sample_copy)
    paint_rectangle(qtbot, window)
    window.delineate()
    qtbot.waitUntil(lambda: window.controller.cancel_button.isVisible(), timeout=10_000)
    bar = window.statusBar()
    for w in (window.controller.progress, window.controller.cancel_button):
        r = w.geometry()
        assert r.right() <= bar.width() and r.width() > 20, f"{w} is cut off"
    qtbot.waitUntil(lambda: not window.running, timeout=120_000)


def test_no_pixel_size_is_said_in_a_banner_and_can_be_set(qtbot, window, tmp_path):
    import numpy as np
    from conftest import tile_mosaic
    from PIL import Image

    path = tmp_path / "mosaic.png"
    Image.fromarray(tile_mosaic(2)).save(path)
    open_and_wait(qtbot, window, path)
    qtbot.waitUntil(lambda: any("no pixel size" in t for t in window.banners.texts()), timeout=5_000)
    window.set_pixel_size(0.5)
    assert not any("no pixel size" in t for t in window.banners.texts())
    assert window.view.scale_bar.label.endswith("µm") or "mm" in window.view.scale_bar.label
    window.add_annotations([Annotation(box(0, 0, 100, 100))])
    window.session.autosaver.flush()
    qtbot.waitUntil(lambda: beside_slide(path).exists(), timeout=5_000)
    doc = json.loads(beside_slide(path).read_text(encoding="utf-8"))
    assert doc["delineo"]["mpp"] == 0.5
    assert np.isclose(window.annotations[0].area_um2(window.session.mpp()), 2500)


def test_shortcuts_dialog_lists_the_keys(qtbot, window):
    qtbot.keyClick(window, Qt.Key.Key_F1)
    qtbot.waitUntil(lambda: getattr(window, "shortcuts_dialog", None) is not None, timeout=2_000)
    table = window.shortcuts_dialog.table
    rows = {table.item(r, 1).text() for r in range(table.rowCount())}
    for what in ("Delineate region", "Delete selected", "Merge selected", "Undo", "Keyboard shortcuts"):
        assert any(what in r for r in rows), what
    assert "Set class Stroma" in rows and not any(r.startswith("Class ") for r in rows)
    assert not any(r.startswith("Undo ") for r in rows)  # the key, not the last step's name


def test_provenance_and_review_state_are_autosaved_and_restored(qtbot, qsettings, delineated, sample_copy):
    from conftest import make_window

    win = delineated
    ann = model_outlines(win)[0]
    win.layer.replace({ann.id: dataclasses.replace(ann, review="accepted", locked=True)}, "accept")
    win.session.autosaver.flush()
    win.close()
    again = make_window(qtbot, qsettings)
    open_and_wait(qtbot, again, sample_copy)
    qtbot.waitUntil(lambda: again.layer.by_id(ann.id) is not None, timeout=5_000)
    restored = again.layer.by_id(ann.id)
    assert restored.review == "accepted" and restored.locked
    assert restored.provenance.origin == "model" and restored.provenance.run_id
    assert isinstance(restored.provenance, Provenance)
    # The run's map came back from disk: sensitivity re-traces it after a restart too.
    assert again.review_panel.sensitivity.isEnabled()
    again.close()


def test_a_device_that_is_not_there_is_said_in_a_banner(qtbot, qsettings):
    from conftest import make_window

    qsettings.setValue("inference/device", "GPU")
    win = make_window(qtbot, qsettings)
    qtbot.waitUntil(lambda: any("not ready" in t for t in win.banners.texts()), timeout=60_000)
    text = next(t for t in win.banners.texts() if "not ready" in t)
    assert "GPU" in text and "Delineation settings" in text
    win.close()


def test_window_geometry_is_remembered(qtbot, qsettings):
    from conftest import make_window

    from app.ui.main_window import MainWindow

    win = make_window(qtbot, qsettings)
    win.resize(700, 500)  # inside the offscreen screen (800 x 600), which restoreGeometry respects
    qtbot.wait(20)
    win.close()
    again = MainWindow(qsettings)  # as the app opens it: no resize of its own
    qtbot.addWidget(again)
    assert (again.width(), again.height()) == (700, 500)
    again.close()


def test_accepted_outlines_are_kept_by_retrace_and_asked_about_by_a_rerun(qtbot, delineated):
    win = delineated
    win.controller.accept_all_in_region()
    accepted = {a.id: a.geometry for a in model_outlines(win)}
    assert accepted and all(a.review == "accepted" for a in model_outlines(win))
    win.review_panel.sensitivity.setValue(85)  # re-trace: nothing accepted changes, no slivers
    qtbot.wait(600)
    for ann_id, geom in accepted.items():
        kept = win.layer.by_id(ann_id)
        assert kept is not None and kept.review == "accepted" and kept.geometry.equals(geom)
    mpp = win.session.mpp()
    assert all(a.area_um2(mpp) >= win.review_panel.min_area.value() - 1e-6 for a in model_outlines(win))
    win.delineate()  # accepted outlines are a decision: a re-run asks first
    qtbot.waitUntil(lambda: win.controller.replace_box is not None, timeout=5_000)
    win.controller.replace_box.reject()


def test_the_controls_follow_undo_and_a_new_slide(qtbot, delineated, tmp_path):
    from conftest import TCGA_SVS

    win = delineated
    panel = win.review_panel
    panel.sensitivity.setValue(75)  # threshold 0.25
    qtbot.waitUntil(
        lambda: all(a.provenance.threshold == pytest.approx(0.25) for a in model_outlines(win)),
        timeout=10_000,
    )
    qtbot.keyClick(win, Qt.Key.Key_Z, CTRL)  # undo the re-trace: the controls say 0.50 again
    assert all(a.provenance.threshold == pytest.approx(0.5) for a in model_outlines(win))
    assert panel.threshold == pytest.approx(0.5)
    qtbot.keyClick(win, Qt.Key.Key_Z, CTRL)  # undo the run itself: nothing left to re-trace
    assert not model_outlines(win)
    assert not panel.sensitivity.isEnabled()
    qtbot.keyClick(win, Qt.Key.Key_Y, CTRL)
    assert model_outlines(win) and panel.sensitivity.isEnabled()
    # A new run uses what the controls show.
    panel.sensitivity.setValue(70)
    qtbot.wait(300)
    delineate(qtbot, win)
    assert all(a.provenance.threshold == pytest.approx(0.3) for a in model_outlines(win))
    # Another slide starts from the model card's threshold.
    slide = tmp_path / TCGA_SVS.name
    slide.write_bytes(TCGA_SVS.read_bytes())
    open_and_wait(qtbot, win, slide)
    assert panel.threshold == pytest.approx(0.5) and not panel.sensitivity.isEnabled()


def test_a_region_without_tumour_says_so(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    window.delineate()  # no region yet
    assert any("Paint a region first" in t for t in window.banners.texts())
    window.editor.model.add(box(0, 0, 300, 300))  # the glass in the top-left corner
    assert not any("Paint a region first" in t for t in window.banners.texts())
    delineate(qtbot, window)
    assert not window.annotations
    assert any("found no Tumor" in t for t in window.banners.texts())
