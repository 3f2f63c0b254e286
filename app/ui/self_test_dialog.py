"""Help > Self-test: the checks of `delineo self-test`, run off the GUI thread, each line shown
as it comes, then the verdict and a Copy button for the report a user sends with a question.

The main window wires it with `SelfTestDialog(parent).open()`.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout
from superqt.utils import create_worker

from app.inference.self_test import CheckResult, core_checks, environment, run_checks, verdict


class SelfTestDialog(QDialog):
    finished_checks = Signal(bool)  # all passed

    def __init__(self, parent=None, model: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("Delineo self-test")
        self.resize(820, 380)
        self.results: list[CheckResult] = []
        self._model = model
        self._worker = None
        env = environment()
        self._header = (
            f"Delineo {env['delineo']}{' (frozen)' if env['frozen'] else ''}, Python {env['python']}, "
            f"{env['platform']}"
        )
        self.status = QLabel("Running the checks…")
        self.text = QPlainTextEdit(self._header)
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the report, to paste into a message asking for help")
        self.copy_button.clicked.connect(self.copy)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.text)
        layout.addWidget(buttons)

    def open(self) -> None:
        super().open()
        if self._worker is None:
            self.start()

    def start(self) -> None:
        checks = core_checks(model=self._model)

        def work():
            yield from run_checks(checks)

        self._worker = create_worker(work, _start_thread=False)
        self._worker.yielded.connect(self._add)
        self._worker.finished.connect(self._finish)
        self._worker.start()

    def _add(self, result: CheckResult) -> None:
        self.results.append(result)
        self.text.appendPlainText(result.line())
        self.status.setText(f"Running the checks… {len(self.results)} done")

    def _finish(self) -> None:
        passed = bool(self.results) and all(r.ok for r in self.results)
        line = verdict(self.results)
        self.text.appendPlainText(line)
        self.status.setText(line)
        colour = "#1b7f1b" if passed else "#b00000"
        self.status.setStyleSheet(f"color: {colour}; font-weight: bold")
        self.finished_checks.emit(passed)

    def report(self) -> str:
        return self.text.toPlainText()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.report())

    def done(self, r: int) -> None:
        if self._worker is not None and self._worker.is_running:
            self._worker.quit()  # stops after the check in progress; its thread ends by itself
        super().done(r)
