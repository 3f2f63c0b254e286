"""One unreadable tile never aborts a run, and never hides tissue (issue 13, finding 8)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import DICOM_DIR, SAMPLE_SVS, run_delineo

from app.core.slide import Slide, SlideError
from app.core.tissue import tissue_mask

# Level 0 of the sample (its only level, so also what the tissue mask reads) in 240 px tiles;
# tile (col 4, row 3) is tissue.
BAD_TILE = (4, 3)


@pytest.fixture(scope="module")
def svs_with_a_bad_tile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad-tile") / SAMPLE_SVS.name
    shutil.copy(SAMPLE_SVS, path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        cols = -(-page.imagewidth // page.tilewidth)
        index = BAD_TILE[1] * cols + BAD_TILE[0]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x5a" * count)
    return path


@pytest.fixture(scope="module")
def dicom_with_a_truncated_level0(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truncated") / "series"
    shutil.copytree(DICOM_DIR, folder)
    level0 = folder / "level-0-frames-0-30.dcm"
    os.truncate(level0, level0.stat().st_size // 2)
    return folder


def test_the_damage_is_real(svs_with_a_bad_tile):
    with Slide.open(svs_with_a_bad_tile) as slide, pytest.raises(SlideError):
        slide.thumbnail(2048)


def test_tissue_mask_treats_the_unreadable_part_as_tissue_and_says_so(svs_with_a_bad_tile):
    with Slide.open(svs_with_a_bad_tile) as slide:
        tissue = tissue_mask(slide)
        with Slide.open(SAMPLE_SVS) as intact:
            reference = tissue_mask(intact)
    assert tissue.note and "treated as tissue" in tissue.note
    x, y = (BAD_TILE[0] * 240 + 120) * tissue.scale, (BAD_TILE[1] * 240 + 120) * tissue.scale
    assert tissue.mask[int(y), int(x)]
    assert tissue.mask.shape == reference.mask.shape
    # Away from the bad tile's block the mask is the intact slide's.
    far = np.zeros_like(tissue.mask)
    far[int(1600 * tissue.scale) :, :] = True
    assert (tissue.mask[far] == reference.mask[far]).mean() > 0.99


@pytest.mark.parametrize("which", ["svs", "dicom"])
def test_delineate_goes_on_past_unreadable_tiles(
    tmp_path, which, svs_with_a_bad_tile, dicom_with_a_truncated_level0
):
    slide = svs_with_a_bad_tile if which == "svs" else dicom_with_a_truncated_level0
    out = tmp_path / "out.geojson"
    r = run_delineo("delineate", str(slide), "--region", "0,0,2220,2967", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "treated as tissue" in r.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["features"], "the readable tumour is still outlined"
    if which == "svs":
        assert "2 unreadable" in r.stderr.splitlines()[-1]
