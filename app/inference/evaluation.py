"""Accuracy of a model on a manifest of tiles: tumour Dice and false positives for the binary
model; Dice per class and high-grade IN called tumour for a model of the lesion classes.

The same metric code serves `delineo convert` (validation table in the card) and
`delineo evaluate` (a user checking the shipped model on their own labelled tiles).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.core.dataset import LESION_CLASSES, Pair, load_image, load_target, read_manifest
from app.errors import DelineoError
from app.inference.modelcard import ModelCard

HGIN_CLASS = "high-grade-in"
TUMOUR_LABEL = LESION_CLASSES.index("Tumor")


class EvaluationError(DelineoError):
    """A model whose classes the manifest's targets cannot score; the message says which."""


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


def exclusive_labels(prob: np.ndarray, background: int = 0, threshold: float = 0.5) -> np.ndarray:
    """uint8 (H, W) channel index per pixel of softmax scores (C, H, W): background unless
    1 - p(background) >= threshold, else the foreground channel with the highest score. The
    runtime's rule (`ClassScheme.labels`) with the channel index as the label."""
    fg = [c for c in range(prob.shape[0]) if c != background]
    best = np.asarray(fg, np.uint8)[np.argmax(prob[fg], axis=0)]
    return np.where(prob[background] <= 1.0 - threshold, best, np.uint8(background)).astype(np.uint8)


def confusion(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel counts [true label, predicted label]."""
    idx = truth.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n * n).reshape(n, n)


def lesion_metrics(conf: np.ndarray) -> dict:
    """Per foreground class Dice from a lesion confusion matrix, their mean (`score`), and the
    share of high-grade IN pixels (its masked epithelium) predicted Tumor."""
    names = LESION_CLASSES
    dice = {}
    for c in range(1, len(names)):
        denom = conf[c].sum() + conf[:, c].sum()
        dice[names[c]] = round(float(2 * conf[c, c] / max(1, denom)), 5)
    hgin, tumour = names.index("High-grade dysplasia"), names.index("Tumor")
    return {
        "dice": dice,
        "score": round(float(np.mean(list(dice.values()))), 5),
        "hgin_called_tumour": round(float(conf[hgin, tumour] / max(1, conf[hgin].sum())), 5),
    }


class LesionTally:
    """One model's lesion labels against the truth, summed over tiles, so a whole split is
    scored without holding (N, C, H, W) probabilities in memory."""

    def __init__(self) -> None:
        n = len(LESION_CLASSES)
        self.conf = np.zeros((n, n), np.int64)
        self.hgin_tile_px = 0
        self.hgin_tile_tumour = 0

    def add(self, truth: np.ndarray, pred: np.ndarray, pair: Pair) -> None:
        self.conf += confusion(truth, pred, len(LESION_CLASSES))
        if pair.cls == HGIN_CLASS:
            self.hgin_tile_px += pred.size
            self.hgin_tile_tumour += int((pred == TUMOUR_LABEL).sum())

    def metrics(self) -> dict:
        m = lesion_metrics(self.conf)
        m["hgin_tile_pixels_called_tumour"] = round(self.hgin_tile_tumour / max(1, self.hgin_tile_px), 5)
        return m


def lesion_labeller(card: ModelCard) -> Callable[[np.ndarray], np.ndarray]:
    """(C, H, W) probabilities -> lesion labels (H, W), through the card's own decision rule
    (`ClassScheme.labels`); every outlined class must be one of the lesion classes."""
    scheme = card.scheme
    names = [c.name for c in scheme.foreground]
    unknown = [n for n in names if n not in LESION_CLASSES[1:]]
    if unknown:
        raise EvaluationError(
            f"model {card.name}: class(es) {', '.join(unknown)} cannot be scored on EBHI-Seg masks; "
            f"evaluate knows {', '.join(LESION_CLASSES[1:])}"
        )
    lut = np.array([0, *(LESION_CLASSES.index(n) for n in names)], np.uint8)
    return lambda prob: lut[scheme.labels(prob)]


class _Agreement:
    """Cosine and max |diff| against a reference, per channel and over all, accumulated."""

    def __init__(self, channels: int) -> None:
        self.dot = np.zeros(channels)
        self.norm = np.zeros(channels)
        self.ref_norm = np.zeros(channels)
        self.max_diff = 0.0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        a = out.astype(np.float64).transpose(1, 0, 2, 3).reshape(out.shape[1], -1)
        b = ref.astype(np.float64).transpose(1, 0, 2, 3).reshape(ref.shape[1], -1)
        self.dot += (a * b).sum(axis=1)
        self.norm += (a * a).sum(axis=1)
        self.ref_norm += (b * b).sum(axis=1)
        self.max_diff = max(self.max_diff, float(np.abs(a - b).max()))

    def cosine(self, sel: slice | int = slice(None)) -> float:
        dot, n, r = self.dot[sel].sum(), self.norm[sel].sum(), self.ref_norm[sel].sum()
        return round(float(dot / (np.sqrt(n * r) + 1e-12)), 7)


def compare_lesions_to_reference(
    engines: dict, pairs: list[Pair], reference: str, batch: int = 16, progress=None
) -> dict:
    """Per engine (`key -> (engine, card)`): Dice per lesion class, high-grade IN called tumour,
    and, for engines of the reference's card, cosine (overall and per class) and max |diff| of
    the probabilities against the reference engine's."""
    ref_card = engines[reference][1]
    labellers = {k: lesion_labeller(card) for k, (_, card) in engines.items()}
    tallies = {k: LesionTally() for k in engines}
    agree = {k: _Agreement(ref_card.channels) for k, (_, card) in engines.items() if card is ref_card}
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        imgs = np.stack([load_image(p) for p in chunk])
        truths = [load_target(p, "lesions") for p in chunk]
        outs = {k: eng.predict(imgs) for k, (eng, _) in engines.items()}
        for k, out in outs.items():
            for prob, truth, pair in zip(out, truths, chunk, strict=True):
                tallies[k].add(truth, labellers[k](prob), pair)
            if k in agree:
                agree[k].add(out, outs[reference])
        if progress:
            progress(f"  {min(start + batch, len(pairs))}/{len(pairs)} tiles")
    rows = {}
    for k, tally in tallies.items():
        row = {}
        if k in agree:
            a = agree[k]
            row["cosine_vs_fp32"] = a.cosine()
            row["cosine_per_class"] = {c.name: a.cosine(c.channel) for c in ref_card.scheme.classes}
            row["max_abs_diff_vs_fp32"] = round(a.max_diff, 5)
        rows[k] = {**row, **tally.metrics()}
    return rows


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
    if card.channels > 1:
        return _evaluate_lesions(card, manifest, pairs, engine, precisions, device, progress)
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


def _evaluate_lesions(card, manifest, pairs, engine, precisions, device, progress) -> dict:
    from app.inference.engine_registry import create_engine

    engines = {p: (create_engine(engine, card, p, device), card) for p in precisions}
    rows = compare_lesions_to_reference(engines, pairs, reference=precisions[0], progress=progress)
    return {
        "classes": list(rows[precisions[0]]["dice"]),
        "dice": {p: r["dice"] for p, r in rows.items()},
        "hgin_called_tumour": {p: r["hgin_called_tumour"] for p, r in rows.items()},
        "hgin_tile_pixels_called_tumour": {p: r["hgin_tile_pixels_called_tumour"] for p, r in rows.items()},
        "images": len(pairs),
        "tumour_images": sum(p.is_tumour_class for p in pairs),
        "hgin_images": sum(p.cls == HGIN_CLASS for p in pairs),
        "engine": engine,
        "device": device,
        "model": f"{card.name} {card.version}",
        "manifest": str(manifest),
    }
