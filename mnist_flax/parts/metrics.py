"""Per-epoch metrics as values (clu style): on-device sums over examples, divided once on the host.

A metric is a name and a function of one batch's `Outputs` returning the sum of its per-example
values over the unmasked examples. The train step and the scorer of a split
(inference/scoring.py) both add it up on the device; at the end of an epoch the host divides by the example count. Each metric `m` becomes
`train_<m>`, `test_<m>` and `validation_<m>` in the epoch record, hence in metrics.jsonl,
TensorBoard, the console line and report.md's epoch table. Adding one is a function and one line:

    from mnist_flax.parts import metrics

    @metrics.register('top2_accuracy', dtype=jnp.int32)
    def top2(out):
      top2 = jnp.argsort(out.logits, -1)[:, -2:]
      return jnp.sum(jnp.any(top2 == out.labels[:, None], -1) & out.mask)

Register it in a module named in `config.imports`, so that a resumed run finds it too (a
checkpoint that accumulates a metric no module registers is refused). `loss` and `accuracy` are
built in; their accumulators keep the names checkpoints have always held (`loss`, `correct`,
`count`), so old mid-epoch checkpoints resume.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from mnist_flax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What a metric sees of one batch: float32 logits (N, C), labels (N,), mask (N,) of the real
  (unpadded) examples, per-example losses (N,) and their masked sum `loss_sum`."""
  logits: jax.Array
  labels: jax.Array
  mask: jax.Array
  losses: jax.Array
  loss_sum: jax.Array


@dataclasses.dataclass(frozen=True)
class Metric:
  name: str  # the record key is f'{split}_{name}'
  total: str  # the on-device accumulator's key
  fn: Callable[[Outputs], jax.Array]  # the batch's sum over unmasked examples
  dtype: object = jnp.float32
  builtin: bool = False  # checkpointed in the state tree (else in the checkpoint's meta JSON)


METRICS: Registry[Metric] = Registry('metric', 'mnist_flax.parts.metrics.register')
COUNT = 'count'


def register(name: str, dtype=jnp.float32, total: str | None = None):
  """Function decorator: adds a per-epoch metric, averaged over examples."""
  def wrap(fn):
    METRICS.register(name, Metric(name, total or name, fn, dtype))
    return fn
  return wrap


def _correct(out: Outputs):
  return jnp.sum((jnp.argmax(out.logits, -1) == out.labels) & out.mask)


METRICS.register('loss', Metric('loss', 'loss', lambda out: out.loss_sum, jnp.float32,
                                builtin=True))
METRICS.register('accuracy', Metric('accuracy', 'correct', _correct, jnp.int32, builtin=True))


def zeros() -> dict:
  """On-device accumulators: one per metric, plus the example count."""
  out = {m.total: jnp.zeros((), m.dtype) for m in METRICS.values()}
  out[COUNT] = jnp.zeros((), jnp.int32)
  return out


def accumulate(totals: dict, out: Outputs) -> dict:
  """`totals` plus this batch's sums (pure: runs inside the jitted steps)."""
  new = {m.total: totals[m.total] + m.fn(out) for m in METRICS.values()}
  new[COUNT] = totals[COUNT] + jnp.sum(out.mask.astype(jnp.int32))
  return new


def compute(totals: dict) -> dict:
  """Host values: {metric name: sum / count}; `totals` already read from the device."""
  count = max(int(totals[COUNT]), 1)
  return {m.name: float(totals[m.total]) / count for m in METRICS.values()}


def builtin_totals(totals: dict) -> dict:
  """The accumulators saved in a checkpoint's state tree (its layout never changes)."""
  return {k: totals[k] for k in (*(m.total for m in METRICS.values() if m.builtin), COUNT)}


def extra_totals(totals: dict) -> dict:
  """The registered metrics' accumulators, as JSON numbers (saved in a checkpoint's meta)."""
  host = jax.device_get({m.total: totals[m.total] for m in METRICS.values() if not m.builtin})
  return {k: v.item() for k, v in host.items()}


SPLITS = ('train', 'test', 'validation')


def record_keys(record: dict) -> list[str]:
  """The record's metric keys in display order: per split, per registered metric."""
  keys = [f'{split}_{name}' for split in SPLITS for name in METRICS.names()]
  return [k for k in keys if k in record]
