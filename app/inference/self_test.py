"""The checks behind `delineo self-test` and Help > Self-test: can this installation read a
slide, are the model files intact, does every engine and precision give the model's answer.

What a user sends when asking for help, and how the frozen app is smoke-tested. No Qt here:
the window check is added by the CLI (app/cli/self_test.py); the dialog runs these in a thread.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from app import __version__
from app.errors import DelineoError
from app.paths import FROZEN, SAMPLE_SLIDE

TILE = 512
MIN_COSINE = 0.99  # INT8 reaches 0.9997 against FP32 on the validation tiles (README)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    seconds: float
    detail: str

    def line(self) -> str:
        return (
            f"{self.name:<28} {'ok' if self.ok else 'FAIL':<4} {self.seconds * 1000:8.0f} ms  {self.detail}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], str]  # returns the detail; raises to fail


def environment() -> dict:
    """What the report's header says: enough for support to know which build this is."""
    return {
        "delineo": __version__,
        "frozen": FROZEN,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
    }


def run_check(check: Check) -> CheckResult:
    t0 = time.perf_counter()
    try:
        detail = check.run()
        ok = True
    except Exception as e:  # noqa: BLE001 - any failure is a FAIL line, never a traceback
        ok = False
        detail = str(e) if isinstance(e, DelineoError) else f"{type(e).__name__}: {e}"
    return CheckResult(check.name, ok, time.perf_counter() - t0, " ".join(detail.split()))


def run_checks(checks: list[Check]) -> Iterator[CheckResult]:
    """Each check's result as soon as it is done, so a hang or crash shows where it was."""
    for check in checks:
        yield run_check(check)


class _Context:
    """What later checks reuse: the tile read from the sample, the card, the FP32 reference."""

    def __init__(self, slide: Path, model: str | Path | None):
        self.slide_path = slide
        self.model = model
        self.tile: np.ndarray | None = None
        self.card = None
        self.reference: np.ndarray | None = None

    def open_sample(self) -> str:
        from app.core.slide import Slide

        with Slide.open(self.slide_path) as s:
            w, h = s.dimensions
            side = min(TILE, w, h)
            x, y = (w - side) // 2, (h - side) // 2
            self.tile = np.ascontiguousarray(s.read_region(x, y, 0, side, side))
            mpp = f"{s.mpp[0]:.3f} µm/px" if s.mpp else "no mpp"
            return f"{self.slide_path.name}: {w}x{h}, {s.level_count} level(s), {mpp}, {s.vendor or 'image'}"

    def verify_model(self) -> str:
        from app.inference.modelcard import ModelCard

        card = ModelCard.load(self.model)
        bad = card.verify()
        if bad:
            names = ", ".join(str(p) for p in _damaged_files(card, bad))
            raise DelineoError(f"damaged or missing (sha256 differs from card.json): {names}; reinstall")
        self.card = card
        return f"{card.name} {card.version}: {len(card.checked_files())} files match card.json ({card.path})"

    def engine_run(self, engine: str, precision: str, device: str = "CPU") -> str:
        from app.inference.engine_registry import create_engine

        if self.card is None:
            raise DelineoError("skipped: the model files did not verify")
        extra = {"streams": False} if engine == "openvino" else {}  # one compilation is enough here
        e = create_engine(engine, self.card, precision=precision, device=device, **extra)
        tile, source = self.tile, ""
        if tile is None:  # the engines can still be checked when the slide reader is broken
            tile, source = synthetic_tile(), " (synthetic tile: the sample could not be read)"
        t0 = time.perf_counter()
        prob = np.asarray(e.predict(tile[None])[0], dtype=np.float32)
        ms = (time.perf_counter() - t0) * 1000
        close = getattr(e, "close", None)
        if close is not None:
            close()
        if prob.shape != (self.card.channels, *tile.shape[:2]) or not np.isfinite(prob).all():
            raise DelineoError(f"bad output: shape {prob.shape}, finite {bool(np.isfinite(prob).all())}")
        if prob.min() < 0 or prob.max() > 1:
            raise DelineoError(f"probabilities outside [0, 1]: {prob.min():.3f}..{prob.max():.3f}")
        masks = self.card.scheme.masks(prob)
        share = "".join(f", {float(m.mean()):.1%} {name}" for name, m in masks.items())
        if self.reference is None:
            self.reference = prob
            return f"{TILE}² tile in {ms:.0f} ms{share} (reference for the rest){source}"
        a, b = prob.ravel().astype(np.float64), self.reference.ravel().astype(np.float64)
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
        if cosine < MIN_COSINE:
            raise DelineoError(f"disagrees with the reference: cosine {cosine:.4f} < {MIN_COSINE}")
        return f"{TILE}² tile in {ms:.0f} ms{share}, cosine vs reference {cosine:.5f}{source}"

    def export_font(self) -> str:
        from PIL import ImageFont

        from app.core.export import _font

        font = _font(16)
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise DelineoError("no TrueType font found; PNG exports will write 'um' for µm")
        return " ".join(font.getname()) + (f" ({font.path})" if getattr(font, "path", None) else "")


def _damaged_files(card, keys: list[str]) -> list[Path]:
    """The files behind the card entries that failed verify(): an IR's .xml or its .bin."""
    from app.inference.modelcard import sha256

    out = []
    for key in keys:
        entry = card.files[key]
        for e in (entry, entry.get("weights")):
            if e is not None:
                p = card.path / e["path"]
                if not p.is_file() or sha256(p) != e["sha256"]:
                    out.append(p)
    return out


def synthetic_tile() -> np.ndarray:
    """A fixed pink-and-purple tile (H&E-like colours), the same on every machine."""
    rng = np.random.default_rng(0)
    base = np.array([225, 170, 200], np.float32) + rng.normal(0, 20, (TILE // 16, TILE // 16, 3))
    nuclei = rng.random((TILE // 16, TILE // 16, 1)) < 0.2
    base = np.where(nuclei, np.array([110, 70, 150], np.float32), base)
    return np.clip(np.kron(base, np.ones((16, 16, 1))), 0, 255).astype(np.uint8)


def engine_runs() -> list[tuple[str, str]]:
    """(engine, precision) for every local engine and precision in the registry, the smallest
    precision first; OpenVINO on an iGPU is added by `_runs` where present."""
    from app.inference.engine_registry import ENGINES

    return [(s.key, p) for s in ENGINES.values() if s.local for p in reversed(s.precisions)]


def _runs(gpu: bool) -> list[tuple[str, str, str]]:
    # ONNX Runtime FP32 first: the plainest runtime is the reference the others are compared to.
    reference = ("onnxruntime", "fp32")
    order = [reference, *[r for r in engine_runs() if r != reference]]
    runs = [(e, p, "CPU") for e, p in order]
    if gpu:
        runs += [("openvino", "int8", "GPU"), ("openvino", "fp16", "GPU")]
    return runs


def _openvino_has_gpu() -> bool:
    try:
        import openvino as ov

        return "GPU" in ov.Core().available_devices
    except Exception:  # noqa: BLE001 - no OpenVINO is reported by the engine checks themselves
        return False


def core_checks(
    model: str | Path | None = None, slide: str | Path | None = None, engines: bool = True
) -> list[Check]:
    """The Qt-free checks, in order: sample, model files, one tile per engine and precision, font.
    `engines=False` leaves the engine checks out (and OpenVINO unloaded)."""
    ctx = _Context(Path(slide) if slide else SAMPLE_SLIDE, model)
    checks = [Check("sample slide", ctx.open_sample), Check("model files", ctx.verify_model)]
    for engine, precision, device in _runs(_openvino_has_gpu()) if engines else []:
        name = f"{engine} {precision}" + ("" if device == "CPU" else f" {device}")
        checks.append(Check(name, lambda e=engine, p=precision, d=device: ctx.engine_run(e, p, d)))
    checks.append(Check("export font", ctx.export_font))
    return checks


def verdict(results: list[CheckResult]) -> str:
    failed = [r.name for r in results if not r.ok]
    if not failed:
        return f"PASS: all {len(results)} checks passed"
    return f"FAIL: {len(failed)} of {len(results)} checks failed ({', '.join(failed)})"
