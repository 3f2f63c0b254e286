"""`delineo info` and the CLI's error contract: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

import json

import pytest
from conftest import DICOM_DIR, SAMPLE_SVS, TCGA_SVS, run_delineo

INFO_KEYS = {
    "path",
    "vendor",
    "dimensions",
    "level_count",
    "level_dimensions",
    "level_downsamples",
    "mpp",
    "objective_power",
    "associated_images",
    "bounds",
}


def delineo(*args: str):
    return run_delineo(*args, timeout=120)


def test_info_json_has_exactly_the_documented_keys():
    r = delineo("info", str(SAMPLE_SVS), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert set(info) == INFO_KEYS
    assert info["dimensions"] == [2220, 2967]
    assert info["mpp"] == pytest.approx([0.499, 0.499])
    assert info["objective_power"] == 20
    assert info["associated_images"] == ["label", "macro", "thumbnail"]
    assert info["bounds"] is None


def test_info_json_dicom_folder_and_no_mpp_slide():
    dicom = json.loads(delineo("info", str(DICOM_DIR), "--json").stdout)
    assert dicom["level_count"] == 12 and len(dicom["level_dimensions"]) == 12
    tcga = json.loads(delineo("info", str(TCGA_SVS), "--json").stdout)
    assert tcga["level_count"] == 2 and tcga["mpp"] is None


def test_info_table_is_readable():
    r = delineo("info", str(TCGA_SVS))
    assert r.returncode == 0
    assert "4443 x 3567" in r.stdout
    assert "not recorded" in r.stdout
    assert "level 1: 2221 x 1783" in r.stdout


@pytest.mark.parametrize(
    "target",
    ["missing.svs", "folder", "text.svs", "truncated.svs"],
)
def test_info_errors_exit_2_with_one_line(tmp_path, target):
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.svs").write_text("not a slide\n" * 100)
    (tmp_path / "truncated.svs").write_bytes(SAMPLE_SVS.read_bytes()[:500_000])
    path = tmp_path / target
    r = delineo("info", str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_version_and_unknown_option():
    r = delineo("--version")
    assert r.returncode == 0 and r.stdout.startswith("delineo ")
    r = delineo("info")
    assert r.returncode == 2 and "slide" in r.stderr
