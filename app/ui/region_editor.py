"""The painted region, and the tools that edit it and the selected annotation.

The region is one shapely geometry in level-0 pixels: the union of brush strokes, polygons and
rectangles, minus what the eraser removed. Every edit is a QUndoCommand holding the geometry
before and after, so undo/redo is exact and cheap. The same undo stack holds annotation edits
(see AnnotationLayer), so Ctrl+Z undoes whatever was done last.

With an annotation selected, the brush adds to it and the eraser (or Alt+brush) subtracts from
it, as in QuPath; with none selected they paint the region.

A stroke is drawn live as a wide round-capped path (no geometry work while the mouse moves) and
turned into geometry once, on release: a LineString buffered by the brush radius. That keeps a
brush of several millimetres fluid at low zoom.
"""

from __future__ import annotations

import shapely
import shapely.affinity
from PySide6.QtCore import QObject, QPointF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPen, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QGraphicsPathItem
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from app.core.geometry import polygonal
from app.ui.shapes import geometry_path
from app.ui.tools import (
    REGION_COLOUR,
    BrushTool,
    EraserTool,
    PolygonTool,
    RectangleTool,
    SelectTool,
    SplitLineTool,
    Tool,
)
from app.ui.vertex_handles import VertexHandles

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
    """The region: an outline with a fill light enough never to hide nuclei, above the slide
    and below the delineation overlay."""

    def __init__(self, model: RegionModel):
        super().__init__()
        self.model = model
        self.setZValue(10)
        pen = QPen(REGION_COLOUR, 2, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        self.setPen(pen)
        fill = QColor(REGION_COLOUR)
        fill.setAlpha(14)
        self.setBrush(QBrush(fill))
        model.changed.connect(self.refresh)

    def refresh(self) -> None:
        self.setPath(geometry_path(self.model.geometry))


class RegionEditor(QObject):
    """Owns the region model, its scene item, the vertex handles and the tools; the view
    forwards mouse events. The annotation layer is attached by the window."""

    toolChanged = Signal(str)
    brushChanged = Signal(float)  # µm
    annotationClicked = Signal(str)  # annotation id
    lineDrawn = Signal(object)  # LineString, from the split tool

    TOOLS = (SelectTool, BrushTool, EraserTool, PolygonTool, RectangleTool, SplitLineTool)

    def __init__(self, view):
        super().__init__(view)
        self.view = view
        self.model = RegionModel(self)
        self.region_item = RegionItem(self.model)
        view.scene().addItem(self.region_item)
        self.handles = VertexHandles()
        view.scene().addItem(self.handles)
        self.brush_um = 200.0
        self.tools = {cls.name: cls(self) for cls in self.TOOLS}
        self.active: Tool = self.tools[SelectTool.name]
        self.layer = None  # AnnotationLayer, set by the window

    def attach_layer(self, layer) -> None:
        self.layer = layer
        layer.selectionChanged.connect(self._refresh_handles)
        layer.changed.connect(self._refresh_handles)

    def _refresh_handles(self) -> None:
        sel = self.layer.selected_annotations() if self.layer is not None else []
        self.handles.show_for(sel[0] if len(sel) == 1 else None)

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

    def select_annotation_at(self, p: QPointF, add: bool = False) -> bool:
        if self.layer is None:
            return False
        hit = self.layer.at(p.x(), p.y())
        if hit is None:
            return False
        self.layer.select([hit.id], add=add)
        self.annotationClicked.emit(hit.id)
        return True

    def brush_target(self):
        """The annotation the brush edits: the one selected outline, unless it is locked."""
        if self.layer is None:
            return None
        sel = self.layer.selected_annotations()
        return sel[0] if len(sel) == 1 and not sel[0].locked else None

    def edit_selected(self, edit, text: str) -> None:
        """Apply `edit(annotation) -> annotation | None` to the one selected outline, as one
        undo step (None deletes it; a locked outline is never edited)."""
        target = self.brush_target()
        if target is None:
            return
        self.layer.replace({target.id: edit(target)}, text)
