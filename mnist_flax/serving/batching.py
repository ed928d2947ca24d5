"""Micro-batching: concurrent requests' images gathered into one call of the jitted predict.

One jitted call on 64 images costs little more than on one (the model is small; the per-call
overhead of dispatch, padding and the host copy dominates), so a server that predicts each
request on its own spends its CPU on overhead. `MicroBatcher.submit(images)` queues a request's
images; one worker task takes whatever is queued, waits at most `max_wait_s` after the first
request for more (up to `max_batch` images), pads the batch to the smallest of a fixed set of
shapes, all compiled by `warm_up()` before the server reports healthy, and runs it on one
dedicated thread, so the event loop keeps accepting requests while XLA computes.

The default wait is zero: a request that finds the predict thread idle is dispatched at once,
and those that arrive while it computes are taken together by the next call, so batches grow
with the load by themselves. A positive `max_wait_s` trades a lone request's latency for
fuller batches (worth it only where one call costs much more than the wait).

With `enabled=False` every request is its own call (still padded to a compiled shape): the
baseline that `experiments/bench_serve.py` compares against.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass
class BatchStats:
  """What the batcher did, for tests, /v1/model and the benchmark."""
  calls: int = 0  # calls of the predict function
  images: int = 0  # real images predicted (padding excluded)
  requests: int = 0
  padded: int = 0  # padding images computed
  busy_seconds: float = 0.0  # time spent inside predict

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def check_batch_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
  """Sorted, distinct powers of two: the shapes `predict.Classifier` pads to itself, so a padded
  batch never asks the classifier for a shape it would pad again (and compile)."""
  sizes = tuple(sorted(set(int(s) for s in sizes)))
  if not sizes or any(s < 1 or s & (s - 1) for s in sizes) or sizes[-1] > 1024:
    raise ValueError(f'batch sizes must be powers of two from 1 to 1024, got {sizes}')
  return sizes


class MicroBatcher:
  """Gathers concurrent `submit` calls into batched calls of `probabilities`.

  `probabilities`: uint8 (N, *image_shape) -> float32 (N, classes), N one of `batch_sizes`
  (e.g. `Classifier.probabilities`; MNIST: (N, 28, 28, 1) -> (N, 10)). Start with `start()`
  inside the running event loop, stop with `await stop()` (it finishes every request already
  queued: the SIGTERM drain relies on it).
  """

  def __init__(self, probabilities: Callable[[np.ndarray], np.ndarray],
               batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, max_wait_s: float = 0.0,
               enabled: bool = True, image_shape: Sequence[int] = (28, 28)):
    self.probabilities = probabilities
    self.image_shape = tuple(image_shape)  # of one image, as `probabilities` takes it
    self.batch_sizes = check_batch_sizes(batch_sizes)
    self.max_batch = self.batch_sizes[-1]
    self.max_wait_s = max_wait_s
    self.enabled = enabled
    self.stats = BatchStats()
    self._queue: asyncio.Queue | None = None
    self._worker: asyncio.Task | None = None
    # One thread: calls never overlap (XLA already uses every core for one call).
    self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='predict')

  def padded_size(self, n: int) -> int:
    return next(s for s in self.batch_sizes if s >= n)

  def _run(self, images: np.ndarray) -> np.ndarray:
    """On the predict thread: pad to a compiled shape, predict, drop the padding."""
    n = len(images)
    size = self.padded_size(n)
    if size > n:
      images = np.concatenate([images, np.zeros((size - n,) + images.shape[1:], images.dtype)])
    start = time.perf_counter()
    probs = np.asarray(self.probabilities(images))[:n]
    self.stats.busy_seconds += time.perf_counter() - start
    self.stats.calls += 1
    self.stats.images += n
    self.stats.padded += size - n
    return probs

  def warm_up(self):
    """Compiles every batch shape now (blocking), so that no request waits for a compilation."""
    for size in self.batch_sizes:
      np.asarray(self.probabilities(np.zeros((size,) + self.image_shape, np.uint8)))

  def start(self):
    self._queue = asyncio.Queue()
    if self.enabled:
      self._worker = asyncio.get_running_loop().create_task(self._gather_forever())

  async def stop(self):
    """Finishes what is queued, then stops the worker and the predict thread."""
    if self._worker is not None:
      await self._queue.put(None)
      await self._worker
      self._worker = None
    self._thread.shutdown(wait=True)

  async def submit(self, images: np.ndarray) -> np.ndarray:
    """uint8 (k, *image_shape), 1 <= k <= max_batch -> float32 (k, classes)."""
    images = np.asarray(images, np.uint8).reshape((-1,) + self.image_shape)
    if not 1 <= len(images) <= self.max_batch:
      raise ValueError(f'a request holds 1 to {self.max_batch} images, got {len(images)}')
    self.stats.requests += 1
    loop = asyncio.get_running_loop()
    if not self.enabled:
      return await loop.run_in_executor(self._thread, self._run, images)
    future = loop.create_future()
    await self._queue.put((images, future))
    return await future

  async def _next_batch(self, first) -> tuple[list, object, bool]:
    """`first` and whatever joins it within max_wait_s, up to max_batch images.

    Returns (the requests, a request held over for the next batch because it would overflow
    this one or None, whether the stop marker was taken from the queue).
    """
    batch, total = [first], len(first[0])
    deadline = time.perf_counter() + self.max_wait_s
    while total < self.max_batch:
      try:
        item = self._queue.get_nowait()
      except asyncio.QueueEmpty:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
          break
        try:
          item = await asyncio.wait_for(self._queue.get(), remaining)
        except asyncio.TimeoutError:
          break
      if item is None:
        return batch, None, True
      if total + len(item[0]) > self.max_batch:
        return batch, item, False
      batch.append(item)
      total += len(item[0])
    return batch, None, False

  async def _gather_forever(self):
    held = None
    while True:
      first = held if held is not None else await self._queue.get()
      held = None
      if first is None:  # stop: leave once nothing is queued behind the marker
        if self._queue.empty():
          return
        await self._queue.put(None)
        continue
      batch, held, saw_stop = await self._next_batch(first)
      if saw_stop:
        await self._queue.put(None)
      await self._predict(batch)

  async def _predict(self, batch: list):
    """One call for the gathered requests; each future gets its rows (or the error)."""
    images = np.concatenate([images for images, _ in batch])
    try:
      probs = await asyncio.get_running_loop().run_in_executor(self._thread, self._run, images)
    except Exception as e:  # pylint: disable=broad-except  (each waiting request gets it)
      for _, future in batch:
        if not future.done():
          future.set_exception(e)
      return
    start = 0
    for request_images, future in batch:
      if not future.done():  # a client that went away cancelled its future
        future.set_result(probs[start:start + len(request_images)])
      start += len(request_images)
