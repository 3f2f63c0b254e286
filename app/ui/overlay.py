"""What the model drew: the live per-tile overlay, and the finished annotations' outlines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem

from app.core.annotations import Annotation
from app.core.class_scores import ClassScheme
from app.ui.image_convert import array_to_qimage
from app.ui.shapes import geometry_path


def tile_mask_image(scores: np.ndarray, scheme: ClassScheme, threshold: float | None = None) -> QImage:
    """RGBA image of a tile's class scores (C, H, W): each pixel in its class's colour, as the
    outline will decide it, transparent where no class is outlined. Built on the worker thread
    (QImage is safe there), so the GUI thread only paints it."""
    label = scheme.labels(scores, threshold)
    rgba = np.zeros((*label.shape, 4), np.uint8)
    rgba[..., :3] = scheme.colors()[label]
    rgba[..., 3] = np.where(label > 0, 255, 0)
    return array_to_qimage(rgba)


class TileOverlay(QGraphicsItem):
    """Finished tiles, each painted over its core as it arrives, inside the painted region only
    (as the outline will be); the item's opacity is the user's overlay opacity. An adaptive
    run's coarse tiles come first and each fine tile then replaces the coarse answer under it:
    the overlay sharpens where the model looks again."""

    def __init__(self, bounds: QRectF, clip: QPainterPath | None = None):
        super().__init__()
        self.bounds = QRectF(bounds)
        self.clip = clip
        self.tiles: list[tuple[QRectF, QImage]] = []  # full-resolution tiles
        # Coarse tiles with what fine tiles cover of them, and the part still shown (None: all).
        self.coarse: list[tuple[QRectF, QImage, QPainterPath]] = []
        self._visible: list[QPainterPath | None] = []
        self.setZValue(20)
        self.setOpacity(0.45)

    def boundingRect(self) -> QRectF:
        return self.bounds

    def add_tile(self, rect: QRectF, image: QImage, coarse: bool = False) -> None:
        rect = QRectF(rect)
        if coarse:
            self.coarse.append((rect, image, QPainterPath()))
            self._visible.append(None)
        else:
            for i, (r, _, covered) in enumerate(self.coarse):
                if r.intersects(rect):
                    covered.addRect(rect)
                    whole = QPainterPath()
                    whole.addRect(r)
                    self._visible[i] = whole.subtracted(covered)  # once here, not on every paint
            self.tiles.append((rect, image))
        self.update(rect)

    @property
    def shown(self) -> int:
        """Tiles on screen, coarse ones included."""
        return len(self.tiles) + len(self.coarse)

    def clear(self) -> None:
        self.tiles, self.coarse, self._visible = [], [], []
        self.update()

    def paint(self, painter: QPainter, option, widget=None) -> None:
        exposed = option.exposedRect
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        if self.clip is not None:
            painter.setClipPath(self.clip)
        for (rect, img, _), visible in zip(self.coarse, self._visible, strict=True):
            if not rect.intersects(exposed):
                continue
            if visible is None:
                painter.drawImage(rect, img)
                continue
            painter.save()
            painter.setClipPath(visible, Qt.ClipOperation.IntersectClip)
            painter.drawImage(rect, img)
            painter.restore()
        for rect, img in self.tiles:
            if rect.intersects(exposed):
                painter.drawImage(rect, img)


@dataclass(frozen=True)
class ClassDisplay:
    """How one class is drawn: its fill, its outline, or both (neither hides it)."""

    fill: bool = True
    outline: bool = True

    @property
    def shown(self) -> bool:
        return self.fill or self.outline


SELECTED = QColor(255, 210, 0)


class AnnotationItem(QGraphicsPathItem):
    """One annotation: a model proposal has a dashed outline until it is accepted or edited;
    the fill is light so nuclei stay visible under it at any zoom."""

    def __init__(self, annotation: Annotation, display: ClassDisplay | None = None):
        super().__init__(geometry_path(annotation.geometry))
        self.annotation = annotation
        self.display = display or ClassDisplay()
        self.selected = False
        self._style()

    def set_selected(self, selected: bool) -> None:
        if selected != self.selected:
            self.selected = selected
            self._style()

    def set_display(self, display: ClassDisplay) -> None:
        self.display = display
        self._style()

    def _style(self) -> None:
        a, selected = self.annotation, self.selected
        c = QColor(*a.color)
        if self.display.outline or selected:
            pen = QPen(SELECTED if selected else c, 3.5 if selected else 2)
            if a.review == "proposed" and not a.provenance.edited and not selected:
                pen.setStyle(Qt.PenStyle.DashLine)
            pen.setCosmetic(True)
            self.setPen(pen)
        else:
            self.setPen(QPen(Qt.PenStyle.NoPen))
        if self.display.fill:
            fill = QColor(c)
            fill.setAlpha(60 if selected else 35)
            self.setBrush(QBrush(fill))
        else:
            self.setBrush(QBrush(Qt.BrushStyle.NoBrush))
        self.setZValue(26 if selected else 25)
