"""Sensitivity and minimum area for the run under review, and *Accept all in region*.

Changing either re-traces the run's outlines from its stored probability map (see
DelineationController.retrace); the model is not run again.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

RETRACE_DELAY_MS = 60  # coalesces a dragged slider into a few re-traces


class ReviewPanel(QWidget):
    retraceRequested = Signal(float, float)  # threshold, minimum area µm²
    acceptAllRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.run_label = QLabel("No delineation yet")
        self.run_label.setWordWrap(True)
        self.sensitivity = QSlider(Qt.Orientation.Horizontal)
        self.sensitivity.setRange(5, 95)
        self.sensitivity.setValue(50)
        self.sensitivity.setToolTip(
            "Higher finds more tumour (a lower threshold on the model's probability); "
            "re-traces the run without running the model"
        )
        self.threshold_label = QLabel()
        self.min_area = QDoubleSpinBox()
        self.min_area.setRange(0, 1_000_000)
        self.min_area.setDecimals(0)
        self.min_area.setSingleStep(500)
        self.min_area.setSuffix(" µm²")
        self.min_area.setValue(1000)
        self.min_area.setToolTip("Outlines smaller than this are dropped")
        self.accept_button = QPushButton("Accept all in region")
        self.accept_button.setToolTip("Mark every proposed outline inside the painted region as reviewed")
        form = QFormLayout()
        form.addRow("Sensitivity", self.sensitivity)
        form.addRow("", self.threshold_label)
        form.addRow("Minimum area", self.min_area)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.run_label)
        layout.addLayout(form)
        layout.addWidget(self.accept_button)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RETRACE_DELAY_MS)
        self._timer.timeout.connect(self._emit)
        self.sensitivity.valueChanged.connect(self._changed)
        self.min_area.valueChanged.connect(self._changed)
        self.accept_button.clicked.connect(self.acceptAllRequested)
        self._show_threshold()
        self.set_run(None)

    @property
    def threshold(self) -> float:
        return round(1 - self.sensitivity.value() / 100, 2)

    def set_run(self, record) -> None:
        """Show the run the controls act on, without re-tracing it."""
        enabled = record is not None
        for w in (self.sensitivity, self.min_area):
            w.setEnabled(enabled)
            w.blockSignals(True)
        if record is not None:
            self.sensitivity.setValue(round((1 - record.threshold) * 100))
            self.min_area.setValue(record.min_area_um2)
            self.run_label.setText(
                f"{record.describe()}: move these to re-trace its outlines (the model is not run again)"
            )
        else:  # a new slide: the model card's threshold and the default minimum area
            self.sensitivity.setValue(50)
            self.min_area.setValue(1000)
            self.run_label.setText("No delineation to re-trace yet")
        for w in (self.sensitivity, self.min_area):
            w.blockSignals(False)
        self._show_threshold()

    def _show_threshold(self) -> None:
        self.threshold_label.setText(f"threshold {self.threshold:.2f}")

    def _changed(self) -> None:
        self._show_threshold()
        self._timer.start()

    def _emit(self) -> None:
        self.retraceRequested.emit(self.threshold, float(self.min_area.value()))
