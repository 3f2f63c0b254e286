"""File > Open Recent: the last slides opened, kept in the settings."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtWidgets import QMenu

MAX_RECENT = 10


class RecentFiles(QObject):
    openRequested = Signal(str)

    def __init__(self, settings: QSettings, menu: QMenu, parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings
        self.menu = menu
        self.refresh()

    def files(self) -> list[str]:
        value = self.settings.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def add(self, path: str) -> None:
        path = str(Path(path).resolve())
        recent = [p for p in self.files() if p != path]
        self.settings.setValue("recent", [path, *recent][:MAX_RECENT])
        self.refresh()

    def refresh(self) -> None:
        self.menu.clear()
        recent = self.files()
        for p in recent:
            a = self.menu.addAction(Path(p).name)
            a.setToolTip(p)
            a.setStatusTip(p)
            a.triggered.connect(lambda _=False, p=p: self.openRequested.emit(p))
        self.menu.setEnabled(bool(recent))
