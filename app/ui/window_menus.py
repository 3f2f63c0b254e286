"""The main window's menu bar: File, Edit, View, Help. The actions are the window's (it keeps
them as attributes other parts and the tests use); this builds and connects them."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence

from app.logs import log_file
from app.ui.help_dialogs import show_about
from app.ui.recent_files import RecentFiles

EXPORTS = (
    ("geojson", "QuPath &GeoJSON…", "GeoJSON (*.geojson)"),
    ("asap-xml", "&ASAP XML…", "ASAP XML (*.xml)"),
    ("png", "&Picture of the view (PNG)…", "PNG (*.png)"),
    ("tiff-mask", "&TIFF mask…", "TIFF (*.tif)"),
    ("csv", "&CSV measurements…", "CSV (*.csv)"),
)


def build_menus(w) -> None:
    """Every menu of `w` (a MainWindow whose parts are built), each action also a window
    shortcut."""
    m = w.menuBar().addMenu("&File")
    w.open_action = w._action("&Open…", w.lifecycle.open_dialog, QKeySequence.StandardKey.Open.name, m)
    w.open_action.setShortcut(QKeySequence.StandardKey.Open)
    w.recent_menu = m.addMenu("Open &Recent")
    w.recent = RecentFiles(w.settings, w.recent_menu, w)
    w.recent.openRequested.connect(w.lifecycle.open_slide)
    m.addSeparator()
    # What acts on the open slide: greyed while none is open (see MainWindow.update_actions).
    w.slide_actions = [w._action("&Import annotations…", w.annotation_files.import_dialog, "Ctrl+I", m)]
    export_menu = m.addMenu("&Export")
    for fmt, text, _ in EXPORTS:
        w.slide_actions.append(
            w._action(text, lambda _=False, f=fmt: w.annotation_files.export_dialog(f), None, export_menu)
        )
    m.addSeparator()
    w.slide_actions.append(w._action("Set &pixel size…", w.lifecycle.pixel_size_dialog, None, m))
    m.addSeparator()
    close = w._action("&Close slide", w.lifecycle.close_slide, None, m)
    close.setShortcut(QKeySequence.StandardKey.Close)
    w.slide_actions.append(close)
    quit_ = w._action("&Quit", w.close, None, m)
    quit_.setShortcut(QKeySequence.StandardKey.Quit)

    m = w.menuBar().addMenu("&Edit")
    stack = w.editor.model.undo_stack
    w.undo_action = stack.createUndoAction(w, "&Undo")
    w.undo_action.setShortcut(QKeySequence("Ctrl+Z"))
    w.redo_action = stack.createRedoAction(w, "&Redo")
    w.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
    for a in (w.undo_action, w.redo_action):
        m.addAction(a)
        w.addAction(a)
    m.addSeparator()
    cmd = w.commands
    for a in (
        cmd.select_all_action,
        cmd.delete_action,
        cmd.merge_action,
        cmd.split_parts_action,
        cmd.split_line_action,
        cmd.lock_action,
        cmd.accept_action,
    ):
        m.addAction(a)
    w.class_menu = m.addMenu("Set c&lass")
    w.class_menu.aboutToShow.connect(lambda: _fill_class_menu(w))
    m.addSeparator()
    w._action("&Clear region", w.editor.model.clear, None, m)
    m.addSeparator()
    w.whole_slide_action = w._action(
        "Delineate &whole slide", w.controller.start_whole_slide, "Ctrl+Shift+D", m
    )
    w.whole_slide_action.setToolTip("Every piece of tissue on the slide, what is on screen first")
    w._action("Delineation &settings…", w.open_settings, "Ctrl+,", m)

    m = w.menuBar().addMenu("&View")
    for text, keys, slot in (
        ("Zoom &in", "+", lambda: w.view.zoom_by(1.25)),
        ("Zoom &out", "-", lambda: w.view.zoom_by(0.8)),
        ("&Fit slide", "0", w.view.fit),
        (
            "&Native resolution (1:1)",
            "1",
            lambda: w.commands.set_class_number(1) or w.view.native(),
        ),
    ):
        a = w._action(text, slot, keys, m)
        a.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
    m.addSeparator()
    w.overlay_action = w._action(
        "Show &model outlines", w._set_overlay_visible, "H", m, checkable=True, checked=True
    )
    w.overlay_action.setToolTip("Show or hide what the model drew (H)")
    w.region_action = w._action(
        "Show painted &region", w._set_region_visible, "Shift+H", m, checkable=True, checked=True
    )
    w.overview_action = w._action(
        "&Overview",
        lambda on: w.view.overview.setVisible(on and w.slide is not None),
        None,
        m,
        checkable=True,
        checked=True,
    )
    m.addSeparator()
    for dock in (w.info_dock, w.annotations_dock, w.classes_dock):
        m.addAction(dock.toggleViewAction())

    m = w.menuBar().addMenu("&Help")
    w._action("&Keyboard shortcuts", w.show_shortcuts, "F1", m)
    w._action("&Self-test…", w.show_self_test, None, m)
    w._action("&About Delineo", lambda: show_about(w, str(log_file())), None, m)


def _fill_class_menu(w) -> None:
    from app.ui.annotation_commands import swatch

    w.class_menu.clear()
    for i, cls in enumerate(w.classes.classes, start=1):
        a = w.class_menu.addAction(swatch(cls.color), f"{cls.name}\t{i}" if i <= 9 else cls.name)
        a.triggered.connect(lambda _=False, c=cls: w.commands.set_class(c))
