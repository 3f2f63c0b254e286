"""How a model's per-class scores become classes: the one decision rule, declared by its card.

A model outputs C channels. Either they are exclusive (softmax, or probabilities that sum to
one) and each pixel takes one class, or they are independent (sigmoid) and each class has its
own threshold. The live overlay, the traced outline and a re-trace all decide through
`ClassScheme`, so what the pathologist watches appear is what becomes annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputClass:
    name: str
    color: tuple[int, int, int]
    channel: int
    threshold: float = 0.5


@dataclass(frozen=True)
class ClassScheme:
    """The model's classes by output channel. `background`, when set, is the name of a class
    whose channel takes part in the decision but never becomes an annotation."""

    classes: tuple[OutputClass, ...]
    exclusive: bool = False
    background: str | None = None

    @property
    def channels(self) -> int:
        return len(self.classes)

    @property
    def foreground(self) -> tuple[OutputClass, ...]:
        """The classes a run outlines, in channel order."""
        return tuple(c for c in self.classes if c.name != self.background)

    @property
    def default_threshold(self) -> float:
        """The sensitivity a run starts at: the first outlined class's threshold when classes
        are independent; for exclusive classes with a background, 0.5 (the foreground classes'
        summed score, 1 - p(background) for softmax)."""
        return self.foreground[0].threshold if not self.exclusive and self.foreground else 0.5

    def masks(self, scores: np.ndarray, threshold: float | None = None) -> dict[str, np.ndarray]:
        """Boolean mask per outlined class of `scores` (C, H, W), float 0..1 or uint8 255 = 1.
        `threshold`: the run's sensitivity, replacing every class's own threshold (independent
        classes) or the least summed foreground score of a foreground pixel (exclusive classes
        with a background)."""
        scale = 255.0 if scores.dtype == np.uint8 else 1.0
        if not self.exclusive:
            return {
                c.name: scores[c.channel] >= _level(c.threshold if threshold is None else threshold, scale)
                for c in self.foreground
            }
        label = self.labels(scores, threshold)
        return {c.name: label == i for i, c in enumerate(self.foreground, start=1)}

    def labels(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """uint8 (H, W): 0 where no class is outlined, else 1 + the index of the class in
        `foreground`. Independent classes that overlap show the later class."""
        scale = 255.0 if scores.dtype == np.uint8 else 1.0
        fg = self.foreground
        out = np.zeros(scores.shape[1:], np.uint8)
        if not self.exclusive:
            for i, c in enumerate(fg, start=1):
                out[scores[c.channel] >= _level(c.threshold if threshold is None else threshold, scale)] = i
            return out
        fg_scores = scores[[c.channel for c in fg]]
        best = np.argmax(fg_scores, axis=0).astype(np.uint8) + 1
        if self.background is None:  # argmax over every class; nothing where no tile ran
            return np.where(scores.max(axis=0) > 0, best, 0).astype(np.uint8)
        # Foreground where the foreground classes together score at least t (for softmax,
        # 1 - p(background)); 0 where no tile ran, since every score is 0 there.
        t = 0.5 if threshold is None else threshold
        total = fg_scores.sum(axis=0, dtype=np.float32)
        np.copyto(out, best, where=total >= _level(t, scale))
        return out

    def layers(
        self, scores: np.ndarray, threshold: float | None = None
    ) -> dict[str, tuple[np.ndarray, float]]:
        """Per outlined class of a uint8 map (C, H, W), the layer its outline is traced from and
        the threshold to trace it at: its own channel at its threshold (independent classes; a
        run's `threshold` replaces every class's), or its 0/255 mask at 0.5 (exclusive classes,
        decided on every channel at once)."""
        if not self.exclusive:
            return {
                c.name: (scores[c.channel], c.threshold if threshold is None else threshold)
                for c in self.foreground
            }
        return {n: (m.view(np.uint8) * np.uint8(255), 0.5) for n, m in self.masks(scores, threshold).items()}

    def foreground_score(self, scores: np.ndarray) -> np.ndarray:
        """(H, W), in the map's units: how strongly anything outlined is there, whatever the
        class (what an adaptive run refines on). Exclusive classes with a background: their
        summed score; without one every pixel is some class; independent: the highest."""
        fg = [c.channel for c in self.foreground]
        if self.exclusive and self.background is None:
            return np.full(scores.shape[1:], 255 if scores.dtype == np.uint8 else 1.0, scores.dtype)
        if self.exclusive:
            total = scores[fg].sum(axis=0, dtype=np.float32)
            return np.minimum(total, 255.0 if scores.dtype == np.uint8 else 1.0)
        return scores[fg].max(axis=0)

    def colors(self) -> np.ndarray:
        """(1 + len(foreground), 3) uint8: the colour of each label (row 0 unused)."""
        return np.array([(0, 0, 0), *(c.color for c in self.foreground)], np.uint8)


def threshold_level(threshold: float) -> int:
    """The uint8 level (255 = 1.0) at or above which a probability stored as round(p * 255)
    is at least `threshold`."""
    return int(np.clip(np.ceil(threshold * 255 - 1e-6), 0, 255))


def _level(threshold: float, scale: float) -> float:
    """A threshold in the units of the map (probability, or uint8 level)."""
    return threshold if scale == 1.0 else threshold_level(threshold)


SINGLE_TUMOUR = ClassScheme((OutputClass("Tumor", (200, 0, 0), 0, 0.5),))
"""What a map or card from before multi-class models means: one sigmoid Tumor channel."""
