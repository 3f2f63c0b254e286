"""Property-based fuzzing of the infer endpoint: whatever a client sends, the answer is a
success or a 4xx with a JSON error, never a 500, never a hang (httpx's timeout would fail it)."""

from __future__ import annotations

import json

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "ebhi-tumour-resunet"
BINARY = "Inference-Header-Content-Length"

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)
dims = st.integers(-5, 5000) | st.sampled_from([0, 1, 3, 16, 2**31, 2**63, -1]) | json_scalars
datatypes = st.sampled_from(["UINT8", "FP32", "FP16", "INT64", "BYTES", "uint8", ""]) | st.text(max_size=6)
names = st.sampled_from(["tiles", "image", "", "probability"]) | st.text(max_size=6)


@st.composite
def structured_requests(draw) -> tuple[dict, bytes]:
    """Requests shaped like the protocol's, with every field possibly wrong."""
    spec = {
        "name": draw(names),
        "datatype": draw(datatypes),
        "shape": draw(st.lists(dims, max_size=5) | json_values),
    }
    raw = b""
    kind = draw(st.sampled_from(["json", "binary", "none"]))
    if kind == "json":
        spec["data"] = draw(st.lists(json_scalars, max_size=50) | json_values)
    elif kind == "binary":
        raw = draw(st.binary(max_size=3000))
        size = draw(st.just(len(raw)) | st.integers(-10, 10**12) | json_scalars)
        spec["parameters"] = {"binary_data_size": size}
    head: dict = {"inputs": [spec]}
    if draw(st.booleans()):
        head["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": names, "parameters": json_values}), max_size=2)
            | json_values
        )
    if draw(st.booleans()):
        head["id"] = draw(json_scalars)
    return head, raw


@st.composite
def consistent_tiles(draw) -> tuple[dict, bytes]:
    """Well-formed binary UINT8 tiles of any small size (some too small: 400; some run: 200)."""
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 80)), draw(st.integers(1, 80))
    tiles = np.full((n, h, w, 3), draw(st.integers(0, 255)), np.uint8)
    raw = tiles.tobytes()
    spec = {
        "name": "tiles",
        "datatype": "UINT8",
        "shape": [n, h, w, 3],
        "parameters": {"binary_data_size": len(raw)},
    }
    binary_out = draw(st.booleans())
    return {
        "inputs": [spec],
        "outputs": [{"name": "probability", "parameters": {"binary_data": binary_out}}],
    }, raw


@st.composite
def mutated_requests(draw) -> tuple[dict, bytes]:
    """A valid JSON request of one 16² tile with one or two of its fields made wrong: where
    plain random input rarely reaches (past the name and datatype checks)."""
    shape = [1, 16, 16, 3]
    spec = {"name": "tiles", "datatype": "UINT8", "shape": list(shape), "data": [7] * 768}
    for _ in range(draw(st.integers(1, 2))):
        field = draw(st.sampled_from(["shape-dim", "shape", "data-value", "data", "datatype", "params"]))
        if field == "shape-dim" and isinstance(spec["shape"], list) and len(spec["shape"]) == 4:
            spec["shape"][draw(st.integers(0, 3))] = draw(dims)
        elif field == "shape":
            spec["shape"] = draw(json_values)
        elif field == "data-value" and isinstance(spec["data"], list) and len(spec["data"]) == 768:
            spec["data"][draw(st.integers(0, 767))] = draw(json_values)
        elif field == "data":
            spec["data"] = draw(json_values)
        elif field in ("shape-dim", "data-value"):
            continue
        elif field == "datatype":
            spec["datatype"] = draw(datatypes)
        else:
            spec["parameters"] = draw(json_values)
    return {"inputs": [spec]}, b""


def _exactly_valid(spec: dict) -> bool:
    """The oracle for mutated requests: only these may succeed (no coercion of "16" or 1.5)."""

    def whole(v, lo, hi):
        return type(v) is int and lo <= v <= hi

    params = spec.get("parameters")
    return (
        spec["name"] == "tiles"
        and spec["datatype"] == "UINT8"
        and spec["shape"] == [1, 16, 16, 3]
        and all(type(d) is int for d in spec["shape"])
        and isinstance(spec["data"], list)
        and len(spec["data"]) == 768
        and all(whole(v, 0, 255) for v in spec["data"])
        and (params is None or (isinstance(params, dict) and "binary_data_size" not in params))
    )


def _check(r: httpx.Response) -> None:
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code != 200:
        assert isinstance(r.json()["error"], str) and r.json()["error"]


FUZZ = settings(
    max_examples=80,
    deadline=10_000,
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _post(server, body: bytes, headers: dict) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=body,
        headers={**server.headers(), **headers},
        timeout=20,
    )


def _send(server, head: dict, raw: bytes, as_binary: bool) -> httpx.Response:
    text = json.dumps(head).encode()
    if as_binary or raw:
        return _post(server, text + raw, {BINARY: str(len(text)), "Content-Type": "application/octet-stream"})
    return _post(server, text, {"Content-Type": "application/json"})


def test_fuzz_structured_requests(server):
    @FUZZ
    @given(request=structured_requests() | consistent_tiles(), as_binary=st.booleans())
    def run(request, as_binary):
        _check(_send(server, *request, as_binary))

    run()


def test_fuzz_near_valid_requests_succeed_only_when_exactly_valid(server):
    @settings(FUZZ, max_examples=150)
    @given(request=mutated_requests(), as_binary=st.booleans())
    def run(request, as_binary):
        r = _send(server, *request, as_binary)
        _check(r)
        if r.status_code == 200:
            assert _exactly_valid(request[0]["inputs"][0]), request

    run()


def test_fuzz_raw_bodies_and_headers(server):
    @FUZZ
    @given(
        body=st.binary(max_size=2000) | json_values.map(lambda v: json.dumps(v).encode()),
        header=st.none()
        | st.integers(-5, 3000).map(str)
        | st.text("0123456789abc-+.x", min_size=1, max_size=8),
        content_type=st.sampled_from(["application/json", "application/octet-stream", "text/plain", None]),
    )
    def run(body, header, content_type):
        headers = {}
        if header is not None:
            headers[BINARY] = header
        if content_type is not None:
            headers["Content-Type"] = content_type
        _check(_post(server, body, headers))

    run()
