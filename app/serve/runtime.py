"""ONNX Runtime underneath the server: which execution provider, which model file, and the
tile contract (uint8 RGB NHWC in, tumour probability out) shared with the desktop engines."""

from __future__ import annotations

import logging
import os

import numpy as np

from app.inference.engines import EngineError, pad_to_multiple
from app.inference.modelcard import ModelCard, to_model_input

log = logging.getLogger(__name__)

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

# Which model file each provider runs, best first: the NPU and the GPU take FP16, a CPU the
# INT8 QDQ model ONNX Runtime runs fastest.
MODEL_FILES = {
    "cann": ("onnx-fp16", "onnx-fp32"),
    "cuda": ("onnx-fp16", "onnx-fp32"),
    "openvino": ("onnx-fp32",),
    "cpu": ("onnx-int8", "onnx-fp32"),
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
    """One ONNX Runtime session for the model card, fed with uint8 tiles of any batch size."""

    def __init__(self, card: ModelCard, provider: str = "auto", threads: int = 0):
        import onnxruntime as ort

        self.card = card
        self.provider = choose_provider(provider)
        key = next((k for k in MODEL_FILES[self.provider] if k in card.files), "onnx-fp32")
        self.model_file = card.file(key)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [(PROVIDERS[self.provider], PROVIDER_OPTIONS[self.provider])]
        if self.provider != "cpu":
            providers.append(("CPUExecutionProvider", {}))
        try:
            self.session = ort.InferenceSession(str(self.model_file), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineError(
                f"ONNX Runtime could not load {self.model_file} on {self.provider}: {e}"
            ) from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        tile = card.tile
        self.run(np.full((1, tile, tile, 3), 240, np.uint8))  # warm up before the first request
        log.info(
            "serving %s %s with %s (%s; session providers %s)",
            card.name,
            self.model_file.name,
            PROVIDERS[self.provider],
            "auto" if provider == "auto" else "requested",
            self.session.get_providers(),
        )

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 probability (N, H, W)."""
        batch, h, w = pad_to_multiple(tiles, self.card.multiple)
        x = to_model_input(batch, self.card.normalization).astype(self.input_dtype, copy=False)
        out = self.session.run(None, {self.input_name: x})[0]
        return np.asarray(out[:, 0, :h, :w], dtype=np.float32)
