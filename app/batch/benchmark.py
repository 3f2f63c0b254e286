"""`delineo bench batch`: N slides through one `delineo batch` vs N `delineo delineate` runs,
each timed as a user would run it (a fresh process, from start to exit)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.batch.slides import slide_stem
from app.errors import DelineoError
from app.inference.benchmark import cpu_name


class BenchBatchError(DelineoError):
    """A run inside the benchmark failed; its message carries the run's last stderr line."""


def bench_batch(
    slides: list[str | Path],
    workers: int | None = None,
    engine_args: tuple[str, ...] = (),
    repeats: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Wall seconds of the sequential runs and of the batch (median over `repeats`, alternating
    so a drifting machine weighs on both alike). The same slide may be given several times:
    each gets its own name (a link) so the batch writes one GeoJSON per copy."""
    say = progress or (lambda _m: None)
    seq_times, batch_times = [], []
    with tempfile.TemporaryDirectory(prefix="delineo-bench-batch-") as tmp:
        folder = Path(tmp) / "slides"
        folder.mkdir()
        named = []
        for i, s in enumerate(slides):
            src = Path(s).expanduser().resolve()
            if not src.exists():
                raise BenchBatchError(f"{s}: no such file or folder")
            link = folder / f"{i + 1:02d}-{slide_stem(src)}{'' if src.is_dir() else src.suffix}"
            link.symlink_to(src, target_is_directory=src.is_dir())
            named.append(link)
        for r in range(repeats):
            t0 = time.perf_counter()
            for i, s in enumerate(named):
                say(f"bench batch: sequential run {r + 1}/{repeats}, slide {i + 1}/{len(named)}")
                out = Path(tmp) / f"seq-{r}-{i}.geojson"
                _run(["delineate", str(s), "--whole-slide", "--out", str(out), *engine_args])
            seq_times.append(time.perf_counter() - t0)
            say(f"bench batch: batch run {r + 1}/{repeats} of {len(named)} slides")
            t0 = time.perf_counter()
            workers_args = ["--workers", str(workers)] if workers else []
            _run(
                [
                    "batch",
                    *map(str, named),
                    "--out",
                    str(Path(tmp) / f"batch-{r}"),
                    *workers_args,
                    *engine_args,
                ]
            )
            batch_times.append(time.perf_counter() - t0)
    from app.batch.cluster import default_workers

    seq, batch = statistics.median(seq_times), statistics.median(batch_times)
    return {
        "slides": len(named),
        "workers": workers or default_workers(),
        "repeats": repeats,
        "sequential_delineate_s": round(seq, 2),
        "batch_s": round(batch, 2),
        "batch_vs_sequential": round(batch / seq, 3),
        "sequential_runs_s": [round(t, 2) for t in seq_times],
        "batch_runs_s": [round(t, 2) for t in batch_times],
        "cpu_cores": os.cpu_count(),
        "machine": cpu_name(),
    }


def _run(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchBatchError(f"bench batch: `delineo {args[0]}` failed (exit {r.returncode}): {last}")
