"""`delineo serve`: the tumour model behind the Open Inference Protocol, on KServe's model server.

KServe provides the protocol's routes (health, metadata, errors as `{"error": ...}`); this module
adds what a lab needs around them: an inference route that validates every request once
(app/serve/codec.py) and decodes it off the event loop, dynamic batching in parts that fit the
memory budget (app/serve/limits.py), a bearer token and admission control (app/serve/guard.py),
readiness that means every model is ready, a bind address (KServe 0.21 binds 0.0.0.0
unconditionally), Triton-style statistics, and model metadata that carries the model card so
a client can check what it talks to. KServe's model-repository extension is switched off.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import sys
from pathlib import Path

from app import __version__
from app.errors import DelineoError
from app.inference.modelcard import ModelCard
from app.serve.batching import DynamicBatcher
from app.serve.codec import OUTPUT, InputContract, RequestError, encode_response, parse_request
from app.serve.guard import BODY, OPEN_PATHS, Guard
from app.serve.limits import Limits
from app.serve.runtime import TileRuntime, in_low_priority_thread, lower_thread_priority

log = logging.getLogger(__name__)

__all__ = ["OPEN_PATHS", "Limits", "ServeError", "build_app", "read_token", "serve"]

INPUT = "tiles"  # uint8 RGB, (N, H, W, 3)


class ServeError(DelineoError):
    """A server that cannot start; the message names the setting."""


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
    keys = ("format", "name", "version", "classes", "background", "input", "normalization", "mpp", "output")
    return {k: card.raw[k] for k in keys if k in card.raw}


def make_model_class(kserve):
    class TileModel(kserve.Model):
        """The served model as KServe's registry knows it (readiness, metadata); inference goes
        through this module's own route, not `predict`."""

        def __init__(self, card: ModelCard, contract: InputContract, platform: str):
            super().__init__(card.name)
            self.card, self.contract, self.platform = card, contract, platform
            self.input = {"name": contract.name, "datatype": contract.datatype, "shape": _shape(contract)}
            self.ready = True

        def get_input_types(self) -> list[dict]:
            return [self.input]

        def get_output_types(self) -> list[dict]:
            return [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, self.card.channels, -1, -1]}]

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


def _shape(contract: InputContract) -> list[int]:
    return [-1, -1, -1, 3] if contract.channel_axis == 3 else [-1, 3, -1, -1]


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The token from --token or --token-file; an empty one is refused, never taken as 'none'."""
    if token is not None and token_file:
        raise ServeError("give --token or --token-file, not both")
    if token is not None:
        token = token.strip()
        if not token:
            raise ServeError("--token is empty; give a token (openssl rand -hex 24) or leave --token out")
    if token_file:
        p = Path(token_file)
        try:
            token = p.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ServeError(f"--token-file {p}: cannot read it ({e.strerror})") from None
        if not token:
            raise ServeError(f"--token-file {p}: the file is empty")
    if token is not None and any(c.isspace() or not c.isprintable() for c in token):
        raise ServeError("the token must be printable characters without spaces")
    return token


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_app(
    model: str | Path | None = None,
    provider: str = "auto",
    token: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 20.0,
    limits: Limits | None = None,
    threads: int = 0,
    raw_input: bool = False,
    precision: str = "auto",
):
    """The KServe model server with our model, routes and middleware; not started yet."""
    kserve, model_server, _ = _kserve()
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    limits = limits or Limits()
    card = ModelCard.load(model)
    card.check_integrity()  # every file the card lists, before anything is loaded
    # The model's threads run at a lower priority than the event loop's: on a busy host the
    # health probe and admission answers come first.
    runtime = in_low_priority_thread(lambda: TileRuntime(card, provider, threads, precision))
    raw = runtime.raw_input() if raw_input else None
    spec = raw or {"name": INPUT, "datatype": "UINT8"}
    contract = InputContract(
        spec["name"], spec["datatype"], 1 if raw else 3, card.multiple, limits, classes=card.channels
    )
    problem = limits.check(contract.datatype)
    if problem:
        raise ServeError(f"server limits: {problem}")
    batcher = DynamicBatcher(
        runtime.run_raw if raw_input else runtime.run,
        max_batch,
        max_wait_ms,
        limits.max_batch_pixels,
        thread_initializer=lower_thread_priority,
        channels=card.channels,
    )
    tile_model = make_model_class(kserve)(card, contract, f"onnxruntime_{runtime.provider}")
    server = model_server.ModelServer(enable_grpc=False, workers=1, enable_docs_url=False)
    server.register_model(tile_model)
    app = model_server.app

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse(status_code=status, content={"error": message}, headers=headers)

    # Routes registered before KServe's take precedence.
    @app.get("/v2")
    async def server_metadata():
        return {"name": "delineo", "version": __version__, "extensions": ["binary_tensor_data", "statistics"]}

    @app.get("/v2/health/ready")
    async def ready():
        models = server.registered_models.get_models()
        waiting = [name for name, m in models.items() if not m.ready]
        if not models or waiting:
            return error(503, f"not ready: {', '.join(waiting) or 'no model'} not loaded")
        return {"ready": True}

    @app.get("/v2/models")
    async def list_models():
        return {
            "models": [{"name": tile_model.name, "versions": [card.version], "platform": tile_model.platform}]
        }

    def known(name: str):
        if name != tile_model.name:
            return error(404, f"model '{name}' is not served here")
        return None

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        return known(name) or tile_model.metadata()

    @app.get("/v2/models/{name}/stats")
    async def model_stats(name: str):
        return known(name) or {"model_stats": [batcher.statistics(name, card.version)]}

    async def infer(request):  # a plain Starlette route: FastAPI would read the body itself
        name, version = request.path_params["name"], request.path_params.get("version")
        if (bad := known(name)) is not None:
            return bad
        if version not in (None, card.version):
            return error(404, f"model '{name}' version '{version}' is not served (it has {card.version})")
        if not tile_model.ready:
            return error(503, f"model '{name}' is not ready", {"retry-after": "1"})
        body = request.scope.get(BODY)
        if body is None:  # not through the guard (cannot happen when served): read it here
            body = await request.body()
        header = request.headers.get("inference-header-content-length")
        try:
            parsed = await asyncio.to_thread(
                parse_request, body, int(header) if header is not None else None, contract
            )
        except RequestError as e:
            return error(e.status, e.message)
        request.scope.pop(BODY, None)
        del body  # the tiles are a view of it when binary: it lives on with them, no longer
        prob = await batcher.infer(parsed.tiles)
        content, headers = await asyncio.to_thread(
            encode_response, prob, name, card.version, parsed.request_id, parsed.binary_output
        )
        return Response(content=content, headers=headers, media_type=headers["content-type"])

    app.router.add_route("/v2/models/{name}/infer", infer, methods=["POST"])
    app.router.add_route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"])

    async def bad_request(_: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        why = first.get("msg", "not a valid inference request")
        return error(400, f"malformed request: {why} ({where or 'body'})")

    app.add_exception_handler(RequestValidationError, bad_request)
    max_body = limits.max_body_bytes(contract.datatype)
    app.add_middleware(Guard, token=token, limits=limits, max_body_bytes=max_body)
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
    limits: Limits | None = None,
) -> None:
    """Run until interrupted (SIGINT/SIGTERM end it cleanly)."""
    limits = limits or Limits()
    server, tile_model, runtime = build_app(
        model,
        provider,
        token,
        max_batch,
        max_wait_ms,
        limits=limits,
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
        f"max wait {max_wait_ms:g} ms, at most {limits.max_request_pixels >> 20} Mi px a request and "
        f"{limits.max_in_flight_bytes >> 20} MiB in flight; {'token required' if token else 'no token'}",
        file=sys.stderr,
        flush=True,
    )
    # Everything loaded so far lives as long as the server: out of the collector's sight, a full
    # collection no longer walks KServe's and the model's objects (a pause the probes would see).
    gc.collect()
    gc.freeze()
    asyncio.run(server._serve())
