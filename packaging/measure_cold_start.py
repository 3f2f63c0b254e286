"""Cold start of the viewer, measured from outside: launch `delineo` (no arguments: the bundled
sample) on a private X server, read the screen through Xlib every 20 ms, and stop the clock when
slide pixels (H&E pink or purple) cover part of the screen (wherever the window opened: it is
centred on the screen it starts on).

    xvfb-run -a -s "-screen 0 1600x1000x24" python3 packaging/measure_cold_start.py [APP] [RUNS]

APP defaults to dist/Delineo/delineo, RUNS to 5; prints each run and the median. Runs share one
fresh HOME: the first start in it also times each precision for Auto (once per machine), later
ones reuse that, as a user's later starts do. Standard library only (ctypes on libX11).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = 16  # px between sampled pixels, over the whole screen
PINK_SHARE = 0.04  # of the sampled pixels; the sample's tissue covers about 15 % of a 1600x1000
# screen, the overview beside it under 1 %, and nothing before it is drawn is this pink


def _xlib():
    lib = ctypes.CDLL("libX11.so.6")
    lib.XOpenDisplay.restype = ctypes.c_void_p
    lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    lib.XDefaultRootWindow.restype = ctypes.c_ulong
    lib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    lib.XGetImage.restype = ctypes.c_void_p
    lib.XGetImage.argtypes = (
        [ctypes.c_void_p, ctypes.c_ulong]
        + [ctypes.c_int] * 2
        + [ctypes.c_uint] * 2
        + [
            ctypes.c_ulong,
            ctypes.c_int,
        ]
    )
    lib.XGetPixel.restype = ctypes.c_ulong
    lib.XGetPixel.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.XDestroyImage.argtypes = [ctypes.c_void_p]
    for name in ("XDisplayWidth", "XDisplayHeight"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def slide_visible(lib, display, root) -> bool:
    w, h = lib.XDisplayWidth(display, 0), lib.XDisplayHeight(display, 0)
    image = lib.XGetImage(display, root, 0, 0, w, h, 0xFFFFFFFF, 2)  # ZPixmap
    if not image:
        return False
    try:
        pink = total = 0
        for y in range(0, h, STEP):
            for x in range(0, w, STEP):
                p = lib.XGetPixel(image, x, y)
                r, g = (p >> 16) & 0xFF, (p >> 8) & 0xFF
                pink += r - g > 40
                total += 1
        return pink >= PINK_SHARE * total
    finally:
        lib.XDestroyImage(image)


def measure(app: Path, home: str, lib, display, root, timeout: float = 60) -> float:
    env = {"HOME": home, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "DISPLAY": os.environ["DISPLAY"]}
    if "XAUTHORITY" in os.environ:
        env["XAUTHORITY"] = os.environ["XAUTHORITY"]
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(app)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout:
            if slide_visible(lib, display, root):
                return time.perf_counter() - t0
            if proc.poll() is not None:
                raise SystemExit(f"measure_cold_start: {app} exited with {proc.returncode}")
            time.sleep(0.02)
        raise SystemExit(f"measure_cold_start: no slide on screen within {timeout:g} s")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    app = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/Delineo/delineo").resolve()
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    lib = _xlib()
    display = lib.XOpenDisplay(None)
    if not display:
        raise SystemExit("measure_cold_start: no X display; run it under xvfb-run")
    root = lib.XDefaultRootWindow(display)
    times = []
    with tempfile.TemporaryDirectory() as home:
        for i in range(runs):
            times.append(measure(app, home, lib, display, root))
            print(f"run {i + 1}: {times[-1]:.2f} s", flush=True)
            time.sleep(1)
    load = os.getloadavg()[0]
    print(f"median {statistics.median(times):.2f} s over {runs} runs (load average {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
