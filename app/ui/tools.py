"""The mouse tools: select (with vertex editing), brush, eraser, polygon, rectangle, split line.

Each tool turns mouse events into one edit on release (of the region, or of the selected
outline through `RegionEditor.edit_selected`); while the mouse moves, only a preview is drawn,
so even a brush several millimetres wide over a 5,000-vertex outline stays fluid.
"""

from __future__ import annotations

import math

import shapely
import shapely.affinity
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsEllipseItem, QGraphicsPathItem, QGraphicsRectItem
from shapely.geometry import LineString, Point, Polygon, box

from app.core.annotation_edits import (
    add_to,
    delete_vertex,
    edge_at,
    insert_vertex,
    move_vertex,
    subtract_from,
    vertex_at,
)
from app.ui.vertex_handles import HANDLE_PX

REGION_COLOUR = QColor(0, 120, 255)


class Tool:
    """Mouse handling for one tool; return True when the event was used (else the view pans)."""

    name = ""
    shortcut = ""
    tip = ""

    def __init__(self, editor):  # a RegionEditor
        self.editor = editor

    @property
    def view(self):
        return self.editor.view

    def activate(self) -> None: ...
    def deactivate(self) -> None: ...
    def press(self, p: QPointF, event) -> bool:
        return False

    def move(self, p: QPointF, event) -> bool:
        return False

    def release(self, p: QPointF, event) -> bool:
        return False

    def hover(self, p: QPointF) -> None: ...
    def double_click(self, p: QPointF) -> bool:
        return False

    def key(self, event) -> bool:
        return False

    def wants_key(self, event) -> bool:
        """True for a key this tool needs even though a window shortcut has it."""
        return False

    def zoom_changed(self) -> None: ...


class SelectTool(Tool):
    """S: click an outline to select it (Shift-click adds); drag pans, also over the region.

    With one outline selected its vertices show: drag one to move it, Alt+click deletes it,
    double-click on an edge inserts one. Ctrl+drag moves the painted region."""

    name, shortcut, tip = (
        "Select / move",
        "S",
        "Select an outline (Shift adds); drag pans; drag a vertex to move it; Ctrl+drag moves the region (S)",
    )

    def __init__(self, editor):
        super().__init__(editor)
        self.drag_from: QPointF | None = None
        self.press_at: QPointF | None = None
        self.vertex = None  # the VertexRef being dragged

    def _tolerance(self) -> float:
        return HANDLE_PX / max(self.view.zoom, 1e-9)

    def press(self, p, event) -> bool:
        if event.button() != Qt.MouseButton.LeftButton:
            return False
        mods = event.modifiers()
        handles = self.editor.handles
        if handles.active:
            ref = vertex_at(handles.annotation, p.x(), p.y(), self._tolerance())
            if ref is not None:
                if mods & (Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.ControlModifier):
                    self.editor.edit_selected(lambda a: delete_vertex(a, ref), "Delete vertex")
                else:
                    self.vertex = ref
                return True
        g = self.editor.model.geometry
        if mods & Qt.KeyboardModifier.ControlModifier and not g.is_empty and g.contains(Point(p.x(), p.y())):
            self.drag_from = p
            return True
        self.press_at = p
        hit = self.editor.select_annotation_at(p, add=bool(mods & Qt.KeyboardModifier.ShiftModifier))
        return hit and bool(mods & Qt.KeyboardModifier.ShiftModifier)

    def move(self, p, event) -> bool:
        if self.vertex is not None:
            self.editor.handles.preview_move(p)
            return True
        if self.drag_from is None:
            return False
        self.editor.region_item.setPos(p - self.drag_from)
        return True

    def release(self, p, event) -> bool:
        if self.vertex is not None:
            ref, self.vertex = self.vertex, None
            self.editor.handles.preview_move(None)
            self.editor.edit_selected(lambda a: move_vertex(a, ref, p.x(), p.y()), "Move vertex")
            return True
        if self.drag_from is not None:
            d = p - self.drag_from
            self.drag_from = None
            self.editor.region_item.setPos(0, 0)
            if abs(d.x()) + abs(d.y()) > 0:
                moved = shapely.affinity.translate(self.editor.model.geometry, d.x(), d.y())
                self.editor.model.apply(moved, "Move region")
            return True
        start, self.press_at = self.press_at, None
        clicked = start is not None and (p - start).manhattanLength() * self.view.zoom < 4
        if clicked and self.editor.layer is not None and self.editor.layer.at(p.x(), p.y()) is None:
            self.editor.layer.clear_selection()  # a click on empty glass or tissue deselects
        return False

    def double_click(self, p) -> bool:
        handles = self.editor.handles
        if not handles.active:
            return False
        found = edge_at(handles.annotation, p.x(), p.y(), self._tolerance())
        if found is None:
            return False
        ref, x, y = found
        self.editor.edit_selected(lambda a: insert_vertex(a, ref, x, y), "Insert vertex")
        return True


class BrushTool(Tool):
    name, shortcut, tip = (
        "Brush",
        "B",
        "Add to the selected outline (Alt+drag subtracts), or paint the region when none is "
        "selected (B); [ ] size",
    )
    erase = False

    def __init__(self, editor):
        super().__init__(editor)
        self.points: list[tuple[float, float]] = []
        self.stroke = QGraphicsPathItem()
        self.stroke.setZValue(12)
        self.circle = QGraphicsEllipseItem()
        self.circle.setZValue(30)
        pen = QPen(QColor(20, 20, 20), 1.5)
        pen.setCosmetic(True)
        self.circle.setPen(pen)
        self.circle.setVisible(False)

    @property
    def radius(self) -> float:
        """Brush radius in level-0 pixels."""
        return self.editor.brush_um / 2 / self.editor.mpp

    def _stroke_pen(self, subtract: bool) -> QPen:
        target = self.editor.brush_target()
        base = QColor(*target.color) if target is not None else REGION_COLOUR
        colour = (
            QColor(255, 255, 255, 160) if subtract else QColor(base.red(), base.green(), base.blue(), 110)
        )
        pen = QPen(colour, 2 * self.radius)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        return pen

    def activate(self) -> None:
        scene = self.view.scene()
        for item in (self.stroke, self.circle):
            if item.scene() is None:
                scene.addItem(item)
        self.view.viewport().setCursor(Qt.CursorShape.CrossCursor)

    def deactivate(self) -> None:
        self.circle.setVisible(False)
        self.stroke.setPath(QPainterPath())
        self.points = []

    def hover(self, p) -> None:
        r = self.radius
        self.circle.setRect(QRectF(p.x() - r, p.y() - r, 2 * r, 2 * r))
        self.circle.setVisible(True)

    def press(self, p, event) -> bool:
        if event.button() != Qt.MouseButton.LeftButton:
            return False
        self.points = [(p.x(), p.y())]
        path = QPainterPath(p)
        path.lineTo(p + QPointF(0.01, 0))
        alt = bool(event.modifiers() & Qt.KeyboardModifier.AltModifier)
        self.stroke.setPen(self._stroke_pen(self.erase or alt))
        self.stroke.setPath(path)
        return True

    def move(self, p, event) -> bool:
        self.hover(p)
        if not self.points:
            return False
        lx, ly = self.points[-1]
        if math.hypot(p.x() - lx, p.y() - ly) < max(self.radius / 6, 0.5 / self.view.zoom):
            return True
        self.points.append((p.x(), p.y()))
        path = self.stroke.path()
        path.lineTo(p)
        self.stroke.setPath(path)
        return True

    def release(self, p, event) -> bool:
        if not self.points:
            return False
        pts = self.points
        self.points = []
        self.stroke.setPath(QPainterPath())
        geom = (LineString(pts) if len(pts) > 1 else Point(pts[0])).buffer(self.radius, quad_segs=8)
        subtract = self.erase or bool(event.modifiers() & Qt.KeyboardModifier.AltModifier)
        if self.editor.brush_target() is not None:
            if subtract:
                self.editor.edit_selected(lambda a: subtract_from(a, geom), "Erase from outline")
            else:
                self.editor.edit_selected(lambda a: add_to(a, geom), "Brush on outline")
        elif subtract:
            self.editor.model.subtract(geom, "Erase")
        else:
            self.editor.model.add(geom, "Paint")
        return True

    def key(self, event) -> bool:
        if event.key() == Qt.Key.Key_BracketLeft:
            self.editor.set_brush_um(self.editor.brush_um / 1.25)
        elif event.key() == Qt.Key.Key_BracketRight:
            self.editor.set_brush_um(self.editor.brush_um * 1.25)
        else:
            return False
        self.circle.setRect(QRectF())
        return True


class EraserTool(BrushTool):
    name, shortcut, tip = (
        "Eraser",
        "E",
        "Erase from the selected outline, or from the region when none is selected (E); [ ] size",
    )
    erase = True


class _OutlineTool(Tool):
    """A tool that shows the shape being drawn as a dashed outline item until it is added."""

    def __init__(self, editor, item):
        super().__init__(editor)
        self.item = item
        self.item.setZValue(12)
        pen = QPen(REGION_COLOUR, 2, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        self.item.setPen(pen)

    def activate(self) -> None:
        if self.item.scene() is None:
            self.view.scene().addItem(self.item)
        self.view.viewport().setCursor(Qt.CursorShape.CrossCursor)


class PolygonTool(_OutlineTool):
    """P: click vertices; double-click, Enter or a click on the first vertex closes; Esc cancels."""

    name, shortcut, tip = "Polygon", "P", "Draw a polygon: click vertices, double-click to close (P)"

    def __init__(self, editor):
        super().__init__(editor, QGraphicsPathItem())
        self.vertices: list[QPointF] = []

    def deactivate(self) -> None:
        self.vertices = []
        self.item.setPath(QPainterPath())

    def _draw(self, cursor: QPointF | None = None) -> None:
        path = QPainterPath()
        if self.vertices:
            path.moveTo(self.vertices[0])
            for v in self.vertices[1:]:
                path.lineTo(v)
            if cursor is not None:
                path.lineTo(cursor)
        self.item.setPath(path)

    def press(self, p, event) -> bool:
        if event.button() != Qt.MouseButton.LeftButton:
            return False
        close_px = 8 / self.view.zoom
        if len(self.vertices) >= 3 and (p - self.vertices[0]).manhattanLength() < close_px:
            self._finish()
        else:
            self.vertices.append(p)
            self._draw(p)
        return True

    def move(self, p, event) -> bool:
        return bool(self.vertices)

    def hover(self, p) -> None:
        if self.vertices:
            self._draw(p)

    def double_click(self, p) -> bool:
        if len(self.vertices) >= 3:
            self._finish()
            return True
        return False

    def wants_key(self, event) -> bool:
        keys = (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Escape, Qt.Key.Key_Backspace)
        return bool(self.vertices) and event.key() in keys

    def _finish(self) -> None:
        pts = [(v.x(), v.y()) for v in self.vertices]
        self.deactivate()
        poly = Polygon(pts)
        if poly.area > 0:
            self.editor.model.add(poly, "Polygon")

    def key(self, event) -> bool:
        k = event.key()
        if k in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and len(self.vertices) >= 3:
            self._finish()
        elif k == Qt.Key.Key_Escape and self.vertices:
            self.deactivate()
        elif k == Qt.Key.Key_Backspace and self.vertices:
            self.vertices.pop()
            self._draw()
        else:
            return False
        return True


class RectangleTool(_OutlineTool):
    name, shortcut, tip = "Rectangle", "R", "Draw a rectangle by dragging (R)"

    def __init__(self, editor):
        super().__init__(editor, QGraphicsRectItem())
        self.start: QPointF | None = None

    def deactivate(self) -> None:
        self.start = None
        self.item.setRect(QRectF())

    def press(self, p, event) -> bool:
        if event.button() != Qt.MouseButton.LeftButton:
            return False
        self.start = p
        return True

    def move(self, p, event) -> bool:
        if self.start is None:
            return False
        self.item.setRect(QRectF(self.start, p).normalized())
        return True

    def release(self, p, event) -> bool:
        if self.start is None:
            return False
        r = QRectF(self.start, p).normalized()
        self.deactivate()
        if r.width() * self.view.zoom > 3 and r.height() * self.view.zoom > 3:
            self.editor.model.add(box(r.left(), r.top(), r.right(), r.bottom()), "Rectangle")
        return True


class SplitLineTool(PolygonTool):
    """A line across the selected outline: click points, double-click or Enter splits it along
    the line; Esc cancels. Reached from Edit > Split along a line (no shortcut of its own)."""

    name, shortcut, tip = "Split line", "", "Draw a line across the selected outline to split it"

    def _finish(self) -> None:
        pts = [(v.x(), v.y()) for v in self.vertices]
        self.deactivate()
        if len(pts) >= 2:
            self.editor.lineDrawn.emit(LineString(pts))

    def press(self, p, event) -> bool:
        if event.button() != Qt.MouseButton.LeftButton:
            return False
        self.vertices.append(p)
        self._draw(p)
        return True

    def double_click(self, p) -> bool:
        if len(self.vertices) >= 2:
            self._finish()
            return True
        return False

    def key(self, event) -> bool:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and len(self.vertices) >= 2:
            self._finish()
            return True
        return super().key(event)
