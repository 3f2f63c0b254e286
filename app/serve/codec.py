"""Open Inference Protocol requests in, answers out: the one place a request is validated.

A request is JSON (tensor values as numbers) or Triton's binary extension (a JSON header, then
raw little-endian tensor bytes, the header's length in `Inference-Header-Content-Length`).
Everything a client sends is checked here once, against the served input and the `Limits`,
and anything wrong is a `RequestError` with the HTTP status and a message that says what is
expected: a string dimension, a UINT8 value of 1.5, NaN in a float tensor, a shape past a
limit, data that does not match its shape. Binary tensors are read with `np.frombuffer`, never
turned into Python numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from app.serve.limits import Limits

OUTPUT = "probability"  # float32 class probabilities, (N, C, H, W)
DTYPES = {"UINT8": np.uint8, "FP16": np.float16, "FP32": np.float32}


class RequestError(Exception):
    """A request the server refuses: the HTTP status and what the client should send instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InputContract:
    """The served input: uint8 RGB NHWC tiles, or with raw input the model's normalized NCHW."""

    name: str
    datatype: str
    channel_axis: int  # 3 for NHWC, 1 for NCHW
    multiple: int  # raw input must already be padded to it (uint8 tiles are padded here)
    limits: Limits
    classes: int = 1  # output channels: a JSON answer holds this many numbers per pixel

    @property
    def layout(self) -> str:
        return "[N, H, W, 3]" if self.channel_axis == 3 else "[N, 3, H, W]"


@dataclass
class TileRequest:
    tiles: np.ndarray  # (N, H, W, 3) uint8 or (N, 3, H, W) float
    request_id: str
    binary_output: bool


def _bad(message: str) -> RequestError:
    return RequestError(400, f"malformed request: {message}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_request(body: bytes, json_length: int | None, contract: InputContract) -> TileRequest:
    """The request's tiles, checked against the contract, or RequestError (4xx)."""
    import orjson

    lim = contract.limits
    if json_length is None:
        json_length = len(body)
    if not 0 < json_length <= len(body):
        raise _bad(f"Inference-Header-Content-Length {json_length} is not within the {len(body)} byte body")
    if json_length > lim.max_json_bytes:
        raise RequestError(
            413,
            f"the JSON part of the request is {json_length} bytes, over the limit of {lim.max_json_bytes}; "
            "send tensors as binary data (Triton's binary extension)",
        )
    try:
        head = orjson.loads(memoryview(body)[:json_length])
    except orjson.JSONDecodeError as e:
        raise _bad(f"the JSON is not valid ({e})") from None
    if not isinstance(head, dict):
        raise _bad("expected a JSON object with a list of 'inputs'")
    request_id = head.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > 256:
        raise _bad("'id' must be a string of at most 256 characters")
    inputs = head.get("inputs")
    name, datatype, layout = contract.name, contract.datatype, contract.layout
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise _bad("'inputs' must be a list of objects")
    if len(inputs) != 1 or inputs[0].get("name") != name:
        names = ", ".join(repr(i.get("name")) for i in inputs) or "none"
        raise _bad(f"expected one input named '{name}' ({datatype}, {layout}); got {names}")
    spec = inputs[0]
    if spec.get("datatype") != datatype:
        raise _bad(f"input '{name}' must be {datatype}; got {spec.get('datatype')!r}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or not all(_is_int(d) for d in shape):
        raise _bad(f"input '{name}' shape must be four whole numbers {layout}; got {shape!r}")
    if shape[contract.channel_axis] != 3:
        raise _bad(f"input '{name}' must have shape {layout}; got {shape}")
    n, (h, w) = shape[0], (shape[1:3] if contract.channel_axis == 3 else shape[2:])
    if not 1 <= n <= lim.max_tiles:
        raise _bad(f"{n} tiles in one request; send 1 to {lim.max_tiles}")
    if not (lim.min_side <= h <= lim.max_side and lim.min_side <= w <= lim.max_side):
        raise _bad(f"tile size {h} x {w} outside {lim.min_side}..{lim.max_side} px")
    if n * h * w > lim.max_request_pixels:
        raise RequestError(
            413,
            f"{n} tiles of {h} x {w} are {n * h * w} pixels, over the limit of {lim.max_request_pixels} "
            "per request; send fewer tiles per request",
        )
    if contract.channel_axis == 1 and (h % contract.multiple or w % contract.multiple):
        raise _bad(f"tile size {h} x {w}: pad to a multiple of {contract.multiple}")
    binary_output = _wants_binary(head)
    numbers = n * contract.classes * h * w
    if not binary_output and numbers > lim.max_json_output_pixels:
        raise RequestError(
            413,
            f"{numbers} probabilities ({contract.classes} per pixel) are too many to send as JSON numbers "
            f"(limit {lim.max_json_output_pixels}); ask for output '{OUTPUT}' with binary_data: true",
        )
    dtype = np.dtype(DTYPES[datatype])
    arr = _tensor(body, json_length, spec, shape, dtype)
    return TileRequest(np.ascontiguousarray(arr.reshape(shape)), request_id, binary_output)


def _tensor(body: bytes, offset: int, spec: dict, shape: list[int], dtype: np.dtype) -> np.ndarray:
    """The input's values, binary or JSON, checked for count, type and range."""
    name = spec["name"]
    count = math.prod(shape)
    params = spec.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise _bad(f"input '{name}': 'parameters' must be an object")
    size = (params or {}).get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size != count * dtype.itemsize:
            raise _bad(
                f"input '{name}': binary_data_size {size!r} is not {count * dtype.itemsize} bytes "
                f"({shape} {spec['datatype']})"
            )
        if offset + size != len(body):
            raise _bad(
                f"input '{name}': the body holds {len(body) - offset} bytes of tensor data, "
                f"its header says {size}"
            )
        arr = np.frombuffer(body, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        if dtype.kind == "f" and not np.isfinite(arr).all():
            raise _bad(f"input '{name}' holds NaN or infinite values")
        return arr.astype(dtype, copy=False)  # a no-op on little-endian machines
    if offset != len(body):
        raise _bad(f"{len(body) - offset} bytes follow the JSON but no input declares binary_data_size")
    data = spec.get("data")
    if not isinstance(data, list):
        raise _bad(f"input '{name}' has no 'data' (a list of numbers) and no binary_data_size")
    if data and not isinstance(data[0], list):
        return _flat_values(data, name, shape, count, dtype)
    try:
        values = np.asarray(data)  # nested lists: bounded by the JSON size limit
    except (ValueError, TypeError, OverflowError):
        raise _bad(f"input '{name}': 'data' is not a list of numbers in the shape {shape}") from None
    if values.size != count:
        raise _bad(f"input '{name}': {values.size} values for shape {shape} ({count} expected)")
    _check_values(values, name, dtype)
    return values.astype(dtype).reshape(-1)


JSON_CHUNK = 1 << 16  # values converted at a time; the GIL is let go between chunks


def _flat_values(data: list, name: str, shape: list[int], count: int, dtype: np.dtype) -> np.ndarray:
    """A flat list of JSON numbers into `dtype`, a chunk at a time: each conversion holds the
    GIL for a few milliseconds only, so the event loop keeps answering (health probes)."""
    if len(data) != count:
        raise _bad(f"input '{name}': {len(data)} values for shape {shape} ({count} expected)")
    out = np.empty(count, dtype)
    for start in range(0, count, JSON_CHUNK):
        try:
            chunk = np.asarray(data[start : start + JSON_CHUNK])
        except (ValueError, TypeError, OverflowError):
            chunk = None
        if chunk is None or chunk.ndim != 1:
            raise _bad(f"input '{name}': 'data' is not a list of numbers in the shape {shape}")
        _check_values(chunk, name, dtype)
        out[start : start + len(chunk)] = chunk
        time.sleep(0)  # let the event loop's thread take the GIL
    return out


def _check_values(values: np.ndarray, name: str, dtype: np.dtype) -> None:
    if dtype.kind == "u":
        if values.dtype.kind not in "iu" or (values.size and (values.min() < 0 or values.max() > 255)):
            raise _bad(f"input '{name}' is UINT8: its values must be whole numbers 0..255")
    elif values.dtype.kind not in "iuf" or not np.isfinite(values).all():
        raise _bad(f"input '{name}' must hold finite numbers (no NaN, no infinity)")


def _wants_binary(head: dict) -> bool:
    """Binary when the request asks for it: for this output, or for all outputs."""
    outputs = head.get("outputs")
    params = head.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise _bad("'parameters' must be an object")
    default = bool((params or {}).get("binary_data_output", False))
    if outputs is None:
        return default
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise _bad("'outputs' must be a list of objects")
    for o in outputs:
        if o.get("name") != OUTPUT:
            raise _bad(f"unknown output {o.get('name')!r}; this model has one output, '{OUTPUT}'")
        p = o.get("parameters")
        if p is not None and not isinstance(p, dict):
            raise _bad(f"output '{OUTPUT}': 'parameters' must be an object")
        if p and "binary_data" in p:
            return bool(p["binary_data"])
    return default


def encode_response(
    prob: np.ndarray, model_name: str, version: str, request_id: str, binary: bool
) -> tuple[bytes | memoryview, dict[str, str]]:
    """The answer's body and headers: JSON numbers, or a JSON header and little-endian bytes."""
    import orjson

    prob = np.ascontiguousarray(prob, dtype="<f4")
    out = {"name": OUTPUT, "datatype": "FP32", "shape": list(prob.shape)}
    head = {"model_name": model_name, "model_version": version, "id": request_id, "outputs": [out]}
    if not binary:
        out["data"] = prob.ravel()
        return orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY), {"content-type": "application/json"}
    out["parameters"] = {"binary_data_size": prob.nbytes}
    header = orjson.dumps(head)
    # One buffer, filled by numpy (which lets the GIL go while it copies): no bytes
    # concatenation of megabytes that would hold up the event loop.
    buffer = bytearray(len(header) + prob.nbytes)
    buffer[: len(header)] = header
    np.copyto(np.frombuffer(buffer, "<f4", offset=len(header)).reshape(prob.shape), prob)
    return memoryview(buffer), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
