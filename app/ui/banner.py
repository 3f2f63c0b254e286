"""Messages the user must read whole, in a bar over the view (not only in the status bar,
which cuts long text off): no pixel size, a device that is not there, what the model is for."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget


class Banner(QFrame):
    """One message with an optional action button and a close button."""

    def __init__(self, key: str, text: str, action: tuple[str, Callable[[], None]] | None, parent: QWidget):
        super().__init__(parent)
        self.key = key
        self.setObjectName("banner")
        self.setStyleSheet("#banner { background: #fff4ce; border: 1px solid #e0c060; border-radius: 3px; }")
        self.label = QLabel(text)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        if action is not None:
            button = QPushButton(action[0])
            button.clicked.connect(action[1])
            layout.addWidget(button)
        close = QPushButton("✕")
        close.setFlat(True)
        close.setToolTip("Dismiss")
        close.setFixedWidth(28)
        close.clicked.connect(self.deleteLater)
        layout.addWidget(close)


class BannerArea(QWidget):
    """Banners stacked above the view; one per key (a newer message with the same key replaces)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(4, 2, 4, 2)
        self.layout_.setSpacing(2)

    def show_message(
        self, key: str, text: str, action: tuple[str, Callable[[], None]] | None = None
    ) -> Banner:
        self.dismiss(key)
        banner = Banner(key, text, action, self)
        self.layout_.addWidget(banner)
        return banner

    def dismiss(self, key: str) -> None:
        for b in self.banners():
            if b.key == key:
                b.setParent(None)
                b.deleteLater()

    def clear(self) -> None:
        for b in self.banners():
            b.setParent(None)
            b.deleteLater()

    def banners(self) -> list[Banner]:
        return [w for w in self.findChildren(Banner) if w.parent() is self]

    def texts(self) -> list[str]:
        return [b.label.text() for b in self.banners()]
