"""What the model drew: the live per-tile overlay, and the finished annotations' outlines."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem

from app.core.annotations import Annotation
from app.ui.image_convert import array_to_qimage
from app.ui.shapes import geometry_path


def tile_mask_image(prob: np.ndarray, threshold: float, colour: tuple[int, int, int]) -> QImage:
    """RGBA image: the class colour where prob >= threshold, transparent elsewhere. Built on the
    worker thread (QImage is safe there), so the GUI thread only paints it."""
    mask = prob >= threshold
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = (*colour, 255)
    return array_to_qimage(rgba)


class TileOverlay(QGraphicsItem):
    """Finished tiles, each painted over its core as it arrives; the item's opacity is the
    user's overlay opacity."""

    def __init__(self, bounds: QRectF):
        super().__init__()
        self.bounds = QRectF(bounds)
        self.tiles: list[tuple[QRectF, QImage]] = []
        self.setZValue(20)
        self.setOpacity(0.45)

    def boundingRect(self) -> QRectF:
        return self.bounds

    def add_tile(self, rect: QRectF, image: QImage) -> None:
        self.tiles.append((QRectF(rect), image))
        self.update(rect)

    def clear(self) -> None:
        self.tiles = []
        self.update()

    def paint(self, painter: QPainter, option, widget=None) -> None:
        exposed = option.exposedRect
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        for rect, img in self.tiles:
            if rect.intersects(exposed):
                painter.drawImage(rect, img)


class AnnotationItem(QGraphicsPathItem):
    def __init__(self, annotation: Annotation):
        super().__init__(geometry_path(annotation.geometry))
        self.annotation = annotation
        self.setZValue(25)
        self.set_selected(False)

    def set_selected(self, selected: bool) -> None:
        c = QColor(*self.annotation.color)
        pen = QPen(QColor(255, 210, 0) if selected else c, 3.5 if selected else 2)
        pen.setCosmetic(True)
        self.setPen(pen)
        fill = QColor(c)
        fill.setAlpha(70 if selected else 40)
        self.setBrush(QBrush(fill))
        self.setZValue(26 if selected else 25)
