"""Model files are what their card says, and loading a checkpoint cannot run code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_SVS, run_delineo

from app.inference.modelcard import ModelCard, ModelIntegrityError

MODEL_DIR = ROOT / "resources" / "models" / "ebhi-tumour-resunet"


def _flip_bytes(path, keep_times: bool = False) -> None:
    """Flip 5 % of the file's bytes in place; the size stays the same."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 20):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(MODEL_DIR, dst)
    return dst


def test_a_tampered_model_is_refused_by_delineate_and_the_intact_copy_works(model_copy, tmp_path):
    out = tmp_path / "out.geojson"
    args = ("delineate", str(SAMPLE_SVS), "--region", "0,0,2220,2967", "--out", str(out))
    r = run_delineo(*args, "--model", str(model_copy))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["features"]
    out.unlink()

    _flip_bytes(model_copy / "model-int8.bin")
    r = run_delineo(*args, "--model", str(model_copy))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model-int8.bin" in lines[0] and "sha256" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_a_tampered_model_is_refused_by_the_server(model_copy):
    _flip_bytes(model_copy / "model-int8.bin")  # not even the file the server runs
    r = run_delineo("serve", "--model", str(model_copy), "--port", "9", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "model-int8.bin" in r.stderr and "Traceback" not in r.stderr


def test_the_checksum_cache_notices_a_changed_file(model_copy):
    card = ModelCard.load(model_copy)
    assert card.verify() == []  # hashed and remembered
    assert card.verify() == []  # from the cache
    weights = model_copy / "model-int8.bin"
    _flip_bytes(weights)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, new mtime
    assert card.verify() == ["openvino-int8"]
    with pytest.raises(ModelIntegrityError, match=r"model-int8\.bin"):
        card.file("openvino-int8")
    # Bytes changed again with the old mtime put back: the ctime still tells.
    shutil.copy(MODEL_DIR / "model-int8.bin", weights)
    assert card.verify() == []
    _flip_bytes(weights, keep_times=True)
    assert card.verify() == ["openvino-int8"]


def test_a_pickle_that_would_run_code_is_refused_by_convert(tmp_path):
    marker = tmp_path / "it-ran"
    evil = tmp_path / "evil.pt"
    maker = (
        "import os, sys, torch\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        "        return (os.system, ('touch ' + sys.argv[2],))\n"
        "torch.save({'config': Evil(), 'state_dict': {}}, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", maker, str(evil), str(marker)], check=True, timeout=120)
    data = Path(__file__).parent / "data" / "ebhi"  # real data given, so only the checkpoint is wrong
    r = run_delineo("convert", str(evil), "--out", str(tmp_path / "out"), "--data", str(data), timeout=120)
    assert r.returncode == 2, r.stderr
    assert str(evil) in r.stderr and "run code" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_convert_for_ascend_with_a_bad_out_is_exit_2(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    r = run_delineo("convert", "--target", "ascend", "ebhi-tumour-resunet", "--out", str(a_file), timeout=120)
    assert r.returncode == 2 and "--out" in r.stderr and "internal error" not in r.stderr, r.stderr


def test_the_training_weights_may_be_absent_but_never_damaged(model_copy):
    """The app leaves the PyTorch weights out (training only): a card without them verifies,
    and a damaged copy of them is still caught."""
    card = ModelCard.load(model_copy)
    pt = model_copy / card.files["torch-fp32"]["path"]
    _flip_bytes(pt)
    assert card.verify() == ["torch-fp32"]
    pt.unlink()
    assert card.verify() == [] and "torch-fp32" not in card.checked_files()
    (model_copy / card.files["onnx-fp32"]["path"]).unlink()  # a runtime file is never optional
    assert card.verify() == ["onnx-fp32"]
