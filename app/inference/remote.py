"""The remote engine: any Open Inference Protocol (KServe v2) server, Delineo's own or a
Triton / OpenVINO Model Server / KServe deployment of the same model.

Tiles travel as binary tensors (Triton's binary extension): UINT8 NHWC when the server takes
it (Delineo's does, a quarter of the bytes of FP32), else normalized FP16 or FP32 NCHW as the
model metadata says. Several tiles are in flight at once to hide the round trip; a failed
request is retried with backoff; Cancel abandons what is in flight.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from app.inference.engines import EngineError, StreamItem, check_batch, pad_to_multiple
from app.inference.modelcard import ModelCard, to_model_input

log = logging.getLogger(__name__)

HEADER = "Inference-Header-Content-Length"
DTYPES = {"UINT8": np.uint8, "FP16": np.float16, "FP32": np.float32}


class RemoteError(EngineError):
    """The endpoint cannot be reached or refused the work; the message says which and what to do."""


@dataclass
class ServerInfo:
    url: str
    model: str
    version: str
    platform: str
    input: dict
    output: dict
    card: dict | None  # Delineo's card from the metadata, when the server is Delineo's
    round_trip_ms: float


def encode_request(
    name: str, array: np.ndarray, datatype: str, output: str, request_id: str = ""
) -> tuple[bytes, int]:
    """A binary-extension request body and its JSON header's length."""
    raw = np.ascontiguousarray(array).tobytes()
    header = {
        "id": request_id,
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": output, "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, len(head)


def decode_response(body: bytes, header_length: int | None, output: str) -> np.ndarray:
    """The named output of a JSON or binary-extension response."""
    head = json.loads(body[:header_length] if header_length is not None else body)
    offset = header_length or 0
    for out in head.get("outputs", []):
        dtype = DTYPES.get(out.get("datatype"))
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out.get("name") != output:
            offset += size or 0
            continue
        if dtype is None:
            raise RemoteError(
                f"output '{output}' has datatype {out.get('datatype')}; expected FP32, FP16 or UINT8"
            )
        if size is not None:
            data = np.frombuffer(body, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset)
        else:
            data = np.asarray(out["data"], dtype=dtype)
        return data.reshape(out["shape"])
    raise RemoteError(f"the response has no output '{output}'")


class RemoteEngine:
    """`predict(uint8 NHWC) -> probability` over HTTP; `stream` keeps `in_flight` tiles going."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        model: str | Path | ModelCard | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        in_flight: int = 4,
    ):
        import httpx

        self.base, named = _split_url(url)
        self.token = token or None
        self.retries = max(0, retries)
        self.in_flight = max(1, in_flight)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            headers=headers,
            limits=httpx.Limits(
                max_connections=self.in_flight + 2, max_keepalive_connections=self.in_flight + 2
            ),
        )
        local = model if isinstance(model, ModelCard) else None
        wanted = named or (
            local.name if local else (str(model) if model and not Path(str(model)).exists() else None)
        )
        if wanted is None and model is not None:
            local = ModelCard.load(model)
            wanted = local.name
        self.info = self.describe(wanted)
        self.card = self._card(self.info, local, model)
        self.name = f"remote-{self.info.platform or 'v2'}"
        self.model_url = f"{self.base}/v2/models/{self.info.model}"
        inp = self.info.input
        self.input_name, self.input_type = inp["name"], inp["datatype"]
        shape = list(inp.get("shape", []))
        self.nhwc = self.input_type == "UINT8" and len(shape) == 4 and shape[-1] == 3
        if not self.nhwc and not (self.input_type in ("FP16", "FP32") and len(shape) == 4 and shape[1] == 3):
            raise RemoteError(
                f"{self.model_url}: input '{self.input_name}' is {self.input_type} {shape}; the remote "
                "engine sends UINT8 [N, H, W, 3] or FP16/FP32 [N, 3, H, W]"
            )
        self.output_name = self.info.output["name"]

    # ------------------------------------------------------------------ protocol

    def _get(self, path: str) -> dict:
        import httpx

        url = f"{self.base}{path}"
        try:
            r = self.client.get(url)
        except httpx.HTTPError as e:
            raise RemoteError(
                f"{url}: {_why(e)}; check the endpoint URL in Settings and that the server runs"
            ) from None
        if r.status_code == 401:
            raise RemoteError(f"{url}: the server refused the token (401); set the right token in Settings")
        if r.status_code != 200:
            raise RemoteError(f"{url}: HTTP {r.status_code} {_error_text(r)}")
        try:
            return r.json()
        except ValueError:
            raise RemoteError(f"{url}: the answer is not JSON; is this an inference server?") from None

    def describe(self, model: str | None = None) -> ServerInfo:
        """Model metadata and the round-trip time of the metadata request (Test connection)."""
        t0 = time.perf_counter()
        if model is None:
            listed = self._get("/v2/models").get("models", [])
            names = [m["name"] if isinstance(m, dict) else m for m in listed]
            if len(names) != 1:
                raise RemoteError(
                    f"{self.base}: serves {len(names)} models ({', '.join(names) or 'none'}); name one "
                    "in the URL (…/v2/models/NAME)"
                )
            model = names[0]
        meta = self._get(f"/v2/models/{model}")
        rtt = (time.perf_counter() - t0) * 1000
        inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
        if len(inputs) != 1 or not outputs:
            raise RemoteError(
                f"{self.base}/v2/models/{model}: expected one input and an output in its metadata"
            )
        output = next((o for o in outputs if o.get("name") == "probability"), outputs[0])
        return ServerInfo(
            url=self.base,
            model=meta.get("name", model),
            version=(meta.get("versions") or [""])[0],
            platform=meta.get("platform", ""),
            input=inputs[0],
            output=output,
            card=(meta.get("parameters") or {}).get("delineo_card"),
            round_trip_ms=rtt,
        )

    @staticmethod
    def _card(info: ServerInfo, local: ModelCard | None, model) -> ModelCard:
        if info.card is not None:
            return ModelCard.from_dict(info.card, Path("."), where=f"{info.url}/v2/models/{info.model}")
        # Another vendor's server: tile and normalize by the local card of the same model.
        card = local or ModelCard.load(model if model is not None else info.model)
        if card.name != info.model:
            log.warning(
                "remote model %s is served without a card; using the local card of %s", info.model, card.name
            )
        return card

    def _body(self, tiles: np.ndarray) -> tuple[bytes, int, int, int]:
        tiles, h, w = pad_to_multiple(check_batch(tiles), self.card.multiple)
        if self.nhwc:
            return (*encode_request(self.input_name, tiles, "UINT8", self.output_name), h, w)
        x = to_model_input(tiles, self.card.normalization).astype(DTYPES[self.input_type])
        return (*encode_request(self.input_name, x, self.input_type, self.output_name), h, w)

    def predict(self, batch: np.ndarray, abandon: threading.Event | None = None) -> np.ndarray:
        """One request, retried with backoff on connection errors and 5xx/429 (not on our own
        4xx); `abandon` set stops the retries (Cancel, or a stream that was closed)."""
        import httpx

        body, head_len, h, w = self._body(batch)
        url = f"{self.model_url}/infer"
        headers = {HEADER: str(head_len), "Content-Type": "application/octet-stream"}
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                r = self.client.post(url, content=body, headers=headers)
            except httpx.HTTPError as e:
                problem = _why(e)
            else:
                if r.status_code == 200:
                    length = r.headers.get(HEADER)
                    out = decode_response(r.content, int(length) if length else None, self.output_name)
                    out = out[:, 0] if out.ndim == 4 else out
                    return np.asarray(out[:, :h, :w], dtype=np.float32)
                if r.status_code == 401:
                    raise RemoteError(
                        f"{self.base}: the server refused the token (401); set the right token in Settings"
                    )
                problem = f"HTTP {r.status_code} {_error_text(r)}"
                if r.status_code < 500 and r.status_code != 429:
                    raise RemoteError(f"{url}: {problem}")  # our request is wrong: retrying will not help
            if abandon is not None and abandon.is_set():
                raise RemoteError(f"{url}: abandoned ({problem})")
            if attempt < self.retries:
                log.warning("%s: %s; retrying in %.2fs", url, problem, delay)
                if abandon is not None and abandon.wait(delay):
                    raise RemoteError(f"{url}: abandoned ({problem})")
                if abandon is None:
                    time.sleep(delay)
                delay *= 2
        raise RemoteError(f"{self.base} stopped answering ({problem}, {self.retries + 1} attempts)")

    def stream(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        """Up to `in_flight` requests at once, results in order; closing abandons the rest."""
        pool = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="remote")
        pending: deque[tuple[Hashable, Future | BaseException]] = deque()
        abandon = threading.Event()
        try:
            for key, rgb in items:
                pending.append(
                    (
                        key,
                        rgb
                        if isinstance(rgb, BaseException)
                        else pool.submit(self.predict, rgb[None], abandon),
                    )
                )
                while pending and (len(pending) > self.in_flight or _ready(pending[0][1])):
                    k, f = pending.popleft()
                    yield k, f if isinstance(f, BaseException) else f.result()[0]
            while pending:
                k, f = pending.popleft()
                yield k, f if isinstance(f, BaseException) else f.result()[0]
        finally:
            abandon.set()  # requests in flight finish or fail on their own; none is retried
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.client.close()


def _ready(f) -> bool:
    return isinstance(f, BaseException) or f.done()


def _split_url(url: str) -> tuple[str, str | None]:
    """(base URL, model name or None) from `http://host:port` or `…/v2/models/NAME`."""
    url = (url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteError(
            f"endpoint URL '{url}' is not an http:// or https:// address (e.g. http://npu-host:8080)"
        )
    path, model = parts.path, None
    if "/v2/models/" in path:
        path, model = path.split("/v2/models/", 1)
        model = model.split("/")[0] or None
    elif path.endswith("/v2"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}", model


def _why(e: Exception) -> str:
    import httpx

    if isinstance(e, httpx.ConnectError):
        return "cannot connect"
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    return f"{type(e).__name__}: {e}"


def _error_text(r) -> str:
    try:
        return str(r.json().get("error", r.text))[:300]
    except ValueError:
        return r.text[:300]
