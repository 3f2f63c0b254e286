"""What one request and the whole server may hold, and the memory budget those limits keep.

The budget is for the Kubernetes manifest's pod of 8 GiB (packaging/kserve/inferenceservice.yaml),
measured with the shipped model on ONNX Runtime INT8 (CPU, 2-core VM):

- the process with the model loaded: 0.26 GB;
- one model execution: about 520 bytes per pixel at its peak (16 x 512² tiles: 2.2 GB), so
  executions are capped at `max_batch_pixels` (4 Mi px: one 2048² tile or 16 of 512²); after
  executions of every shape ONNX Runtime's arena stays at 2.4 GB;
- requests in flight (admitted, read, queued, answered): each holds its body, its
  probabilities (4 bytes a pixel) and the encoded answer, under 4 times the body's bytes for
  UINT8 tiles; admitted bodies are capped at `max_in_flight_bytes` (512 MiB): under 2 GB. A JSON
  body counts `JSON_WEIGHT` times its size (each decoded value is a Python object);
- total under 4.7 GB, which leaves the 8 GiB pod room for the allocator's slack. The largest
  legal request alone (16 x 1024², 48 MiB) peaks at 2.5 GB (the same request took 4.8 GB as one
  batch before executions were capped).

A request past a per-request limit is refused with 4xx before its body is read where the
headers already tell; one that would pass the in-flight budget gets 503 with Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass

JSON_WEIGHT = 10  # bytes of memory per byte of JSON body, decoded (measured 7.9 for 4 MiB of "0,")
BYTES_PER_PIXEL = {"UINT8": 3, "FP16": 6, "FP32": 12}  # an RGB pixel of the input, by datatype


@dataclass(frozen=True)
class Limits:
    max_tiles: int = 64  # per request
    max_side: int = 2048  # px, each of H and W
    min_side: int = 16
    max_request_pixels: int = 16 << 20  # N x H x W per request: 16 Mi px (16 of 1024², 64 of 512²)
    max_batch_pixels: int = 4 << 20  # N x H x W per model execution
    # The JSON part of a request; tensors beyond go binary. Parsing is one call that holds the
    # GIL (orjson: about 60 ms for 4 MiB here), so this also bounds how long a probe can wait.
    max_json_bytes: int = 4 << 20
    max_json_output_pixels: int = 1 << 20  # probabilities sent back as JSON numbers
    max_in_flight_bytes: int = 512 << 20  # request bodies admitted at once (JSON weighted)
    header_slack_bytes: int = 1 << 20  # room for the JSON header of a binary request
    read_timeout_s: float = 15.0  # the longest wait for the next piece of a request body
    body_deadline_s: float = 300.0  # the longest a whole request body may take to arrive

    def max_body_bytes(self, datatype: str) -> int:
        """The largest legal body for inputs of this datatype (binary tensors)."""
        return self.max_request_pixels * BYTES_PER_PIXEL.get(datatype, 12) + self.header_slack_bytes

    def check(self, datatype: str) -> str | None:
        """Why these limits contradict each other, or None."""
        if self.max_side**2 > self.max_batch_pixels:
            return f"one {self.max_side}² tile would not fit a model execution of {self.max_batch_pixels} px"
        if self.max_body_bytes(datatype) > self.max_in_flight_bytes:
            return (
                f"the largest legal request ({self.max_body_bytes(datatype) >> 20} MiB) is over the "
                f"in-flight budget ({self.max_in_flight_bytes >> 20} MiB)"
            )
        if self.max_json_bytes * JSON_WEIGHT > self.max_in_flight_bytes:
            return "the largest JSON request is over the in-flight budget"
        return None
