"""The engine registry is the one list of engines: the CLI, Settings, Auto precision and the
self-test read it, a new engine needs only an entry there, and app/inference has no import cycle."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import build_parser, parse_args
from app.cli.arguments import engine_from_args
from app.inference.autoselect import eligible
from app.inference.engine import Engine, predict_stream
from app.inference.engine_registry import ENGINES, EngineSpec, create_engine, engine_keys
from app.inference.modelcard import ModelCard
from app.inference.onnxruntime_engine import ONNXRuntimeEngine
from app.inference.self_test import engine_runs
from app.ui.settings_dialog import SettingsDialog
from tests.conftest import EBHI, ROOT, SAMPLE_SVS

INFERENCE = ROOT / "app" / "inference"


def engine_choices(command: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if a.dest == "engine")
    return list(action.choices)


class TinyEngine(Engine):
    """A third-party engine in a module of its own: here, ONNX Runtime FP32 under a new name."""

    def __init__(self, card: ModelCard, precision: str = "fp32", device: str = "CPU", threads: int = 0):
        self.inner = ONNXRuntimeEngine(card, precision, threads=threads)
        self.card, self.name = card, f"tiny-{precision}"
        self.closed = False

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.predict(batch)

    def close(self) -> None:
        self.closed = True


TINY = EngineSpec("tiny", "Tiny test engine", True, ("fp32",), ("CPU",), TinyEngine)


def test_every_list_of_engines_is_the_registry(qtbot, qsettings):
    assert engine_keys() == ["openvino", "onnxruntime", "remote"]
    for command in ("delineate", "export"):
        assert engine_choices(command) == engine_keys()
    for command in ("bench", "evaluate"):  # these run the model here
        assert engine_choices(command) == engine_keys(local_only=True)
    dlg = SettingsDialog(qsettings)
    qtbot.addWidget(dlg)
    shown = [(dlg.engine.itemText(i), dlg.engine.itemData(i)) for i in range(dlg.engine.count())]
    assert shown == [(s.display_name, s.key) for s in ENGINES.values()]
    assert {e for e, _ in engine_runs()} == set(engine_keys(local_only=True))
    for spec in ENGINES.values():  # every factory named by a string imports
        assert callable(spec.resolve()), spec.key


def test_a_registered_engine_is_created_by_name_and_offered_everywhere(
    monkeypatch, qtbot, qsettings, tmp_path
):
    monkeypatch.setitem(ENGINES, TINY.key, TINY)
    card = ModelCard.load()
    engine = create_engine("tiny", card, "fp32")
    assert isinstance(engine, TinyEngine) and engine.name == "tiny-fp32"
    from app.core.dataset import load_image, read_manifest

    tile = load_image(read_manifest(EBHI)[0])[:256, :256]
    expected = ONNXRuntimeEngine(card, "fp32").predict(tile[None])[0]
    np.testing.assert_allclose(engine.predict(tile[None])[0], expected, atol=1e-6)
    # The interface's default stream: in order, a failed read passes through in its place.
    failed = OSError("unreadable tile")
    out = list(predict_stream(engine, [("a", tile), ("b", failed), ("c", tile)]))
    assert [k for k, _ in out] == ["a", "b", "c"] and out[1][1] is failed
    np.testing.assert_allclose(out[2][1], expected, atol=1e-6)
    engine.close()
    assert engine.closed

    # The CLI offers it and makes it from the flags.
    assert "tiny" in engine_choices("delineate") and "tiny" in engine_choices("evaluate")
    args = parse_args(
        [
            "delineate",
            str(SAMPLE_SVS),
            "--region",
            "0,0,512,512",
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "tiny",
            "--precision",
            "fp32",
        ]
    )
    assert isinstance(engine_from_args(args), TinyEngine)
    # Settings offers it with its own devices and precisions; Auto times only what it offers.
    dlg = SettingsDialog(qsettings)
    qtbot.addWidget(dlg)
    dlg.engine.setCurrentIndex(dlg.engine.findData("tiny"))
    assert dlg.engine.currentText() == "Tiny test engine"
    enabled = [
        dlg.precision.itemData(i)
        for i in range(dlg.precision.count())
        if dlg.precision.model().item(i).isEnabled()
    ]
    assert enabled == ["auto", "fp32"] and dlg.device.currentData() == "CPU"
    assert eligible(card, "tiny") == ["fp32"]
    assert ("tiny", "fp32") in engine_runs()


def test_an_unknown_engine_names_the_registered_ones():
    from app.inference.engine import EngineError

    with pytest.raises(EngineError, match="'npu' is not one of openvino, onnxruntime, remote"):
        create_engine("npu", ModelCard.load())


def _imports_of(path: Path) -> set[str]:
    """The app.inference modules a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app.inference."):
            found.add(node.module.removeprefix("app.inference."))
        elif isinstance(node, ast.ImportFrom) and node.module == "app.inference":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("app.inference.")
                for a in node.names
                if a.name.startswith("app.inference.")
            )
    return found


def test_no_module_of_app_inference_imports_a_module_that_imports_it():
    modules = sorted(p.stem for p in INFERENCE.glob("*.py") if p.stem != "__init__")
    graph = {m: _imports_of(INFERENCE / f"{m}.py") & set(modules) for m in modules}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in modules if (c := cycle_from(m))]
    assert not cycles, f"import cycles: {cycles}"
    # And each imports on its own, in a fresh interpreter (no order in which it happens to work).
    for m in modules:
        cmd = [sys.executable, "-c", f"import app.inference.{m}"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"app.inference.{m}: {done.stderr[-500:]}"
