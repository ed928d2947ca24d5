"""Deliberately broken data parallelism, to show that the sharding tests catch it (issue #6).

Not part of the library. Python imports `sitecustomize` at start-up from PYTHONPATH, so every
process of a test run (the pytest process and the `mnist-flax train` subprocesses it starts) gets
the breakage named by $MF_BREAK:

  wholebatch  the batch "sharding" is replicated: every device trains on the whole batch.
              -> test_gather_batch_is_sharded_along_data and
                 test_compiled_step_computes_per_device_batch_and_reduces_gradients fail.
  noreduce    gradients are not reduced over the batch: each device computes the gradient of its
              own shard and only device 0's is applied (shard_map, no pmean).
              -> test_eight_devices_match_one_and_resume_on_two fails (max |dparam| ~5e-2).
  reduce      the same shard_map step with the pmean: a control that should pass.

  MF_BREAK=noreduce JAX_NUM_CPU_DEVICES=2 PYTHONPATH=experiments/broken_sharding \
      .venv/bin/python -m pytest -q tests/training/test_sharding.py
"""
import os

MODE = os.environ.get('MF_BREAK')
if MODE:
  import jax
  from jax.sharding import PartitionSpec as P

  from mnist_flax.parts import losses
  from mnist_flax.training import sharding, steps
  from mnist_flax.models.forward import to_float

  def make_train_step(config, model, mesh):
    n = mesh.devices.size
    bs = config.batch_size
    local_bs = bs // n

    def local_step(state, metrics, images, labels, perm, index):
      k = jax.lax.axis_index(sharding.DATA_AXIS)
      idx = jax.lax.dynamic_slice_in_dim(perm, index * bs + k * local_bs, local_bs)
      x, y = to_float(images[idx]), labels[idx]
      rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), state.step)

      def loss_fn(params):
        logits = model.apply({'params': params}, x, train=True, rngs={'dropout': rng})
        return losses.cross_entropy(logits, y, config.label_smoothing).mean(), logits
      (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      if MODE == 'noreduce':  # device 0's shard gradient, broadcast (replicas stay consistent)
        grads = jax.tree.map(
            lambda g: jax.lax.psum(jax.numpy.where(k == 0, g, 0), sharding.DATA_AXIS), grads)
      else:
        grads = jax.lax.pmean(grads, sharding.DATA_AXIS)
      loss = jax.lax.pmean(loss, sharding.DATA_AXIS)
      correct = jax.lax.psum((logits.argmax(-1) == y).sum(), sharding.DATA_AXIS)
      metrics = dict(metrics, loss=metrics['loss'] + loss * bs,
                     correct=metrics['correct'] + correct, count=metrics['count'] + bs)
      return state.apply_gradients(grads=grads), metrics

    return jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(),) * 6,
                                 out_specs=(P(), P()), check_vma=False), donate_argnums=(0, 1))

  if MODE == 'wholebatch':
    sharding.data_sharded = sharding.replicated
  elif MODE in ('noreduce', 'reduce'):
    steps.make_train_step = make_train_step
