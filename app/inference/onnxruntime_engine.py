"""ONNX Runtime on the CPU, registered as "onnxruntime" in `engine_registry`."""

from __future__ import annotations

import os

import numpy as np

from app.inference.engine import Engine, EngineError, activate, check_batch, check_output, pad_to_multiple
from app.inference.modelcard import ModelCard, to_model_input

ONNX_FILES = {"fp32": "onnx-fp32", "int8": "onnx-int8", "fp16": "onnx-fp16"}  # precision -> card key


class ONNXRuntimeEngine(Engine):
    """ONNX Runtime: `fp32` (the ONNX file), `int8` (QDQ, unsigned activations) or `fp16` (the
    FP16 ONNX that `delineo convert --target ascend` writes), on the CPU unless `providers` say."""

    def __init__(
        self,
        card: ModelCard,
        precision: str = "int8",
        threads: int = 0,
        providers: list | None = None,
        spinning: bool = True,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineError(f"ONNX Runtime is not installed ({e}); pip install onnxruntime") from None
        key = ONNX_FILES.get(precision)
        if key is None:
            raise EngineError(f"precision '{precision}' is not one of fp32, fp16, int8")
        if key not in card.files and precision == "fp16":
            raise EngineError(
                "ONNX Runtime runs fp16 only with an FP16 ONNX model (delineo convert --target ascend "
                "writes one); on a CPU it is slower than FP32 anyway: choose OpenVINO for fp16"
            )
        self.card = card
        self.precision = precision
        self.name = f"onnxruntime-{precision}"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:  # a server: idle model threads must not take the cores its event loop needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = card.file(key)
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineError(f"ONNX Runtime could not load {self.path}: {e}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch, h, w = pad_to_multiple(check_batch(batch), self.card.multiple)
        card = self.card
        x = to_model_input(batch, card.normalization, card.channel_order).astype(self.input_dtype, copy=False)
        out = check_output(self.session.run(None, {self.input_name: x})[0], card, self.path.name)
        return activate(out[:, :, :h, :w], card.activation)


def create(
    card: ModelCard, precision: str = "int8", device: str = "CPU", threads: int = 0, **kwargs
) -> Engine:
    """The registry's factory: ONNX Runtime here is CPU only, so any other device is refused."""
    if device.upper() not in ("CPU", "AUTO"):
        raise EngineError(f"ONNX Runtime runs on the CPU here; device '{device}' needs OpenVINO")
    return ONNXRuntimeEngine(card, precision, threads=threads, **kwargs)
