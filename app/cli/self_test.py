"""`delineo self-test`: one line per check and a verdict; exit 0 only when every check passes.

The checks are app/inference/self_test.py's, plus one that opens the main window on the sample
(offscreen when there is no display), which only the CLI runs: in Help > Self-test the window
is already open.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

WINDOW_TIMEOUT_S = 20.0


def add_to(sub) -> None:
    s = sub.add_parser(
        "self-test",
        help="check this installation: sample slide, model files, every engine, the window",
        description="Check this installation and print one line per check and a verdict "
        "(exit 0 when all pass). Send its output when asking for help.",
    )
    s.add_argument("--model", default=None, help="model name or folder to check (default: the shipped one)")
    s.add_argument("--slide", default=None, help="slide to read (default: the bundled sample)")
    s.add_argument("--no-window", action="store_true", help="skip opening the main window")
    s.add_argument(
        "--only", default=None, metavar="TEXT", help="run only the checks whose name contains TEXT"
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(run=run)


def _window_check(slide: str | None):
    from app.inference.self_test import Check

    def run() -> str:
        headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if headless and not os.environ.get("QT_QPA_PLATFORM"):
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        from PySide6.QtCore import QElapsedTimer, QEventLoop
        from PySide6.QtGui import QImageReader
        from PySide6.QtWidgets import QApplication

        from app.errors import DelineoError
        from app.paths import SAMPLE_SLIDE
        from app.ui.main_window import MainWindow

        app = QApplication.instance() or QApplication([sys.argv[0]])
        app.setOrganizationName("Delineo")  # as run_gui does: the same settings file as the viewer
        app.setApplicationName("Delineo")
        formats = {bytes(f).decode() for f in QImageReader.supportedImageFormats()}
        at_window = _seconds_since_process_start()
        win = MainWindow()
        failed: list[str] = []
        win.openFailed.connect(failed.append)
        win.show()
        win.open_slide(slide or str(SAMPLE_SLIDE))
        clock = QElapsedTimer()
        clock.start()
        try:
            while clock.elapsed() < WINDOW_TIMEOUT_S * 1000 and not failed:
                app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
                if win.view.visible_tiles_loaded():
                    break
                time.sleep(0.01)
            if failed:
                raise DelineoError(f"the window could not open the slide: {failed[0]}")
            if not win.view.visible_tiles_loaded():
                raise DelineoError(f"the window did not draw the slide within {WINDOW_TIMEOUT_S:g} s")
            since_start = _seconds_since_process_start()
        finally:
            win.close()
            _wait_for_threads(app, win)
            win.deleteLater()
            app.processEvents()
        missing = sorted({"jpeg", "png", "tiff"} - formats)
        if missing:
            raise DelineoError(f"Qt image-format plugins missing: {', '.join(missing)}")
        started = (
            f", drawn {since_start:.2f} s after the process started (window made at {at_window:.2f} s)"
            if since_start and at_window
            else ""
        )
        return f"Qt {app.platformName()} platform, sample drawn{started}"

    return Check("main window", run)


def _wait_for_threads(app, win) -> None:
    """Closing stops the window's worker thread, but it may be busy preparing an engine; a
    QThread destroyed while running aborts the process, so wait for it here."""
    worker = getattr(win, "worker", None)
    thread = getattr(worker, "thread", None)
    is_running = getattr(thread, "isRunning", None)
    deadline = time.monotonic() + 60
    while is_running is not None and is_running() and time.monotonic() < deadline:
        app.processEvents()
        thread.wait(100)


def _seconds_since_process_start() -> float | None:
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - a detail only
        return None


def run(args: argparse.Namespace) -> int:
    from app.inference.self_test import core_checks, environment, run_checks, verdict

    only = (args.only or "").lower()
    engines = not only or any(word in only for word in ("openvino", "onnx", "int8", "fp16", "fp32", "gpu"))
    checks = core_checks(model=args.model, slide=args.slide, engines=engines)
    if not args.no_window:
        checks.append(_window_check(args.slide))
    if only:
        names = ", ".join(c.name for c in checks)
        checks = [c for c in checks if only in c.name.lower()]
        if not checks:
            from app.cli.arguments import UsageError

            raise UsageError(f"--only {args.only}: no check's name contains it (checks: {names})")
    env = environment()
    if not args.json:
        print(
            f"Delineo {env['delineo']}{' (frozen)' if env['frozen'] else ''}, Python {env['python']}, "
            f"{env['platform']}",
            flush=True,
        )
    results = []
    for result in run_checks(checks):
        results.append(result)
        if not args.json:
            print(result.line(), flush=True)
    passed = all(r.ok for r in results)
    if args.json:
        out = {
            "environment": env,
            "checks": [r.to_dict() for r in results],
            "passed": passed,
            "verdict": verdict(results),
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(verdict(results))
    return 0 if passed else 1
