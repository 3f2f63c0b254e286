"""`delineo serve`: the tumour model behind the Open Inference Protocol, on KServe's model server.

KServe provides the protocol (REST v2 with Triton's binary tensor extension, health, errors as
`{"error": ...}`); this module adds what a lab needs around it: dynamic batching, a bearer token,
request limits, a bind address (KServe 0.21 binds 0.0.0.0 unconditionally), Triton-style
statistics, and model metadata that carries the model card so a client can check what it talks to.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import DelineoError
from app.inference.modelcard import ModelCard
from app.serve.batching import DynamicBatcher
from app.serve.runtime import TileRuntime

log = logging.getLogger(__name__)

INPUT = "tiles"  # uint8 RGB, (N, H, W, 3)
OUTPUT = "probability"  # float32 tumour probability, (N, H, W)
INFERENCE_HEADER = "inference-header-content-length"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # no token needed (probes)


class ServeError(DelineoError):
    """A server that cannot start; the message names the setting."""


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 << 20  # 256 MiB: 64 tiles of 1024² uint8 fit with room
    max_tiles: int = 64  # per request
    max_side: int = 2048  # px, each of H and W
    min_side: int = 16


def _kserve():
    """Import kserve, which parses sys.argv at import time: hide our own flags from it."""
    saved = sys.argv
    sys.argv = sys.argv[:1]
    try:
        import kserve
        from kserve import model_server
        from kserve.protocol.rest.server import RESTServer
    except ImportError as e:
        raise ServeError(f"the server needs the [serve] extra ({e}); pip install 'delineo[serve]'") from None
    finally:
        sys.argv = saved
    return kserve, model_server, RESTServer


def card_summary(card: ModelCard) -> dict:
    """What a client needs to tile, threshold and colour like the desktop engines do."""
    keys = ("name", "version", "classes", "input", "normalization", "mpp", "output")
    return {k: card.raw[k] for k in keys if k in card.raw}


def make_model_class(kserve):
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferResponse

    class TileModel(kserve.Model):
        def __init__(
            self,
            card: ModelCard,
            batcher: DynamicBatcher,
            limits: Limits,
            platform: str,
            raw: dict | None = None,
        ):
            super().__init__(card.name)
            self.card, self.batcher, self.limits, self.platform = card, batcher, limits, platform
            # The input contract: uint8 RGB tiles (normalized here), or with `raw` the model's own
            # input (normalized NCHW in its float type), as Triton would serve the ONNX.
            self.raw = raw
            self.input = raw or {"name": INPUT, "datatype": "UINT8", "shape": [-1, -1, -1, 3]}
            self.channel_axis = 1 if raw else 3
            self.ready = True

        def get_input_types(self) -> list[dict]:
            return [self.input]

        def get_output_types(self) -> list[dict]:
            return [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, -1, -1]}]

        def tiles(self, request) -> np.ndarray:
            """The request's tensor, or InvalidInput (400) saying what is wrong and what is expected."""
            name, datatype = self.input["name"], self.input["datatype"]
            layout = "[N, 3, H, W]" if self.raw else "[N, H, W, 3]"
            inputs = request.inputs or []
            if len(inputs) != 1 or inputs[0].name != name:
                names = ", ".join(repr(i.name) for i in inputs) or "none"
                raise InvalidInput(f"expected one input named '{name}' ({datatype}, {layout}); got {names}")
            t = inputs[0]
            if t.datatype != datatype:
                raise InvalidInput(f"input '{name}' must be {datatype}; got {t.datatype}")
            shape = list(t.shape)
            lim = self.limits
            if len(shape) != 4 or shape[self.channel_axis] != 3:
                raise InvalidInput(f"input '{name}' must have shape {layout}; got {shape}")
            n, (h, w) = shape[0], (shape[2:] if self.raw else shape[1:3])
            if not 1 <= n <= lim.max_tiles:
                raise InvalidInput(f"{n} tiles in one request; send 1 to {lim.max_tiles}")
            if not (lim.min_side <= h <= lim.max_side and lim.min_side <= w <= lim.max_side):
                raise InvalidInput(f"tile size {h} x {w} outside {lim.min_side}..{lim.max_side} px")
            if self.raw and (h % self.card.multiple or w % self.card.multiple):
                raise InvalidInput(f"tile size {h} x {w}: pad to a multiple of {self.card.multiple}")
            try:
                arr = t.as_numpy()
            except Exception as e:  # noqa: BLE001 - kserve raises several kinds for bad data
                raise InvalidInput(
                    f"input '{name}': data does not match shape {shape} {datatype} ({e})"
                ) from None
            if arr.size != n * h * w * 3:
                raise InvalidInput(f"input '{name}': {arr.size} values for shape {shape}")
            return np.ascontiguousarray(arr.reshape(shape))

        async def predict(self, payload, headers=None, response_headers=None):
            prob = await self.batcher.infer(self.tiles(payload))
            # Binary when the request asks for it, as a whole or for this output (then the data
            # is never turned into a Python list).
            asked = [o.binary_data for o in payload.request_outputs or [] if o.name == OUTPUT]
            binary = bool(asked[0]) if asked and asked[0] is not None else bool(payload.use_binary_outputs)
            out = InferOutput(name=OUTPUT, shape=list(prob.shape), datatype="FP32")
            out.set_data_from_numpy(prob, binary_data=binary)
            return InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                model_version=self.card.version,
                infer_outputs=[out],
                use_binary_outputs=binary,
                requested_outputs=payload.request_outputs,
            )

        def metadata(self) -> dict:
            return {
                "name": self.name,
                "versions": [self.card.version],
                "platform": self.platform,
                "inputs": self.get_input_types(),
                "outputs": self.get_output_types(),
                "parameters": {"delineo_card": card_summary(self.card)},
            }

    return TileModel


class Guard:
    """ASGI middleware: the bearer token on everything but health probes, and a body limit."""

    def __init__(self, app, token: str | None, max_body_bytes: int):
        self.app = app
        self.token = f"Bearer {token}".encode() if token else None
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                why = "wrong bearer token" if given else "this server needs 'Authorization: Bearer <token>'"
                return await _reply(send, 401, why, [(b"www-authenticate", b"Bearer")])
        if scope["method"] in ("POST", "PUT"):
            length = headers.get(b"content-length")
            if length is None:
                return await _reply(
                    send, 411, "send a Content-Length header (chunked bodies are not accepted)"
                )
            try:
                size = int(length)
            except ValueError:
                return await _reply(send, 400, f"bad Content-Length {length!r}")
            header = headers.get(b"inference-header-content-length")
            if header is not None and not (header.isdigit() and int(header) <= size):
                return await _reply(
                    send,
                    400,
                    f"Inference-Header-Content-Length {header.decode(errors='replace')!r} is not a "
                    f"byte count within the body of {size} bytes",
                )
            if size > self.max_body:
                return await _reply(
                    send,
                    413,
                    f"request of {size} bytes is over the limit of {self.max_body}; send fewer tiles",
                )
        return await self.app(scope, receive, send)


async def _reply(send, status: int, message: str, extra: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def read_token(token: str | None, token_file: str | None) -> str | None:
    if token and token_file:
        raise ServeError("give --token or --token-file, not both")
    if token_file:
        p = Path(token_file)
        try:
            token = p.read_text().strip()
        except OSError as e:
            raise ServeError(f"--token-file {p}: cannot read it ({e.strerror})") from None
        if not token:
            raise ServeError(f"--token-file {p}: the file is empty")
    return token or None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _fix_decoding(dataplane) -> None:
    """Three fixes to KServe 0.21's REST request decoding:

    - binary tensors are turned into Python lists (one `.item()` per value: half a second for a
      512² tile) and back; here they stay bytes, read with `np.frombuffer` (`raw_inputs`);
    - a body that contradicts its own header (binary data cut short) escapes as ValueError,
      answered 500, when it is the client's error: 400;
    - a JSON body without Content-Type (tritonclient sends none) is refused as binary.
    """
    from kserve.errors import InvalidInput

    decode = dataplane.decode

    def decode_checked(body, headers, *args, **kwargs):
        if isinstance(body, bytes) and headers is not None:
            if INFERENCE_HEADER not in headers:  # the protocol: no header, the body is all JSON
                headers = {**headers, INFERENCE_HEADER: str(len(body))}
            fast = _decode_binary(body, int(headers[INFERENCE_HEADER]), kwargs.get("model_name"))
            if fast is not None:
                return fast, {}
        try:
            return decode(body, headers, *args, **kwargs)
        except InvalidInput:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise InvalidInput(f"malformed request: {e}") from None

    dataplane.decode = decode_checked


def _decode_binary(body: bytes, json_length: int, model_name: str | None):
    """An InferRequest whose binary inputs stay bytes; None when some input is JSON data (then
    KServe's own decoder takes it)."""
    import orjson
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    try:
        head = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"malformed request: the JSON header is not JSON ({e})") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise InvalidInput("malformed request: expected an object with a list of 'inputs'")
    inputs, raws, offset = [], [], json_length
    for spec in head["inputs"]:
        if not isinstance(spec, dict):
            raise InvalidInput("malformed request: each input must be an object")
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            return None
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise InvalidInput(f"binary data of input '{spec.get('name')}' is cut short or its size is wrong")
        try:
            inputs.append(
                InferInput(
                    name=spec["name"], shape=spec["shape"], datatype=spec["datatype"], parameters=params
                )
            )
        except KeyError as e:
            raise InvalidInput(f"malformed request: an input lacks {e}") from None
        raws.append(body[offset : offset + size])
        offset += size
    outputs = head.get("outputs")
    requested = (
        [
            RequestedOutput(name=o["name"], parameters=o.get("parameters"))
            for o in outputs
            if isinstance(o, dict)
        ]
        if isinstance(outputs, list)
        else None
    )
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=head.get("id"),
        raw_inputs=raws,
        parameters=head.get("parameters"),
        request_outputs=requested or None,
    )


def build_app(
    model: str | Path | None = None,
    provider: str = "auto",
    token: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 20.0,
    limits: Limits = Limits(),
    threads: int = 0,
    raw_input: bool = False,
    precision: str = "auto",
):
    """The KServe model server with our model, routes and middleware; not started yet."""
    kserve, model_server, _ = _kserve()
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    card = ModelCard.load(model)
    runtime = TileRuntime(card, provider, threads, precision)
    batcher = DynamicBatcher(runtime.run_raw if raw_input else runtime.run, max_batch, max_wait_ms)
    raw = runtime.raw_input() if raw_input else None
    tile_model = make_model_class(kserve)(card, batcher, limits, f"onnxruntime_{runtime.provider}", raw)
    server = model_server.ModelServer(enable_grpc=False, workers=1, enable_docs_url=False)
    server.register_model(tile_model)
    _fix_decoding(server.dataplane)
    app = model_server.app

    # Routes registered before KServe's take precedence: the listing in the protocol's object
    # form, metadata with the card, Triton-style statistics.
    @app.get("/v2/models")
    async def list_models():
        return {
            "models": [{"name": tile_model.name, "versions": [card.version], "platform": tile_model.platform}]
        }

    def known(name: str):
        if name != tile_model.name:
            return JSONResponse(status_code=404, content={"error": f"model '{name}' is not served here"})
        return None

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        return known(name) or tile_model.metadata()

    @app.get("/v2/models/{name}/stats")
    async def model_stats(name: str):
        return known(name) or {"model_stats": [batcher.statistics(name, card.version)]}

    async def bad_request(_: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        why = first.get("msg", "not a valid inference request")
        return JSONResponse(
            status_code=400, content={"error": f"malformed request: {why} ({where or 'body'})"}
        )

    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_middleware(Guard, token=token, max_body_bytes=limits.max_body_bytes)
    return server, tile_model, runtime


def serve(
    model: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    provider: str = "auto",
    max_batch: int = 16,
    max_wait_ms: float = 20.0,
    threads: int = 0,
    raw_input: bool = False,
    precision: str = "auto",
) -> None:
    """Run until interrupted (SIGINT/SIGTERM end it cleanly)."""
    server, tile_model, runtime = build_app(
        model,
        provider,
        token,
        max_batch,
        max_wait_ms,
        threads=threads,
        raw_input=raw_input,
        precision=precision,
    )
    _, _, RESTServer = _kserve()
    rest = RESTServer(
        "kserve.model_server:app",
        server.dataplane,
        server.model_repository_extension,
        port,
        workers=1,
        grace_period=5,
    )
    rest.config.host = host
    server._rest_server = rest
    server.servers.append(rest.start())
    server.setup_event_loop()
    if not token and not _is_loopback(host):
        log.warning("listening on %s without a token: anyone who can reach it can use it", host)
    print(
        f"delineo serve: {tile_model.name} {tile_model.card.version} ({runtime.model_file.name}) on "
        f"{runtime.provider}, http://{host}:{port}/v2/models/{tile_model.name}; max batch {max_batch}, "
        f"max wait {max_wait_ms:g} ms; {'token required' if token else 'no token'}",
        file=sys.stderr,
        flush=True,
    )
    asyncio.run(server._serve())
