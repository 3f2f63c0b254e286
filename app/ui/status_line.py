"""The status bar: the run's progress and Cancel first, then the cursor position, the level
and zoom, and the engine; the labels elide so the run's controls stay on a small screen."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QStatusBar
from superqt import QElidingLabel


class StatusLabel(QElidingLabel):
    """As wide as its text up to a cap, and willing to shrink (eliding) when the bar is short."""

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        width = self.fontMetrics().horizontalAdvance(self.text()) + 12
        return QSize(min(width, self.maximumWidth()), hint.height())

    def minimumSizeHint(self) -> QSize:
        return QSize(40, super().minimumSizeHint().height())

    def setText(self, text: str) -> None:
        super().setText(text)
        self.updateGeometry()


class StatusLine:
    def __init__(self, bar: QStatusBar, progress, cancel_button):
        self.bar = bar
        self.pos_label = StatusLabel()
        self.level_label = StatusLabel()
        self.engine_label = StatusLabel()
        bar.addPermanentWidget(progress)
        bar.addPermanentWidget(cancel_button)
        # No stretch: the labels keep to their widths and messages (left) get the rest of the bar.
        for label, width in ((self.pos_label, 250), (self.level_label, 250), (self.engine_label, 170)):
            label.setMinimumWidth(40)
            label.setMaximumWidth(width)
            bar.addPermanentWidget(label)

    def show(self, message: str, timeout_ms: int = 8000) -> None:
        """A message elided to the room the bar has; the whole text is its tooltip."""
        room = max(self.bar.width() // 2, 120)
        elided = self.bar.fontMetrics().elidedText(message, Qt.TextElideMode.ElideRight, room)
        self.bar.setToolTip(message if elided != message else "")
        self.bar.showMessage(elided, timeout_ms)

    def clear_position(self) -> None:
        self.pos_label.setText("")
        self.level_label.setText("")

    def show_cursor(self, slide, x: float, y: float) -> None:
        if slide is None:
            return
        w, h = slide.dimensions
        if not (0 <= x < w and 0 <= y < h):
            self.pos_label.setText("")
            return
        text = f"x {x:,.0f}  y {y:,.0f} px"
        if slide.mpp:
            text += f"  |  {x * slide.mpp[0]:,.1f}, {y * slide.mpp[1]:,.1f} µm"
        self.pos_label.setText(text)

    def show_level(self, view) -> None:
        if view.slide is not None and view.grid is not None:
            where = view.grid.describe(view.level_for_zoom())
            self.level_label.setText(f"{where}  ·  zoom {view.zoom:.3g}  ·  {view.scale_bar.mag_text}")
