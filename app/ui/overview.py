"""The overview (minimap): the whole slide with the viewport drawn on it; click or drag to move."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QWidget

MAX_SIDE = 200


class Overview(QWidget):
    centreRequested = Signal(float, float)  # level-0 pixels

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.image: QImage | None = None
        self.slide_w = self.slide_h = 1.0
        self.viewport_rect = QRectF()
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")
        self.hide()

    def set_image(self, image: QImage | None, slide_w: float, slide_h: float) -> None:
        self.image = image
        self.slide_w, self.slide_h = float(slide_w), float(slide_h)
        if image is None:
            self.hide()
            return
        s = MAX_SIDE / max(slide_w, slide_h)
        self.resize(max(20, round(slide_w * s)) + 4, max(20, round(slide_h * s)) + 4)
        self.show()
        self.update()

    def set_viewport(self, rect: QRectF) -> None:
        self.viewport_rect = QRectF(rect)
        self.update()

    def _scale(self) -> float:
        return (self.width() - 4) / self.slide_w

    def paintEvent(self, _event) -> None:
        if self.image is None:
            return
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(255, 255, 255))
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.drawImage(QRectF(2, 2, self.width() - 4, self.height() - 4), self.image)
        s = self._scale()
        r = self.viewport_rect
        view = QRectF(2 + r.x() * s, 2 + r.y() * s, r.width() * s, r.height() * s)
        p.setPen(QPen(QColor(220, 30, 30), 2))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(view.intersected(QRectF(self.rect()).adjusted(1, 1, -1, -1)))
        p.setPen(QPen(QColor(120, 120, 120), 1))
        p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        p.end()

    def to_slide(self, pos: QPointF) -> tuple[float, float]:
        s = self._scale()
        x = min(max((pos.x() - 2) / s, 0.0), self.slide_w)
        y = min(max((pos.y() - 2) / s, 0.0), self.slide_h)
        return x, y

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.centreRequested.emit(*self.to_slide(event.position()))
            event.accept()

    def mouseMoveEvent(self, event) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self.centreRequested.emit(*self.to_slide(event.position()))
            event.accept()
