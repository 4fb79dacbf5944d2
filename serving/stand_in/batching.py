"""The batch scheduler: merges concurrent requests of one signature into batched model calls.

It behaves like TF Serving's shared batch scheduler (`--enable_batching` with a batching
parameters file):
  - a request larger than `max_batch_size` examples is refused with INVALID_ARGUMENT
    ("Task size N is larger than maximum input batch size M") before it reaches the model;
  - the queue holds at most `max_enqueued_batches` batches; a request that does not fit gets
    UNAVAILABLE at once instead of waiting without bound;
  - a request whose deadline passes while it waits gets DEADLINE_EXCEEDED and is not run;
  - a batch closes when it holds `max_batch_size` examples or `batch_timeout_micros` after its
    first request arrived; `num_batch_threads` threads run batches.
`close()` runs what is queued, then stops the threads, so a retired version holds nothing.
"""

import collections
import concurrent.futures
import dataclasses
import math
import os
import re
import threading
import time
from typing import Callable, Dict, Optional

import grpc
import numpy as np

from serving.stand_in.status import ServingError, invalid


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as TF's `port::MaxParallelism`
    counts them), not every core of the host."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's batching parameters (the fields of its text-proto file that apply here).

    A field the file leaves out takes TF's batch scheduler default, as in TF Serving: 1000
    examples per batch, no batch window, 10 enqueued batches, one batch thread per core."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=usable_cores)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value < (0 if field.name == "batch_timeout_micros" else 1):
                raise ValueError(f"batching parameter `{field.name}` must be "
                                 f"{'>= 0' if field.name == 'batch_timeout_micros' else '>= 1'},"
                                 f" got {value}.")

    @classmethod
    def from_file(cls, path: str) -> "BatchingParameters":
        """Reads `name { value: N }` entries; unknown ones (e.g. `pad_variable_length_inputs`)
        are ignored."""
        with open(path) as f:
            found = dict(re.findall(r"(\w+)\s*{\s*value:\s*(\d+)\s*}", f.read()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in found.items() if k in names})


def batch_size_of(inputs: Dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


@dataclasses.dataclass(eq=False)  # identity: a queue lookup must not compare arrays
class _Task:
    inputs: Dict[str, np.ndarray]
    size: int
    deadline: Optional[float]
    future: concurrent.futures.Future = dataclasses.field(
        default_factory=concurrent.futures.Future)


class Batcher:
    """Batches calls of `fn(inputs) -> outputs` (numpy dicts, batch dimension 0 everywhere).

    Args:
      fn: the model call; raises `ServingError` for a request at fault.
      parameters: `BatchingParameters`.
    """

    def __init__(self, fn: Callable, parameters: BatchingParameters):
        self.fn, self.parameters = fn, parameters
        self._tasks: "collections.deque[_Task]" = collections.deque()
        self._queued = 0  # examples waiting
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._loop, daemon=True, name="batch")
                         for _ in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def __call__(self, inputs: Dict[str, np.ndarray], deadline: Optional[float] = None):
        """Runs `inputs` in some batch; `deadline` is a `time.monotonic()` instant."""
        size, limit = batch_size_of(inputs), self.parameters.max_batch_size
        if size > limit:
            raise invalid(f"Task size {size} is larger than maximum input batch size {limit}")
        task = _Task(inputs, size, deadline)
        with self._cond:
            closed = self._closed
            if not closed:
                self._enqueue(task)
        if closed:  # a request that resolved a version just before it was retired
            return self.fn(inputs)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return task.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            with self._cond:
                if task.future.cancel() and task in self._tasks:  # still waiting: take it out
                    self._tasks.remove(task)
                    self._queued -= task.size
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "Run() timeout exceeded while waiting in batching queue") from None

    def _enqueue(self, task):
        """Queues `task` (lock held), or raises UNAVAILABLE when the queue is full."""
        enqueued = math.ceil(self._queued / self.parameters.max_batch_size)
        if enqueued >= self.parameters.max_enqueued_batches:
            raise ServingError(
                grpc.StatusCode.UNAVAILABLE,
                f"The batch scheduling queue to which this task was submitted is full; "
                f"currently {enqueued} batches enqueued and max_enqueued_batches is "
                f"{self.parameters.max_enqueued_batches}")
        self._tasks.append(task)
        self._queued += task.size
        self._cond.notify()

    def close(self, timeout_s=30.0):
        """Runs the queued requests, then stops the batch threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    def _next_batch(self):
        """Blocks for the next batch of tasks; `None` once closed and drained."""
        limit, wait_s = self.parameters.max_batch_size, self.parameters.batch_timeout_micros / 1e6
        with self._cond:
            while not self._tasks:
                if self._closed:
                    return None
                self._cond.wait()
            closes_at = time.monotonic() + wait_s
            while (self._queued < limit and not self._closed
                   and time.monotonic() < closes_at):
                self._cond.wait(max(0.0, closes_at - time.monotonic()))
            batch, size = [], 0
            while self._tasks and size + self._tasks[0].size <= limit:
                task = self._tasks.popleft()
                self._queued -= task.size
                batch.append(task)
                size += task.size
            return batch

    def _loop(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._serve(batch)
            except Exception as error:  # noqa: BLE001 - no request is left without an answer
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(ServingError(
                            grpc.StatusCode.INTERNAL, f"Batch failed: {error}"))

    def _serve(self, batch):
        now = time.monotonic()
        live = []
        for task in batch:
            if not task.future.set_running_or_notify_cancel():
                continue  # its caller gave up
            if task.deadline is not None and now > task.deadline:
                task.future.set_exception(ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "Run() timeout exceeded while waiting in batching queue"))
                continue
            live.append(task)
        groups: Dict[tuple, list] = {}
        for task in live:  # only requests with the same input keys are merged
            groups.setdefault(tuple(sorted(task.inputs)), []).append(task)
        for keys, tasks in groups.items():
            self._run(keys, tasks)

    def _run(self, keys, tasks):
        if len(tasks) > 1:
            try:
                merged = {k: np.concatenate([t.inputs[k] for t in tasks]) for k in keys}
                outputs = self.fn(merged)
            except Exception:  # noqa: BLE001 - run each alone to find the request at fault
                outputs = None
            if outputs is not None:
                start = 0
                for task in tasks:
                    task.future.set_result({k: v[start:start + task.size]
                                            for k, v in outputs.items()})
                    start += task.size
                return
        for task in tasks:
            try:
                task.future.set_result(self.fn(task.inputs))
            except Exception as error:  # noqa: BLE001 - handed to the request's thread
                task.future.set_exception(error)
