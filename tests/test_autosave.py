"""Nothing a pathologist draws is lost: autosave, restore, read-only folders, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import shapely
from conftest import open_and_wait
from shapely.geometry import box, shape

from app.core.annotation_store import SUFFIX, AnnotationStore, beside_slide
from app.core.annotations import Annotation

HERE = Path(__file__).resolve().parent


def saved_features(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["features"]


def role_of(feature: dict) -> str:
    """The painted region's feature has the delineo role "region"; an annotation, its origin."""
    own = feature["properties"].get("delineo", {})
    return own.get("role") or own["provenance"]["origin"]


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
    roles = sorted(role_of(f) for f in saved_features(target))
    assert roles == ["painted", "region"]
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
    feats = json.loads((tmp_path / "a.geojson").read_text(encoding="utf-8"))["features"]
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
    region = [shape(f["geometry"]) for f in feats if role_of(f) == "region"]
    assert region and region[0].contains(box(200, 300, 280, 380).centroid)  # change 2
    # The file is complete JSON (atomic writes) and no temporary file is left.
    assert [p.name for p in sample_copy.parent.iterdir() if p.name.endswith(".tmp")] == []


def kill_during_edits(
    slide: Path, settings: Path, kill_after_s: float
) -> tuple[float, list[tuple[int, float]]]:
    """Run the app making a change every 150 ms, SIGKILL it `kill_after_s` after its first
    change; (kill time, [(change, wall-clock time)])."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "kill_target.py"), str(slide), str(settings), "150"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=HERE.parent,
    )
    changes: list[tuple[int, float]] = []
    try:
        deadline = time.monotonic() + 60
        while not changes and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("CHANGE"):
                changes.append((int(line.split()[1]), float(line.split()[2])))
        time.sleep(kill_after_s)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        changes += [
            (int(w[1]), float(w[2])) for w in (ln.split() for ln in proc.stdout) if w[:1] == ["CHANGE"]
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    return killed_at, changes


def change_was_saved(i: int, names: set, region) -> bool:
    """kill_target's odd changes are named annotations, its even ones strokes of the region."""
    if i % 2:
        return f"change {i}" in names
    return region.contains(box(100 * i, 300, 100 * i + 80, 380).centroid)


def test_continuous_edits_never_postpone_the_save_past_a_second(tmp_path, sample_copy):
    """Edits every 150 ms, faster than the debounce: no kill may lose an edit older than 1 s."""
    from concurrent.futures import ThreadPoolExecutor

    kills = (1.7, 3.0)
    slides = []
    for k in range(len(kills)):
        slides.append(sample_copy.parent / f"kill{k}.svs")
        slides[-1].write_bytes(sample_copy.read_bytes())
    with ThreadPoolExecutor(len(kills)) as pool:  # two apps at once: half the wall time
        runs = list(
            pool.map(kill_during_edits, slides, [tmp_path / f"k{k}.ini" for k in range(len(kills))], kills)
        )
    for slide, kill_after, (killed_at, changes) in zip(slides, kills, runs, strict=True):
        old = [i for i, t in changes if t < killed_at - 1.0]
        assert len(old) >= 3, changes
        feats = saved_features(beside_slide(slide)) if beside_slide(slide).exists() else []
        names = {f["properties"].get("name") for f in feats}
        region = shapely.union_all([shape(f["geometry"]) for f in feats if role_of(f) == "region"])
        lost = [i for i in old if not change_was_saved(i, names, region)]
        assert not lost, f"the kill {kill_after} s in lost edits {lost}, made more than 1 s before it"


SAVE_THAT_HANGS = """
import os, sys, time
from app.core import annotations
os.fsync = lambda fd: (print("WRITING", flush=True), time.sleep(600))
annotations.write_json_atomic(sys.argv[1], {"type": "FeatureCollection", "features": []})
"""


def test_temporary_files_left_by_killed_saves_are_removed_on_open(tmp_path, sample_copy):
    store = AnnotationStore(sample_copy, tmp_path / "data")
    target = beside_slide(sample_copy)
    # A save in another process, stopped in the middle (before its rename).
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_THAT_HANGS, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        (live,) = sample_copy.parent.glob(f".{target.name}.*.tmp")
        time.sleep(1.1)
        store.load()
        assert live.exists()  # held by a live save: kept
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    # A leftover in the fallback folder, from a kill long ago; and files that are not ours.
    store.fallback.parent.mkdir(parents=True)
    old = store.fallback.with_name(f".{store.fallback.name}.k2j3h4.tmp")
    old.write_text("{")
    os.utime(old, (time.time() - 120, time.time() - 120))
    others = [sample_copy.parent / ".notes.txt.abc.tmp", sample_copy.parent / f".{sample_copy.name}.tmp"]
    for p in others:
        p.write_text("x")
        os.utime(p, (time.time() - 120, time.time() - 120))
    store.load()
    assert not live.exists() and not old.exists()
    assert all(p.exists() for p in others)


def test_importing_the_same_file_twice_adds_its_outlines_once(qtbot, window, sample_copy, tmp_path):
    """File > Import of outlines already open (the same file again, or an export of them) adds
    none of them twice, and says so; a new one in the file is added."""
    from app.core.annotations import write_geojson

    open_and_wait(qtbot, window, sample_copy)
    window.add_annotations(
        [Annotation(box(500, 500, 900, 800), "Tumor"), Annotation(box(1000, 1000, 1200, 1300))]
    )
    exported = tmp_path / "again.geojson"
    write_geojson(exported, [*window.annotations, Annotation(box(100, 2000, 300, 2300), "Tumor")], 0.499)
    with qtbot.waitSignal(window.annotationsImported, timeout=5000) as sig:
        window.import_annotations(str(exported))
    assert sig.args == [1] and len(window.annotations) == 3
    said = window.statusBar().currentMessage()
    assert "Imported 1 annotation(s)" in said and "2 already open were left out" in said
