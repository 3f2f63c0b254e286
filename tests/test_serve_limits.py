"""`delineo serve` against a clumsy or hostile client: what it refuses, and that it keeps its
limits (batches split, bodies bounded, a full server says so, the repository extension off)."""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest
from conftest import RunningServer, run_delineo

from app.inference.remote import encode_request

MODEL = "ebhi-tumour-resunet"
BINARY = "Inference-Header-Content-Length"


def _infer(server, body, headers=None):
    return httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer", content=body, headers={**server.headers(), **(headers or {})}
    )


def _json(shape, data, datatype="UINT8", name="tiles"):
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})


def _stats(server) -> dict:
    return httpx.get(f"{server.url}/v2/models/{MODEL}/stats", headers=server.headers()).json()["model_stats"][
        0
    ]


def test_the_model_repository_cannot_unload_the_model_and_ready_stays_true(server):
    for action in ("unload", "load"):
        r = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/{action}", headers=server.headers())
        assert r.status_code == 404 and "switched off" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    body, n = encode_request("tiles", np.zeros((1, 32, 32, 3), np.uint8), "UINT8", "probability")
    assert _infer(server, body, {BINARY: str(n)}).status_code == 200  # still served
    meta = httpx.get(f"{server.url}/v2", headers=server.headers()).json()
    assert "model_repository_extension" not in meta["extensions"]


@pytest.mark.parametrize(
    ("what", "body"),
    [
        ("string dimension", _json([1, "16", 16, 3], [1] * 768)),
        ("UINT8 value 1.5", _json([1, 16, 16, 3], [1.5] * 768)),
        ("UINT8 value 256", _json([1, 16, 16, 3], [256] * 768)),
        ("booleans", _json([1, 16, 16, 3], [True] * 768)),
        ("strings as data", _json([1, 16, 16, 3], ["1"] * 768)),
        ("ragged data", _json([1, 16, 16, 3], [[1, 2], [3]])),
        ("boolean dimension", _json([True, 16, 16, 3], [1] * 768)),
        (
            "unknown output",
            json.dumps({**json.loads(_json([1, 16, 16, 3], [1] * 768)), "outputs": [{"name": "x"}]}),
        ),
    ],
)
def test_bad_values_are_400_with_a_reason(server, what, body):
    r = _infer(server, body, {"Content-Type": "application/json"})
    assert r.status_code == 400, (what, r.text)
    assert r.json()["error"].startswith("malformed request"), what


def test_the_bearer_scheme_is_case_insensitive(server):
    body, n = encode_request("tiles", np.zeros((1, 16, 16, 3), np.uint8), "UINT8", "probability")
    for scheme in ("bearer", "BEARER", "Bearer"):
        r = httpx.post(
            f"{server.url}/v2/models/{MODEL}/infer",
            content=body,
            headers={BINARY: str(n), "Authorization": f"{scheme} {server.token}"},
        )
        assert r.status_code == 200, scheme
    r = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=body,
        headers={BINARY: str(n), "Authorization": f"Basic {server.token}"},
    )
    assert r.status_code == 401


def test_a_request_larger_than_max_batch_runs_in_batches_of_at_most_max_batch(server):
    """The fixture serves with --max-batch 8: 20 tiles run as 8 + 8 + 4."""
    tiles = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    before = _stats(server)
    body, n = encode_request("tiles", tiles, "UINT8", "probability")
    r = _infer(server, body, {BINARY: str(n)})
    assert r.status_code == 200
    after = _stats(server)
    assert after["inference_count"] - before["inference_count"] == 20
    assert after["execution_count"] - before["execution_count"] >= 3
    assert max(b["batch_size"] for b in after["batch_stats"]) <= 8


def test_requests_past_the_pixel_and_json_limits_are_413_before_they_are_read(server):
    # 17 tiles of 1024² are more pixels than one request may carry: refused from its headers.
    too_many = 17 * 1024 * 1024 * 3 + 200
    answer = _raw_post(server, {"Content-Length": str(too_many), BINARY: "200"})
    assert answer.startswith(b"HTTP/1.1 413") and b"fewer tiles" in answer
    # A 9 MB JSON body: use binary tensors.
    answer = _raw_post(server, {"Content-Length": str(9 << 20), "Content-Type": "application/json"})
    assert answer.startswith(b"HTTP/1.1 413") and b"binary" in answer
    # A legal number of pixels asking for JSON numbers back: too many for JSON.
    body, n = encode_request("tiles", np.zeros((5, 512, 512, 3), np.uint8), "UINT8", "probability")
    head = json.loads(body[:n])
    head["outputs"] = [{"name": "probability", "parameters": {"binary_data": False}}]
    new_head = json.dumps(head).encode()
    r = _infer(server, new_head + body[n:], {BINARY: str(len(new_head))})
    assert r.status_code == 413 and "binary_data" in r.json()["error"]


def _raw_post(server, headers: dict, body: bytes = b"", sock: socket.socket | None = None) -> bytes:
    """Send a POST's headers (and maybe part of its body) and return what the server answers."""
    auth = server.headers().get("Authorization")
    lines = [f"POST /v2/models/{MODEL}/infer HTTP/1.1", "Host: x"]
    lines += [f"Authorization: {auth}"] if auth else []
    lines += [f"{k}: {v}" for k, v in headers.items()]
    own = sock is None
    sock = sock or socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return _read_answer(sock)
    finally:
        if own:
            sock.close()


def _read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while b"}" not in answer and (chunk := sock.recv(4096)):
        answer += chunk
    return answer


def test_empty_token_is_refused_at_start():
    r = run_delineo("serve", "--token", "", "--port", "9", timeout=120)
    assert r.returncode == 2 and "--token is empty" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def raw_server():
    """The FP32 model's own input, a 2 s read timeout and a 200 MiB in-flight budget."""
    s = RunningServer(
        "--raw-input",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--read-timeout",
        "2",
        "--max-in-flight-mb",
        "200",
    )
    yield s
    s.stop()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinity_in_raw_float_input_are_400(raw_server, bad):
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 1, 5, 7] = bad
    body, n = encode_request("image", x, "FP32", "probability")
    r = _infer(raw_server, body, {BINARY: str(n)})
    assert r.status_code == 400 and "NaN or infinite" in r.json()["error"]
    # As JSON numbers (Python's json writes NaN and Infinity, which are not JSON).
    r = _infer(
        raw_server, _json([1, 3, 16, 16], [bad] * 768, "FP32", "image"), {"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    x[0, 1, 5, 7] = 0.5
    body, n = encode_request("image", x, "FP32", "probability")
    assert _infer(raw_server, body, {BINARY: str(n)}).status_code == 200


def test_a_body_shorter_than_its_length_times_out_and_a_full_server_answers_503(raw_server):
    held = socket.create_connection(("127.0.0.1", raw_server.port), timeout=30)
    try:
        # 150 MiB announced, 1 KiB sent: admitted, then held while the rest does not come.
        lines = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {150 << 20}\r\n"
        held.sendall(f"{lines}{BINARY}: 100\r\n\r\n".encode() + b"{" * 1024)
        # Meanwhile another 60 MiB would pass the 200 MiB budget: 503 with Retry-After.
        answer = _raw_post(raw_server, {"Content-Length": str(60 << 20), BINARY: "100"})
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower(), answer
        # A small request still gets through, and the probes answer.
        body, n = encode_request("image", np.zeros((1, 3, 32, 32), np.float32), "FP32", "probability")
        assert _infer(raw_server, body, {BINARY: str(n)}).status_code == 200
        assert httpx.get(f"{raw_server.url}/v2/health/ready").status_code == 200
        # The held request is answered 408 after the read timeout (2 s), not kept forever.
        answer = _read_answer(held)
        assert answer.startswith(b"HTTP/1.1 408") and b"stopped at 1024" in answer, answer
    finally:
        held.close()
    # Its bytes no longer count: another 60 MiB is admitted now (and, sent short, times out too).
    answer = _raw_post(raw_server, {"Content-Length": str(60 << 20), BINARY: "100"}, b"{" * 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_the_json_answer_limit_counts_every_class_channel():
    """Two 512² tiles fit a one-class answer in JSON numbers; a four-class model's answer to
    the same request is four times longer and refused (413, asking for binary data)."""
    from app.serve.codec import InputContract, RequestError, parse_request
    from app.serve.limits import Limits

    body, n = encode_request("tiles", np.zeros((2, 512, 512, 3), np.uint8), "UINT8", "probability")
    head = json.loads(body[:n])
    head["outputs"] = [{"name": "probability", "parameters": {"binary_data": False}}]
    new_head = json.dumps(head).encode()
    request = new_head + body[n:]
    one = InputContract("tiles", "UINT8", 3, 32, Limits(), classes=1)
    assert parse_request(request, len(new_head), one).tiles.shape == (2, 512, 512, 3)
    four = InputContract("tiles", "UINT8", 3, 32, Limits(), classes=4)
    with pytest.raises(RequestError, match="4 per pixel") as refused:
        parse_request(request, len(new_head), four)
    assert refused.value.status == 413 and "binary_data" in refused.value.message
