"""`delineo batch`: real slides on a real Dask cluster (local, and a scheduler and worker
started as their own processes), the shipped model in OpenVINO INT8, summary.csv, resuming
after a kill, and a corrupt slide among good ones."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DICOM_DIR, SAMPLE_SVS, run_delineo

pytest.importorskip("distributed")

# A 1536² region of the sample: 16 tiles, tumour inside (about 9 tiles of work after glass).
REGION = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
    [[300, 600], [1836, 600], [1836, 2136], [300, 2136], [300, 600]]]}, "properties": {}}  # fmt: skip


def read_summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        return {Path(r["slide"]).name: r for r in csv.DictReader(f)}


def tumour_features(path: Path) -> list[dict]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    return [f for f in doc["features"] if f["properties"]["classification"]["name"] == "Tumor"]


def slides_folder(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(n):
        shutil.copy(SAMPLE_SVS, folder / f"case-{i + 1}.svs")
    return folder


@pytest.mark.slow
def test_batch_on_a_local_cluster_of_two_workers_keeps_going_past_a_corrupt_slide(tmp_path):
    folder = slides_folder(tmp_path, 2)
    shutil.copytree(DICOM_DIR, folder / "dicom-case")  # a DICOM series: the folder is the slide
    corrupt = folder / "truncated.svs"
    corrupt.write_bytes(SAMPLE_SVS.read_bytes()[:400_000])  # an interrupted copy
    (folder / "label.png").write_bytes(b"not a slide")  # pictures in a folder are not slides
    out = tmp_path / "out"
    r = run_delineo("batch", str(folder), "--out", str(out), "--workers", "2", "--whole-slide")
    assert r.returncode == 1, r.stderr  # a slide failed: said by the exit status too
    rows = read_summary(out)
    assert set(rows) == {"case-1.svs", "case-2.svs", "dicom-case", "truncated.svs"}
    for name in ("case-1.svs", "case-2.svs", "dicom-case"):
        assert rows[name]["status"] == "ok", rows[name]
        assert int(rows[name]["tiles_run"]) > 0
        assert float(rows[name]["area_um2_Tumor"]) > 10_000  # the sample has tumour
        stem = Path(name).stem
        assert tumour_features(out / f"{stem}.geojson"), name
    assert rows["truncated.svs"]["status"] == "failed"
    assert "truncated.svs" in rows["truncated.svs"]["error"]
    assert "damaged or incomplete" in rows["truncated.svs"]["error"]
    assert not (out / "truncated.geojson").exists()
    assert "Traceback" not in r.stderr
    assert "[4/4]" in r.stderr and "2 local worker(s)" in r.stderr
    assert "case-1.svs: " in r.stderr and "tiles (" in r.stderr  # per-slide progress reached the client
    # The same copies give the same outline, whichever worker ran them.
    shapes = [[f["geometry"] for f in tumour_features(out / f"case-{i}.geojson")] for i in (1, 2)]
    assert shapes[0] == shapes[1]

    # A re-run retries only the failed slide: it is still corrupt, the finished ones stay as they were.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.geojson")}
    r2 = run_delineo("batch", str(folder), "--out", str(out), "--workers", "1")
    assert r2.returncode == 1, r2.stderr
    assert "3 done in an earlier run (skipped), 1 to run" in r2.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.geojson")} == before
    assert read_summary(out)["case-1.svs"] == rows["case-1.svs"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and one `dask worker`, each its own process on 127.0.0.1."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        stdout=open(logs / "scheduler.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--no-dashboard",
            "--host",
            "127.0.0.1",
        ],
        stdout=open(logs / "worker.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    try:
        yield address
    finally:
        for p in (worker, scheduler):
            p.terminate()
        for p in (worker, scheduler):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.mark.slow
def test_batch_sends_the_slides_to_an_existing_scheduler_and_its_worker(tmp_path, dask_cluster):
    folder = slides_folder(tmp_path, 2)
    regions = tmp_path / "regions"
    regions.mkdir()
    for stem in ("case-1", "case-2"):
        (regions / f"{stem}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": [REGION]})
        )
    out = tmp_path / "out"
    r = run_delineo(
        "batch", str(folder / "case-1.svs"), str(folder / "case-2.svs"), "--out", str(out),
        "--scheduler", dask_cluster, "--region-geojson-dir", str(regions),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"Dask scheduler {dask_cluster}" in r.stderr
    # The workers' devices are what counts on a cluster: asked of them before any slide runs.
    r2 = run_delineo("batch", str(folder / "case-1.svs"), "--out", str(tmp_path / "out2"),
                     "--scheduler", dask_cluster, "--device", "foo")  # fmt: skip
    assert r2.returncode == 2 and "--device FOO" in r2.stderr and "on Dask worker tcp://" in r2.stderr, (
        r2.stderr
    )
    assert not (tmp_path / "out2" / "case-1.geojson").exists()
    rows = read_summary(out)
    assert [rows[n]["status"] for n in ("case-1.svs", "case-2.svs")] == ["ok", "ok"]
    # The region file bounds the run: every outline lies inside it.
    for stem in ("case-1", "case-2"):
        for f in tumour_features(out / f"{stem}.geojson"):
            for x, y in f["geometry"]["coordinates"][0]:
                assert 300 <= x <= 1836 and 600 <= y <= 2136


def batch_until_one_slide_is_done(folder: Path, out: Path):
    """`delineo batch` (one worker) in a child process, returned once summary.csv has its first
    ok row, with the worker processes it started (to check they leave with it)."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "batch", str(folder), "--out", str(out), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,  # its own group, as a terminal's job: Ctrl+C reaches it and its workers
        # As in a terminal, whatever started the tests: a shell's background job (CI run with &)
        # hands its children SIGINT ignored, and Ctrl+C would then never reach the batch.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = workers or psutil.Process(proc.pid).children(recursive=True)
        if (out / "summary.csv").exists() and any(r["status"] == "ok" for r in read_summary(out).values()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    return proc, workers


@pytest.mark.slow
def test_a_batch_killed_midway_resumes_with_only_the_slides_not_finished(tmp_path):
    import psutil

    folder = slides_folder(tmp_path, 3)
    out = tmp_path / "out"
    proc, workers = batch_until_one_slide_is_done(folder, out)
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: as the OOM killer or a power cut
    proc.wait(10)
    proc.stderr.close()
    # The worker processes notice their parent is gone and leave: nothing runs on unsupervised.
    _gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, alive
    finished = {n for n, r in read_summary(out).items() if r["status"] == "ok"}
    assert finished and len(finished) < 3
    mtimes = {n: (out / f"{Path(n).stem}.geojson").stat().st_mtime_ns for n in finished}

    r = run_delineo("batch", str(folder), "--out", str(out), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert f"{len(finished)} done in an earlier run (skipped), {3 - len(finished)} to run" in r.stderr
    for n in finished:  # not run again
        assert f"] {n}:" not in r.stderr
        assert (out / f"{Path(n).stem}.geojson").stat().st_mtime_ns == mtimes[n]
    rows = read_summary(out)
    assert {n: r["status"] for n, r in rows.items()} == {f"case-{i}.svs": "ok" for i in (1, 2, 3)}
    assert not list(out.glob(".*.tmp"))  # no half-written file left by the kill is taken for a result


def test_ctrl_c_stops_a_batch_at_once_keeping_what_finished(tmp_path):
    """Ctrl+C (SIGINT) in the terminal: one line, exit 130 within seconds, no worker left
    running, the finished slides' rows kept; the same command then runs only the rest."""
    import psutil

    folder = slides_folder(tmp_path, 4)
    out = tmp_path / "out"
    proc, workers = batch_until_one_slide_is_done(folder, out)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C: the terminal signals the whole group, workers too
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert "workers died" not in err and "KeyboardInterrupt" not in err, err
    assert ": failed:" not in err, err  # the slides stopped are not the slides' failures
    _gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, alive
    finished = {n for n, r in read_summary(out).items() if r["status"] == "ok"}
    assert 1 <= len(finished) < 4
    r = run_delineo("batch", str(folder), "--out", str(out), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert f"{len(finished)} done in an earlier run (skipped), {4 - len(finished)} to run" in r.stderr


@pytest.mark.slow
def test_batch_with_the_remote_engine_shares_one_server(tmp_path, server):
    folder = slides_folder(tmp_path, 2)
    regions = tmp_path / "regions"
    regions.mkdir()
    (regions / "case-1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [REGION]}))
    out = tmp_path / "out"
    env_token = {**os.environ, "DELINEO_TOKEN": server.token}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "batch",
            str(folder),
            "--out",
            str(out),
            "--workers",
            "2",
            "--engine",
            "remote",
            "--url",
            server.url,
            "--region-geojson-dir",
            str(regions),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env_token,
    )
    assert r.returncode == 0, r.stderr
    rows = read_summary(out)
    assert rows["case-1.svs"]["status"] == "ok" and tumour_features(out / "case-1.geojson")
    # No region file for case-2: skipped with the reason, not run on the whole slide behind your back.
    assert rows["case-2.svs"]["status"] == "skipped"
    assert "no region file" in rows["case-2.svs"]["error"] and "case-2.geojson" in rows["case-2.svs"]["error"]


def test_batch_without_dask_says_which_extra_to_install(tmp_path):
    code = (
        "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
        "from app.cli import main\n"
        f"sys.exit(main(['batch', {str(SAMPLE_SVS)!r}, '--out', {str(tmp_path / 'out')!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 or "delineo[batch]" in lines[-1]
    assert "delineo[batch]" in r.stderr and "Traceback" not in r.stderr


def test_folders_are_searched_for_slide_files_and_dicom_series(tmp_path):
    from app.batch.slides import BatchInputError, find_slides

    (tmp_path / "run" / "nested").mkdir(parents=True)
    shutil.copy(SAMPLE_SVS, tmp_path / "run" / "b.svs")
    shutil.copy(SAMPLE_SVS, tmp_path / "run" / "nested" / "a.tiff")
    shutil.copytree(DICOM_DIR, tmp_path / "run" / "nested" / "series")
    (tmp_path / "run" / "b.svs.png").write_bytes(b"a label picture")
    (tmp_path / "run" / "link.svs").symlink_to(tmp_path / "run" / "b.svs")  # a link is its own slide
    (tmp_path / "run" / ".trash").mkdir()
    shutil.copy(SAMPLE_SVS, tmp_path / "run" / ".trash" / "old.svs")
    # The maps a viewer and `delineate --likelihood` leave beside slides are not slides.
    maps = [tmp_path / "run" / "b.svs.run-0123abcd.likelihood.tif", tmp_path / "run" / "b_likelihood_map.tif"]
    for m in maps:
        shutil.copy(SAMPLE_SVS, m)
    found = find_slides([tmp_path / "run", tmp_path / "run" / "b.svs"])  # named twice: once
    assert [p.relative_to(tmp_path / "run").as_posix() for p in found] == [
        "b.svs",
        "link.svs",
        "nested/a.tiff",
        "nested/series",
    ]
    with pytest.raises(BatchInputError, match=r"b_likelihood_map\.tif is a likelihood map Delineo wrote"):
        find_slides([maps[1]])  # named: said, not run


def test_batch_refuses_bad_input_in_one_line(tmp_path):
    r = run_delineo("batch", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_delineo("batch", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no slide files found" in r.stderr
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(SAMPLE_SVS, tmp_path / "a" / "slide.svs")
    shutil.copy(SAMPLE_SVS, tmp_path / "b" / "slide.svs")
    r = run_delineo("batch", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "would both be written to slide.geojson" in r.stderr
    r = run_delineo("batch", str(SAMPLE_SVS), "--out", str(tmp_path / "out"), "--model", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_delineo("batch", str(SAMPLE_SVS), "--out", str(tmp_path / "out"), "--engine", "remote")
    assert r.returncode == 2 and "--url" in r.stderr
    r = run_delineo("batch", str(SAMPLE_SVS), "--out", str(tmp_path / "out"), "--whole-slide",
                    "--region-geojson-dir", str(tmp_path))  # fmt: skip
    assert r.returncode == 2 and "not allowed with" in r.stderr
    r = run_delineo("bench", "batch", str(SAMPLE_SVS))
    assert r.returncode == 2 and "two or more slides" in r.stderr


def test_summary_rows_survive_a_rewrite_and_say_done_only_with_their_geojson(tmp_path):
    from app.batch.summary import SlideResult, Summary

    s = Summary(tmp_path)
    s.record(SlideResult("/s/a.svs", "a.geojson", "ok", 9, {"Tumor": 1234.5}, 3.25, notes="no mpp; x"))
    s.record(SlideResult("/s/b.svs", "b.geojson", "failed", error='bad, "quoted"\nfile'))
    again = Summary(tmp_path)
    assert again.rows["a.geojson"].areas_um2 == {"Tumor": 1234.5}
    assert again.rows["a.geojson"].notes == "no mpp; x"
    assert again.rows["b.geojson"].error == 'bad, "quoted"\nfile'
    assert not again.is_done("a.geojson")  # the summary says ok, but its GeoJSON is gone
    (tmp_path / "a.geojson").write_text("{}")
    (tmp_path / "b.geojson").write_text("{}")
    assert again.is_done("a.geojson") and not again.is_done("b.geojson")
    # Only the ok row names a GeoJSON in the file; the failed one is still known by its slide.
    with open(tmp_path / "summary.csv", newline="", encoding="utf-8") as f:
        assert {r["slide"]: r["geojson"] for r in csv.DictReader(f)} == {
            "/s/a.svs": "a.geojson",
            "/s/b.svs": "",
        }
    again.record(SlideResult("/s/b.svs", "b.geojson", "skipped", error="no tissue"))
    third = Summary(tmp_path)
    assert set(third.rows) == {"a.geojson", "b.geojson"} and third.rows["b.geojson"].status == "skipped"


def test_whole_slides_run_the_coarse_model_first_unless_exhaustive(tmp_path):
    """The shipped model names a coarse model: a whole-slide batch runs it first and fewer
    tiles at full resolution for nearly the same outline; --exhaustive runs them all.
    --likelihood writes each slide's likelihood map beside its GeoJSON."""
    import shapely
    from shapely.geometry import shape

    from app.core.slide import Slide

    folder = slides_folder(tmp_path, 1)
    rows, outlines = {}, {}
    for mode, extra in (("adaptive", ["--likelihood"]), ("exhaustive", ["--exhaustive"])):
        out = tmp_path / mode
        r = run_delineo("batch", str(folder), "--out", str(out), "--workers", "1", *extra)
        assert r.returncode == 0, r.stderr
        rows[mode] = read_summary(out)["case-1.svs"]
        outlines[mode] = shapely.union_all(
            [shape(f["geometry"]) for f in tumour_features(out / "case-1.geojson")]
        )
    assert 0 < int(rows["adaptive"]["tiles_run"]) < int(rows["exhaustive"]["tiles_run"])
    files = sorted(p.name for p in (tmp_path / "adaptive").iterdir())
    assert files == ["batch-settings.json", "case-1.geojson", "case-1_likelihood_map.tif", "summary.csv"]
    with Slide.open(tmp_path / "adaptive" / "case-1_likelihood_map.tif") as m:
        assert m.level_count >= 2 and m.mpp[0] == pytest.approx(0.998, rel=1e-2)
    assert not (tmp_path / "exhaustive" / "case-1_likelihood_map.tif").exists()
    a, e = outlines["adaptive"], outlines["exhaustive"]
    assert e.area > 0 and 2 * a.intersection(e).area / (a.area + e.area) >= 0.95


def test_a_re_run_with_other_settings_is_refused_unless_redo(tmp_path):
    """The folder remembers what shaped its outlines: a re-run with another threshold or mode is
    refused in one line naming the change (not "done in an earlier run"), the same settings
    resume, --redo runs every slide again with the new ones. A file that is no slide fails with
    that said, and its row names no GeoJSON."""
    folder = slides_folder(tmp_path, 1)
    notes = folder / "notes.txt"
    notes.write_text("case 1: re-cut, see the lab book\n")
    slide = str(folder / "case-1.svs")
    out = tmp_path / "out"
    r = run_delineo("batch", slide, str(notes), "--out", str(out), "--workers", "1")
    assert r.returncode == 1, r.stderr  # notes.txt failed
    rows = read_summary(out)
    assert rows["case-1.svs"]["status"] == "ok" and rows["case-1.svs"]["geojson"] == "case-1.geojson"
    assert rows["notes.txt"]["status"] == "failed" and rows["notes.txt"]["geojson"] == ""
    assert "not a slide file OpenSlide can read" in rows["notes.txt"]["error"]
    assert "damaged" not in rows["notes.txt"]["error"]
    assert not (out / "notes.geojson").exists()
    geojson = out / "case-1.geojson"
    first, first_mtime = read_summary(out)["case-1.svs"], geojson.stat().st_mtime_ns

    r = run_delineo("batch", slide, "--out", str(out), "--threshold", "0.8", "--exhaustive")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "--threshold the model's -> 0.8" in lines[0] and "--exhaustive off -> on" in lines[0]
    assert "--min-area" not in lines[0]  # only what differs
    assert "--redo" in lines[0] and "new --out folder" in lines[0]
    assert geojson.stat().st_mtime_ns == first_mtime

    # The same settings (the default threshold and mode): resumed, the failed file retried.
    r = run_delineo("batch", slide, str(notes), "--out", str(out), "--workers", "1")
    assert r.returncode == 1 and "1 done in an earlier run (skipped), 1 to run" in r.stderr, r.stderr
    assert geojson.stat().st_mtime_ns == first_mtime
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        assert sorted(Path(row["slide"]).name for row in csv.DictReader(f)) == ["case-1.svs", "notes.txt"]

    r = run_delineo("batch", slide, "--out", str(out), "--workers", "1", "--threshold", "0.8",
                    "--exhaustive", "--redo")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "0 done in an earlier run (skipped), 1 to run" in r.stderr
    rows = read_summary(out)
    assert set(rows) == {"case-1.svs"}  # the earlier rows went with --redo
    assert int(rows["case-1.svs"]["tiles_run"]) > int(first["tiles_run"])  # every tile: exhaustive
    assert json.loads((out / "batch-settings.json").read_text())["threshold"] == 0.8
    # Now these are the folder's settings: the same command resumes.
    r = run_delineo("batch", slide, "--out", str(out), "--threshold", "0.8", "--exhaustive")
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr

    # A folder from before the settings were kept resumes as it did.
    (out / "batch-settings.json").unlink()
    r = run_delineo("batch", slide, "--out", str(out))
    assert r.returncode == 0 and "1 done in an earlier run (skipped), 0 to run" in r.stderr, r.stderr


def test_a_device_the_engine_lacks_is_refused_before_any_slide_runs(tmp_path):
    out = tmp_path / "out"
    r = run_delineo("batch", str(SAMPLE_SVS), "--out", str(out), "--device", "foo")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device FOO" in lines[0] and "available: CPU" in lines[0], r.stderr
    assert "--device CPU" in lines[0] and "Settings" not in lines[0]
    assert not (out / "summary.csv").exists()
    r = run_delineo("batch", str(SAMPLE_SVS), "--out", str(out), "--engine", "onnxruntime", "--device", "GPU")
    assert r.returncode == 2 and "--device GPU" in r.stderr and "ONNX Runtime" in r.stderr, r.stderr
