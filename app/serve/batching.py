"""Dynamic batching: tiles from concurrent requests run as one model execution.

A batch closes when it holds `max_batch` tiles (or `max_pixels` pixels) or `max_wait_ms` after
its first request, whichever comes first (Triton's dynamic batcher, in the server's event loop).
A request larger than that is split into parts that each fit, so one model execution never
holds more than `max_pixels` (its memory grows with them). The model runs on one executor
thread, so while a batch computes the next one fills up. Requests whose tiles have another
height and width wait for a batch of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Job:
    tiles: np.ndarray
    dest: np.ndarray  # where its probabilities go: a slice of the request's answer
    future: asyncio.Future


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 16,
        max_wait_ms: float = 20.0,
        max_pixels: int = 4 << 20,
        thread_initializer: Callable[[], None] | None = None,
        channels: int = 1,
    ):
        if max_batch < 1 or max_wait_ms < 0 or max_pixels < 1:
            raise ValueError("max_batch and max_pixels must be at least 1 and max_wait_ms not negative")
        self.run = run
        self.channels = channels  # class channels of each answer (N, C, H, W)
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.max_wait_s = max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="model", initializer=thread_initializer
        )
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        # Statistics, in the shape of Triton's statistics extension.
        self.requests = 0
        self.executions = 0
        self.tiles = 0
        self.batch_counts: Counter[int] = Counter()
        self.batch_ns: Counter[int] = Counter()

    def parts(self, n: int, pixels_per_tile: int) -> int:
        """Tiles per part when a request of `n` tiles is split to fit one execution."""
        return max(1, min(n, self.max_batch, self.max_pixels // max(1, pixels_per_tile)))

    async def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C, H, W) for these tiles, computed together with whatever
        else is waiting."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect())
        self.requests += 1
        n = len(tiles)
        out = np.empty((n, self.channels, *_spatial(tiles)), np.float32)
        step = self.parts(n, _pixels(tiles) // max(1, n))
        jobs = [_Job(tiles[i : i + step], out[i : i + step], loop.create_future()) for i in range(0, n, step)]
        try:
            # One part at a time: a large request's next part queues behind whatever arrived
            # meanwhile, so small requests are not stuck behind all of it.
            for job in jobs:
                await self._queue.put(job)
                await job.future
        finally:
            for job in jobs:  # a client that went away: its queued parts are skipped
                job.future.cancel()
        return out

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            if first.future.done():
                continue
            jobs, n, shape = [first], len(first.tiles), first.tiles.shape[1:]
            px = _pixels(first.tiles)
            deadline = loop.time() + self.max_wait_s
            while n < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                if job.future.done():
                    continue
                if (
                    job.tiles.shape[1:] != shape
                    or n + len(job.tiles) > self.max_batch
                    or px + _pixels(job.tiles) > self.max_pixels
                ):
                    carry = job
                    break
                jobs.append(job)
                n += len(job.tiles)
                px += _pixels(job.tiles)
            await self._execute(jobs)

    def _run_jobs(self, jobs: list[_Job]) -> int:
        """On the model thread: assemble the batch, run it, copy each job's part out (copies of
        megabytes stay off the event loop, which keeps answering health probes)."""
        batch = jobs[0].tiles if len(jobs) == 1 else np.concatenate([j.tiles for j in jobs])
        out = self.run(batch)
        start = 0
        for j in jobs:
            end = start + len(j.tiles)
            j.dest[...] = out[start:end]
            start = end
        return len(batch)

    async def _execute(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter_ns()
        try:
            n = await loop.run_in_executor(self.executor, self._run_jobs, jobs)
        except Exception as e:
            log.exception("model execution failed for a batch of %d parts", len(jobs))
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.executions += 1
        self.tiles += n
        self.batch_counts[n] += 1
        self.batch_ns[n] += time.perf_counter_ns() - t0
        for j in jobs:
            if not j.future.done():  # a client that went away leaves a cancelled future
                j.future.set_result(None)

    def statistics(self, name: str, version: str) -> dict:
        return {
            "name": name,
            "version": version,
            "inference_count": self.tiles,
            "execution_count": self.executions,
            "request_count": self.requests,
            "batch_stats": [
                {"batch_size": size, "compute_infer": {"count": count, "ns": self.batch_ns[size]}}
                for size, count in sorted(self.batch_counts.items())
            ],
        }


def _spatial(tiles: np.ndarray) -> tuple[int, int]:
    """(H, W) of uint8 NHWC or float NCHW tiles."""
    _, a, b, c = tiles.shape
    return (a, b) if c == 3 else (b, c)


def _pixels(tiles: np.ndarray) -> int:
    """N x H x W of uint8 NHWC or float NCHW tiles (the channel axis is the one of size 3)."""
    n, a, b, c = tiles.shape
    return n * (a * b if c == 3 else b * c)
