"""`delineo bench serve-load`: a bounded load test of `delineo serve` on 127.0.0.1.

A few hundred requests at each of several concurrency levels, most of them real tiles, some
malformed, some announced larger than the limits, a few of the largest legal size; meanwhile
a probe asks `/v2/health/ready` every 100 ms and the server's resident memory is sampled. It
reports latency (p50/p99) and throughput of the good requests, the answers by status, the
peak server RSS against the budget (app/serve/limits.py) and the slowest health answer.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.inference.remote import encode_request

MODEL = "ebhi-tumour-resunet"
HEADER = "Inference-Header-Content-Length"
BUDGET_MB = 8 * 1024  # the pod of packaging/kserve/inferenceservice.yaml
HEALTH_FLOOR_MS = 100


def _start_server(port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    from app.serve.server import ServeError

    raise ServeError("delineo serve did not become ready within 120 s (is the [serve] extra installed?)")


def _sample(pid: int, url: str, stop, results) -> None:
    """In its own process (its own GIL: the load's client threads cannot delay it): the server's
    peak RSS every 20 ms and a health probe every 100 ms, until `stop` is set."""
    import httpx
    import psutil

    process = psutil.Process(pid)
    peak, health, failures = 0, [], 0
    with httpx.Client(timeout=5) as client:
        next_probe = 0.0
        while not stop.is_set():
            try:
                peak = max(peak, process.memory_info().rss)
            except psutil.Error:
                break
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + 0.1
                t0 = time.perf_counter()
                try:
                    ok = client.get(f"{url}/v2/health/ready").status_code == 200
                except httpx.HTTPError:
                    ok = False
                health.append((time.time(), (time.perf_counter() - t0) * 1000))
                failures += not ok
            stop.wait(0.02)
    results.put({"peak_rss": peak, "health_ms": health, "health_failures": failures})


def _requests(n: int, tile: np.ndarray, rng: np.random.Generator) -> list[tuple[str, object]]:
    """(kind, payload) for n requests: about 80 % good (one to four 512² tiles, mostly one, as
    the remote engine sends them), 10 % malformed, 10 % announced too large, and one request
    of the largest legal size (16 tiles of 1024²) in the middle."""
    side = 512
    good = [
        (
            "good",
            encode_request("tiles", np.repeat(tile[None, :side, :side], k, axis=0), "UINT8", "probability"),
        )
        for k in (1, 2, 4)
    ]
    small, small_n = encode_request("tiles", tile[None, :16, :16], "UINT8", "probability")
    j = {"inputs": [{"name": "tiles", "datatype": "UINT8", "shape": [1, "16", 16, 3], "data": [1] * 768}]}
    malformed = [
        ("malformed", (b"{not json", None)),
        ("malformed", (json.dumps(j).encode(), None)),
        ("malformed", (small[: small_n + 100], small_n)),  # binary data cut short
        ("malformed", (small.replace(b'"UINT8"', b'"FP32" '), small_n)),
    ]
    largest = np.repeat(tile[None, :1024, :1024], 16, axis=0)  # 16 Mi px: the per-request limit
    kinds = []
    for i in range(n):
        r = rng.random()
        if i == n // 2:
            kinds.append(("largest", encode_request("tiles", largest, "UINT8", "probability")))
        elif r < 0.10:
            kinds.append(("oversized", 17 * 1024 * 1024 * 3 + 200))  # announced, never sent
        elif r < 0.20:
            kinds.append(malformed[int(rng.integers(len(malformed)))])
        else:
            kinds.append(good[0] if rng.random() < 0.7 else good[int(rng.integers(1, len(good)))])
    return kinds


def _announce(port: int, length: int) -> int:
    """Headers of a request too large to accept, no body: the status the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
            f"{HEADER}: 200\r\n\r\n".encode()
        )
        answer = sock.recv(64)
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _level(url: str, port: int, concurrency: int, plan: list, spans: list) -> dict:
    import httpx

    local = threading.local()

    def one(item) -> tuple[str, int, float, int]:
        kind, payload = item
        t0, started = time.perf_counter(), time.time()
        if kind == "oversized":
            status = _announce(port, payload)
            return kind, status, time.perf_counter() - t0, 0
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=120)
        body, n = payload
        headers = {HEADER: str(n)} if n is not None else {"Content-Type": "application/json"}
        try:
            status = client.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers).status_code
        except httpx.HTTPError:
            status = 0
        tiles = 0
        if status == 200:
            head = json.loads(body[:n])
            shape = head["inputs"][0]["shape"]
            tiles = shape[0] * shape[1] * shape[2]
        if kind == "largest":
            spans.append((started, time.time()))
        return kind, status, time.perf_counter() - t0, tiles

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, plan))
    wall = time.perf_counter() - t0
    good = [s * 1000 for kind, status, s, _ in results if kind == "good" and status == 200]
    pixels = sum(px for *_, px in results)
    by_status = Counter(f"{kind} {status}" for kind, status, _, _ in results)
    return {
        "concurrency": concurrency,
        "requests": len(plan),
        "answers": dict(sorted(by_status.items())),
        "good_latency_ms_p50": round(statistics.median(good), 1) if good else None,
        "good_latency_ms_p99": round(float(np.percentile(good, 99)), 1) if good else None,
        "requests_per_s": round(len(plan) / wall, 2),
        "mpix_per_s": round(pixels / 1e6 / wall, 3),
        "seconds": round(wall, 1),
    }


def bench_serve_load(
    requests: int = 200,
    levels: tuple[int, ...] = (1, 4, 16),
    server_args: list[str] | None = None,
    progress=None,
) -> dict:
    """Start `delineo serve` on 127.0.0.1, load it, stop it; the figures as a dict."""
    from app.inference.benchmark import benchmark_tile, cpu_name

    say = progress or (lambda _: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    extra = list(server_args or [])
    proc = _start_server(port, extra)
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    sampler = ctx.Process(target=_sample, args=(proc.pid, url, stop, results), daemon=True)
    sampled = {"peak_rss": 0, "health_ms": [], "health_failures": 0}
    try:
        import psutil

        idle_rss = psutil.Process(proc.pid).memory_info().rss
        tile = benchmark_tile(1024)[0]
        rng = np.random.default_rng(0)
        sampler.start()
        rows, spans = [], []
        for c in levels:
            say(f"{requests} requests, {c} at a time…")
            rows.append(_level(url, port, c, _requests(requests, tile, rng), spans))
        alive = proc.poll() is None
        stop.set()
        sampled = results.get(timeout=30)
    finally:
        stop.set()
        sampler.join(10)
        if sampler.is_alive():
            sampler.kill()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    health = [ms for _, ms in sampled["health_ms"]]
    slow = [t for t, ms in sampled["health_ms"] if ms > HEALTH_FLOOR_MS]
    during_largest = sum(any(a <= t <= b for a, b in spans) for t in slow)
    peak_mb = round(sampled["peak_rss"] / 2**20)
    return {
        "server_args": extra,
        "levels": rows,
        "server_alive_after": alive,
        "server_rss_mb_idle": round(idle_rss / 2**20),
        "server_rss_mb_peak": peak_mb,
        "memory_budget_mb": BUDGET_MB,
        "within_budget": peak_mb <= BUDGET_MB,
        "health_probes": len(health),
        "health_failures": sampled["health_failures"],
        "health_ms_p50": round(statistics.median(health), 1) if health else None,
        "health_ms_p99": round(float(np.percentile(health, 99)), 1) if health else None,
        "health_ms_max": round(max(health), 1) if health else None,
        "health_over_100ms": len(slow),
        "health_over_100ms_during_largest_request": during_largest,
        "health_within_100ms": bool(health) and max(health) <= HEALTH_FLOOR_MS,
        "cpu": cpu_name(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
