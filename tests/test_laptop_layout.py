"""On a 1366x768 laptop: the annotations list's columns read whole at the default dock width,
and a long status message stops short of the cursor position instead of running into it."""

from __future__ import annotations

import math

import pytest
from conftest import open_and_wait
from PySide6.QtCore import QRect
from PySide6.QtGui import QFontMetricsF, QStatusTipEvent
from PySide6.QtWidgets import QApplication, QStyle
from shapely.geometry import box

from app.core.annotations import Annotation, Provenance
from app.inference.modelcard import DEFAULT_MODEL

LAPTOP = QRect(0, 0, 1366, 768)
LAPTOP_AT_150_PERCENT = QRect(0, 0, 911, 512)  # 1366 x 768 device pixels


def model_outline(x: int, **kw) -> Annotation:
    made = Provenance(origin="model", model=DEFAULT_MODEL, version="1.0.0", engine="openvino-int8")
    return Annotation(box(x, 100, x + 400, 500), provenance=made, review="proposed", **kw)


def cell_text_room(table, column: int) -> int:
    """What a cell of this column leaves for text (Qt elides beyond it): less the grid line and
    the item delegate's margin each side."""
    margin = table.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, table) + 1
    return table.columnWidth(column) - 2 * margin - (1 if table.showGrid() else 0)


def test_the_annotation_columns_read_whole_at_1366x768(qtbot, window, sample_copy):
    window.fit_to(LAPTOP)
    open_and_wait(qtbot, window, sample_copy)
    window.add_annotations([model_outline(100 + 500 * i) for i in range(4)] + [Annotation(box(0, 0, 90, 90))])
    qtbot.wait(50)
    table = window.annotations_panel.table
    header = table.horizontalHeader()
    assert table.rowCount() == 5
    widths = [table.columnWidth(c) for c in range(table.columnCount())]
    assert sum(widths) <= table.viewport().width(), f"columns {widths} run past the list's right edge"
    fm = QFontMetricsF(table.font())
    for c in range(table.columnCount()):
        assert header.sectionSizeHint(c) <= widths[c], (
            f"header {header.model().headerData(c, header.orientation())}"
        )
        for r in range(table.rowCount()):
            text = table.item(r, c).text()
            assert math.ceil(fm.horizontalAdvance(text)) <= cell_text_room(table, c), f"{text!r} is cut off"


def test_long_texts_elide_inside_the_list_and_headers_still_read(qtbot, window, sample_copy):
    window.fit_to(LAPTOP)
    open_and_wait(qtbot, window, sample_copy)
    many = [model_outline(100 + 30 * i, cls="High-grade dysplasia", locked=True) for i in range(40)]
    window.add_annotations(many)
    qtbot.wait(50)
    table = window.annotations_panel.table
    header = table.horizontalHeader()
    widths = [table.columnWidth(c) for c in range(table.columnCount())]
    assert table.verticalScrollBar().isVisible()  # 40 rows: the list scrolls, and is narrower for it
    assert sum(widths) <= table.viewport().width(), f"columns {widths} run past the list's right edge"
    assert all(header.sectionSizeHint(c) <= widths[c] for c in range(table.columnCount()))
    assert table.item(0, 3).toolTip().endswith(many[0].source)  # what is elided is in the tooltip


def is_blank(image, left: int, right: int) -> bool:
    """No ink between these columns: every row of the band is one colour."""
    return all(len({image.pixel(x, y) for x in range(left, right)}) == 1 for y in range(image.height()))


@pytest.mark.parametrize("screen", [LAPTOP, LAPTOP_AT_150_PERCENT], ids=["100%", "150%"])
def test_a_long_status_message_stops_short_of_the_cursor_position(qtbot, window, sample_copy, screen):
    window.fit_to(screen)
    open_and_wait(qtbot, window, sample_copy)
    window.status.show_cursor(window.slide, 1234, 2345)
    long_path = "/home/pathologist/slides/" + "biopsies-2026/" * 20 + "CMU-1-Small-Region.geojson"
    window.show_status(f"Exported geojson to {long_path}", 10_000)
    qtbot.wait(50)
    bar = window.statusBar()
    assert long_path in bar.currentMessage()
    image = bar.grab().toImage()
    pos = window.status.pos_label
    start = pos.geometry().x() + pos.contentsMargins().left()  # where the coordinates' text begins
    assert not is_blank(image, start, start + 40), "the coordinates are not drawn"
    assert not is_blank(image, 10, 200), "the message is not drawn"
    assert is_blank(image, start - 8, start), "the message runs into the coordinates"
    QApplication.sendEvent(window, QStatusTipEvent(long_path))  # a menu entry's tip: Open Recent's path
    qtbot.wait(50)
    assert bar.currentMessage() == long_path
    assert is_blank(bar.grab().toImage(), start - 8, start), "the status tip runs into the coordinates"


def test_columns_give_way_widest_first_and_never_below_their_header():
    from app.ui.annotations_panel import fit_widths

    assert fit_widths([60, 75, 64, 140], [50, 50, 55, 65], 400) == [60, 75, 64, 201]  # the rest to Source
    squeezed = fit_widths([60, 75, 110, 180], [50, 50, 55, 65], 300)
    assert sum(squeezed) == 300 and squeezed[:2] == [60, 75]  # the narrow ones keep their text
    assert squeezed[2] < 110 and squeezed[3] < 180 and abs(squeezed[3] - squeezed[2]) <= 1
    assert fit_widths([60, 75, 110, 180], [50, 50, 55, 65], 200) == [50, 50, 55, 65]  # headers, at least
