"""OpenVINO on CPU, iGPU or AUTO, registered as "openvino" in `engine_registry`."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path

import numpy as np

from app.inference.engine import Engine, EngineError, StreamItem, check_batch, check_output, pad_to_multiple
from app.inference.modelcard import ModelCard

log = logging.getLogger(__name__)


def device_accepted(device: str, available: list[str]) -> bool:
    """OpenVINO takes a device its Core lists, AUTO, or the AUTO:... and GPU.N forms (checked when
    compiling): the engine's rule, and the one a batch checks --device with up front."""
    return device in ("AUTO", *available) or device.startswith(("AUTO:", "GPU."))


class OpenVINOEngine(Engine):
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
        if key == "onnx-fp32" and key not in card.files and "openvino-fp32" in card.files:
            key = "openvino-fp32"  # a model that came as an FP32 IR
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
        if not device_accepted(self.device, available):
            raise EngineError(
                f"device '{device}' is not available to OpenVINO here (available: "
                f"{', '.join(available)}); choose CPU or AUTO (--device on the command line, "
                "Settings in the window)"
            )
        config: dict = {"PERFORMANCE_HINT": hint}
        if threads and self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if inference_precision is None and precision == "fp32":
            inference_precision = "f32"  # true FP32; "default" leaves OpenVINO's choice (BF16/FP16)
        if inference_precision not in (None, "default") and self.device in ("CPU", "GPU"):
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        try:
            model = _with_pre_and_postprocessing(ov, core.read_model(str(path)), card)
            try:
                self._compile(core, model, config, streams)
            except RuntimeError as e:
                # Two processes filling an empty cache at once can collide on the same blob
                # (a batch's workers, two delineate runs): the second compiles without it.
                log.warning("OpenVINO compile with the cache failed (%s); compiling without it", e)
                core.set_property({"CACHE_DIR": ""})
                self._compile(core, model, config, streams)
        except RuntimeError as e:
            raise EngineError(f"OpenVINO could not compile {path.name} for {self.device}: {e}") from None
        self.output = self.compiled.output(0)
        self.path = path
        shape = self.output.get_partial_shape()
        if shape.rank.is_static and (
            shape.rank.get_length() != 4 or (shape[1].is_static and shape[1].get_length() != card.channels)
        ):
            raise EngineError(
                f"{path.name}: the model outputs shape {shape}, but its card declares {card.channels} "
                f"class channel(s) (N, {card.channels}, H, W); fix the card's classes"
            )
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

    def _compile(self, core, model, config: dict, streams: bool) -> None:
        self.compiled = core.compile_model(model, self.device, config)
        # A second compilation for runs of many tiles: THROUGHPUT gives each core its own
        # stream, which keeps them busy while the caller reads and blends (see `stream`).
        self.streaming = (
            core.compile_model(model, self.device, {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
            if streams
            else None
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch, h, w = pad_to_multiple(check_batch(batch), self.card.multiple)
        out = self.request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)[self.output]
        return np.array(check_output(out, self.card, self.path.name)[:, :, :h, :w], dtype=np.float32)

    def _on_done(self, request, userdata: tuple[int, int, int]) -> None:
        seq, h, w = userdata  # runs on an OpenVINO thread: copy out and return
        self._done[seq] = np.array(request.get_output_tensor(0).data[0, :, :h, :w], dtype=np.float32)

    def stream(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        """Tiles through the AsyncInferQueue: `start_async` returns at once while a request is
        free, so the next tile is read while the model runs on the others."""
        if self._queue is None:
            yield from super().stream(items)
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


def _with_pre_and_postprocessing(ov, model, card: ModelCard):
    """Take uint8 RGB NHWC, reorder and normalize inside the graph (OpenVINO fuses it with the
    first convolution: no float copy or transpose in NumPy on the hot path), and end in the
    card's activation, so the answer is class probabilities as it leaves the runtime."""
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor

    if len(model.outputs) != 1 or len(model.inputs) != 1:
        raise EngineError(
            f"the model has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); "
            "Delineo runs models with one image input and one class-score output"
        )
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    norm, steps = card.normalization, ppp.input().preprocess()
    steps.convert_element_type(ov.Type.f32)
    if card.channel_order == "BGR":
        steps.reverse_channels()
    scale = norm["scale"]
    steps.mean([m / scale for m in norm["mean"]]).scale([s / scale for s in norm["std"]])
    if card.activation == "softmax":
        ppp.output().postprocess().custom(lambda out: ops.softmax(out, 1).output(0))
    elif card.activation == "sigmoid":
        ppp.output().postprocess().custom(lambda out: ops.sigmoid(out).output(0))
    ppp.output().tensor().set_element_type(ov.Type.f32)
    return ppp.build()
