"""ASGI middleware in front of every route: what a request must be before any route sees it.

- the bearer token (RFC 6750; the scheme is case-insensitive, RFC 7235) on everything but the
  health probes;
- the model-repository extension (`/v2/repository/...`: load and unload models) and the v1
  protocol are switched off: 404, so a token holder cannot unload the served model;
- a body must announce its length, fit the request limits, and arrive in time (a body shorter
  than its Content-Length is answered 408 instead of holding the connection forever);
- bodies admitted at once stay within the in-flight budget; past it the answer is 503 with
  Retry-After, and the server does not grow.
The body is read here, once, into one buffer (no copy of megabytes on the event loop), and
handed on to the route in `scope[BODY]`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from app.serve.limits import JSON_WEIGHT, Limits

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # no token needed (probes)
CLOSED_PREFIXES = ("/v2/repository", "/v1/")
INFERENCE_HEADER = b"inference-header-content-length"
RETRY_AFTER_S = 1
BODY = "delineo.body"  # the scope key under which the route finds the body (a bytearray)


class Guard:
    def __init__(self, app, token: str | None, limits: Limits, max_body_bytes: int):
        self.app = app
        self.token = token.encode() if token else None
        self.limits = limits
        self.max_body = max_body_bytes
        self.in_flight = 0  # admitted body bytes (JSON weighted), on the event loop only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith(CLOSED_PREFIXES):
            return await reply(
                send, 404, f"{path}: not served (the model repository and the v1 protocol are switched off)"
            )
        headers = dict(scope.get("headers") or [])
        if self.token is not None and path not in OPEN_PATHS and not self._authorized(headers):
            given = headers.get(b"authorization")
            why = "wrong bearer token" if given else "this server needs 'Authorization: Bearer <token>'"
            return await reply(send, 401, why, [(b"www-authenticate", b"Bearer")])
        if scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        cost = self._admission_cost(headers)
        if isinstance(cost, tuple):
            return await reply(send, *cost, close=True)
        if self.in_flight + cost > self.limits.max_in_flight_bytes:
            return await reply(
                send,
                503,
                f"the server is full ({self.in_flight >> 20} MiB of requests in flight); retry in "
                f"{RETRY_AFTER_S} s",
                [(b"retry-after", str(RETRY_AFTER_S).encode())],
                close=True,
            )
        self.in_flight += cost
        try:
            body = await self._read_body(receive, int(headers[b"content-length"]))
            if isinstance(body, tuple):
                return await reply(send, *body, close=True)
            if body is None:
                return None  # the client went away
            scope[BODY] = body
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= cost

    def _authorized(self, headers: dict) -> bool:
        scheme, _, credentials = headers.get(b"authorization", b"").strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)

    def _admission_cost(self, headers: dict) -> int | tuple[int, str]:
        """The request's weight against the in-flight budget, or (status, why) to refuse it
        before its body is read."""
        length = headers.get(b"content-length")
        if length is None:
            return 411, "send a Content-Length header (chunked bodies are not accepted)"
        if not length.isdigit():
            return 400, f"bad Content-Length {length.decode(errors='replace')!r}"
        size = int(length)
        header = headers.get(INFERENCE_HEADER)
        if header is not None and not (header.isdigit() and int(header) <= size):
            return (
                400,
                f"Inference-Header-Content-Length {header.decode(errors='replace')!r} is not a "
                f"byte count within the body of {size} bytes",
            )
        json_bytes = int(header) if header is not None else size
        if json_bytes > self.limits.max_json_bytes:
            return (
                413,
                f"the JSON part of the request is {json_bytes} bytes, over the limit of "
                f"{self.limits.max_json_bytes}; send tensors as binary data (Triton's binary extension)",
            )
        if size > self.max_body:
            return 413, f"request of {size} bytes is over the limit of {self.max_body}; send fewer tiles"
        return size + json_bytes * (JSON_WEIGHT - 1)

    async def _read_body(self, receive, size: int) -> bytearray | tuple[int, str] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_deadline_s
        body, got = bytearray(size), 0
        while True:
            wait = min(self.limits.read_timeout_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(0.0, wait))
            except TimeoutError:
                log.warning("request body: %d of %d bytes after waiting; answered 408", got, size)
                return 408, f"the request body stopped at {got} of the {size} bytes announced; send it whole"
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if got + len(chunk) > size:
                return 400, f"the body is longer than its Content-Length of {size} bytes"
            body[got : got + len(chunk)] = chunk
            got += len(chunk)
            if not message.get("more_body", False):
                break
        if got != size:
            return 400, f"the body has {got} bytes; its Content-Length says {size}"
        return body


def _replay(body: bytearray, receive):
    """A `receive` that hands the route the body read already, then waits for the disconnect."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    return replay


async def reply(send, status: int, message: str, extra: list | None = None, close: bool = False) -> None:
    """A JSON error answer; `close` when the request body was not read (the connection cannot
    carry another request)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
