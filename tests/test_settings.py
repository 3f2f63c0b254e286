"""Delineation settings: persisted choices, and "Auto" precision measured once and cached."""

from __future__ import annotations

import json

import pytest

from app.inference.autoselect import choose_precision, eligible
from app.inference.modelcard import DEFAULT_MODEL, ModelCard
from app.ui.settings_dialog import SettingsDialog, load_settings


def test_dialog_persists_choices_and_knows_onnxruntime_limits(qtbot, qsettings):
    dlg = SettingsDialog(qsettings)
    qtbot.addWidget(dlg)
    assert dlg.model.currentData() == DEFAULT_MODEL
    dlg.precision.setCurrentIndex(dlg.precision.findData("fp16"))
    dlg.device.setCurrentIndex(dlg.device.findData("AUTO"))
    dlg.engine.setCurrentIndex(dlg.engine.findData("onnxruntime"))
    # ONNX Runtime runs on the CPU here, in FP32 or INT8.
    assert dlg.device.currentData() == "CPU"
    assert dlg.precision.currentData() == "int8"
    assert not dlg.precision.model().item(dlg.precision.findData("fp16")).isEnabled()
    dlg.accept()
    s = load_settings(qsettings)
    assert (s.engine, s.device, s.precision) == ("onnxruntime", "CPU", "int8")


def test_auto_precision_is_measured_once_and_cached(tmp_path, monkeypatch):
    card = ModelCard.load()
    cache = tmp_path / "auto.json"
    best, timings = choose_precision(card, "openvino", "CPU", cache=cache, repeats=2)
    assert set(timings) == set(eligible(card, "openvino")) and best == min(timings, key=timings.get)
    assert all(ms > 0 for ms in timings.values())
    entry = next(iter(json.loads(cache.read_text(encoding="utf-8")).values()))
    assert entry["precision"] == best
    # The second time nothing is measured: no engine is even created.
    monkeypatch.setattr(
        "app.inference.autoselect.create_engine", lambda *a, **k: pytest.fail("measured again")
    )
    assert choose_precision(card, "openvino", "CPU", cache=cache) == (best, timings)
