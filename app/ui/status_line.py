"""The status bar: the run's progress and Cancel first, then the cursor position, the level
and zoom, and the engine; the labels elide so the run's controls stay on a small screen, and
messages elide a gap short of them."""

from __future__ import annotations

from PySide6.QtCore import QSize, QTimer
from PySide6.QtWidgets import QSizePolicy, QStatusBar
from superqt import QElidingLabel

MESSAGE_GAP = 16  # px of nothing between a message's end and the labels at the right
MESSAGE_INDENT = 4  # px before a message, as Qt's own status messages have


class StatusBar(QStatusBar):
    """Messages in an eliding label that takes the room the permanent labels leave. Qt draws a
    temporary message up to 2 px before the first permanent widget and cuts it mid-letter there,
    so a long one ran straight into the cursor position."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.message_label = QElidingLabel()
        # It elides to its whole width: the indent at the left is taken off with the gap.
        self.message_label.setContentsMargins(MESSAGE_INDENT, 0, 0, 0)
        self.message_label.setEllipsesWidth(MESSAGE_INDENT + MESSAGE_GAP)
        self.message_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.addWidget(self.message_label, 1)
        self._expiry = QTimer(self)
        self._expiry.setSingleShot(True)
        self._expiry.timeout.connect(self.clearMessage)

    def showMessage(self, message: str, timeout: int = 0) -> None:
        """The whole text is the tooltip, for when it is elided; `timeout` ms, 0 until replaced."""
        self.message_label.setText(message)
        self.message_label.setToolTip(message)
        if timeout > 0:
            self._expiry.start(timeout)
        else:
            self._expiry.stop()
        self.messageChanged.emit(message)

    def clearMessage(self) -> None:
        self.showMessage("")

    def currentMessage(self) -> str:
        return self.message_label.text()


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
        self.bar.showMessage(message, timeout_ms)

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
