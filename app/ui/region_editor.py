"""The painted region and the tools that edit it.

The region is one shapely geometry in level-0 pixels: the union of brush strokes, polygons and
rectangles, minus what the eraser removed. Every edit is a QUndoCommand holding the geometry
before and after, so undo/redo is exact and cheap.

A stroke is drawn live as a wide round-capped path (no geometry work while the mouse moves) and
turned into geometry once, on release: a LineString buffered by the brush radius. That keeps a
brush of several millimetres fluid at low zoom.
"""

from __future__ import annotations

import math

import shapely
import shapely.affinity
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPainterPath, QPen, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QGraphicsEllipseItem, QGraphicsPathItem, QGraphicsRectItem
from shapely.geometry import LineString, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from app.core.geometry import polygonal
from app.ui.shapes import geometry_path

REGION_COLOUR = QColor(0, 120, 255)
MIN_BRUSH_UM, MAX_BRUSH_UM = 10.0, 20_000.0


class RegionModel(QObject):
    changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.geometry: BaseGeometry = Polygon()
        self.undo_stack = QUndoStack(self)

    def _set(self, geom: BaseGeometry) -> None:
        self.geometry = geom
        self.changed.emit()

    def apply(self, new: BaseGeometry, text: str) -> None:
        new = polygonal(shapely.make_valid(new)) if not new.is_valid else polygonal(new)
        if new.equals(self.geometry):
            return
        self.undo_stack.push(_Edit(self, self.geometry, new, text))

    def add(self, geom: BaseGeometry, text: str = "Paint") -> None:
        self.apply(self.geometry.union(geom) if not self.geometry.is_empty else geom, text)

    def subtract(self, geom: BaseGeometry, text: str = "Erase") -> None:
        if not self.geometry.is_empty:
            self.apply(self.geometry.difference(geom), text)

    def clear(self) -> None:
        if not self.geometry.is_empty:
            self.apply(Polygon(), "Clear region")

    def reset(self, geometry: BaseGeometry | None = None) -> None:
        """A new slide (or one restored from disk): this region, no history."""
        self.undo_stack.clear()
        self._set(geometry if geometry is not None else Polygon())

    @property
    def empty(self) -> bool:
        return self.geometry.is_empty


class _Edit(QUndoCommand):
    def __init__(self, model: RegionModel, before: BaseGeometry, after: BaseGeometry, text: str):
        super().__init__(text)
        self.model, self.before, self.after = model, before, after

    def redo(self) -> None:
        self.model._set(self.after)

    def undo(self) -> None:
        self.model._set(self.before)


class RegionItem(QGraphicsPathItem):
    """The region, translucent, above the slide and below the delineation overlay."""

    def __init__(self, model: RegionModel):
        super().__init__()
        self.model = model
        self.setZValue(10)
        pen = QPen(REGION_COLOUR, 2)
        pen.setCosmetic(True)
        self.setPen(pen)
        fill = QColor(REGION_COLOUR)
        fill.setAlpha(45)
        self.setBrush(QBrush(fill))
        model.changed.connect(self.refresh)

    def refresh(self) -> None:
        self.setPath(geometry_path(self.model.geometry))


# ---------------------------------------------------------------------------------------- tools


class Tool:
    """Mouse handling for one tool; return True when the event was used (else the view pans)."""

    name = ""
    shortcut = ""
    tip = ""

    def __init__(self, editor: RegionEditor):
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

    def zoom_changed(self) -> None: ...


class SelectTool(Tool):
    """S: click an annotation to select it; drag the painted region to move it; elsewhere, pan."""

    name, shortcut, tip = "Select / move", "S", "Select an annotation or move the region (S)"

    def __init__(self, editor):
        super().__init__(editor)
        self.drag_from: QPointF | None = None

    def press(self, p, event) -> bool:
        if self.editor.select_annotation_at(p):
            return True
        g = self.editor.model.geometry
        if not g.is_empty and g.contains(Point(p.x(), p.y())):
            self.drag_from = p
            return True
        return False

    def move(self, p, event) -> bool:
        if self.drag_from is None:
            return False
        d = p - self.drag_from
        self.editor.region_item.setPos(d)
        return True

    def release(self, p, event) -> bool:
        if self.drag_from is None:
            return False
        d = p - self.drag_from
        self.drag_from = None
        self.editor.region_item.setPos(0, 0)
        if abs(d.x()) + abs(d.y()) > 0:
            moved = shapely.affinity.translate(self.editor.model.geometry, d.x(), d.y())
            self.editor.model.apply(moved, "Move region")
        return True


class BrushTool(Tool):
    name, shortcut, tip = "Brush", "B", "Paint the region (B); [ and ] change the size"
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

    def _stroke_pen(self) -> QPen:
        colour = (
            QColor(255, 255, 255, 160)
            if self.erase
            else QColor(REGION_COLOUR.red(), REGION_COLOUR.green(), REGION_COLOUR.blue(), 110)
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
        self.stroke.setPen(self._stroke_pen())
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
        if self.erase:
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
    name, shortcut, tip = "Eraser", "E", "Erase from the region (E); [ and ] change the size"
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


class RegionEditor(QObject):
    """Owns the region model, its scene item and the tools; the view forwards mouse events."""

    toolChanged = Signal(str)
    brushChanged = Signal(float)  # µm
    annotationClicked = Signal(str)  # annotation id

    TOOLS = (SelectTool, BrushTool, EraserTool, PolygonTool, RectangleTool)

    def __init__(self, view):
        super().__init__(view)
        self.view = view
        self.model = RegionModel(self)
        self.region_item = RegionItem(self.model)
        view.scene().addItem(self.region_item)
        self.brush_um = 200.0
        self.tools = {cls.name: cls(self) for cls in self.TOOLS}
        self.active: Tool = self.tools[SelectTool.name]
        self.annotation_hit_test = None  # set by the window: (x, y) -> annotation id | None

    @property
    def mpp(self) -> float:
        """µm per level-0 pixel; 1.0 for slides without a pixel size (sizes then read as px)."""
        s = self.view.slide
        return float(sum(s.mpp) / 2) if s is not None and s.mpp else 1.0

    def set_tool(self, name: str) -> None:
        if self.active.name == name:
            return
        self.active.deactivate()
        self.active = self.tools[name]
        self.active.activate()
        if isinstance(self.active, SelectTool):
            self.view.viewport().unsetCursor()
        self.toolChanged.emit(name)

    def set_brush_um(self, um: float) -> None:
        self.brush_um = float(min(MAX_BRUSH_UM, max(MIN_BRUSH_UM, um)))
        self.brushChanged.emit(self.brush_um)

    def select_annotation_at(self, p: QPointF) -> bool:
        if self.annotation_hit_test is None:
            return False
        hit = self.annotation_hit_test(p.x(), p.y())
        if hit:
            self.annotationClicked.emit(hit)
            return True
        return False
