"""Exit 2 and nothing lost where the CLI promises it (issue 13, finding 10, the CLI parts)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import DICOM_DIR, SAMPLE_SVS, run_delineo
from PIL import Image

SQUARE = {
    "type": "Feature",
    "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}},
    "geometry": {
        "type": "Polygon",
        "coordinates": [[[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]],
    },
}


DELINEO = (sys.executable, "-m", "app")


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress lines a run prints every 10%."""
    return [ln for ln in stderr.strip().splitlines() if not ln.endswith("%)")]


@pytest.mark.parametrize("out", ["/proc/delineo-test.geojson", "{tmp}/missing/x.geojson", "{tmp}"])
def test_delineate_to_an_unusable_output_fails_before_the_run(tmp_path, out):
    out = out.format(tmp=tmp_path)
    r = run_delineo("delineate", str(SAMPLE_SVS), "--region", "0,0,2220,2967", "--out", out)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "tiles" not in r.stderr  # nothing was run
    assert "--out" in r.stderr and "internal error" not in r.stderr


def test_a_result_that_cannot_be_written_at_the_end_is_kept_in_a_recovery_file(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    proc = subprocess.Popen(
        [
            *DELINEO,
            "delineate",
            str(SAMPLE_SVS),
            "--region",
            "0,0,2220,2967",
            "--out",
            str(folder / "t.geojson"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stderr.readline()
        assert "tiles (" in first, first
        shutil.rmtree(folder)  # the share went away during the run
        rest = proc.stderr.read()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == 2
    message = error_lines(rest)[-1]
    assert "could not be written" in message and "kept in" in message
    recovery = Path(message.split("kept in ")[-1].strip())
    assert recovery.is_file() and str(recovery).startswith(os.environ["XDG_DATA_HOME"])
    assert json.loads(recovery.read_text(encoding="utf-8"))["features"], "the tumour outline is in it"


def test_a_tiff_mask_too_large_is_refused_with_its_size_and_a_sane_mpp(tmp_path):
    ann = tmp_path / "a.geojson"
    ann.write_text(json.dumps(SQUARE))
    r = run_delineo(
        "export", str(SAMPLE_SVS), "--format", "tiff-mask", "--mpp", "0.001", "--annotations", str(ann),
        "--out", str(tmp_path / "m.tif"),
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "1,107,780 x 1,480,534 px" in r.stderr and "--mpp 0.499" in r.stderr
    assert list(tmp_path.iterdir()) == [ann]


def test_sigterm_during_an_export_leaves_no_partial_file(tmp_path):
    ann = tmp_path / "a.geojson"
    ann.write_text(json.dumps(SQUARE))
    out = tmp_path / "m.tif"
    proc = subprocess.Popen(
        [
            *DELINEO,
            "export",
            str(SAMPLE_SVS),
            "--format",
            "tiff-mask",
            "--mpp",
            "0.03",  # 1.8 Gpx: seconds of writing, so the signal lands mid-write even on a busy machine
            "--annotations",
            str(ann),
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".*partial")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        partials = [p.name for p in tmp_path.glob(".*partial")]
        assert partials and not any(p.endswith(".partial.partial") for p in partials), partials
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson"]


def test_a_large_plain_image_opens_without_pillows_warning_and_a_larger_one_is_refused(tmp_path):
    png = tmp_path / "big.png"
    Image.fromarray(np.full((12000, 12000), 230, np.uint8)).save(png, compress_level=1)
    r = run_delineo("info", str(png))
    assert r.returncode == 0 and r.stderr == "" and "12000 x 12000" in r.stdout
    huge = tmp_path / "huge.png"
    Image.fromarray(np.full((13000, 13000), 230, np.uint8)).save(huge, compress_level=1)
    r = run_delineo("info", str(huge))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "160 M pixels" in r.stderr and "Warning" not in r.stderr


def test_an_aperio_file_patched_to_1x1_says_one_thing(tmp_path):
    tiny = tmp_path / "tiny.svs"
    shutil.copy(SAMPLE_SVS, tiny)
    with tifffile.TiffFile(tiny, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(1)
        tif.pages[0].tags["ImageLength"].overwrite(1)
    r = run_delineo("info", str(tiny))
    assert r.returncode == 0 and r.stderr == "" and "1 x 1 px" in r.stdout
    r = run_delineo("delineate", str(tiny), "--region", "0,0,1,1", "--out", str(tmp_path / "t.geojson"))
    assert r.returncode == 0 and len(error_lines(r.stderr)) == 1, r.stderr


def test_a_dicom_series_with_a_missing_level_file_is_reported(tmp_path):
    series = tmp_path / "series"
    shutil.copytree(DICOM_DIR, series)
    (series / "level-2-frames-0-4.dcm").unlink()
    r = run_delineo("info", str(series))
    assert r.returncode == 0
    assert "1110 x 1483 and 277 x 370" in r.stderr and "missing" in r.stderr
    r = run_delineo("info", str(DICOM_DIR))
    assert r.stderr == ""
