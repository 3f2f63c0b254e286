"""The remote endpoint in the window: Settings (URL, token, Test connection) and a run whose
endpoint dies, finished on this computer at the user's word."""

from __future__ import annotations

from conftest import RunningServer, make_window, open_and_wait
from PySide6.QtCore import Qt
from test_delineation_gui import stroke

from app.ui.settings_dialog import SettingsDialog, load_settings


def test_settings_test_connection_shows_metadata_and_round_trip(qtbot, qsettings, server):
    dlg = SettingsDialog(qsettings)
    qtbot.addWidget(dlg)
    dlg.show()
    assert not dlg.url.isEnabled()
    dlg.engine.setCurrentIndex(dlg.engine.findData("remote"))
    assert dlg.url.isEnabled() and dlg.token.isEnabled() and not dlg.precision.isEnabled()
    dlg.url.setText(server.url)
    dlg.token.setText("wrong")
    qtbot.mouseClick(dlg.test_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.test_result.text().startswith("✗"), timeout=20_000)
    assert "token" in dlg.test_result.text()
    dlg.token.setText(server.token)
    qtbot.mouseClick(dlg.test_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.test_result.text().startswith("✓"), timeout=20_000)
    text = dlg.test_result.text()
    assert "ebhi-tumour-resunet" in text and "UINT8" in text and "round trip" in text and " ms" in text
    # No OS keyring on a CI machine: the token goes to the settings file and the dialog says so.
    assert dlg.token_warning.isVisible() and "plain text" in dlg.token_warning.text()
    dlg.accept()
    saved = load_settings(qsettings)
    assert (saved.engine, saved.url, saved.token) == ("remote", server.url, server.token)


def test_endpoint_dying_mid_run_offers_to_finish_locally(qtbot, qsettings, large_pyramid):
    own = RunningServer("--threads", "1")
    try:
        qsettings.setValue("inference/engine", "remote")
        qsettings.setValue("remote/url", own.url)
        win = make_window(qtbot, qsettings)
        open_and_wait(qtbot, win, large_pyramid)
        before = len(win.annotations)  # other tests' outlines on this shared slide are restored
        qtbot.keyClick(win.view, Qt.Key.Key_R)
        stroke(qtbot, win, [(300, 250), (500, 400), (700, 550)])
        win.delineate()
        qtbot.waitUntil(lambda: win.overlay is not None and len(win.overlay.tiles) >= 3, timeout=60_000)
        own.kill()
        qtbot.waitUntil(lambda: win.controller.remote_failure_box is not None, timeout=60_000)
        box = win.controller.remote_failure_box
        assert box.isVisible() and "stopped answering" in box.text() and "on this computer" in box.text()
        kept = len(win.overlay.tiles)
        assert kept >= 3 and len(win.annotations) == before  # nothing switched silently, nothing lost
        with qtbot.waitSignal(win.delineationFinished, timeout=120_000) as sig:
            qtbot.mouseClick(win.controller.finish_locally_button, Qt.MouseButton.LeftButton)
        result = sig.args[0]
        assert result.finished and result.engine_error is None
        assert result.tiles_done + result.tiles_skipped == result.tiles_total
        assert "openvino" in result.source and any("finished" in n for n in result.notes)
        assert len(win.overlay.tiles) == result.tiles_done >= kept
        assert len(win.annotations) > before and win.delineate_action.isEnabled()
        win.close()
    finally:
        own.stop()
