"""The one interface every engine implements, and what all engines share.

`predict(batch)` takes uint8 RGB tiles (N, H, W, 3) and returns float32 class probabilities
(N, C, H, W), one channel per class of the model card, after the card's activation. Engines
reorder channels and normalize as the card says, pad to the model's size multiple and crop back,
so callers never think about layout, channel order, normalization or activation. Engines are
made by name through `app.inference.engine_registry`.

`predict_stream(engine, items)` runs a sequence of tiles with several in flight where the engine
can (OpenVINO's AsyncInferQueue, concurrent requests to a server), yielding results in order:
the caller's own work on one tile (reading the next, blending, drawing) overlaps the model's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator

import numpy as np

from app.errors import DelineoError
from app.inference.modelcard import ModelCard

StreamItem = tuple[Hashable, "np.ndarray | BaseException"]


class EngineError(DelineoError):
    """An engine that cannot be created or run; the message says which setting to change."""


class Engine(ABC):
    """A model runtime. Subclasses set `name` (e.g. "openvino-int8") and `card` in `__init__`
    and implement `predict`; `stream` and `close` have defaults that suit a synchronous engine."""

    name: str
    card: ModelCard

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) in, float32 class probabilities (N, C, H, W) out."""

    def stream(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        """(key, uint8 tile (H, W, 3)) in, (key, probabilities (C, H, W)) out, in the same order;
        an exception payload (a tile that could not be read) passes through in its place.
        Override to keep several tiles in flight; closing the generator must abandon them."""
        for key, rgb in items:
            yield key, rgb if isinstance(rgb, BaseException) else self.predict(rgb[None])[0]

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Release what the engine holds (connections, compiled models); safe to call twice."""


def predict_stream(engine: Engine, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
    """`engine.stream(items)`, also for a duck-typed engine that only has `predict`. Closing the
    returned generator abandons what is in flight (Cancel)."""
    stream = getattr(engine, "stream", None)
    if stream is not None:
        yield from stream(items)
        return
    yield from Engine.stream(engine, items)  # type: ignore[arg-type]


def pad_to_multiple(batch: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    _, h, w, _ = batch.shape
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        batch = np.pad(batch, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
    return batch, h, w


def check_batch(batch: np.ndarray) -> np.ndarray:
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype != np.uint8:
        raise EngineError(f"engine input must be uint8 (N, H, W, 3); got {batch.dtype} {batch.shape}")
    return batch


def activate(raw: np.ndarray, activation: str) -> np.ndarray:
    """The card's activation over the channel axis of raw output (N, C, H, W), in float32: what
    an engine applies when its runtime cannot do it inside the graph."""
    x = np.asarray(raw, dtype=np.float32)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return x


def check_output(out: np.ndarray, card: ModelCard, where: str) -> np.ndarray:
    """The model's answer has one channel per class of the card, or EngineError naming it: a
    model whose card is wrong must not turn into silent empty outlines."""
    if out.ndim != 4 or out.shape[1] != card.channels:
        raise EngineError(
            f"{where}: the model outputs shape {list(out.shape)}, but its card declares "
            f"{card.channels} class channel(s) (N, {card.channels}, H, W); fix the card's classes"
        )
    return out
