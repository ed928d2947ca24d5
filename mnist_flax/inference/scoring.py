"""Scoring a split: the one exact evaluation, used by training and by every command.

`Scorer(split, logits_fn, mesh, batch_size)` puts a split on the devices once, padded to whole
batches and sharded along the mesh, and scores any variables with one jitted scan: every
registered metric (metrics.py), the loss included, summed over the real examples (the padded tail
is masked and the count checked) and divided once on the host. Optionally it also returns each
example's class probabilities (the report's confusion matrix and most confident mistakes).

`logits_fn(variables, images)` is any jittable forward pass from uint8 images to float32 logits:
one model's (`model_logits`: training's evaluation every epoch, `eval`, `report`, `export`), or an
ensemble's log mean probability over its members and TTA views (ensemble.py), so that the loss
scored is the ensemble's negative log-likelihood. It may return a pytree of logits, e.g. an
ensemble and each of its members, all scored in one pass; the scores come back in the same
structure.

Training scores its splits with the state's variables; the commands score restored ones with
`score`, on this process's devices. With the same devices, batch size and XLA settings the
program is the same, so the figures are training's to the bit.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mnist_flax import data
from mnist_flax.models import forward
from mnist_flax.parts import losses, metrics

LogitsFn = Callable[[Any, jax.Array], Any]  # (variables, uint8 images) -> logits or a pytree
PROBABILITIES = 'probabilities'  # the key of the per-example probabilities in the scores


def model_logits(model) -> LogitsFn:
  """One model's forward pass in eval mode, as a `logits_fn`."""
  return functools.partial(forward.predict_logits, model)


def batch_sums(logits, labels, mask, loss_fn=losses.cross_entropy) -> dict:
  """Every metric's sums over the unmasked examples of one batch (the plain, unsmoothed loss)."""
  per_example = loss_fn(logits, labels, label_smoothing=0.0)
  out = metrics.Outputs(logits=logits, labels=labels, mask=mask, losses=per_example,
                        loss_sum=jnp.sum(jnp.where(mask, per_example, 0.0)))
  return metrics.accumulate(metrics.zeros(), out)


def _is_totals(x) -> bool:
  return isinstance(x, dict) and metrics.COUNT in x


class Scorer:
  """Exact scores of one split: padded to whole batches on the device, the tail masked."""

  def __init__(self, split: data.Split, logits_fn: LogitsFn, mesh: Mesh, batch_size: int, *,
               loss_fn=losses.cross_entropy, probabilities: bool = False):
    batch_size = forward.device_batch_size(batch_size, mesh.devices.size)
    arrays = forward.padded_batches(split.images, split.labels, batch_size)
    batched = NamedSharding(mesh, P(None, mesh.axis_names))  # each batch split over the devices
    self.images, self.labels, self.mask = (jax.device_put(x, batched) for x in arrays)
    self.num_examples = len(split)
    self.probabilities = probabilities

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()),  # every process reads
                       compiler_options=forward.inference_compiler_options(
                           mesh.devices.flat[0].platform))  # the weights' buffer is reused
    def score(variables, images, labels, mask):
      def body(totals, batch):
        images, labels, mask = batch
        logits = logits_fn(variables, images)
        sums = jax.tree.map(lambda x: batch_sums(x, labels, mask, loss_fn), logits)
        probs = (jax.tree.map(lambda x: jax.nn.softmax(x, axis=-1), logits)
                 if probabilities else None)
        return jax.tree.map(jnp.add, totals, sums), probs
      heads = jax.eval_shape(logits_fn, variables,  # the structure of the logits: no compute
                             jax.ShapeDtypeStruct(images.shape[1:], images.dtype))
      zeros = jax.tree.map(lambda _: metrics.zeros(), heads)
      return jax.lax.scan(body, zeros, (images, labels, mask))
    self._score = score

  def __call__(self, variables):
    """{metric name: mean over the split, 'correct': int, 'count': int[, 'probabilities': float32
    (N, classes)]}, or a pytree of them when `logits_fn` returns one."""
    totals, probs = jax.device_get(self._score(variables, self.images, self.labels, self.mask))
    scores = jax.tree.map(self._finish, totals, is_leaf=_is_totals)
    if self.probabilities:
      flat = jax.tree.map(lambda p: p.reshape(-1, p.shape[-1])[:self.num_examples], probs)
      scores = jax.tree.map(lambda s, p: dict(s, **{PROBABILITIES: p}), scores, flat,
                            is_leaf=_is_totals)
    return scores

  def _finish(self, totals: dict) -> dict:
    count = int(totals[metrics.COUNT])
    assert count == self.num_examples, (count, self.num_examples)
    return dict(metrics.compute(totals), correct=int(totals['correct']), count=count)


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices: where a command scores what it restored (the
  commands run in one process; training scores on its own mesh, over every process)."""
  return Mesh(np.asarray(jax.local_devices()), ('data',))


def score(split: data.Split, logits_fn: LogitsFn, variables, batch_size: int, *,
          loss_fn=losses.cross_entropy, probabilities: bool = False):
  """Scores `variables` once on this process's devices (`local_mesh`), replicating them there."""
  mesh = local_mesh()
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  return Scorer(split, logits_fn, mesh, batch_size, loss_fn=loss_fn,
                probabilities=probabilities)(variables)


def score_classifier(classifier, split: data.Split, *, probabilities: bool = False) -> dict:
  """A restored model (`predict.load_classifier`) scored as its training scored it: the run's
  `eval_batch_size` and loss, on this process's devices."""
  config = classifier.config
  return score(split, model_logits(classifier.model), classifier.variables,
               config.get('eval_batch_size', 1000), loss_fn=losses.get_loss(config),
               probabilities=probabilities)
