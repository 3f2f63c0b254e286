"""The tool bar: the mouse tools, the brush size, undo and redo, Delineate, and how the
model's drawing is shown (toggle and opacity)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QDoubleSpinBox, QToolBar, QWidget
from superqt import QLabeledSlider

from app.ui import icons
from app.ui.tools import BrushTool, EraserTool, PolygonTool, RectangleTool, SelectTool

TOOLS = (
    (SelectTool, icons.select_icon),
    (BrushTool, icons.brush_icon),
    (EraserTool, icons.eraser_icon),
    (PolygonTool, icons.polygon_icon),
    (RectangleTool, icons.rectangle_icon),
)


class ToolBar(QToolBar):
    opacityChanged = Signal(int)  # %

    def __init__(
        self, editor, undo: QAction, redo: QAction, delineate: QAction, overlay: QAction, parent: QWidget
    ):
        super().__init__("Tools", parent)
        self.setObjectName("tools")
        self.editor = editor
        group = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for cls, icon in TOOLS:
            a = QAction(icon(), cls.name, parent, checkable=True)
            a.setShortcut(QKeySequence(cls.shortcut))
            a.setToolTip(cls.tip)
            a.triggered.connect(lambda _=False, n=cls.name: editor.set_tool(n))
            group.addAction(a)
            self.addAction(a)
            self.tool_actions[cls.name] = a
        self.tool_actions[SelectTool.name].setChecked(True)
        editor.toolChanged.connect(self._tool_changed)
        self.brush_size = QDoubleSpinBox()
        self.brush_size.setRange(10, 20_000)
        self.brush_size.setDecimals(0)
        self.brush_size.setSuffix(" µm")
        self.brush_size.setValue(editor.brush_um)
        self.brush_size.setToolTip("Brush and eraser diameter ([ and ] change it)")
        self.brush_size.valueChanged.connect(editor.set_brush_um)
        self.addWidget(self.brush_size)
        self.addSeparator()
        # Icons only here (the actions' texts name the step and change width); the step is the tooltip.
        undo.setIcon(icons.undo_icon())
        redo.setIcon(icons.redo_icon())
        for a in (undo, redo):
            self.addAction(a)
            self.widgetForAction(a).setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self.addSeparator()
        delineate.setIcon(icons.delineate_icon())
        self.addAction(delineate)
        self.widgetForAction(delineate).setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.addSeparator()
        self.addAction(overlay)
        self.opacity = QLabeledSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(45)
        self.opacity.setMaximumWidth(160)
        self.opacity.setToolTip("Opacity of the model's overlay and outlines (%)")
        self.opacity.valueChanged.connect(self.opacityChanged)
        self.addWidget(self.opacity)

    def _tool_changed(self, name: str) -> None:
        if name in self.tool_actions:
            self.tool_actions[name].setChecked(True)

    def show_brush(self, um: float, unit: str) -> None:
        """The size the editor has now (after [ or ]), in the slide's unit, without echoing it."""
        self.brush_size.blockSignals(True)
        self.brush_size.setValue(um)
        self.brush_size.setSuffix(f" {unit}")
        self.brush_size.blockSignals(False)
