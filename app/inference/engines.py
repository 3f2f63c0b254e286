"""Inference engines: one protocol, several runtimes.

`predict(batch)` takes uint8 RGB tiles (N, H, W, 3) and returns tumour probability (N, H, W)
float32. Engines normalize with the model card, pad to the model's size multiple and crop back,
so callers never think about layout or normalization.

`predict_stream(engine, items)` runs a sequence of tiles with several in flight where the engine
can (OpenVINO's AsyncInferQueue, concurrent requests to a server), yielding results in order:
the caller's own work on one tile (reading the next, blending, drawing) overlaps the model's.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from app.errors import DelineoError
from app.inference.modelcard import ModelCard, to_model_input

log = logging.getLogger(__name__)

ENGINES = ("openvino", "onnxruntime", "remote")
DEVICES = ("AUTO", "CPU", "GPU")


class EngineError(DelineoError):
    """An engine that cannot be created or run; the message says which setting to change."""


class Engine(Protocol):
    name: str  # e.g. "openvino-int8"
    card: ModelCard

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


StreamItem = tuple[Hashable, "np.ndarray | BaseException"]


def predict_stream(engine: Engine, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
    """(key, uint8 tile (H, W, 3)) in, (key, probability (H, W)) out, in the same order.

    An item whose payload is an exception (a tile that could not be read) passes through in
    its place. Engines with a `stream` method keep several tiles in flight; closing the
    returned generator abandons what is in flight (Cancel)."""
    stream = getattr(engine, "stream", None)
    if stream is not None:
        yield from stream(items)
        return
    for key, rgb in items:
        yield key, rgb if isinstance(rgb, BaseException) else engine.predict(rgb[None])[0]


def pad_to_multiple(batch: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    _, h, w, _ = batch.shape
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        batch = np.pad(batch, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
    return batch, h, w


def check_batch(batch: np.ndarray) -> np.ndarray:
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype != np.uint8:
        raise EngineError(f"engine input must be uint8 (N, H, W, 3); got {batch.dtype} {batch.shape}")
    return batch


class OpenVINOEngine:
    """OpenVINO on CPU, iGPU (GPU) or AUTO. `fp32` runs the ONNX file with the f32 precision hint
    (OpenVINO would otherwise run BF16 on CPUs that have it); `fp16` and `int8` run their IR."""

    def __init__(
        self,
        card: ModelCard,
        precision: str = "int8",
        device: str = "CPU",
        hint: str = "LATENCY",
        threads: int = 0,
        inference_precision: str | None = None,
        cache_dir: str | Path | None = None,
        streams: bool = True,
    ):
        try:
            import openvino as ov
        except ImportError as e:
            raise EngineError(f"OpenVINO is not installed ({e}); pip install openvino") from None
        self.card = card
        self.precision = precision
        self.device = device.upper()
        self.name = f"openvino-{precision}"
        key = {"fp32": "onnx-fp32", "fp16": "openvino-fp16", "int8": "openvino-int8"}.get(precision)
        if key is None:
            raise EngineError(f"precision '{precision}' is not one of fp32, fp16, int8")
        path = card.file(key)
        core = ov.Core()
        if cache_dir is None:
            from app.logs import data_dir

            cache_dir = data_dir() / "openvino-cache"
        try:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        except Exception:  # noqa: BLE001 - a cache is an optimisation only
            log.warning("OpenVINO cache directory %s not usable", cache_dir)
        available = core.available_devices
        if self.device not in ("AUTO", *available) and not self.device.startswith(("AUTO:", "GPU.")):
            raise EngineError(
                f"device '{device}' is not available to OpenVINO here (available: "
                f"{', '.join(available)}); choose CPU or AUTO in Settings"
            )
        config: dict = {"PERFORMANCE_HINT": hint}
        if threads and self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if inference_precision is None and precision == "fp32":
            inference_precision = "f32"  # true FP32; "default" leaves OpenVINO's choice (BF16/FP16)
        if inference_precision not in (None, "default") and self.device in ("CPU", "GPU"):
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        try:
            model = _with_preprocessing(ov, core.read_model(str(path)), card.normalization)
            self.compiled = core.compile_model(model, self.device, config)
            # A second compilation for runs of many tiles: THROUGHPUT gives each core its own
            # stream, which keeps them busy while the caller reads and blends (see `stream`).
            self.streaming = (
                core.compile_model(model, self.device, {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
                if streams
                else None
            )
        except RuntimeError as e:
            raise EngineError(f"OpenVINO could not compile {path.name} for {self.device}: {e}") from None
        self.output = self.compiled.output(0)
        self.request = self.compiled.create_infer_request()
        self.execution_devices = list(self.compiled.get_property("EXECUTION_DEVICES"))
        self._queue = None
        if self.streaming is not None:
            jobs = int(self.streaming.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._queue = ov.AsyncInferQueue(self.streaming, max(2, jobs))
            self._queue.set_callback(self._on_done)
            self._done: dict[int, np.ndarray] = {}
            # Each request's first inference sets up its stream (a few times slower): do it now,
            # not on a pathologist's first tiles.
            blank = np.full((1, card.tile, card.tile, 3), 240, np.uint8)
            for i in range(len(self._queue)):
                self._queue.start_async({0: blank}, (-1 - i, card.tile, card.tile))
            self._queue.wait_all()
            self._done.clear()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch, h, w = pad_to_multiple(check_batch(batch), self.card.multiple)
        out = self.request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)[self.output]
        return np.array(out[:, 0, :h, :w], dtype=np.float32)

    def _on_done(self, request, userdata: tuple[int, int, int]) -> None:
        seq, h, w = userdata  # runs on an OpenVINO thread: copy out and return
        self._done[seq] = np.array(request.get_output_tensor(0).data[0, 0, :h, :w], dtype=np.float32)

    def stream(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        """Tiles through the AsyncInferQueue: `start_async` returns at once while a request is
        free, so the next tile is read while the model runs on the others."""
        if self._queue is None:
            for key, rgb in items:
                yield key, rgb if isinstance(rgb, BaseException) else self.predict(rgb[None])[0]
            return
        queue, done = self._queue, self._done
        pending: deque[tuple[int, Hashable, BaseException | None]] = deque()
        first = True
        try:
            for seq, (key, rgb) in enumerate(items):
                if first and not isinstance(rgb, BaseException):
                    # The first tile on all cores (LATENCY): on screen as soon as possible.
                    first = False
                    yield key, self.predict(rgb[None])[0]
                    continue
                if isinstance(rgb, BaseException):
                    pending.append((seq, key, rgb))
                else:
                    batch, h, w = pad_to_multiple(check_batch(rgb), self.card.multiple)
                    queue.start_async({0: batch}, (seq, h, w))  # waits while every request is busy
                    pending.append((seq, key, None))
                while pending and (pending[0][2] is not None or pending[0][0] in done):
                    s, k, err = pending.popleft()
                    yield k, err if err is not None else done.pop(s)
            queue.wait_all()
            while pending:
                s, k, err = pending.popleft()
                yield k, err if err is not None else done.pop(s)
        finally:
            queue.wait_all()  # abandoned (cancelled) requests finish; their results are dropped
            done.clear()


def _with_preprocessing(ov, model, norm: dict):
    """Take uint8 RGB NHWC and normalize inside the graph, where OpenVINO fuses it with the first
    convolution: no float copy or transpose in NumPy on the hot path."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    scale = norm["scale"]
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([m / scale for m in norm["mean"]]).scale(
        [s / scale for s in norm["std"]]
    )
    return ppp.build()


ONNX_FILES = {"fp32": "onnx-fp32", "int8": "onnx-int8", "fp16": "onnx-fp16"}  # precision -> card key


class ONNXRuntimeEngine:
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
        x = to_model_input(batch, self.card.normalization).astype(self.input_dtype, copy=False)
        out = self.session.run(None, {self.input_name: x})[0]
        return np.asarray(out[:, 0, :h, :w], dtype=np.float32)


def create_engine(
    engine: str = "openvino",
    model: str | Path | None = None,
    precision: str = "int8",
    device: str = "CPU",
    threads: int = 0,
    url: str | None = None,
    token: str | None = None,
    **kwargs,
) -> Engine:
    """The engine named by settings or CLI flags, with a clear error for a bad combination."""
    engine = engine.lower()
    if engine == "remote":
        from app.inference.remote import RemoteEngine

        if not url:
            raise EngineError("the remote engine needs an endpoint URL (Settings, or --url)")
        return RemoteEngine(url, token, model, **kwargs)
    card = model if isinstance(model, ModelCard) else ModelCard.load(model)
    if engine == "openvino":
        return OpenVINOEngine(card, precision, device, threads=threads, **kwargs)
    if engine == "onnxruntime":
        if device.upper() not in ("CPU", "AUTO"):
            raise EngineError(f"ONNX Runtime runs on the CPU here; device '{device}' needs OpenVINO")
        return ONNXRuntimeEngine(card, precision, threads=threads)
    raise EngineError(f"engine '{engine}' is not one of {', '.join(ENGINES)}")
