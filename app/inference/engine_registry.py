"""Every engine Delineo can run, in one place: the CLI's `--engine` choices, the settings
dialog, Auto precision, `evaluate`, `bench` and the self-test all read `ENGINES`, and
`create_engine` makes one by name. Adding an engine is one module and one line here
(docs/ADDING-AN-ENGINE.md).

A factory is named as "module:attribute" and imported only when that engine is created, so
reading the registry (building the CLI, opening Settings) loads no runtime, and no engine
module imports this one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.inference.engine import Engine, EngineError
from app.inference.modelcard import ModelCard


@dataclass(frozen=True)
class EngineSpec:
    key: str  # the name in settings and on the command line
    display_name: str  # what Settings shows
    local: bool  # runs here on a model card; False: a server runs the model (needs a URL)
    # Precisions offered, FP32 (the reference) first; Auto times each one whose validation row
    # "<key>-<precision>" in the model card is within tolerance of "<key>-fp32".
    precisions: tuple[str, ...]
    devices: tuple[str, ...]  # devices offered; the engine itself checks what this machine has
    # Local: factory(card, precision=, device=, threads=, **options);
    # remote: factory(model, url=, token=, **options). A callable, or "module:attribute" to
    # import when first used (".name" is relative to app.inference).
    factory: str | Callable[..., Engine]
    # Local: the model card's file keys each precision can run, in the order tried.
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def runnable(self, card: ModelCard) -> list[str]:
        """The precisions this engine can run with the files `card` has (all for a remote, or
        for an engine that declares no files: it checks them itself)."""
        if not self.local or not self.files:
            return list(self.precisions)
        return [p for p in self.precisions if any(k in card.files for k in self.files.get(p, ()))]

    def resolve(self) -> Callable[..., Engine]:
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module, "app.inference"), attribute)

    def create(self, *args, **kwargs) -> Engine:
        return self.resolve()(*args, **kwargs)


def _by_key(*specs: EngineSpec) -> dict[str, EngineSpec]:
    return {spec.key: spec for spec in specs}


# One entry per engine; a factory ".module:attribute" names a module of app.inference.
ENGINES: dict[str, EngineSpec] = _by_key(
    EngineSpec(
        "openvino",
        "OpenVINO",
        True,
        ("fp32", "fp16", "int8"),
        ("AUTO", "CPU", "GPU"),
        ".openvino_engine:OpenVINOEngine",
        {"fp32": ("onnx-fp32", "openvino-fp32"), "fp16": ("openvino-fp16",), "int8": ("openvino-int8",)},
    ),
    EngineSpec(
        "onnxruntime",
        "ONNX Runtime",
        True,
        ("fp32", "int8"),
        ("CPU",),
        ".onnxruntime_engine:create",
        {"fp32": ("onnx-fp32",), "int8": ("onnx-int8",)},
    ),
    EngineSpec("remote", "Remote endpoint", False, (), (), ".remote:create"),
)
DEFAULT_ENGINE = "openvino"


def engine_keys(local_only: bool = False) -> list[str]:
    return [k for k, s in ENGINES.items() if s.local or not local_only]


def engine_spec(key: str) -> EngineSpec:
    spec = ENGINES.get(key.lower())
    if spec is None:
        raise EngineError(f"engine '{key}' is not one of {', '.join(ENGINES)}")
    return spec


def all_precisions() -> list[str]:
    """Every precision some engine offers, FP32 first (the CLI's `--precision` choices)."""
    return list(dict.fromkeys(p for s in ENGINES.values() for p in s.precisions))


def all_devices() -> list[str]:
    return list(dict.fromkeys(d for s in ENGINES.values() for d in s.devices))


def preferred_precision(spec: EngineSpec, card: ModelCard) -> str:
    """What to run when no precision is asked for: INT8, else FP16, else FP32, of those the
    card has files for (a user's model may bring only its FP32 ONNX)."""
    have = spec.runnable(card)
    return next((p for p in ("int8", "fp16", "fp32") if p in have), "fp32")


def create_engine(
    engine: str = DEFAULT_ENGINE,
    model: str | Path | ModelCard | None = None,
    precision: str | None = "int8",
    device: str = "CPU",
    threads: int = 0,
    url: str | None = None,
    token: str | None = None,
    **kwargs,
) -> Engine:
    """The engine named by settings or CLI flags, with a clear error for a bad combination."""
    spec = engine_spec(engine)
    if not spec.local:
        return spec.create(model, url=url, token=token, **kwargs)
    card = model if isinstance(model, ModelCard) else ModelCard.load(model)
    precision = precision or preferred_precision(spec, card)
    if precision in spec.precisions and precision not in spec.runnable(card):
        have = ", ".join(spec.runnable(card)) or "none"
        raise EngineError(
            f"{card.name} has no {precision.upper()} model for {spec.display_name} (it has: {have}); "
            "choose one of those precisions"
        )
    return spec.create(card, precision=precision, device=device, threads=threads, **kwargs)
