""" "Auto" precision: on first use, time each precision this machine can run and keep the fastest
whose validated Dice is within 0.005 of FP32. INT8 is not always fastest (older Intel iGPUs run
FP16 faster), so it is measured, not assumed. The choice is cached per machine, device, engine
and model file."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from app.inference.benchmark import cpu_name
from app.inference.engine import EngineError
from app.inference.engine_registry import ENGINES, create_engine
from app.inference.modelcard import ModelCard

log = logging.getLogger(__name__)
DICE_TOLERANCE = 0.005


def cache_path() -> Path:
    from app.logs import data_dir

    return data_dir() / "auto-precision.json"


def _key(card: ModelCard, engine: str, device: str) -> str:
    files = card.files
    digest = (files.get("openvino-int8") or files.get("onnx-fp32") or {}).get("sha256", "")[:16]
    return f"{cpu_name()}|{device}|{engine}|{card.name}|{card.version}|{digest}"


def eligible(card: ModelCard, engine: str) -> list[str]:
    """The registry's precisions for the engine whose validation Dice (card row
    "<engine>-<precision>"; per class for a multi-class model) is within tolerance of FP32
    (all, when the card has no table)."""
    spec = ENGINES.get(engine)
    rows = card.validation.get("rows", {})
    ref = rows.get(f"{engine}-fp32", {}).get("dice")
    out = []
    for p in spec.precisions if spec and spec.local else ():
        row = rows.get(f"{engine}-{p}")
        if ref is None or row is None or dice_loss(row.get("dice"), ref) <= DICE_TOLERANCE:
            out.append(p)
    return out or ["fp32"]


def dice_loss(dice, ref) -> float:
    """How far a precision's validation Dice is below FP32's: one number, or the worst class of
    a multi-class card's per-class Dice; unreadable rows count as too far."""
    try:
        if isinstance(ref, dict):
            return max((ref[c] - dice[c] for c in ref), default=0.0)
        return abs(dice - ref)
    except (TypeError, KeyError):
        return float("inf")


def choose_precision(
    card: ModelCard,
    engine: str,
    device: str,
    cache: Path | None = None,
    repeats: int = 5,
    refresh: bool = False,
) -> tuple[str, dict[str, float]]:
    """(fastest eligible precision, ms per 512² tile for each measured precision)."""
    cache = cache or cache_path()
    key = _key(card, engine, device)
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        known = {}
    if not refresh and key in known:
        entry = known[key]
        return entry["precision"], entry["ms"]
    tile = np.random.default_rng(0).integers(0, 255, (1, card.tile, card.tile, 3), dtype=np.uint8)
    timings: dict[str, float] = {}
    runnable = set(ENGINES[engine].runnable(card)) if engine in ENGINES else set()
    for p in (p for p in eligible(card, engine) if p in runnable):
        try:
            eng = create_engine(engine, card, p, device)
        except EngineError as e:
            log.info("auto precision: %s %s unavailable: %s", engine, p, e)
            continue
        eng.predict(tile)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            eng.predict(tile)
            times.append((time.perf_counter() - t) * 1000)
        timings[p] = round(statistics.median(times), 2)
    if not timings:
        raise EngineError(f"no precision of {card.name} runs on {engine} {device}; choose another device")
    best = min(timings, key=timings.get)
    known[key] = {"precision": best, "ms": timings, "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        cache.write_text(json.dumps(known, indent=2), encoding="utf-8")
    except OSError:
        log.warning("could not cache the auto precision choice in %s", cache)
    log.info("auto precision for %s: %s (%s)", key, best, timings)
    return best, timings
