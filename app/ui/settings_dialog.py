"""Inference settings: model, engine, device, precision, the remote endpoint. Persisted with
QSettings; the endpoint's token in the OS keyring where there is one."""

from __future__ import annotations

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)
from superqt.utils import create_worker

from app.inference.engine_registry import DEFAULT_ENGINE, ENGINES, all_devices, all_precisions
from app.inference.model_install import list_models
from app.inference.modelcard import DEFAULT_MODEL
from app.ui.delineation_worker import EngineSettings
from app.ui.endpoint_token import PLAIN_TEXT_WARNING, keyring_available, load_token, save_token

# How devices and precisions read here; an engine's device or precision not named here reads as is.
DEVICE_NAMES = {"AUTO": "Auto (iGPU when present)", "CPU": "CPU", "GPU": "Integrated GPU"}
PRECISION_NAMES = {"auto": "Auto (fastest measured)", "int8": "INT8", "fp16": "FP16", "fp32": "FP32"}


def engine_options() -> list[tuple[str, str]]:
    """(display name, key) of every engine in the registry, in its order."""
    return [(s.display_name, s.key) for s in ENGINES.values()]


def device_options() -> list[tuple[str, str]]:
    keys = dict.fromkeys([*DEVICE_NAMES, *all_devices()])
    return [(DEVICE_NAMES.get(d, d), d) for d in keys]


def precision_options() -> list[tuple[str, str]]:
    keys = dict.fromkeys([*PRECISION_NAMES, *all_precisions()])
    return [(PRECISION_NAMES.get(p, p), p) for p in keys]


def load_settings(settings: QSettings) -> EngineSettings:
    url = str(settings.value("remote/url", "") or "")
    return EngineSettings(
        model=str(settings.value("inference/model", DEFAULT_MODEL)),
        engine=str(settings.value("inference/engine", DEFAULT_ENGINE)),
        device=str(settings.value("inference/device", "CPU")),
        precision=str(settings.value("inference/precision", "auto")),
        url=url,
        token=load_token(settings, url),
    )


def adaptive_enabled(settings: QSettings) -> bool:
    """Whether a whole-slide run starts with its model's coarse pass (on unless turned off)."""
    return str(settings.value("inference/adaptive", "true")).lower() not in ("false", "0")


def save_settings(settings: QSettings, s: EngineSettings) -> str | None:
    """Persist; returns a warning when the token had to go to the settings file."""
    settings.setValue("inference/model", s.model)
    settings.setValue("inference/engine", s.engine)
    settings.setValue("inference/device", s.device)
    settings.setValue("inference/precision", s.precision)
    settings.setValue("remote/url", s.url)
    return save_token(settings, s.url, s.token)


MAX_LISTED_CLASSES = 5  # past this a model's entry says "+N more" (the tooltip lists them all)


def model_choices() -> list[tuple[str, str, str, str]]:
    """(label, model name, details, tooltip) of every model that runs by name, the user's
    installed ones first: "name — Class A, Class B", so a model is chosen by what it outlines."""
    choices = []
    for m in list_models():
        if "error" in m:
            continue
        outlined = [c for c in m["classes"] if c != m.get("background")]
        shown = ", ".join(outlined[:MAX_LISTED_CLASSES])
        if len(outlined) > MAX_LISTED_CLASSES:
            shown += f" +{len(outlined) - MAX_LISTED_CLASSES} more"
        where = "shipped with Delineo" if m["source"] == "shipped" else "installed with delineo model add"
        background = f" · background: {m['background']}" if m.get("background") else ""
        details = f"{m['version']} · {m['mpp']:g} µm/px{background} · {where}"
        tip = f"{m['name']}: {', '.join(m['classes'])}\n{details}\n{m['folder']}"
        choices.append((f"{m['name']} — {shown}", m["name"], details, tip))
    return choices


class SettingsDialog(QDialog):
    def __init__(self, settings: QSettings, auto_note: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Delineation settings")
        self.settings = settings
        current = load_settings(settings)
        form = QFormLayout(self)

        self.model = QComboBox()
        self.model.setEditable(False)
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self._details: dict[str, str] = {}
        for label, name, details, tip in model_choices():
            self.model.addItem(label, name)
            self.model.setItemData(self.model.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
            self._details[name] = details
        if self.model.findData(current.model) < 0:
            self.model.addItem(current.model, current.model)
        self.model.setCurrentIndex(self.model.findData(current.model))
        self.model_details = QLabel()
        self.model_details.setStyleSheet("color: #5f5f5f")
        self.model.currentIndexChanged.connect(self._model_changed)
        self._model_changed()
        browse = QPushButton("Other…")
        browse.setToolTip(
            "A folder with a model and its card.json (to install your own ONNX or OpenVINO model: "
            "delineo model add, see docs/MODEL-CARD.md)"
        )
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.model, 1)
        row.addWidget(browse)
        form.addRow("Model", row)
        form.addRow("", self.model_details)

        self.engine = self._combo(engine_options(), current.engine)
        self.device = self._combo(device_options(), current.device)
        self.precision = self._combo(precision_options(), current.precision)
        self.engine.currentIndexChanged.connect(self._engine_changed)
        form.addRow("Engine", self.engine)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        self.adaptive = QCheckBox("Whole slide: coarse pass first, full resolution where it finds tumour")
        self.adaptive.setToolTip(
            "Faster on whole slides: the model's coarse companion looks at the slide at 4 µm/px "
            "first, and only tiles where it finds tumour or is unsure run at full resolution. "
            "Off: every tissue tile runs at full resolution (as delineo --exhaustive)."
        )
        self.adaptive.setChecked(adaptive_enabled(settings))
        form.addRow("", self.adaptive)

        self.url = QLineEdit(current.url)
        self.url.setPlaceholderText("http://npu-host:8080")
        self.url.setToolTip(
            "An Open Inference Protocol (KServe v2) server: delineo serve, Triton, OpenVINO Model Server"
        )
        self.token = QLineEdit(current.token)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("bearer token, if the server needs one")
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.test_result = QLabel()
        self.test_result.setWordWrap(True)
        self.test_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.token_warning = QLabel("" if keyring_available() else f"⚠ {PLAIN_TEXT_WARNING}")
        self.token_warning.setWordWrap(True)
        self.token_warning.setStyleSheet("color: #a15c00")
        form.addRow("Endpoint URL", self.url)
        form.addRow("Token", self.token)
        form.addRow("", self.test_button)
        form.addRow("", self.test_result)
        form.addRow(self.token_warning)
        self.setMinimumWidth(480)
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
        """Offer what the chosen engine's registry entry offers: a remote engine's server decides
        device and precision; a local engine runs on its devices in its precisions (or Auto)."""
        spec = ENGINES[self.engine.currentData()]
        remote = not spec.local
        for w in (self.url, self.token, self.test_button):
            w.setEnabled(remote)
        self.token_warning.setVisible(remote and bool(self.token_warning.text()))
        self.device.setEnabled(bool(spec.devices))
        self.precision.setEnabled(bool(spec.precisions))
        _offer(self.device, spec.devices, fallback=spec.devices[:1])
        _offer(self.precision, ("auto", *spec.precisions), fallback=("int8", "auto"))

    def _model_changed(self) -> None:
        name = self.model.currentData()
        self.model_details.setText(self._details.get(name, "a model folder with card.json"))

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
            url=self.url.text().strip(),
            token=self.token.text().strip(),
        )

    def test_connection(self) -> None:
        """Model metadata and round trip, fetched off the GUI thread."""
        from app.inference.remote import RemoteEngine

        url, token = self.url.text().strip(), self.token.text().strip() or None
        self.test_button.setEnabled(False)
        self.test_result.setText(f"Connecting to {url}…")

        def probe():
            engine = RemoteEngine(url, token, timeout_s=10, retries=0)
            try:
                return engine.info, engine.describe(engine.info.model).round_trip_ms
            finally:
                engine.close()

        create_worker(
            probe, _start_thread=True, _connect={"returned": self._tested, "errored": self._test_failed}
        )

    def _tested(self, result) -> None:
        info, rtt = result
        inp = info.input
        self.test_result.setText(
            f"✓ {info.model} {info.version} on {info.platform or 'a v2 server'}\n"
            f"input {inp['name']}: {inp['datatype']} {inp.get('shape')} · round trip {rtt:.0f} ms"
        )
        self.test_button.setEnabled(True)

    def _test_failed(self, error: BaseException) -> None:
        self.test_result.setText(f"✗ {error}")
        self.test_button.setEnabled(True)

    def accept(self) -> None:
        value = self.value()
        if value.remote and not value.url:
            self.test_result.setText("✗ Give the endpoint URL, or choose a local engine")
            return
        save_settings(self.settings, value)
        self.settings.setValue("inference/adaptive", self.adaptive.isChecked())
        super().accept()


def _offer(combo: QComboBox, allowed: tuple[str, ...], fallback: tuple[str, ...]) -> None:
    """Enable only the allowed entries; move off a disallowed choice to the first allowed fallback."""
    if not allowed or allowed == ("auto",):
        return  # the whole combo is disabled: keep the choice for when a local engine comes back
    for i in range(combo.count()):
        combo.model().item(i).setEnabled(combo.itemData(i) in allowed)
    if combo.currentData() not in allowed:
        choice = next((v for v in fallback if v in allowed), allowed[0])
        combo.setCurrentIndex(combo.findData(choice))
