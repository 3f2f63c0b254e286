"""Run a function off the GUI thread and get its result back on it, as a signal."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


class _Relay(QObject):
    done = Signal(object)
    failed = Signal(object)


class _Job(QRunnable):
    def __init__(self, fn: Callable[[], Any], relay: _Relay):
        super().__init__()
        self.fn = fn
        self.relay = relay

    def run(self) -> None:
        try:
            result = self.fn()
        except BaseException as e:  # noqa: BLE001 - delivered to the GUI as an error, never lost
            if not _is_expected(e):
                log.error("background job failed\n%s", traceback.format_exc())
            self.relay.failed.emit(e)
            return
        self.relay.done.emit(result)


def _is_expected(e: BaseException) -> bool:
    from app.errors import is_user_error

    return is_user_error(e)


_live: set[_Relay] = set()


def run_in_background(
    fn: Callable[[], Any],
    on_done: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    pool: QThreadPool | None = None,
) -> None:
    """`fn` runs on a pool thread; `on_done(result)` or `on_error(exc)` runs on the GUI thread."""
    relay = _Relay()
    _live.add(relay)  # keep the relay alive until it has delivered

    def finish(cb, value):
        _live.discard(relay)
        cb(value)

    relay.done.connect(lambda r: finish(on_done, r))
    relay.failed.connect(lambda e: finish(on_error, e))
    (pool or QThreadPool.globalInstance()).start(_Job(fn, relay))
