"""Vertex handles of the one selected annotation, painted as a single item.

One item that paints the handles inside the exposed rectangle (rather than one item per vertex)
keeps a 5,000-vertex outline as fluid as a square; hit tests go to `app.core.annotation_edits`.
"""

from __future__ import annotations

import numpy as np
import shapely
from PySide6.QtCore import QPointF, QRectF
from PySide6.QtGui import QBrush, QColor, QPainter, QPen
from PySide6.QtWidgets import QGraphicsItem

from app.core.annotations import Annotation

HANDLE_PX = 7  # on screen, whatever the zoom
MAX_HANDLES = 20_000  # past this the outline is edited with the brush, not vertex by vertex


class VertexHandles(QGraphicsItem):
    def __init__(self):
        super().__init__()
        self.annotation: Annotation | None = None
        self.points = np.empty((0, 2))
        self._bounds = QRectF()
        self.dragged: QPointF | None = None
        self.setZValue(40)
        self.setVisible(False)

    def show_for(self, annotation: Annotation | None) -> None:
        """Handles for this annotation (None, a locked one or too many vertices: none)."""
        self.prepareGeometryChange()
        if annotation is None or annotation.locked:
            self.annotation, self.points = None, np.empty((0, 2))
        else:
            pts = shapely.get_coordinates(annotation.geometry)
            self.annotation = annotation
            self.points = pts if len(pts) <= MAX_HANDLES else np.empty((0, 2))
        if len(self.points):
            x0, y0 = self.points.min(axis=0)
            x1, y1 = self.points.max(axis=0)
            self._bounds = QRectF(x0, y0, x1 - x0, y1 - y0)
        else:
            self._bounds = QRectF()
        self.setVisible(bool(len(self.points)))

    @property
    def active(self) -> bool:
        return self.isVisible() and self.annotation is not None and self._roomy()

    def _roomy(self) -> bool:
        """Handles that would touch one another are neither drawn nor grabbed: zoom in to edit
        vertices (a drag at low zoom pans, as elsewhere)."""
        views = self.scene().views() if self.scene() is not None else []
        if not views or len(self.points) < 2:
            return bool(len(self.points))
        zoom = views[0].transform().m11()
        steps = np.hypot(*np.diff(self.points, axis=0).T) * zoom
        return float(np.median(steps)) >= 2 * HANDLE_PX

    def boundingRect(self) -> QRectF:
        # Handles are drawn at a fixed screen size: pad by a generous margin in scene units.
        pad = 1000.0
        r = self._bounds
        if self.dragged is not None:
            r = r.united(QRectF(self.dragged, self.dragged))
        return r.adjusted(-pad, -pad, pad, pad)

    def paint(self, painter: QPainter, option, widget=None) -> None:
        if not len(self.points) or not self._roomy():
            return
        r = option.exposedRect
        pts = self.points
        inside = (
            (pts[:, 0] >= r.left())
            & (pts[:, 0] <= r.right())
            & (pts[:, 1] >= r.top())
            & (pts[:, 1] <= r.bottom())
        )
        shown = pts[inside]
        t = painter.worldTransform()
        if len(shown) > 4000:  # too dense to grab one anyway: zoom in to edit
            return
        painter.save()
        painter.resetTransform()
        painter.setPen(QPen(QColor(30, 30, 30), 1))
        painter.setBrush(QBrush(QColor(255, 255, 255)))
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        h = HANDLE_PX / 2
        for x, y in shown:
            p = t.map(QPointF(x, y))
            painter.drawRect(QRectF(p.x() - h, p.y() - h, HANDLE_PX, HANDLE_PX))
        if self.dragged is not None:
            p = t.map(self.dragged)
            painter.setBrush(QBrush(QColor(255, 210, 0)))
            painter.drawRect(QRectF(p.x() - h, p.y() - h, HANDLE_PX, HANDLE_PX))
        painter.restore()

    def preview_move(self, point: QPointF | None) -> None:
        """Show a dragged handle where the mouse is, before the edit is made on release."""
        self.prepareGeometryChange()
        self.dragged = point
        self.update()
