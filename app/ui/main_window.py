"""The main window: slide view, overview, slide-info dock, menus, status bar."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QDragEnterEvent, QDropEvent, QImage, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QWidget,
)

from app import __version__
from app.core.slide import FORMAT_FILTER, Slide
from app.logs import log_file
from app.ui.background import run_in_background
from app.ui.image_convert import array_to_qimage
from app.ui.info_panel import SlideInfoPanel
from app.ui.slide_view import SlideView

log = logging.getLogger(__name__)
MAX_RECENT = 10
BASE_IMAGE_SIDE = 2048


@dataclass
class OpenedSlide:
    slide: Slide
    base: QImage
    associated: dict[str, QImage]


def open_slide_job(path: str) -> OpenedSlide:
    """Everything opening a slide reads from disk, done off the GUI thread."""
    slide = Slide.open(path)
    try:
        base = array_to_qimage(slide.thumbnail(BASE_IMAGE_SIDE))
        associated = {}
        for name in slide.associated_image_names:
            try:
                associated[name] = array_to_qimage(slide.associated_image(name))
            except Exception:
                log.warning("associated image %s of %s unreadable", name, path, exc_info=True)
    except BaseException:
        slide.close()
        raise
    return OpenedSlide(slide, base, associated)


class MainWindow(QMainWindow):
    slideOpened = Signal(str)
    openFailed = Signal(str)

    def __init__(self, settings: QSettings | None = None):
        super().__init__()
        self.settings = settings or QSettings()
        self.setWindowTitle("Delineo")
        self.resize(1280, 820)
        self.setAcceptDrops(True)
        self.slide: Slide | None = None
        self.error_dialog: QMessageBox | None = None
        self._opening: str | None = None

        self.view = SlideView(self)
        self.setCentralWidget(self.view)
        self.info_panel = SlideInfoPanel()
        self.info_dock = QDockWidget("Slide info", self)
        self.info_dock.setObjectName("slide-info")
        self.info_dock.setWidget(self.info_panel)
        self.info_dock.setMinimumWidth(260)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.info_dock)

        self.pos_label = QLabel()
        self.level_label = QLabel()
        self.statusBar().addPermanentWidget(self.pos_label)
        self.statusBar().addPermanentWidget(self.level_label)
        self.view.cursorMoved.connect(self._show_cursor)
        self.view.viewChanged.connect(self._show_level)
        self.view.tileFailed.connect(lambda msg: self.statusBar().showMessage(msg, 8000))
        self._build_menus()
        self.statusBar().showMessage("Open a slide: File > Open (Ctrl+O) or drop a file here")

    # ------------------------------------------------------------------ menus

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open…", self, shortcut=QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.open_dialog)
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self._refresh_recent()
        file_menu.addSeparator()
        close_action = QAction("&Close slide", self, shortcut=QKeySequence.StandardKey.Close)
        close_action.triggered.connect(self.close_slide)
        file_menu.addAction(close_action)
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

        view_menu = self.menuBar().addMenu("&View")
        for text, keys, slot in (
            ("Zoom &in", "+", lambda: self.view.zoom_by(1.25)),
            ("Zoom &out", "-", lambda: self.view.zoom_by(0.8)),
            ("&Fit slide", "0", self.view.fit),
            ("&Native resolution (1:1)", "1", self.view.native),
        ):
            a = QAction(text, self)
            a.setShortcut(QKeySequence(keys))
            a.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            a.triggered.connect(slot)
            view_menu.addAction(a)
        view_menu.addSeparator()
        self.overview_action = QAction("&Overview", self, checkable=True, checked=True)
        self.overview_action.toggled.connect(
            lambda on: self.view.overview.setVisible(on and self.slide is not None)
        )
        view_menu.addAction(self.overview_action)
        view_menu.addAction(self.info_dock.toggleViewAction())

        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About Delineo", self)
        about.triggered.connect(self._about)
        help_menu.addAction(about)

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About Delineo",
            f"<b>Delineo {__version__}</b><br>Whole-slide viewer with on-device tumour "
            f"delineation.<br><br>Log file for support:<br><code>{log_file()}</code>",
        )

    # ------------------------------------------------------------------ opening

    def open_dialog(self) -> None:
        start = self.settings.value("last_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(self, "Open slide", start, FORMAT_FILTER)
        if path:
            self.open_slide(path)

    def open_slide(self, path: str | Path) -> None:
        """Open in the background; the window stays responsive and shows an error dialog on failure."""
        path = str(path)
        self._opening = path
        self.statusBar().showMessage(f"Opening {Path(path).name}…")
        QApplication.setOverrideCursor(Qt.CursorShape.BusyCursor)
        run_in_background(
            lambda: open_slide_job(path),
            lambda opened: self._on_opened(path, opened),
            lambda exc: self._on_open_failed(path, exc),
        )

    def _on_opened(self, path: str, opened: OpenedSlide) -> None:
        QApplication.restoreOverrideCursor()
        if self._opening != path:  # a newer open superseded this one
            opened.slide.close()
            return
        self._close_current()
        self.slide = opened.slide
        self.view.set_slide(opened.slide, opened.base)
        self.view.overview.setVisible(self.overview_action.isChecked())
        self.info_panel.show_slide(opened.slide.info(), opened.associated)
        self.setWindowTitle(f"{opened.slide.name} — Delineo")
        self._add_recent(path)
        self.settings.setValue("last_dir", str(Path(path).parent))
        mpp_note = "" if opened.slide.mpp else " — no pixel size recorded; the scale bar shows pixels"
        self.statusBar().showMessage(f"Opened {opened.slide.name}{mpp_note}", 6000)
        log.info("opened %s", path)
        self.slideOpened.emit(path)

    def _on_open_failed(self, path: str, exc: BaseException) -> None:
        QApplication.restoreOverrideCursor()
        msg = str(exc) if str(exc) else type(exc).__name__
        log.warning("cannot open %s: %s", path, msg)
        self.statusBar().showMessage(f"Could not open {Path(path).name}", 6000)
        self.show_error("Cannot open slide", msg)
        self.openFailed.emit(msg)

    def show_error(self, title: str, message: str) -> None:
        """A window-modal dialog that does not block the event loop."""
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        self.error_dialog = box

    def close_slide(self) -> None:
        self._close_current()
        self.info_panel.clear()
        self.setWindowTitle("Delineo")

    def _close_current(self) -> None:
        self.view.close_slide()
        if self.slide is not None:
            self.slide.close()
        self.slide = None

    # ------------------------------------------------------------------ recent files & drops

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _add_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        recent = [p for p in self.recent_files() if p != path]
        self.settings.setValue("recent", [path, *recent][:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_files()
        for p in recent:
            a = self.recent_menu.addAction(Path(p).name)
            a.setToolTip(p)
            a.setStatusTip(p)
            a.triggered.connect(lambda _=False, p=p: self.open_slide(p))
        self.recent_menu.setEnabled(bool(recent))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_slide(files[0])

    # ------------------------------------------------------------------ status

    def _show_cursor(self, x: float, y: float) -> None:
        if self.slide is None:
            return
        w, h = self.slide.dimensions
        if not (0 <= x < w and 0 <= y < h):
            self.pos_label.setText("")
            return
        text = f"x {x:,.0f}  y {y:,.0f} px"
        if self.slide.mpp:
            text += f"  |  {x * self.slide.mpp[0]:,.1f}, {y * self.slide.mpp[1]:,.1f} µm"
        self.pos_label.setText(text)

    def _show_level(self) -> None:
        if self.slide is not None:
            self.level_label.setText(
                f"level {self.view.level_for_zoom()}  ·  zoom {self.view.zoom:.3g}  ·  "
                f"{self.view.scale_bar.mag_text}"
            )

    def closeEvent(self, event) -> None:
        self._close_current()
        super().closeEvent(event)


def make_window(slide: str | None) -> QWidget:
    win = MainWindow()
    if slide:
        win.open_slide(slide)
    return win
