"""Accuracy of the shipped model on a manifest of tiles: tumour Dice and false positives.

The same metric code serves `delineo convert` (validation table in the card) and
`delineo evaluate` (a user checking the shipped model on their own labelled tiles).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.core.dataset import Pair, load_image, load_target, read_manifest
from app.inference.modelcard import ModelCard


def mask_metrics(
    prob: np.ndarray, targets: list[np.ndarray], pairs: list[Pair], threshold: float = 0.5
) -> dict:
    """Pixel-aggregated tumour Dice over all tiles, and the share of pixels called tumour on tiles
    of non-tumour classes."""
    tp = fp = fn = 0
    other_pos = other_px = 0
    for p, t, pair in zip(prob > threshold, targets, pairs, strict=True):
        t = t.astype(bool)
        tp += int((p & t).sum())
        fp += int((p & ~t).sum())
        fn += int((~p & t).sum())
        if not pair.is_tumour_class:
            other_pos += int(p.sum())
            other_px += p.size
    return {
        "dice": round(2 * tp / max(1, 2 * tp + fp + fn), 5),
        "fp_rate_non_tumour": round(other_pos / max(1, other_px), 5),
    }


def run_engines(engines: dict, pairs: list[Pair], batch: int = 16, progress=None) -> dict[str, np.ndarray]:
    """Probabilities of every engine on every tile (same batches for all)."""
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in engines}
    for start in range(0, len(pairs), batch):
        imgs = np.stack([load_image(p) for p in pairs[start : start + batch]])
        for k, eng in engines.items():
            outputs[k].append(eng.predict(imgs)[:, 0])  # the tumour channel of a one-class model
        if progress:
            progress(f"  {min(start + batch, len(pairs))}/{len(pairs)} tiles")
    return {k: np.concatenate(v) for k, v in outputs.items()}


def compare_to_reference(engines: dict, pairs: list[Pair], reference: str, batch: int = 16) -> dict:
    """Per engine: cosine similarity and max |diff| of its probabilities against the reference
    engine's, plus Dice and false-positive rate against the ground truth."""
    outputs = run_engines(engines, pairs, batch)
    targets = [load_target(p) for p in pairs]
    ref = outputs[reference].ravel().astype(np.float64)
    rows = {}
    for k, out in outputs.items():
        flat = out.ravel().astype(np.float64)
        cos = float(flat @ ref / (np.linalg.norm(flat) * np.linalg.norm(ref) + 1e-12))
        rows[k] = {
            "cosine_vs_fp32": round(cos, 7),
            "max_abs_diff_vs_fp32": round(float(np.abs(flat - ref).max()), 5),
            **mask_metrics(out, targets, pairs),
        }
    return rows


def evaluate_manifest(
    manifest: str | Path,
    model: str | Path | None = None,
    engine: str = "openvino",
    precisions: list[str] | None = None,
    device: str = "CPU",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """`delineo evaluate`: Dice per precision on every row of the manifest (any split)."""
    from app.inference.engine_registry import create_engine, engine_spec

    card = ModelCard.load(model)
    precisions = precisions or list(engine_spec(engine).precisions)
    pairs = read_manifest(manifest)
    engines = {p: create_engine(engine, card, p, device) for p in precisions}
    outputs = run_engines(engines, pairs, progress=progress)
    targets = [load_target(p) for p in pairs]
    metrics = {p: mask_metrics(outputs[p], targets, pairs) for p in precisions}
    return {
        "dice": {p: m["dice"] for p, m in metrics.items()},
        "fp_rate_non_tumour": {p: m["fp_rate_non_tumour"] for p, m in metrics.items()},
        "images": len(pairs),
        "tumour_images": sum(p.is_tumour_class for p in pairs),
        "engine": engine,
        "device": device,
        "model": f"{card.name} {card.version}",
        "manifest": str(manifest),
    }
