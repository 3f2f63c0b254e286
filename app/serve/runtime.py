"""ONNX Runtime underneath the server: which execution provider, which model file, and the
tile contract (uint8 RGB NHWC in, class probabilities NCHW out) shared with the desktop engines."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from app.inference.engine import activate, check_output
from app.inference.engines import ONNX_FILES, EngineError, ONNXRuntimeEngine
from app.inference.modelcard import ModelCard

log = logging.getLogger(__name__)

MODEL_NICE = 5  # the model's threads yield to the event loop's (health probes, admission, I/O)
T = TypeVar("T")


def lower_thread_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: per-thread nice; threads it starts,
    such as ONNX Runtime's pool, inherit it). Elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MODEL_NICE)


def in_low_priority_thread(make: Callable[[], T]) -> T:
    """`make()` on a thread of lowered priority, so the threads it creates inherit that."""
    result: list = []

    def run() -> None:
        lower_thread_priority()
        try:
            result.append((True, make()))
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
            result.append((False, e))

    t = threading.Thread(target=run, name="model-setup")
    t.start()
    t.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


PROVIDERS = {
    "cann": "CANNExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("cann", "cuda", "openvino", "cpu")

# Provider options that matter: graph mode on CANN (the single-operator path lacks ops a UNet
# needs), FP16 kept as the model has it.
PROVIDER_OPTIONS = {
    "cann": {"device_id": 0, "enable_cann_graph": True, "arena_extend_strategy": "kNextPowerOfTwo"},
    "cuda": {"device_id": 0},
    "openvino": {"device_type": "CPU"},
    "cpu": {},
}

# Which model each provider runs, best first: the NPU and the GPU take FP16, a CPU the INT8
# QDQ model ONNX Runtime runs fastest there.
PRECISIONS = {
    "cann": ("fp16", "fp32"),
    "cuda": ("fp16", "fp32"),
    "openvino": ("fp32",),
    "cpu": ("int8", "fp32", "fp16"),
}


def choose_provider(requested: str = "auto") -> str:
    """The provider to use, by short name; `auto` takes the best one this onnxruntime has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested == "auto":
        for name in AUTO_ORDER:
            if PROVIDERS[name] in available:
                return name
    if requested not in PROVIDERS:
        raise EngineError(f"--provider {requested}: not one of auto, {', '.join(PROVIDERS)}")
    if PROVIDERS[requested] not in available:
        hint = {
            "cann": "pip install onnxruntime-cann on the Ascend host",
            "cuda": "pip install onnxruntime-gpu",
        }
        raise EngineError(
            f"--provider {requested}: {PROVIDERS[requested]} is not in this onnxruntime "
            f"(has {', '.join(available)}); {hint.get(requested, 'choose another provider')}"
        )
    return requested


class TileRuntime:
    """The card's model in ONNX Runtime on the chosen provider, fed uint8 tiles of any batch size."""

    def __init__(self, card: ModelCard, provider: str = "auto", threads: int = 0, precision: str = "auto"):
        self.card = card
        self.provider = choose_provider(provider)
        wanted = PRECISIONS[self.provider] if precision == "auto" else (precision,)
        have = [p for p in wanted if ONNX_FILES.get(p) in card.files]
        if not have:
            listed = ", ".join(sorted(card.files)) or "none"
            raise EngineError(
                f"{card.path / 'card.json'}: no {'/'.join(wanted)} ONNX model for {PROVIDERS[self.provider]} "
                f"(the card lists: {listed})"
            )
        providers = [(PROVIDERS[self.provider], PROVIDER_OPTIONS[self.provider])]
        if self.provider != "cpu":
            providers.append(("CPUExecutionProvider", {}))
        self.engine = ONNXRuntimeEngine(card, have[0], threads, providers, spinning=False)
        self.model_file = self.engine.path
        tile = card.tile
        self.run(np.full((1, tile, tile, 3), 240, np.uint8))  # warm up before the first request
        log.info(
            "serving %s %s with %s (%s); session providers %s",
            card.name,
            self.model_file.name,
            PROVIDERS[self.provider],
            "auto" if provider == "auto" else "requested",
            self.engine.session.get_providers(),
        )

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 class probabilities (N, C, H, W)."""
        return self.engine.predict(tiles)

    def raw_input(self) -> dict:
        """The model's own input, for `--raw-input`: normalized NCHW in its float type."""
        dtype = "FP16" if self.engine.input_dtype == np.float16 else "FP32"
        return {"name": self.engine.input_name, "datatype": dtype, "shape": [-1, 3, -1, -1]}

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """Normalized (N, 3, H, W) as the model takes it -> float32 class probabilities (N, C, H, W)."""
        card = self.engine.card
        out = check_output(self.engine.session.run(None, {self.engine.input_name: x})[0], card, card.name)
        return activate(out, card.activation)
