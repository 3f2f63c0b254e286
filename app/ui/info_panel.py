"""Slide information: what the scanner recorded, and the label / macro / thumbnail images."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QFormLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

ASSOCIATED_MAX_SIDE = 240


class SlideInfoPanel(QScrollArea):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.fields: dict[str, QLabel] = {}
        self.clear()

    def _new_body(self) -> None:
        """A fresh body for each slide: its old labels and layouts go with the old one (reusing
        the layout left the previous slide's form behind, drawn under the new one)."""
        body = QWidget()
        self._layout = QVBoxLayout(body)
        self._layout.setAlignment(Qt.AlignmentFlag.AlignTop)
        old = self.takeWidget()
        self.setWidget(body)
        if old is not None:
            old.deleteLater()
        self.fields = {}

    def clear(self) -> None:
        self._new_body()
        self._layout.addWidget(QLabel("No slide open"))

    def labels(self) -> list[str]:
        """Every text the panel shows (for tests: one slide's fields only)."""
        return [w.text() for w in self.widget().findChildren(QLabel)]

    def show_slide(self, info: dict, associated: dict[str, QImage]) -> None:
        self._new_body()
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        mpp = info["mpp"]
        levels = "\n".join(
            f"{i}: {w} × {h}  (÷{ds:.4g})"
            for i, ((w, h), ds) in enumerate(
                zip(info["level_dimensions"], info["level_downsamples"], strict=True)
            )
        )
        rows = {
            "File": info["path"].rsplit("/", 1)[-1],
            "Vendor": info["vendor"] or "unknown",
            "Dimensions": "{} × {} px".format(*info["dimensions"]),
            "Pixel size": f"{mpp[0]:.4f} × {mpp[1]:.4f} µm/px"
            if mpp
            else "not recorded — scale bar shows pixels",
            "Objective": f"{info['objective_power']:g}x" if info["objective_power"] else "not recorded",
            "Levels": levels,
        }
        if info["bounds"]:
            rows["Bounds"] = "x {} y {} w {} h {}".format(*info["bounds"])
        for name, value in rows.items():
            label = QLabel(value)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)
            label.setToolTip(info["path"] if name == "File" else "")
            self.fields[name] = label
            form.addRow(f"<b>{name}</b>", label)
        self._layout.addLayout(form)
        if associated:
            for name, img in associated.items():
                caption = QLabel(f"<b>{name.capitalize()}</b>")
                pic = QLabel()
                pic.setPixmap(
                    QPixmap.fromImage(img).scaled(
                        ASSOCIATED_MAX_SIDE,
                        ASSOCIATED_MAX_SIDE,
                        Qt.AspectRatioMode.KeepAspectRatio,
                        Qt.TransformationMode.SmoothTransformation,
                    )
                )
                pic.setObjectName(f"associated-{name}")
                self._layout.addWidget(caption)
                self._layout.addWidget(pic)
        else:
            self._layout.addWidget(QLabel("No associated images (label, macro, thumbnail)"))
