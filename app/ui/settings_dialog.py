"""Inference settings: model, engine, device, precision. Persisted with QSettings."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from app.inference.modelcard import DEFAULT_MODEL
from app.paths import MODELS_DIR
from app.ui.delineation_worker import EngineSettings

ENGINES = [("OpenVINO", "openvino"), ("ONNX Runtime", "onnxruntime")]
DEVICES = [("Auto (iGPU when present)", "AUTO"), ("CPU", "CPU"), ("Integrated GPU", "GPU")]
PRECISIONS = [("Auto (fastest measured)", "auto"), ("INT8", "int8"), ("FP16", "fp16"), ("FP32", "fp32")]


def load_settings(settings: QSettings) -> EngineSettings:
    return EngineSettings(
        model=str(settings.value("inference/model", DEFAULT_MODEL)),
        engine=str(settings.value("inference/engine", "openvino")),
        device=str(settings.value("inference/device", "CPU")),
        precision=str(settings.value("inference/precision", "auto")),
    )


def save_settings(settings: QSettings, s: EngineSettings) -> None:
    settings.setValue("inference/model", s.model)
    settings.setValue("inference/engine", s.engine)
    settings.setValue("inference/device", s.device)
    settings.setValue("inference/precision", s.precision)


def shipped_models() -> list[str]:
    return sorted(d.name for d in MODELS_DIR.glob("*") if (d / "card.json").is_file())


class SettingsDialog(QDialog):
    def __init__(self, settings: QSettings, auto_note: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Delineation settings")
        self.settings = settings
        current = load_settings(settings)
        form = QFormLayout(self)

        self.model = QComboBox()
        self.model.setEditable(False)
        for name in shipped_models():
            self.model.addItem(name, name)
        if self.model.findData(current.model) < 0:
            self.model.addItem(current.model, current.model)
        self.model.setCurrentIndex(self.model.findData(current.model))
        browse = QPushButton("Other…")
        browse.setToolTip("A folder with your own model and its card.json")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.model, 1)
        row.addWidget(browse)
        form.addRow("Model", row)

        self.engine = self._combo(ENGINES, current.engine)
        self.device = self._combo(DEVICES, current.device)
        self.precision = self._combo(PRECISIONS, current.precision)
        self.engine.currentIndexChanged.connect(self._engine_changed)
        form.addRow("Engine", self.engine)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        self.note = QLabel(auto_note)
        self.note.setWordWrap(True)
        form.addRow(self.note)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self._engine_changed()

    @staticmethod
    def _combo(options, current: str) -> QComboBox:
        c = QComboBox()
        for label, value in options:
            c.addItem(label, value)
        c.setCurrentIndex(max(0, c.findData(current)))
        return c

    def _engine_changed(self) -> None:
        ort = self.engine.currentData() == "onnxruntime"
        # ONNX Runtime runs on the CPU here, in FP32 or INT8.
        for i in range(self.device.count()):
            self.device.model().item(i).setEnabled(not ort or self.device.itemData(i) == "CPU")
        fp16 = self.precision.findData("fp16")
        self.precision.model().item(fp16).setEnabled(not ort)
        if ort:
            self.device.setCurrentIndex(self.device.findData("CPU"))
            if self.precision.currentData() == "fp16":
                self.precision.setCurrentIndex(self.precision.findData("int8"))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with card.json)")
        if folder:
            self.model.addItem(folder, folder)
            self.model.setCurrentIndex(self.model.count() - 1)

    def value(self) -> EngineSettings:
        return EngineSettings(
            model=self.model.currentData(),
            engine=self.engine.currentData(),
            device=self.device.currentData(),
            precision=self.precision.currentData(),
        )

    def accept(self) -> None:
        save_settings(self.settings, self.value())
        super().accept()
