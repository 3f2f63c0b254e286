"""The annotations list: class, area, review state and origin of each outline, sortable, with
the per-class totals above it. Totals are the area of the union per class (what the PNG legend,
the CSV and `delineo annotations` say too), never a sum of overlapping outlines."""

from __future__ import annotations

import math

from PySide6.QtCore import QEvent, QObject, QPoint, Qt, Signal
from PySide6.QtGui import QColor, QFontMetricsF
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.annotation_edits import class_totals
from app.core.annotations import Annotation
from app.inference.modelcard import DEFAULT_MODEL

ID_ROLE = Qt.ItemDataRole.UserRole + 1
HEADERS = ("Class", "Area", "State", "Source")
TYPICAL_ROW = ("Tumor", "0.036 mm²", "proposed", DEFAULT_MODEL)  # what the default width is for


def format_area(area_px: float, mpp: float | None) -> str:
    if mpp is None:
        return f"{area_px:,.0f} px²"
    mm2 = area_px * mpp * mpp / 1e6
    return f"{mm2:.3f} mm²" if mm2 >= 0.001 else f"{mm2 * 1e6:,.0f} µm²"


class _SortKey(QTableWidgetItem):
    """Sorts by the number behind the text (areas), not the text."""

    def __lt__(self, other) -> bool:
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        if isinstance(a, int | float) and isinstance(b, int | float):
            return a < b
        return super().__lt__(other)


def short_source(a: Annotation) -> str:
    """What fits the column: the model's name or "painted"; the full line is the tooltip."""
    p = a.provenance
    text = p.model or p.origin if p.origin == "model" else p.origin
    return text + (", edited" if p.edited else "")


def state_text(a: Annotation) -> str:
    state = "edited" if a.provenance.edited and a.review == "proposed" else a.review
    return ("locked, " if a.locked else "") + state


def fit_widths(natural: list[int], floors: list[int], room: int) -> list[int]:
    """Column widths within `room`: each its natural width when all fit (the last takes what is
    left over); otherwise the widest give way first, never below their floor (the header)."""
    if sum(natural) <= room:
        return [*natural[:-1], natural[-1] + room - sum(natural)]

    def capped(cap: int) -> list[int]:
        return [max(f, min(n, cap)) for n, f in zip(natural, floors, strict=True)]

    low, high = 0, max(natural)
    while low < high:  # the largest cap that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if sum(capped(mid)) <= room else (low, mid - 1)
    widths = capped(low)
    spare = max(0, room - sum(widths))
    return [*widths[:-1], widths[-1] + spare]


class AnnotationsPanel(QWidget):
    selectionChanged = Signal(list)  # ids chosen in the list
    activated = Signal(str)  # double-clicked: centre on it
    contextMenuRequested = Signal(QPoint)  # global position, for the selection

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(list(HEADERS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setSortingEnabled(True)
        self.table.setWordWrap(False)
        # Rows of one line, and columns sized from the first rows: measuring every one of
        # thousands of rows on each change stalled the window for a third of a second.
        rows = self.table.verticalHeader()
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(
            lambda pos: self.contextMenuRequested.emit(self.table.viewport().mapToGlobal(pos))
        )
        # Columns fitted to the list's width by `_fit_columns` (Qt's ResizeToContents columns
        # pushed State and Source past the right edge of a laptop's dock).
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        header.setStretchLastSection(False)
        self._natural = self._text_widths([[h] for h in HEADERS])
        self.table.viewport().installEventFilter(self)
        self.summary = QLabel("No annotations")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        # Totals above the list: a line per class stays in view however short the dock is, and
        # the list (which scrolls anyway) takes what height is left.
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        self.table.setMinimumHeight(3 * rows.defaultSectionSize())
        self.table.setMinimumWidth(self._table_width(self._floors()))  # every header reads
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.table.itemDoubleClicked.connect(lambda item: self.activated.emit(item.data(ID_ROLE)))

    @property
    def ids(self) -> list[str]:
        """Row order as shown (sorted as the user chose)."""
        return [self.table.item(r, 0).data(ID_ROLE) for r in range(self.table.rowCount())]

    def set_annotations(self, annotations: list[Annotation], mpp: float | None, selected: list[str]) -> None:
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(annotations))
        texts: list[set[str]] = [set() for _ in HEADERS]
        for row, a in enumerate(annotations):
            cls = QTableWidgetItem(a.cls)
            cls.setForeground(QColor(*a.color))
            area = _SortKey(format_area(a.geometry.area, mpp))
            area.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            area.setData(Qt.ItemDataRole.UserRole, float(a.geometry.area))
            state = QTableWidgetItem(state_text(a))
            source = QTableWidgetItem(short_source(a))
            for col, item in enumerate((cls, area, state, source)):
                item.setData(ID_ROLE, a.id)
                item.setToolTip(f"{a.cls}, {state_text(a)}\n{a.source}")
                self.table.setItem(row, col, item)
                texts[col].add(item.text())
        self.table.setSortingEnabled(True)
        self._select_rows(selected)
        self.table.blockSignals(False)
        self.summary.setText(self._totals(annotations, mpp))
        self._natural = [max(f, w) for f, w in zip(self._floors(), self._text_widths(texts), strict=True)]
        self._fit_columns()

    # ------------------------------------------------------------------ column widths

    def _floors(self) -> list[int]:
        header = self.table.horizontalHeader()
        return [header.sectionSizeHint(c) for c in range(len(HEADERS))]

    def _text_widths(self, texts) -> list[int]:
        """Per column, the widest of these texts as a cell lays it out: a margin each side, the
        grid line, and the text's fractional width rounded up (Qt elides it at the half pixel).
        Distinct texts only, the longest 64 of them: thousands of rows share a few classes and
        states, and areas differ in digits, which are all one width."""
        fm = QFontMetricsF(self.table.font())
        style = self.table.style()
        margin = 2 * (style.pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, self.table) + 1)
        grid = 1 if self.table.showGrid() else 0
        longest = [sorted(column, key=len)[-64:] for column in texts]
        widest = [max((fm.horizontalAdvance(t) for t in column), default=0) for column in longest]
        return [math.ceil(w) + margin + grid + 1 for w in widest]

    def _table_width(self, columns: list[int]) -> int:
        """The list's outer width for these columns, room for its vertical scroll bar included."""
        bar = self.table.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent, None, self.table)
        return sum(columns) + 2 * self.table.frameWidth() + bar

    def preferred_width(self) -> int:
        """The panel's width for a typical run of the shipped model, every column whole."""
        typical = self._text_widths([[t] for t in TYPICAL_ROW])
        columns = [max(f, w) for f, w in zip(self._floors(), typical, strict=True)]
        margins = self.layout().contentsMargins()
        return self._table_width(columns) + margins.left() + margins.right()

    def _fit_columns(self) -> None:
        widths = fit_widths(self._natural, self._floors(), self.table.viewport().width())
        for c, w in enumerate(widths):
            self.table.setColumnWidth(c, w)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.table.viewport() and event.type() == QEvent.Type.Resize:
            self._fit_columns()
        return False

    @staticmethod
    def _totals(annotations: list[Annotation], mpp: float | None) -> str:
        if not annotations:
            return "No annotations"
        lines = []
        for t in class_totals(annotations, mpp):
            area = format_area(t.area_px, mpp)
            lines.append(
                f"<span style='color:rgb{tuple(t.color)}'>■</span> {t.cls}: {t.count} outline(s), {area}"
            )
        proposed = sum(a.is_proposal for a in annotations)
        if proposed:
            lines.append(f"{proposed} proposed by the model, not yet accepted")
        return "<br>".join(lines)

    def _select_rows(self, ids: list[str]) -> None:
        """Exactly these rows (selectRow would extend the selection while Shift is held)."""
        chosen = set(ids)
        model = self.table.selectionModel()
        model.clearSelection()
        flags = model.SelectionFlag.Select | model.SelectionFlag.Rows
        for row, i in enumerate(self.ids):
            if i in chosen:
                model.select(self.table.model().index(row, 0), flags)

    def show_selection(self, ids: list[str]) -> None:
        """Mirror the view's selection without echoing it back."""
        self.table.blockSignals(True)
        self._select_rows(ids)
        if ids and ids[0] in self.ids:
            self.table.scrollToItem(self.table.item(self.ids.index(ids[0]), 0))
        self.table.blockSignals(False)

    def selected_ids(self) -> list[str]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        ids = self.ids
        return [ids[r] for r in rows]

    def _on_selection(self) -> None:
        self.selectionChanged.emit(self.selected_ids())
