"""The installed app's parts that run without building it: where resources are found when
frozen, what the bundle leaves out, the Linux per-user install; and, with DELINEO_TEST_FROZEN=1,
the frozen app itself (.ci/test-frozen-app builds it and runs it from an empty environment)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "packaging"))
from bundle_filter import keep, unneeded_top_level


def test_frozen_app_finds_resources_inside_the_bundle(tmp_path):
    code = (
        "import sys; sys.frozen = True; sys._MEIPASS = sys.argv[1]\n"
        "from app import paths\n"
        "print(paths.FROZEN, paths.SAMPLE_SLIDE, paths.MODELS_DIR, paths.FONTS_DIR)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    frozen, sample, models, fonts = r.stdout.split()
    assert frozen == "True"
    assert Path(sample) == tmp_path / "resources" / "samples" / "CMU-1-Small-Region.svs"
    assert Path(models) == tmp_path / "resources" / "models"
    assert Path(fonts) == tmp_path / "resources" / "fonts"


# The tracer's modules still use OpenCV until its NumPy rewrite lands (the integrator's branch).


def _imports_cv2(path: Path) -> list[int]:
    """The lines of `path` that import cv2, at any depth (inside functions too)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(n.split(".")[0] == "cv2" for n in names):
            lines.append(node.lineno)
    return lines


def test_nothing_imports_opencv_and_no_install_brings_it():
    """OpenCV's wheel was 159 MB of the 626 MB Linux app: the app, its tests and its
    dependencies are without it."""
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}:{line}"
        for folder in ("app", "tests", "packaging")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line in _imports_cv2(path)
    ]
    assert offenders == []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += extra
    assert not [r for r in requirements if "opencv" in r.lower()]


def test_source_tree_resources_exist():
    from app import paths

    assert not paths.FROZEN
    assert paths.SAMPLE_SLIDE.is_file() and (paths.FONTS_DIR / "DejaVuSans.ttf").is_file()
    assert (paths.MODELS_DIR / "ebhi-tumour-resunet" / "card.json").is_file()


@pytest.mark.parametrize(
    ("dest", "kept"),
    [
        ("openvino/libs/libopenvino_intel_cpu_plugin.so", True),
        ("openvino/libs/libopenvino_intel_gpu_plugin.so", True),
        ("openvino/libs/libopenvino_auto_plugin.so", True),
        ("openvino/libs/libopenvino_ir_frontend.so.2641", True),
        ("openvino/libs/libopenvino_onnx_frontend.so.2641", True),
        ("openvino/libs/libopenvino_intel_npu_plugin.so", False),
        ("openvino\\libs\\openvino_intel_npu_plugin.dll", False),
        ("openvino/libs/libopenvino_tensorflow_frontend.so.2641", False),
        ("openvino/libs/libopenvino_pytorch_frontend.so.2641", False),
        ("PySide6/Qt/plugins/platforms/libqxcb.so", True),
        ("PySide6/Qt/plugins/platforms/libqoffscreen.so", True),
        ("PySide6/Qt/plugins/platforms/libqwayland.so", True),
        ("PySide6/Qt/plugins/imageformats/libqjpeg.so", True),
        ("PySide6/Qt/plugins/imageformats/libqtiff.so", True),
        ("PySide6/Qt/plugins/imageformats/libqwebp.so", False),
        ("PIL/_imagingft.cpython-311-x86_64-linux-gnu.so", True),
        ("PIL/_webp.cpython-311-x86_64-linux-gnu.so", False),
        ("resources/models/ebhi-tumour-resunet/model-fp32.onnx", True),
        ("resources/models/ebhi-tumour-resunet/model-fp32.pt", False),
        ("PySide6/Qt/plugins/platformthemes/libqgtk3.so", False),
        ("PySide6/Qt/translations/qtbase_de.qm", False),
        ("onnxruntime/capi/libonnxruntime_providers_shared.so", True),
        ("openslide_bin/libopenslide.so.1", True),
    ],
)
def test_bundle_keeps_cpu_gpu_auto_and_drops_hardware_no_laptop_has(dest, kept):
    assert keep(dest) is kept


def test_libraries_only_a_dropped_plugin_needed_are_left_out():
    needs = {
        "qxcb.so": {"libX11.so.6", "libQt6Gui.so.6"},
        "libX11.so.6": {"libxcb.so.1"},
        "libxcb.so.1": set(),
        "libgtk-3.so.0": {"libcairo.so.2", "libX11.so.6"},
        "libcairo.so.2": set(),
        "libpython3.11.so.1.0": set(),
    }
    binaries = [
        ("PySide6/Qt/plugins/platforms/qxcb.so", "qxcb.so"),
        ("libX11.so.6", "libX11.so.6"),
        ("libxcb.so.1", "libxcb.so.1"),
        ("libgtk-3.so.0", "libgtk-3.so.0"),  # needed only by the dropped GTK theme plugin
        ("libcairo.so.2", "libcairo.so.2"),
        ("libpython3.11.so.1.0", "libpython3.11.so.1.0"),
    ]
    assert unneeded_top_level(binaries, needs.__getitem__) == {"libgtk-3.so.0", "libcairo.so.2"}


def test_install_user_puts_the_app_menu_entry_and_file_types_in_home_without_root(tmp_path):
    app = tmp_path / "Delineo"
    app.mkdir()
    (app / "delineo").write_text("#!/bin/sh\necho delineo 0.1.0\n")
    (app / "delineo").chmod(0o755)
    for f in ("delineo.desktop", "delineo.svg", "delineo.png", "install-user.sh"):
        (app / f).write_bytes((ROOT / "packaging" / "linux" / f).read_bytes())
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(["bash", str(app / "install-user.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    share = home / ".local" / "share"
    installed = share / "Delineo" / "delineo"
    assert subprocess.run(
        [str(home / ".local/bin/delineo")], capture_output=True, text=True
    ).stdout.strip() == ("delineo 0.1.0")
    desktop = (share / "applications" / "delineo.desktop").read_text(encoding="utf-8")
    assert f'Exec="{installed}" %f' in desktop and "Icon=delineo" in desktop
    assert (share / "icons/hicolor/256x256/apps/delineo.png").is_file()
    assert "*.svs" in (share / "mime/packages/delineo.xml").read_text(encoding="utf-8")
    r = subprocess.run(
        ["bash", str(share / "Delineo" / "install-user.sh"), "--uninstall"], env=env, text=True
    )
    assert r.returncode == 0
    assert not (share / "Delineo").exists() and not (home / ".local/bin/delineo").exists()
    assert not (share / "applications" / "delineo.desktop").exists()


def test_desktop_file_declares_what_a_menu_needs():
    entries = dict(
        line.split("=", 1)
        for line in (ROOT / "packaging/linux/delineo.desktop").read_text(encoding="utf-8").splitlines()
        if "=" in line
    )
    assert entries["Type"] == "Application" and entries["Exec"].startswith("delineo")
    assert entries["Terminal"] == "false" and entries["Icon"] == "delineo"


def test_inno_setup_installs_per_user_and_associates_slides():
    iss = (ROOT / "packaging/windows/delineo.iss").read_text(encoding="utf-8")
    assert "PrivilegesRequired=lowest" in iss
    for ext in (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".bif", ".dcm"):
        assert f"Software\\Classes\\{ext}" in iss
    assert "Root: HKLM" not in iss and "uninsdelete" in iss


@pytest.mark.frozen
@pytest.mark.skipif(
    os.environ.get("DELINEO_TEST_FROZEN") != "1", reason="set DELINEO_TEST_FROZEN=1 (builds the app)"
)
def test_the_frozen_app_runs_from_an_empty_environment():
    args = [] if os.environ.get("DELINEO_FROZEN_BUILD", "1") == "1" else ["--no-build"]
    r = subprocess.run(["bash", str(ROOT / ".ci" / "test-frozen-app"), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "PASS: all" in r.stdout and "identical coordinates" in r.stdout
