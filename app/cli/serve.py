"""`delineo serve`: the model over the Open Inference Protocol ([serve] extra)."""

from __future__ import annotations

import argparse

from app.cli.arguments import UsageError


def add_to(sub) -> None:
    v = sub.add_parser("serve", help="serve the model over the Open Inference Protocol ([serve] extra)")
    v.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    v.add_argument("--token-file", default=None, help="read the token from this file")
    v.add_argument("--provider", default="auto", choices=["auto", "cann", "cuda", "openvino", "cpu"])
    v.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "int8", "fp16", "fp32"],
        help="which of the card's ONNX models (auto: FP16 on an NPU/GPU, INT8 on a CPU)",
    )
    v.add_argument("--max-batch", type=int, default=16, help="tiles merged into one model run")
    v.add_argument("--max-wait-ms", type=float, default=20.0, help="longest a request waits for others")
    v.add_argument("--threads", type=int, default=0, help="CPU threads for the model (0: all cores)")
    v.add_argument(
        "--max-in-flight-mb",
        type=int,
        default=512,
        help="request bodies held at once (MiB); past it clients get 503 and Retry-After",
    )
    v.add_argument(
        "--read-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the next part of a request body before answering 408",
    )
    v.add_argument(
        "--raw-input",
        action="store_true",
        help="take the model's own input (normalized FP16/FP32 NCHW, as Triton serves it), not uint8",
    )
    v.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from app.serve.limits import Limits
        from app.serve.server import read_token, serve
    except ImportError as e:  # the desktop app (and a plain install) leave the server out
        raise UsageError(
            f"serving needs the [serve] extra ({e.name} is missing): pip install -e '.[serve]'"
        ) from None

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: give a port between 1 and 65535")
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise UsageError("--max-batch must be at least 1 and --max-wait-ms not negative")
    if not 0 < args.read_timeout <= 3600:
        raise UsageError(f"--read-timeout {args.read_timeout:g}: give seconds between 0 and 3600")
    if args.max_in_flight_mb < 1:
        raise UsageError(f"--max-in-flight-mb {args.max_in_flight_mb}: give at least 1")
    token = read_token(args.token, args.token_file)
    limits = Limits(max_in_flight_bytes=args.max_in_flight_mb << 20, read_timeout_s=args.read_timeout)
    serve(
        args.model,
        args.host,
        args.port,
        token,
        args.provider,
        args.max_batch,
        args.max_wait_ms,
        args.threads,
        raw_input=args.raw_input,
        precision=args.precision,
        limits=limits,
    )
    return 0
