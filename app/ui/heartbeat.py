"""A 5 ms timer on the GUI thread whose gaps are the stalls a user feels: what the viewer and
review benchmarks report as the longest GUI gap."""

from __future__ import annotations

from PySide6.QtCore import QElapsedTimer, QTimer


class Heartbeat:
    def __init__(self, interval_ms: int = 5):
        self.gaps: list[float] = []  # ms between beats
        self._clock = QElapsedTimer()
        self._clock.start()
        self._last = self._clock.nsecsElapsed()
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._beat)

    def _beat(self) -> None:
        now = self._clock.nsecsElapsed()
        self.gaps.append((now - self._last) / 1e6)
        self._last = now

    def start(self) -> None:
        self.reset()
        self._timer.start()

    def reset(self) -> None:
        """Forget the gaps so far: what follows is what is measured."""
        self.gaps.clear()
        self._last = self._clock.nsecsElapsed()

    def stop(self) -> None:
        self._timer.stop()

    @property
    def longest(self) -> float | None:
        return max(self.gaps) if self.gaps else None
