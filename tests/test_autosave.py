"""Nothing a pathologist draws is lost: autosave, restore, read-only folders, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import open_and_wait
from shapely.geometry import box, shape

from app.core.annotation_store import SUFFIX, AnnotationStore, beside_slide
from app.core.annotations import Annotation

HERE = Path(__file__).resolve().parent


def saved_features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def test_changes_are_saved_beside_the_slide_within_a_second(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    target = beside_slide(sample_copy)
    assert target.name == "CMU-1-Small-Region.svs" + SUFFIX
    window.add_annotations([Annotation(box(500, 500, 900, 800))])
    t0 = time.perf_counter()
    qtbot.waitUntil(target.is_file, timeout=1000)
    assert time.perf_counter() - t0 < 1.0
    window.editor.model.add(box(1000, 1000, 1400, 1300))
    qtbot.waitUntil(lambda: len(saved_features(target)) == 2, timeout=1000)
    own = [f["properties"]["delineo"] for f in saved_features(target)]
    assert sorted(o.get("role") or o["provenance"]["origin"] for o in own) == ["painted", "region"]
    assert "beside the slide" in window.save_label.text() or "Saved" in window.save_label.text()
    # No temporary files are left behind.
    assert [p.name for p in sample_copy.parent.iterdir() if p.name.startswith(".")] == []


def test_reopening_restores_annotations_and_region(qtbot, window, sample_copy):
    open_and_wait(qtbot, window, sample_copy)
    window.add_annotations([Annotation(box(500, 500, 900, 800), cls="Tumor")])
    window.editor.model.add(box(1000, 1000, 1400, 1300))
    window.close_slide()  # flushes the pending save
    assert window.annotations == []
    open_and_wait(qtbot, window, sample_copy)
    assert len(window.annotations) == 1
    assert window.annotations[0].geometry.equals(box(500, 500, 900, 800))
    assert window.editor.model.geometry.equals(box(1000, 1000, 1400, 1300))
    assert window.annotations_panel.table.rowCount() == 1


def test_read_only_folder_saves_to_the_data_dir_and_says_where(qtbot, window, sample_copy, monkeypatch):
    # Root ignores folder permissions, so the check itself is replaced here.
    monkeypatch.setattr("app.core.annotation_store.folder_is_writable", lambda folder: False)
    open_and_wait(qtbot, window, sample_copy)
    window.add_annotations([Annotation(box(500, 500, 900, 800))])
    store: AnnotationStore = window.store
    assert not store.beside_slide
    qtbot.waitUntil(store.path.is_file, timeout=1000)
    assert not beside_slide(sample_copy).exists()
    assert "read-only" in window.save_label.text() or str(store.path) in window.save_label.text()
    assert str(store.path.parent).startswith(os.environ["XDG_DATA_HOME"])


def test_failed_import_leaves_the_open_annotations_unchanged(qtbot, window, sample_copy, tmp_path):
    open_and_wait(qtbot, window, sample_copy)
    window.add_annotations([Annotation(box(500, 500, 900, 800))])
    bad = tmp_path / "broken.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {')
    with qtbot.waitSignal(window.annotationsImported, timeout=5000) as sig:
        window.import_annotations(str(bad))
    assert sig.args == [-1]
    assert len(window.annotations) == 1
    assert window.error_dialog.isVisible() and "broken.geojson" in window.error_dialog.text()
    window.error_dialog.accept()
    # A good file with a polygon partly off the slide is clipped, with a note.
    good = tmp_path / "qupath.geojson"
    good.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": box(2000, 2800, 2600, 3200).__geo_interface__,
                        "properties": {
                            "objectType": "annotation",
                            "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        },
                    }
                ],
            }
        )
    )
    with qtbot.waitSignal(window.annotationsImported, timeout=5000):
        window.import_annotations(str(good))
    assert len(window.annotations) == 2
    assert window.annotations[1].geometry.bounds == (2000, 2800, 2220, 2967)
    assert "outside the slide" in window.info_dialog.text()


def test_gui_export_writes_files(qtbot, window, sample_copy, tmp_path):
    open_and_wait(qtbot, window, sample_copy)
    window.add_annotations([Annotation(box(500, 500, 900, 800))])
    for fmt, name in (("geojson", "a.geojson"), ("png", "view.png"), ("tiff-mask", "m.tif")):
        with qtbot.waitSignal(window.exported, timeout=30_000) as sig:
            window.export_to(fmt, str(tmp_path / name))
        assert sig.args == [str(tmp_path / name)]
    feats = json.loads((tmp_path / "a.geojson").read_text())["features"]
    assert shape(feats[0]["geometry"]).equals(box(500, 500, 900, 800))


def test_sigkill_loses_nothing_older_than_the_last_change(tmp_path, sample_copy):
    settings = tmp_path / "kill.ini"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "kill_target.py"), str(sample_copy), str(settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=HERE.parent,
    )
    changes = 0
    deadline = time.monotonic() + 60
    try:
        while changes < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("CHANGE"):
                changes = int(line.split()[1])
        time.sleep(0.1)  # change 4 was made a moment ago; changes 1-3 are 1.5 s and older
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert changes == 4
    feats = saved_features(beside_slide(sample_copy))
    names = {f["properties"].get("name") for f in feats}
    assert {"change 1", "change 3"} <= names  # annotations made before the last change
    region = [shape(f["geometry"]) for f in feats if f["properties"]["delineo"].get("role") == "region"]
    assert region and region[0].contains(box(200, 300, 280, 380).centroid)  # change 2
    # The file is complete JSON (atomic writes) and no temporary file is left.
    assert [p.name for p in sample_copy.parent.iterdir() if p.name.endswith(".tmp")] == []
