"""Dynamic batching: tiles from concurrent requests run as one model execution.

A batch closes when it holds `max_batch` tiles or `max_wait_ms` after its first request,
whichever comes first (Triton's dynamic batcher, in the server's event loop). The model runs on
one executor thread, so while a batch computes the next one fills up. Requests whose tiles have
another height and width wait for a batch of their own.
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
    future: asyncio.Future


class DynamicBatcher:
    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], max_batch: int = 16, max_wait_ms: float = 20.0
    ):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_ms not negative")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        # Statistics, in the shape of Triton's statistics extension.
        self.requests = 0
        self.executions = 0
        self.tiles = 0
        self.batch_counts: Counter[int] = Counter()
        self.batch_ns: Counter[int] = Counter()

    async def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Probabilities for these tiles, computed together with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect())
        job = _Job(tiles, loop.create_future())
        self.requests += 1
        await self._queue.put(job)
        return await job.future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            jobs, n, shape = [first], len(first.tiles), first.tiles.shape[1:]
            deadline = loop.time() + self.max_wait_s
            while n < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                if job.tiles.shape[1:] != shape or n + len(job.tiles) > self.max_batch:
                    carry = job
                    break
                jobs.append(job)
                n += len(job.tiles)
            await self._execute(jobs)

    async def _execute(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        batch = jobs[0].tiles if len(jobs) == 1 else np.concatenate([j.tiles for j in jobs])
        t0 = time.perf_counter_ns()
        try:
            out = await loop.run_in_executor(self.executor, self.run, batch)
        except Exception as e:
            log.exception("model execution failed for a batch of %d tiles", len(batch))
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.executions += 1
        self.tiles += len(batch)
        self.batch_counts[len(batch)] += 1
        self.batch_ns[len(batch)] += time.perf_counter_ns() - t0
        start = 0
        for j in jobs:
            end = start + len(j.tiles)
            if not j.future.done():  # a client that went away leaves a cancelled future
                j.future.set_result(out[start:end])
            start = end

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
