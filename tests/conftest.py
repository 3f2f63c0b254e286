"""Shared fixtures: real slides, real tiles, and a large pyramid generated from real tiles."""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from app.core.dataset import load_image, read_manifest
from app.core.pyramid_tiff import level_sizes, periodic_source, write_pyramidal_tiff

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# Tests never touch the real per-user folders (log, autosave fallback, OpenVINO cache, settings).
_HOME = tempfile.mkdtemp(prefix="delineo-test-home-")
for _var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
    os.environ[_var] = os.path.join(_HOME, _var.lower())

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SLIDES = DATA / "slides"
EBHI = DATA / "ebhi"
SAMPLE_SVS = ROOT / "resources" / "samples" / "CMU-1-Small-Region.svs"
DICOM_DIR = SLIDES / "cmu-1-small-region-dicom"
TCGA_SVS = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"

LARGE_SIDE = 20_000
LARGE_MPP = 0.25


def tile_mosaic(n: int = 4) -> np.ndarray:
    """An n x n grid of the bundled EBHI-Seg tiles (real H&E)."""
    pairs = read_manifest(EBHI)
    tiles = [load_image(p) for p in pairs[: n * n]]
    rows = [np.concatenate(tiles[r * n : (r + 1) * n], axis=1) for r in range(n)]
    return np.concatenate(rows, axis=0)


@pytest.fixture(scope="session")
def large_pyramid(tmp_path_factory) -> Path:
    """A 20000 x 20000 JPEG-tiled pyramid (7 levels, 0.25 µm/px) built from real tiles."""
    path = tmp_path_factory.mktemp("pyramid") / "large.tif"
    sizes = level_sizes(LARGE_SIDE, LARGE_SIDE, 2, 256)
    write_pyramidal_tiff(path, periodic_source(tile_mosaic(4), sizes), sizes, mpp=LARGE_MPP)
    return path


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """The sample slide in a temporary folder, so autosaved annotations land there."""
    import shutil

    dst = tmp_path / "slides" / SAMPLE_SVS.name
    dst.parent.mkdir()
    shutil.copy(SAMPLE_SVS, dst)
    return dst


@pytest.fixture
def qsettings(tmp_path):
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture(scope="session")
def corrupt_pyramid(tmp_path_factory) -> tuple[Path, tuple[int, int]]:
    """A 4096² pyramid of real tiles whose level-0 tile (1, 2) has its JPEG data overwritten;
    returns the path and that tile's level-0 position."""
    import tifffile

    path = tmp_path_factory.mktemp("corrupt") / "corrupt.tif"
    sizes = level_sizes(4096, 4096, 2, 256)
    write_pyramidal_tiff(path, periodic_source(tile_mosaic(4), sizes), sizes, mpp=0.5)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        cols = -(-4096 // 512)
        index = 2 * cols + 1
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x5a" * count
    path.write_bytes(bytes(data))
    return path, (512, 1024)


# ----------------------------------------------------------------------------- shared GUI helpers


def make_window(qtbot, qsettings):
    """The real main window, offscreen, shown, with the shipped model at INT8 (no auto
    benchmark) unless `qsettings` already say otherwise."""
    from app.inference.modelcard import DEFAULT_MODEL
    from app.ui.main_window import MainWindow

    if not qsettings.contains("inference/model"):
        qsettings.setValue("inference/model", os.environ.get("DELINEO_TEST_MODEL", DEFAULT_MODEL))
    qsettings.setValue("inference/precision", "int8")
    win = MainWindow(qsettings)
    qtbot.addWidget(win)
    win.resize(1200, 850)
    win.show()
    qtbot.waitExposed(win)
    return win


@pytest.fixture
def window(qtbot, qsettings):
    win = make_window(qtbot, qsettings)
    yield win
    win.close()


def open_and_wait(qtbot, win, path) -> None:
    """Open a slide and wait until it is on screen and its saved annotations are restored."""
    with qtbot.waitSignal(win.slideOpened, timeout=15_000):
        win.open_slide(path)
    qtbot.waitUntil(win.view.visible_tiles_loaded, timeout=15_000)
    qtbot.waitUntil(lambda: win.autosaver.store is not None, timeout=5_000)
    qtbot.wait(50)  # let the queued repaints land


def run_delineo(*args: str, timeout: int = 300, cwd=None):
    """The `delineo` command in a child process (the same interpreter)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


class RunningServer:
    """`delineo serve` in a child process on a free loopback port."""

    def __init__(self, *args: str, token: str | None = None):
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        cmd = [sys.executable, "-m", "app", "serve", "--port", str(self.port), *args]
        if token:
            cmd += ["--token", token]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
                self.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server():
    """The shipped model served with a token, batching up to 8 tiles within 50 ms."""
    s = RunningServer("--max-batch", "8", "--max-wait-ms", "50", "--threads", "1", token="test-token-123")
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _collect_cycles_on_the_main_thread():
    """The window turns automatic collection off and collects on a GUI timer
    (app/ui/garbage_collection.py); tests that run no event loop collect here instead."""
    yield
    if not gc.isenabled():
        gc.collect()
