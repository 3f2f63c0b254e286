"""Runs again, cancelled runs, re-traces, undo and redo, a slide closed mid-run: the real window
and the real shipped model; no outline is lost, stacked on another, or swapped for an older
run's, and the window's controls follow what is open and running."""

from __future__ import annotations

import os
import re

import shapely
from conftest import open_and_wait
from PySide6.QtCore import QPoint, Qt
from shapely.geometry import box

REGION = box(2000, 2000, 9000, 8000)  # on the large pyramid: 20 tiles of the real model


def overlaps(annotations) -> float:
    """The largest area two outlines share (level-0 px²)."""
    tree = shapely.STRtree([a.geometry for a in annotations])
    worst = 0.0
    for i, a in enumerate(annotations):
        for j in tree.query(a.geometry, predicate="intersects"):
            if j > i:
                worst = max(worst, a.geometry.intersection(annotations[j].geometry).area)
    return worst


def run_region(qtbot, window, cancel_after: int | None = None):
    with qtbot.waitSignal(window.delineationFinished, timeout=180_000) as sig:
        window.delineate()
        if cancel_after is not None:
            qtbot.waitUntil(
                lambda: window.overlay is not None and len(window.overlay.tiles) >= cancel_after,
                timeout=60_000,
            )
            window.controller.cancel()
    return sig.args[0]


def of_run(window, run_id: str) -> list:
    return [a for a in window.annotations if a.provenance.run_id == run_id]


def retrace(qtbot, window, threshold: float) -> None:
    run_id = window.controller.current.run_id
    window.controller.retrace(threshold, 1000.0)
    qtbot.waitUntil(
        lambda: any(a.provenance.threshold == threshold for a in of_run(window, run_id)), timeout=30_000
    )


def test_a_cancelled_rerun_and_its_retraces_keep_every_outline_once(qtbot, window, large_pyramid, tmp_path):
    """Run a region, run it again and cancel: the new outlines replace the old ones only where
    tiles ran, and neither stacks on the other. Re-tracing the cancelled run keeps the first
    run's outlines where it did not run; re-tracing the first run (its outline selected) keeps
    every outline of the later one."""
    slide = tmp_path / "large.tif"
    os.link(large_pyramid, slide)
    open_and_wait(qtbot, window, slide)
    window.editor.model.reset(REGION)
    first = run_region(qtbot, window)
    assert not first.cancelled and first.polygons
    first_id = first.probability_map.run_id
    second = run_region(qtbot, window, cancel_after=4)
    assert second.cancelled and second.tiles_done < first.tiles_done
    second_id = second.probability_map.run_id
    assert of_run(window, first_id) and of_run(window, second_id)
    assert overlaps(window.annotations) < 1.0  # nothing stacked along the cut
    said = window.statusBar().currentMessage()
    assert said.startswith(f"Cancelled, kept {len(of_run(window, second_id))} outline(s)"), said
    assert window.controller.current.run_id == second_id

    retrace(qtbot, window, 0.7)  # the cancelled run, at a new sensitivity
    assert of_run(window, first_id) and of_run(window, second_id)
    assert overlaps(window.annotations) < 1.0
    later = {a.id: a.geometry for a in of_run(window, second_id)}

    label = window.review_panel.run_label.text()
    window.layer.select([of_run(window, first_id)[0].id])  # the pathologist picks an older outline
    assert window.controller.current.run_id == first_id
    assert re.match(r"Run of ebhi-tumour-resunet \(openvino-int8\) at \d\d:\d\d", label), label
    retrace(qtbot, window, 0.3)
    assert {a.id: a.geometry for a in of_run(window, second_id)} == later  # untouched
    assert overlaps(window.annotations) < 1.0


def test_undo_and_redo_of_a_run_keep_its_map_for_after_a_restart(qtbot, window, sample_copy, qsettings):
    """The whole slide, then a region of it again; Ctrl+Z then Ctrl+Shift+Z of the second run:
    its map stays beside the slide, so after closing and reopening, the Sensitivity re-traces
    that run (the newest), not the older one, and the older one's outlines stay as they were."""
    open_and_wait(qtbot, window, sample_copy)
    with qtbot.waitSignal(window.delineationFinished, timeout=180_000) as sig:
        window.whole_slide_action.trigger()
    older = sig.args[0].probability_map.run_id
    window.editor.model.reset(box(0, 1500, 1400, 2967))  # the lower part: its foci again
    newer = run_region(qtbot, window).probability_map.run_id
    store = window.session.store
    qtbot.waitUntil(
        lambda: store.map_path(older).is_file() and store.map_path(newer).is_file(), timeout=30_000
    )
    assert of_run(window, older) and of_run(window, newer)
    ctrl = Qt.KeyboardModifier.ControlModifier
    for mods in (ctrl, ctrl | Qt.KeyboardModifier.ShiftModifier):  # undo, then redo
        with qtbot.waitSignal(window.autosaver.saved, timeout=30_000):
            qtbot.keyClick(window, Qt.Key.Key_Z, mods)
        assert store.map_path(newer).is_file()
    kept = {a.id: a.geometry for a in of_run(window, older)}
    window.lifecycle.close_slide()
    open_and_wait(qtbot, window, sample_copy)
    assert window.controller.current is not None and window.controller.current.run_id == newer
    retrace(qtbot, window, 0.7)
    assert {a.id: a.geometry for a in of_run(window, older)} == kept
    assert of_run(window, newer) and overlaps(window.annotations) < 1.0


def test_a_slide_closed_mid_run_gives_delineate_back_on_the_next(qtbot, window, large_pyramid, sample_copy):
    """Closing the slide while its run goes stops the run and says so; on the next slide,
    Delineate works. With no slide open, what needs one is greyed rather than doing nothing."""
    assert not window.delineate_action.isEnabled() and not window.whole_slide_action.isEnabled()
    assert not any(a.isEnabled() for a in window.slide_actions)
    open_and_wait(qtbot, window, large_pyramid)
    assert window.delineate_action.isEnabled() and all(a.isEnabled() for a in window.slide_actions)
    window.editor.model.reset(REGION)
    window.delineate()
    qtbot.waitUntil(lambda: window.overlay is not None and len(window.overlay.tiles) >= 1, timeout=60_000)
    assert not window.delineate_action.isEnabled()
    qtbot.keyClick(window.view, Qt.Key.Key_B)
    qtbot.mouseMove(window.view.viewport(), QPoint(300, 300))
    assert window.editor.active.circle.isVisible()  # the brush's outline under the pointer
    with qtbot.waitSignal(window.controller.ended, timeout=60_000):
        window.lifecycle.close_slide()
    assert not window.delineate_action.isEnabled() and not any(a.isEnabled() for a in window.slide_actions)
    assert not window.editor.active.circle.isVisible()  # nothing left drawn on the empty view
    qtbot.waitUntil(
        lambda: "its slide was closed before it finished" in window.statusBar().currentMessage(),
        timeout=5_000,
    )
    open_and_wait(qtbot, window, sample_copy)
    assert window.delineate_action.isEnabled() and window.whole_slide_action.isEnabled()
    with qtbot.waitSignal(window.delineationFinished, timeout=180_000):
        window.whole_slide_action.trigger()
    assert window.annotations


def test_a_region_rerun_leaves_no_sliver_of_an_earlier_outline(qtbot, window, sample_copy):
    """The whole slide, then a region whose edge falls just inside a focus's outline: what is
    left of the old outline beside the region is a 5 px strip, below the minimum area, and
    goes; every outline left obeys the minimum area."""
    from shapely.geometry import Polygon

    open_and_wait(qtbot, window, sample_copy)
    with qtbot.waitSignal(window.delineationFinished, timeout=180_000):
        window.whole_slide_action.trigger()
    region = Polygon([(573.37, 2496.81), (815.2, 2489.6), (829.9, 2941.3), (575.1, 2947.66)])
    assert any(a.geometry.bounds[0] < 573 < a.geometry.bounds[2] for a in window.annotations)
    window.editor.model.reset(region)
    run_region(qtbot, window)
    mpp = window.session.mpp()
    assert min(a.geometry.area * mpp * mpp for a in window.annotations) >= 1000.0
    assert overlaps(window.annotations) < 1.0
