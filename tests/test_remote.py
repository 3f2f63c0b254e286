"""The remote endpoint: `delineo serve` started on 127.0.0.1, the remote engine, and an
independent client (tritonclient) checking the protocol."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest
import shapely
from conftest import SAMPLE_SVS, RunningServer, run_delineo
from shapely.geometry import box

from app.core.geometry import rasterize
from app.core.slide import Slide
from app.inference.engines import create_engine
from app.inference.pipeline import DelineationRun
from app.inference.remote import RemoteEngine, RemoteError, encode_request

MODEL = "ebhi-tumour-resunet"
REGION = box(0, 0, 2220, 2967)  # the whole sample slide


def tiles_from_sample(n: int) -> np.ndarray:
    with Slide.open(SAMPLE_SVS) as slide:
        return np.stack([slide.read_region(200 * i, 300, 0, 512, 512) for i in range(n)])


def dice(a, b, shape) -> float:
    ma = rasterize(shapely.union_all(a), shape, 4.0, (0.0, 0.0))
    mb = rasterize(shapely.union_all(b), shape, 4.0, (0.0, 0.0))
    return float(2 * (ma & mb).sum() / max(1, ma.sum() + mb.sum()))


def test_remote_delineation_agrees_with_local_onnxruntime(server):
    remote = RemoteEngine(server.url, server.token)
    assert remote.card.name == MODEL and remote.nhwc  # the card came from the server's metadata
    local = create_engine("onnxruntime", MODEL, "int8")
    with Slide.open(SAMPLE_SVS) as slide:
        r = DelineationRun(slide, REGION, remote).execute()
        l_ = DelineationRun(slide, REGION, local).execute()
    assert r.finished and r.engine_error is None and r.tiles_done == l_.tiles_done > 0
    assert r.polygons
    assert dice(r.polygons, l_.polygons, (750, 560)) >= 0.99
    assert np.abs(r.probability.astype(np.float32) - l_.probability.astype(np.float32)).max() < 0.02


def test_concurrent_requests_are_batched(server):
    engine = RemoteEngine(server.url, server.token)
    tiles = tiles_from_sample(8)
    before = _stats(server)
    out = [None] * len(tiles)

    def one(i):
        out[i] = engine.predict(tiles[i][None])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(tiles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _stats(server)
    assert after["inference_count"] - before["inference_count"] == 8
    new = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    old = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    merged = {size: count - old.get(size, 0) for size, count in new.items() if size > 1}
    assert any(count > 0 for count in merged.values()), after  # batches of more than one tile ran
    assert after["execution_count"] - before["execution_count"] < 8
    # Batched answers are each request's own: the same as one tile at a time.
    for i in (0, 5):
        np.testing.assert_allclose(out[i], engine.predict(tiles[i][None])[0], atol=1e-5)


def _stats(server) -> dict:
    r = httpx.get(f"{server.url}/v2/models/{MODEL}/stats", headers=server.headers())
    return r.json()["model_stats"][0]


def test_token_is_required_except_for_health(server):
    infer = f"{server.url}/v2/models/{MODEL}/infer"
    body, head = encode_request("tiles", np.zeros((1, 32, 32, 3), np.uint8), "UINT8", "probability")
    headers = {"Inference-Header-Content-Length": str(head)}
    assert httpx.post(infer, content=body, headers=headers).status_code == 401
    wrong = {**headers, "Authorization": "Bearer nope"}
    r = httpx.post(infer, content=body, headers=wrong)
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/models").status_code == 401
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.post(infer, content=body, headers={**headers, **server.headers()}).status_code == 200
    with pytest.raises(RemoteError, match="token"):
        RemoteEngine(server.url, "nope")


def _bad_requests() -> list[tuple[str, dict, bytes | str, int]]:
    j = {"Content-Type": "application/json"}

    def js(name="tiles", datatype="UINT8", shape=(1, 16, 16, 3), data=(1,) * 768):
        return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})

    head, n = encode_request("tiles", np.zeros((1, 16, 16, 3), np.uint8), "UINT8", "probability")
    binary = "Inference-Header-Content-Length"
    return [
        ("malformed JSON", j, "{not json", 400),
        ("not an object", j, "[]", 400),
        ("inputs not a list", j, '{"inputs": 3}', 400),
        ("wrong datatype", j, js(datatype="FP32", data=[0.5] * 768), 400),
        ("wrong shape", j, js(shape=[1, 16, 16], data=[1] * 256), 400),
        ("data short of shape", j, js(data=[1, 2]), 400),
        ("oversized shape", j, js(shape=[1, 100000, 100000, 3], data=[1]), 400),
        ("too many tiles", j, js(shape=[10000, 16, 16, 3], data=[1]), 400),
        ("wrong input name", j, js(name="image"), 400),
        ("binary header past the body", {binary: "999999"}, head, 400),
        ("binary header not a number", {binary: "abc"}, head, 400),
        ("binary data cut short", {binary: str(n)}, head[: n + 100], 400),
        ("unknown model", j, js(), 404),
    ]


def test_bad_requests_get_clear_errors_and_the_server_lives_on(server):
    cases = _bad_requests()
    for _ in range(3):  # a bounded run of bad requests, repeated
        for what, headers, body, status in cases:
            url = f"{server.url}/v2/models/{'nope' if what == 'unknown model' else MODEL}/infer"
            r = httpx.post(url, content=body, headers={**headers, **server.headers()})
            assert r.status_code == status, (what, r.status_code, r.text)
            assert r.json()["error"], what
    # A body announced as 1 TB is refused before it is read (raw socket: httpx would not send it).
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        auth = server.headers()["Authorization"]
        sock.sendall(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {1 << 40}\r\n\r\n".encode()
        )
        answer = b""
        while b"}" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "limit" in answer
    assert server.proc.poll() is None
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    engine = RemoteEngine(server.url, server.token)
    assert engine.predict(tiles_from_sample(1)).shape == (1, 1, 512, 512)


def test_protocol_conformance_with_tritonclient(server):
    """Triton's own HTTP client (binary tensors both ways) agrees with the server."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    headers = server.headers()  # tritonclient adds its own headers to the dict it is given: copy it
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=headers)
    meta = client.get_model_metadata(MODEL, headers=headers)
    assert meta["name"] == MODEL
    assert meta["inputs"] == [{"name": "tiles", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    assert meta["outputs"][0]["name"] == "probability"
    tiles = tiles_from_sample(2)
    inp = triton.InferInput("tiles", list(tiles.shape), "UINT8")
    inp.set_data_from_numpy(tiles, binary_data=True)
    out = triton.InferRequestedOutput("probability", binary_data=True)
    result = client.infer(MODEL, [inp], outputs=[out], headers=dict(headers))
    prob = result.as_numpy("probability")
    assert prob.shape == (2, 1, 512, 512) and prob.dtype == np.float32  # (N, C, H, W), C from the card
    local = create_engine("onnxruntime", MODEL, "int8")
    np.testing.assert_allclose(prob, local.predict(tiles), atol=1e-4)
    # JSON tensors (no binary extension) give the same numbers.
    small = tiles[:1, :32, :32]
    inp = triton.InferInput("tiles", list(small.shape), "UINT8")
    inp.set_data_from_numpy(small, binary_data=False)
    out = triton.InferRequestedOutput("probability", binary_data=False)
    json_prob = client.infer(MODEL, [inp], outputs=[out], headers=dict(headers)).as_numpy("probability")
    np.testing.assert_allclose(json_prob, local.predict(small), atol=1e-4)
    models = httpx.get(f"{server.url}/v2/models", headers=headers).json()
    assert models["models"][0]["name"] == MODEL


def test_killing_the_server_mid_run_keeps_finished_tiles_and_can_finish_locally(large_pyramid):
    own = RunningServer("--threads", "1")
    try:
        engine = RemoteEngine(own.url, retries=1, in_flight=2)
        events = []
        with Slide.open(large_pyramid) as slide:
            region = box(2000, 2000, 9000, 9000)

            def on_tile(ev):
                events.append(ev)
                if sum(e.prob is not None for e in events) == 3 and own.proc.poll() is None:
                    own.kill()

            result = DelineationRun(slide, region, engine).execute(on_tile=on_tile)
            assert result.engine_error and "stopped answering" in result.engine_error
            assert result.tiles_done >= 3 and result.pending and not result.cancelled
            done_before = result.tiles_done
            local = create_engine("openvino", precision="int8")
            finished = DelineationRun(slide, region, local, resume=result).execute()
        assert finished.finished and finished.engine_error is None
        assert finished.tiles_done == done_before + len(result.pending)
        assert finished.tiles_done + finished.tiles_skipped == finished.tiles_total
    finally:
        own.stop()


def test_cli_delineate_remote(server, tmp_path):
    out = tmp_path / "remote.geojson"
    r = run_delineo(
        "delineate", str(SAMPLE_SVS), "--region", "0,0,2220,2967", "--out", str(out),
        "--engine", "remote", "--url", server.url, "--token", server.token,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    features = json.loads(out.read_text(encoding="utf-8"))["features"]
    assert features and all(f["properties"]["classification"]["name"] == "Tumor" for f in features)
    r = run_delineo(
        "delineate", str(SAMPLE_SVS), "--region", "0,0,10,10", "--out", str(out), "--engine", "remote"
    )
    assert r.returncode == 2 and "--url" in r.stderr
    r = run_delineo(
        "delineate", str(SAMPLE_SVS), "--region", "0,0,100,100", "--out", str(out),
        "--engine", "remote", "--url", "http://127.0.0.1:9",
    )  # fmt: skip
    assert r.returncode == 2 and "cannot connect" in r.stderr and "Traceback" not in r.stderr


def test_bench_remote_reports_latency_and_throughput(server):
    r = run_delineo("bench", "remote", "--url", server.url, "--token", server.token, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    remote = result["engines"][f"remote ({server.url})"]
    local = result["engines"]["local onnxruntime-int8"]
    assert remote["latency_ms_median"] > 0 and remote["mpix_per_s"] > 0 and local["mpix_per_s"] > 0
    assert sum(result["server_batch_sizes"].values()) > 0


def test_kserve_manifest_runs_a_valid_delineo_serve():
    """The InferenceService's container command is one `delineo serve` accepts, and its probes
    hit the paths that need no token."""
    import yaml
    from conftest import ROOT

    from app.cli import parse_args
    from app.serve.server import OPEN_PATHS

    doc = yaml.safe_load(
        (ROOT / "packaging" / "kserve" / "inferenceservice.yaml").read_text(encoding="utf-8")
    )
    assert doc["kind"] == "InferenceService" and doc["apiVersion"] == "serving.kserve.io/v1beta1"
    container = doc["spec"]["predictor"]["containers"][0]
    args = parse_args(container["args"])
    assert args.command == "serve" and args.host == "0.0.0.0" and args.provider == "cann"
    assert args.token_file == container["volumeMounts"][0]["mountPath"] + "/token"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in OPEN_PATHS
        assert container[probe]["httpGet"]["port"] == args.port


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "--port 0"),
        (["--token-file", "/no/such/token"], "/no/such/token"),
        (["--token", "a", "--token-file", "b"], "not both"),
        (["--provider", "cann"], "CANNExecutionProvider"),
        (["--max-batch", "0"], "--max-batch"),
        (["--model", "no-such-model"], "no-such-model"),
    ],
)
def test_serve_bad_arguments_exit_2_with_a_clear_line(args, message):
    r = run_delineo("serve", *args, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_remote_engine_sends_fp16_to_a_server_taking_the_models_own_input(tmp_path):
    """The Ascend flow: the FP16 ONNX served with its own input (normalized FP16 NCHW, as Triton
    would serve it); the remote engine normalizes and sends FP16, and agrees with local FP32."""
    from conftest import DATA

    from app.model.ascend import convert_for_ascend

    out = tmp_path / "ascend"
    convert_for_ascend(MODEL, out, data=DATA / "ebhi", tiles=4)
    own = RunningServer("--model", str(out), "--precision", "fp16", "--raw-input", "--threads", "1")
    try:
        remote = RemoteEngine(own.url)
        assert (remote.input_name, remote.input_type, remote.nhwc) == ("image", "FP16", False)
        local = create_engine("onnxruntime", MODEL, "fp32")
        with Slide.open(SAMPLE_SVS) as slide:
            r = DelineationRun(slide, REGION, remote).execute()
            l_ = DelineationRun(slide, REGION, local).execute()
        assert r.finished and dice(r.polygons, l_.polygons, (750, 560)) >= 0.99
        # A uint8 tile sent to this server is refused with what it takes instead.
        body, n = encode_request("tiles", np.zeros((1, 16, 16, 3), np.uint8), "UINT8", "probability")
        rr = httpx.post(
            f"{own.url}/v2/models/{MODEL}/infer",
            content=body,
            headers={"Inference-Header-Content-Length": str(n)},
        )
        assert rr.status_code == 400 and "image" in rr.json()["error"]
    finally:
        own.stop()


# ----------------------------------------------------------------------------- a hostile server


class _FakeServer:
    """A tiny Open Inference Protocol server on 127.0.0.1 that answers what a test tells it."""

    def __init__(self, metadata: dict, infer_answer: tuple[dict, bytes] | None = None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        fake = self
        self.metadata, self.infer_answer = metadata, infer_answer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, body: bytes, headers: dict | None = None):
                self.send_response(200)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v2/models":
                    self._send(json.dumps({"models": [{"name": fake.metadata["name"]}]}).encode())
                else:
                    self._send(json.dumps(fake.metadata).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                head, raw = fake.infer_answer
                header = json.dumps(head).encode()
                self._send(header + raw, {"Inference-Header-Content-Length": str(len(header))})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _metadata(name: str = MODEL, card: dict | None = None) -> dict:
    meta = {
        "name": name,
        "versions": ["1"],
        "platform": "fake",
        "inputs": [{"name": "tiles", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1, -1, -1]}],
    }
    if card is not None:
        meta["parameters"] = {"delineo_card": card}
    return meta


def _shipped_card() -> dict:
    from app.inference.modelcard import ModelCard
    from app.serve.server import card_summary

    return card_summary(ModelCard.load(MODEL))


def test_a_model_name_from_a_server_is_never_a_path(tmp_path):
    import shutil

    from conftest import ROOT

    planted = tmp_path / "planted"  # a real card on the laptop that the server points at
    shutil.copytree(ROOT / "resources" / "models" / MODEL, planted)
    for name in (str(planted), str(planted / "card.json"), "../" + MODEL, "a/b"):
        fake = _FakeServer(_metadata(name))  # no delineo_card: the client would look for a local one
        try:
            for url in (fake.url, f"{fake.url}/v2/models/{MODEL}"):  # listed, or named by the user
                with pytest.raises(RemoteError, match="not a model name"):
                    RemoteEngine(url)
        finally:
            fake.close()


def test_numbers_from_a_server_are_bounded(tmp_path):
    from app.errors import DelineoError

    huge = _shipped_card()
    huge["input"] = {**huge["input"], "tile": 65536}
    fake = _FakeServer(_metadata(card=huge))
    try:
        with pytest.raises(DelineoError) as e:
            RemoteEngine(fake.url)
        assert f"{fake.url}/v2/models/{MODEL}" in str(e.value) and "input.tile 65536" in str(e.value)
    finally:
        fake.close()
    for bad_card in ({**_shipped_card(), "mpp": float("inf")}, {**_shipped_card(), "classes": []}):
        fake = _FakeServer(_metadata(card=bad_card))
        try:
            with pytest.raises(DelineoError, match="not a usable model card"):
                RemoteEngine(fake.url)
        finally:
            fake.close()
    bad_meta = _metadata(card=_shipped_card())
    bad_meta["inputs"][0]["shape"] = [-1, 10**9, "x", 3]
    fake = _FakeServer(bad_meta)
    try:
        with pytest.raises(RemoteError, match="shape"):
            RemoteEngine(fake.url)
    finally:
        fake.close()


@pytest.mark.parametrize(
    ("head", "raw", "message"),
    [
        # An answer claiming a 65536² output in a few bytes.
        (
            {"outputs": [{"name": "probability", "datatype": "FP32", "shape": [1, 65536, 65536],
                          "parameters": {"binary_data_size": 64}}]},
            b"\0" * 64,
            "outside the answer|shape",
        ),
        # The right size for a different shape than asked.
        (
            {"outputs": [{"name": "probability", "datatype": "FP32", "shape": [1, 8, 8],
                          "parameters": {"binary_data_size": 256}}]},
            b"\0" * 256,
            "the request needs",
        ),
        ({"outputs": [{"name": "probability", "datatype": "FP32", "shape": ["1", 32, 32]}]}, b"", "shape"),
        ({"outputs": "nope"}, b"", "outputs"),
    ],
)  # fmt: skip
def test_answers_from_a_server_are_checked(head, raw, message):
    fake = _FakeServer(_metadata(card=_shipped_card()), (head, raw))
    try:
        engine = RemoteEngine(fake.url, retries=0)
        with pytest.raises(RemoteError, match=message) as e:
            engine.predict(np.zeros((1, 32, 32, 3), np.uint8))
        assert "/infer" in str(e.value)
    finally:
        fake.close()
