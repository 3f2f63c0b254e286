"""Where the engines used to live, kept so `from app.inference.engines import ...` still works:
the interface is in `engine`, the runtimes in their own modules, the list in `engine_registry`."""

from app.inference.engine import Engine, EngineError, StreamItem, check_batch, pad_to_multiple, predict_stream
from app.inference.engine_registry import ENGINES, EngineSpec, create_engine
from app.inference.onnxruntime_engine import ONNX_FILES, ONNXRuntimeEngine
from app.inference.openvino_engine import OpenVINOEngine

__all__ = [
    "ENGINES",
    "ONNX_FILES",
    "Engine",
    "EngineError",
    "EngineSpec",
    "ONNXRuntimeEngine",
    "OpenVINOEngine",
    "StreamItem",
    "check_batch",
    "create_engine",
    "pad_to_multiple",
    "predict_stream",
]
