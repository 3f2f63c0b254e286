"""The remote engine: any Open Inference Protocol (KServe v2) server, Delineo's own or a
Triton / OpenVINO Model Server / KServe deployment of the same model.

Tiles travel as binary tensors (Triton's binary extension): UINT8 NHWC when the server takes
it (Delineo's does, a quarter of the bytes of FP32), else normalized FP16 or FP32 NCHW as the
model metadata says. Several tiles are in flight at once to hide the round trip; a failed
request is retried with backoff; Cancel abandons what is in flight.

Nothing a server sends is trusted: a model name is a name (checked, never used as a path),
the card's numbers are bounded (ModelCard), metadata shapes and every answer's shape, datatype
and size are checked against the request, and no answer is read past the size it can have.
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

from app.inference.engine import Engine, EngineError, StreamItem, check_batch, pad_to_multiple
from app.inference.modelcard import ModelCard, is_model_name, to_model_input

log = logging.getLogger(__name__)

HEADER = "Inference-Header-Content-Length"
DTYPES = {"UINT8": np.uint8, "FP16": np.float16, "FP32": np.float32}
MAX_METADATA_BYTES = 1 << 20  # a metadata answer larger than this is not one
MAX_HEADER_BYTES = 1 << 20  # the JSON part of an inference answer
MAX_DIM = 1 << 16  # any dimension a server declares


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


def decode_response(
    body: bytes, header_length: int | None, output: str, expected: tuple[int, ...] | None = None
) -> np.ndarray:
    """The named output of a JSON or binary-extension response, checked: its header, datatype,
    byte count and, when `expected` (N, C, H, W) is given, that shape (or (N, H, W) for one class:
    another vendor's server)."""
    try:
        head = json.loads(body[:header_length] if header_length is not None else body)
    except (ValueError, UnicodeDecodeError):
        raise RemoteError("the answer is not Open Inference Protocol JSON") from None
    if header_length is not None and not 0 < header_length <= len(body):
        raise RemoteError(f"the answer's header length {header_length} is outside its {len(body)} bytes")
    outputs = head.get("outputs") if isinstance(head, dict) else None
    if not isinstance(outputs, list):
        raise RemoteError("the answer has no list of 'outputs'")
    offset = header_length or 0
    for out in outputs:
        if not isinstance(out, dict):
            raise RemoteError("an output in the answer is not an object")
        params = out.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None and not (_whole(size) and 0 <= size <= len(body) - offset):
            raise RemoteError(f"output {out.get('name')!r}: binary_data_size {size!r} is outside the answer")
        if out.get("name") != output:
            offset += size or 0
            continue
        dtype = DTYPES.get(out.get("datatype"))
        if dtype is None:
            raise RemoteError(
                f"output '{output}' has datatype {out.get('datatype')!r}; expected FP32, FP16 or UINT8"
            )
        shape = out.get("shape")
        dims_ok = isinstance(shape, list) and all(_whole(d) and d >= 0 for d in shape)
        if not (dims_ok and 3 <= len(shape) <= 4):
            raise RemoteError(f"output '{output}': shape {shape!r} is not three or four whole numbers")
        one_class = expected is not None and expected[1] == 1 and tuple(shape) == (expected[0], *expected[2:])
        if expected is not None and tuple(shape) != tuple(expected) and not one_class:
            raise RemoteError(f"output '{output}' has shape {shape}; the request needs {list(expected)}")
        count = int(np.prod(shape, dtype=np.int64))
        if size is not None:
            if size != count * np.dtype(dtype).itemsize:
                raise RemoteError(f"output '{output}': {size} bytes for shape {shape} {out['datatype']}")
            data = np.frombuffer(body, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset)
        else:
            values = out.get("data")
            if not isinstance(values, list):
                raise RemoteError(f"output '{output}' has neither data nor binary_data_size")
            try:
                data = np.asarray(values, dtype=dtype).reshape(-1)
            except (ValueError, TypeError, OverflowError):
                raise RemoteError(f"output '{output}': data is not a list of numbers") from None
            if data.size != count:
                raise RemoteError(f"output '{output}': {data.size} values for shape {shape}")
        return data.reshape(shape)
    raise RemoteError(f"the answer has no output '{output}'")


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_tensor_spec(spec, what: str, where: str) -> dict:
    """A metadata input or output: a name, a datatype, and a shape of whole numbers or -1."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise RemoteError(f"{where}: the metadata's {what} has no name")
    if len(spec["name"]) > 128 or not spec["name"].isprintable():
        raise RemoteError(f"{where}: the metadata's {what} name is not a plain name")
    shape = spec.get("shape", [])
    if not (
        isinstance(shape, list)
        and len(shape) <= 8
        and all(_whole(d) and (d == -1 or 0 < d <= MAX_DIM) for d in shape)
    ):
        raise RemoteError(f"{where}: the metadata's {what} shape {shape!r} is not whole numbers (or -1)")
    if not isinstance(spec.get("datatype", ""), str):
        raise RemoteError(f"{where}: the metadata's {what} datatype is not a name")
    return spec


class RemoteEngine(Engine):
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
            status, _, content = self._request("GET", url, MAX_METADATA_BYTES)
        except httpx.HTTPError as e:
            raise RemoteError(
                f"{url}: {_why(e)}; check the endpoint URL in Settings and that the server runs"
            ) from None
        if status == 401:
            raise RemoteError(f"{url}: the server refused the token (401); set the right token in Settings")
        if status != 200:
            raise RemoteError(f"{url}: HTTP {status} {_error_text(content)}")
        try:
            answer = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise RemoteError(f"{url}: the answer is not JSON; is this an inference server?") from None
        if not isinstance(answer, dict):
            raise RemoteError(f"{url}: the answer is not a JSON object; is this an inference server?")
        return answer

    def _request(self, method: str, url: str, limit: int, **kwargs) -> tuple[int, dict, bytes]:
        """(status, headers, body), the body read no further than `limit` bytes: a server
        cannot make the client allocate what it likes."""
        with self.client.stream(method, url, **kwargs) as r:
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise RemoteError(f"{url}: the answer is {declared} bytes, more than {limit} expected")
            chunks, got = [], 0
            for chunk in r.iter_bytes():
                got += len(chunk)
                if got > limit:
                    raise RemoteError(f"{url}: the answer is over {limit} bytes, more than expected")
                chunks.append(chunk)
            return r.status_code, r.headers, b"".join(chunks)

    def describe(self, model: str | None = None) -> ServerInfo:
        """Model metadata and the round-trip time of the metadata request (Test connection)."""
        t0 = time.perf_counter()
        if model is None:
            listing = f"{self.base}/v2/models"
            listed = self._get("/v2/models").get("models", [])
            if not isinstance(listed, list) or len(listed) > 1000:
                raise RemoteError(f"{listing}: 'models' is not a list of models")
            names = [m.get("name") if isinstance(m, dict) else m for m in listed]
            odd = next((n for n in names if not is_model_name(n)), None)
            if odd is not None:
                raise RemoteError(f"{listing}: lists {str(odd)[:80]!r}, which is not a model name")
            if len(names) != 1:
                raise RemoteError(
                    f"{self.base}: serves {len(names)} models ({', '.join(names[:20]) or 'none'}); name "
                    "one in the URL (…/v2/models/NAME)"
                )
            model = names[0]
        if not is_model_name(model):
            raise RemoteError(f"{self.base}: {model!r} is not a model name (letters, digits, . _ -)")
        where = f"{self.base}/v2/models/{model}"
        meta = self._get(f"/v2/models/{model}")
        rtt = (time.perf_counter() - t0) * 1000
        name = meta.get("name", model)
        if not is_model_name(name):
            raise RemoteError(f"{where}: the server calls its model {str(name)[:80]!r}: not a model name")
        inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != 1 or not outputs:
            raise RemoteError(f"{where}: expected one input and an output in its metadata")
        inp = _check_tensor_spec(inputs[0], "input", where)
        outs = [_check_tensor_spec(o, "output", where) for o in outputs[:16]]
        output = next((o for o in outs if o["name"] == "probability"), outs[0])
        versions, platform = meta.get("versions") or [""], meta.get("platform", "")
        params = meta.get("parameters") or {}
        card = params.get("delineo_card") if isinstance(params, dict) else None
        if card is not None and not isinstance(card, dict):
            raise RemoteError(f"{where}: delineo_card in its metadata is not an object")
        return ServerInfo(
            url=self.base,
            model=name,
            version=str(versions[0])[:64] if isinstance(versions, list) and versions else "",
            platform=platform[:100] if isinstance(platform, str) else "",
            input=inp,
            output=output,
            card=card,
            round_trip_ms=rtt,
        )

    @staticmethod
    def _card(info: ServerInfo, local: ModelCard | None, model) -> ModelCard:
        where = f"{info.url}/v2/models/{info.model}"
        if info.card is not None:
            card = ModelCard.from_dict(info.card, Path("."), where=f"{where} (its delineo_card)")
            if card.name != info.model:
                raise RemoteError(f"{where}: its card is for model {card.name!r}, not {info.model!r}")
            return card
        # Another vendor's server: tile and normalize by the local card of the same model, the
        # one the user gave or a shipped one of that name (never a path the server chose).
        if local is not None:
            card = local
        elif model is not None:
            card = ModelCard.load(model)  # the user's own setting
        else:
            card = ModelCard.shipped(info.model, where=where)
        if card.name != info.model:
            log.warning(
                "remote model %s is served without a card; using the local card of %s", info.model, card.name
            )
        return card

    def _body(self, tiles: np.ndarray) -> tuple[bytes, int, tuple[int, int, int], int, int]:
        """(body, header length, the padded (N, C, H, W) the answer must have, H, W)."""
        tiles, h, w = pad_to_multiple(check_batch(tiles), self.card.multiple)
        padded = (tiles.shape[0], self.card.channels, *tiles.shape[1:3])
        if self.nhwc:
            return (*encode_request(self.input_name, tiles, "UINT8", self.output_name), padded, h, w)
        x = to_model_input(tiles, self.card.normalization, self.card.channel_order).astype(
            DTYPES[self.input_type]
        )
        return (*encode_request(self.input_name, x, self.input_type, self.output_name), padded, h, w)

    def predict(self, batch: np.ndarray, abandon: threading.Event | None = None) -> np.ndarray:
        """One request, retried with backoff on connection errors and 5xx/429 (not on our own
        4xx); `abandon` set stops the retries (Cancel, or a stream that was closed)."""
        import httpx

        body, head_len, padded, h, w = self._body(batch)
        url = f"{self.model_url}/infer"
        headers = {HEADER: str(head_len), "Content-Type": "application/octet-stream"}
        # The largest answer this request can have: FP32 probabilities, or JSON numbers.
        limit = MAX_HEADER_BYTES + int(np.prod(padded)) * 32
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                status, answer_headers, content = self._request(
                    "POST", url, limit, content=body, headers=headers
                )
            except httpx.HTTPError as e:
                problem = _why(e)
            else:
                if status == 200:
                    length = answer_headers.get(HEADER)
                    if length is not None and not length.isdigit():
                        raise RemoteError(f"{url}: the answer's {HEADER} {length[:40]!r} is not a byte count")
                    try:
                        out = decode_response(
                            content, int(length) if length else None, self.output_name, padded
                        )
                    except RemoteError as e:
                        raise RemoteError(f"{url}: {e}") from None
                    out = out[:, None] if out.ndim == 3 else out
                    return np.asarray(out[:, :, :h, :w], dtype=np.float32)
                if status == 401:
                    raise RemoteError(
                        f"{self.base}: the server refused the token (401); set the right token in Settings"
                    )
                problem = f"HTTP {status} {_error_text(content)}"
                if status < 500 and status != 429:
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


def create(
    model: str | Path | ModelCard | None = None, url: str | None = None, token: str | None = None, **kwargs
) -> RemoteEngine:
    """The registry's factory: the server decides device and precision; an endpoint is a must."""
    if not url:
        raise EngineError("the remote engine needs an endpoint URL (Settings, or --url)")
    return RemoteEngine(url, token, model, **kwargs)


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


def _error_text(content: bytes) -> str:
    text = content[:2000].decode("utf-8", errors="replace")
    try:
        answer = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return text[:300]
    return str(answer.get("error", text) if isinstance(answer, dict) else text)[:300]
