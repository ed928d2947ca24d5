"""Variants of a config's train step side by side: ms per step, images/s, images per CPU-second.

    python experiments/bench_steps.py --config speedrun \
        'model=blockcnn' 'model=blockcnn;model_kwargs.crop=0' 'model=fastcnn;model_kwargs.features=(16,32)'

Each argument is one variant: `;`-separated config overrides. Every variant is compiled first in
this one process (same CPU device split as `mnist-flax train`, random data of MNIST's shape
resident on the device), then all are timed in interleaved rounds and the best round of each is
printed. On a shared machine only such side-by-side figures mean anything: the other processes'
load hits every variant alike within a round. `--rounds`, `--images` (per variant and round).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build(config_file: str, variant: str):
  """The compiled train step of one variant and everything it needs to run."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mnist_flax import config as config_lib, configs, models  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import sharding, steps  # pylint: disable=import-outside-toplevel
  config = config_lib.apply_overrides(configs.load(config_file, validate=False),
                                      [v for v in variant.split(';') if v])
  config_lib.validate_config(config)
  mesh = sharding.make_mesh()
  n = 60000
  rng = np.random.default_rng(0)
  images, labels = sharding.put_replicated(
      (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
       rng.integers(0, 10, (n,), dtype=np.int32)), mesh)
  model = models.get_model(config)
  steps_per_epoch = n // config.batch_size
  state = steps.init_train_state(config, model, jax.random.PRNGKey(0), steps_per_epoch, mesh)
  metrics = jax.device_put(steps.zero_train_totals(), sharding.replicated(mesh))
  perm = jax.device_put(np.arange(n, dtype=np.int32), sharding.replicated(mesh))
  t = time.perf_counter()
  step = steps.make_train_step(config, model, mesh).lower(
      state, metrics, images, labels, perm, 0).compile()
  return {'variant': variant, 'config': config, 'step': step, 'state': state, 'metrics': metrics,
          'data': (images, labels, perm), 'steps_per_epoch': steps_per_epoch,
          'compile_s': time.perf_counter() - t}


def run(v: dict, steps: int) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  state, metrics = v['state'], v['metrics']
  for i in range(steps):
    state, metrics = v['step'](state, metrics, *v['data'], i % v['steps_per_epoch'])
    if i % 8 == 7:  # the training loop's bounded dispatch queue
      jax.block_until_ready(metrics)
  jax.block_until_ready(metrics)
  v['state'], v['metrics'] = state, metrics


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='speedrun', help='a recipe name or a config file')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--images', type=int, default=3000, help='images per variant and round')
  parser.add_argument('variants', nargs='*', default=[''])
  args = parser.parse_args(argv)
  from mnist_flax import configs  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import lowering, sharding
  first = configs.load(args.config, validate=False)
  devices = sharding.planned_cpu_devices(first.get('cpu_devices', 0), first.batch_size)
  print(f"CPU lowering: {lowering.setup(first, devices)}  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  sharding.setup_cpu_devices(first.get('cpu_devices', 0), first.batch_size)
  variants = [build(args.config, v) for v in args.variants]
  for v in variants:
    run(v, 5)  # warm-up
    v['rounds'] = []
  for _ in range(args.rounds):
    for v in variants:
      steps = max(5, args.images // v['config'].batch_size)
      cpu, t = time.process_time(), time.perf_counter()
      run(v, steps)
      wall, cpu = time.perf_counter() - t, time.process_time() - cpu
      images = steps * v['config'].batch_size
      v['rounds'].append({'ms_per_step': 1000 * wall / steps, 'images_per_s': images / wall,
                          'images_per_cpu_s': images / cpu})
  print(f'load average {os.getloadavg()[0]:.2f}')
  for v in variants:
    best = min(v['rounds'], key=lambda r: r['ms_per_step'])
    rounds = ', '.join(f"{r['ms_per_step']:.1f}" for r in v['rounds'])
    print(f"{v['variant'] or '(config as is)':<60} compile {v['compile_s']:5.2f} s  "
          f"{best['ms_per_step']:7.2f} ms/step  {best['images_per_s']:8,.0f} img/s  "
          f"{best['images_per_cpu_s']:8,.0f} img/cpu-s  (rounds: {rounds} ms)")
  return [{k: v[k] for k in ('variant', 'compile_s', 'rounds')} for v in variants]


if __name__ == '__main__':
  main()
