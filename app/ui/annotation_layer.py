"""The annotations on screen: the list, one scene item each, the selection, and undo.

Annotations are values: an edit builds a new list (with `app.core.annotation_edits`) and
`apply` pushes it as one step on the undo stack shared with the painted region, holding the list
before and after. Undo is exact and cheap (the lists share unchanged annotations), and every
change, deletion included, goes through the same door, so the panel, the autosave and the view
never disagree.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack
from PySide6.QtWidgets import QGraphicsScene
from shapely import STRtree
from shapely.geometry import Point

from app.core.annotations import Annotation
from app.ui.overlay import AnnotationItem, ClassDisplay


class AnnotationLayer(QObject):
    changed = Signal()  # the list changed (autosave, panel, totals)
    selectionChanged = Signal()

    def __init__(self, scene: QGraphicsScene, undo_stack: QUndoStack, parent: QObject | None = None):
        super().__init__(parent)
        self.scene = scene
        self.undo_stack = undo_stack
        self.annotations: list[Annotation] = []
        self.items: dict[str, AnnotationItem] = {}
        self.selected: list[str] = []  # ids, in the order they were selected
        self.visible = True
        self.opacity = 0.75
        self.display: dict[str, ClassDisplay] = {}
        self._index: tuple[STRtree, list[Annotation]] | None = None

    # ------------------------------------------------------------------ the list

    def by_id(self, ann_id: str) -> Annotation | None:
        return next((a for a in self.annotations if a.id == ann_id), None)

    def reset(self, annotations: list[Annotation]) -> None:
        """A slide opened or closed: these annotations, no history."""
        self._set(list(annotations))

    def apply(self, new: list[Annotation], text: str, merge_key: str | None = None) -> None:
        """Replace the list as one undoable step (nothing happens when nothing changed).
        Consecutive steps with the same `merge_key` (a sensitivity slider being dragged)
        become one."""
        same = len(new) == len(self.annotations) and all(
            a is b for a, b in zip(new, self.annotations, strict=True)
        )
        if not same:
            self.undo_stack.push(_ListEdit(self, list(self.annotations), list(new), text, merge_key))

    def add(self, new: list[Annotation], text: str = "Add annotations") -> None:
        self.apply([*self.annotations, *new], text)

    def remove(self, ids: list[str], text: str = "Delete") -> None:
        drop = set(ids)
        self.apply([a for a in self.annotations if a.id not in drop], text)

    def replace(self, changed: dict[str, Annotation | None], text: str) -> None:
        """Swap some annotations by id for new versions (None deletes); order is kept."""
        out = []
        for a in self.annotations:
            b = changed.get(a.id, a)
            if b is not None:
                out.append(b)
        self.apply(out, text)

    def _set(self, annotations: list[Annotation]) -> None:
        """Make the scene show `annotations`: items of annotations that are gone or changed
        are removed, new ones added; an unchanged annotation keeps its item."""
        old = {i: item for i, item in self.items.items()}
        self.items = {}
        for a in annotations:
            item = old.pop(a.id, None)
            if item is not None and item.annotation is not a:
                self.scene.removeItem(item)
                item = None
            if item is None:
                item = AnnotationItem(a, self._display(a.cls))
                item.setVisible(self.visible)
                item.setOpacity(self.opacity)
                self.scene.addItem(item)
            self.items[a.id] = item
        for item in old.values():
            self.scene.removeItem(item)
        self.annotations = annotations
        self._index = None
        kept = [i for i in self.selected if i in self.items]
        selection_changed = kept != self.selected
        self.selected = kept
        for i, item in self.items.items():
            item.set_selected(i in self.selected)
        self.changed.emit()
        if selection_changed:
            self.selectionChanged.emit()

    # ------------------------------------------------------------------ selection

    def select(self, ids: list[str], add: bool = False) -> None:
        """Select these (Shift-click adds, and toggles an annotation already selected)."""
        if add:
            sel = list(self.selected)
            for i in ids:
                if i in sel:
                    sel.remove(i)
                else:
                    sel.append(i)
        else:
            sel = [i for i in ids if i in self.items]
        if sel == self.selected:
            return
        self.selected = sel
        for i, item in self.items.items():
            item.set_selected(i in sel)
        self.selectionChanged.emit()

    def clear_selection(self) -> None:
        self.select([])

    def selected_annotations(self) -> list[Annotation]:
        chosen = set(self.selected)
        return [a for a in self.annotations if a.id in chosen]

    def at(self, x: float, y: float) -> Annotation | None:
        """The smallest visible annotation under a point (a spatial index keeps clicks fast
        on a slide with thousands of outlines)."""
        if not self.visible or not self.annotations:
            return None
        if self._index is None:
            shown = [a for a in self.annotations if self._display(a.cls).shown]
            self._index = (STRtree([a.geometry for a in shown]), shown)
        tree, shown = self._index
        pt = Point(x, y)
        hits = [shown[i] for i in tree.query(pt, predicate="intersects")]
        return min(hits, key=lambda a: a.geometry.area) if hits else None

    # ------------------------------------------------------------------ display

    def _display(self, cls: str) -> ClassDisplay:
        return self.display.get(cls, ClassDisplay())

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        for item in self.items.values():
            item.setVisible(visible)
        self._index = None

    def set_opacity(self, opacity: float) -> None:
        self.opacity = opacity
        for item in self.items.values():
            item.setOpacity(opacity)

    def set_class_display(self, cls: str, display: ClassDisplay) -> None:
        self.display[cls] = display
        for item in self.items.values():
            if item.annotation.cls == cls:
                item.set_display(display)
        self._index = None


class _ListEdit(QUndoCommand):
    MERGEABLE = 7301  # Qt merges only commands with the same id (-1: never)

    def __init__(self, layer: AnnotationLayer, before: list, after: list, text: str, merge_key=None):
        super().__init__(text)
        self.layer, self.before, self.after, self.merge_key = layer, before, after, merge_key

    def id(self) -> int:
        return self.MERGEABLE if self.merge_key else -1

    def mergeWith(self, other) -> bool:
        if not isinstance(other, _ListEdit) or other.merge_key != self.merge_key:
            return False
        self.after = other.after
        self.setText(other.text())
        return True

    def redo(self) -> None:
        self.layer._set(self.after)

    def undo(self) -> None:
        self.layer._set(self.before)
