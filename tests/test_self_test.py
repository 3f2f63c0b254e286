"""`delineo self-test` and Help > Self-test: what a user sends when asking for help."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT, run_delineo

MODEL = ROOT / "resources" / "models" / "ebhi-tumour-resunet"
ENGINE_CHECKS = ["openvino int8", "openvino fp16", "openvino fp32", "onnxruntime int8", "onnxruntime fp32"]


@pytest.fixture
def damaged_model(tmp_path):
    """A copy of the shipped model whose INT8 weights have one byte changed."""
    copy = tmp_path / "model"
    shutil.copytree(MODEL, copy)
    weights = copy / "model-int8.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return copy


@pytest.mark.slow
def test_self_test_passes_on_this_install_with_every_engine_and_the_window():
    r = run_delineo("self-test", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    names = [c["name"] for c in report["checks"]]
    for name in ["sample slide", "model files", *ENGINE_CHECKS, "export font", "main window"]:
        assert name in names
    assert report["passed"] and all(c["ok"] for c in report["checks"])
    by_name = {c["name"]: c for c in report["checks"]}
    assert "CMU-1-Small-Region.svs" in by_name["sample slide"]["detail"]
    assert "offscreen" in by_name["main window"]["detail"]
    assert "cosine" in by_name["openvino int8"]["detail"]


def test_plain_output_is_one_line_per_check_and_a_verdict():
    r = run_delineo("self-test", "--only", "model", "--no-window")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("Delineo ")
    assert lines[1].split()[:3] == ["model", "files", "ok"]
    assert lines[-1] == "PASS: all 1 checks passed"


def test_a_damaged_model_file_fails_and_is_named(damaged_model):
    r = run_delineo("self-test", "--model", str(damaged_model), "--no-window", "--only", "model")
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("model files"))
    assert "FAIL" in line and str(damaged_model / "model-int8.bin") in line
    assert r.stdout.strip().splitlines()[-1].startswith("FAIL: 1 of 1")
    assert "Traceback" not in r.stderr


def test_a_damaged_model_fails_the_engine_checks_too_in_json(damaged_model):
    r = run_delineo("self-test", "--model", str(damaged_model), "--no-window", "--json", "--only", "int8")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert not report["passed"] and report["verdict"].startswith("FAIL")
    assert all(not c["ok"] and "did not verify" in c["detail"] for c in report["checks"])


def test_engines_are_checked_on_a_synthetic_tile_when_the_slide_cannot_be_read(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    r = run_delineo("self-test", "--slide", str(bad), "--no-window", "--json", "--only", "")
    report = json.loads(r.stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    assert r.returncode == 1 and not by_name["sample slide"]["ok"]
    assert "broken.svs" in by_name["sample slide"]["detail"]
    assert by_name["onnxruntime fp32"]["ok"] and "synthetic" in by_name["onnxruntime fp32"]["detail"]


def test_dialog_shows_each_line_the_verdict_and_copies_the_report(qtbot, damaged_model):
    from PySide6.QtGui import QGuiApplication

    from app.ui.self_test_dialog import SelfTestDialog

    dialog = SelfTestDialog(None, model=str(damaged_model))
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finished_checks, timeout=60_000) as blocker:
        dialog.open()
    assert blocker.args == [False]
    text = dialog.report()
    assert "sample slide" in text and "model-int8.bin" in text
    assert text.strip().splitlines()[-1].startswith("FAIL:")
    assert "FAIL" in dialog.status.text()
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == text


def test_only_that_matches_no_check_is_a_usage_error():
    r = run_delineo("self-test", "--only", "no-such-check", "--no-window")
    assert r.returncode == 2 and "no-such-check" in r.stderr and "model files" in r.stderr
