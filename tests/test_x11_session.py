"""One session under a real X server: Xvfb with Qt's xcb platform, not the offscreen one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLE_SVS

from app.core.annotation_store import beside_slide

HERE = Path(__file__).parent


@pytest.fixture
def x_display():
    if shutil.which("Xvfb") is None:
        if os.environ.get("CI"):
            pytest.fail("Xvfb is missing: .ci/run installs it (Debian package xvfb)")
        pytest.skip("Xvfb not installed (apt-get install xvfb)")
    for n in range(90, 120):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1366x768x24", "-nolisten", "tcp"])
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    # A window manager gives the window focus, as on a desktop: shortcuts need an active window.
    wm = (
        subprocess.Popen(["openbox"], env={**os.environ, "DISPLAY": f":{n}"})
        if shutil.which("openbox")
        else None
    )
    time.sleep(0.5)
    yield f":{n}"
    for p in (wm, proc):
        if p is not None:
            p.terminate()
            p.wait(10)


def test_a_session_in_a_real_x_window(x_display, tmp_path):
    slide = tmp_path / SAMPLE_SVS.name
    shutil.copy(SAMPLE_SVS, slide)
    shot = tmp_path / "session.png"
    env = {**os.environ, "DISPLAY": x_display, "QT_QPA_PLATFORM": "xcb"}
    settings = tmp_path / "settings.ini"
    settings.write_text("[inference]\nprecision=int8\n")
    out = subprocess.run(
        [sys.executable, str(HERE / "x11_session.py"), str(slide), str(settings), str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line, f"no report (exit {out.returncode}): {out.stderr[-2000:]}"
    r = json.loads(line[len("REPORT ") :])
    assert "error" not in r, r["error"]
    assert r["platform"] == "xcb"
    assert r["first_run"] > 0
    assert r["second_run"] == r["first_run"]  # a re-run replaces, it does not stack
    assert r["areas_second"] == pytest.approx(r["areas_first"], rel=1e-6)
    assert r["selected"] and r["brushed_bigger"]
    assert r["after_delete"] == r["first_run"] - 1
    assert r["after_undo"] == r["first_run"]
    assert shot.stat().st_size > 10_000
    saved = json.loads(beside_slide(slide).read_text(encoding="utf-8"))
    saved_ids = sorted(
        f["id"] for f in saved["features"] if f["properties"].get("delineo", {}).get("role") != "region"
    )
    assert saved_ids == r["ids"]
