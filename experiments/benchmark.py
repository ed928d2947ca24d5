"""Benchmark a config: throughput, FLOP rate, compile time, time to a target accuracy, memory,
the peer recipes side by side, and how the cost of an epoch scales.

    python experiments/benchmark.py [--config default] [--seeds 3]
        [--seeds-config speedrun] [--target 0.99] [--steps 200] [--peak-gflops 157] [--phases] [--warm]
        [--peers [flax,keras,torch,torch-refcnn-bf16,...] --peer-epochs 3] [--scaling]
        [--models cnn,nnx_cnn --rounds 3]
        [--json results.json] [--config.FIELD=VALUE ...]

What it measures, in one process set up exactly like `mnist-flax train` (same CPU device split,
same jitted `train_step`, data resident on the device):

* the machine: CPU model, cores, ISA flags that matter (AVX-512, BF16), load average before and
  after, and a measured numpy sgemm rate (what the cores really do in fp32);
* train throughput: images/s over `--steps` steps after compilation and a warm-up;
* FLOPs per training image, two ways: analytic (2 x multiply-adds of every conv and matmul in the
  forward pass, times 3 for forward + backward, the convention the peer scripts use) and XLA's
  `cost_analysis()` of the compiled step; achieved GFLOP/s and its share of the machine's peak
  (`--peak-gflops`, else the measured sgemm rate);
* compile time of the train step, peak host memory (RSS) and, on accelerators, peak device memory;
* predict throughput (the jitted `predict` on batches of `eval_batch_size`) and exact-evaluation
  throughput (the sharded `scoring.Scorer` over all 10,000 test images);
* time to `--target` test accuracy over `--seeds` seeds: each seed is a real `mnist-flax train`
  subprocess (start-up and compilation included) with an empty compilation cache of its own
  (cold); `--warm` reruns each seed on the cache it filled (warm) and checks that the accuracy is
  the same; `--phases` splits each process's wall time into its phases (experiments/phases.py);
* `--peers`: the recipes of `../shared/peers/`, one after another, never in parallel; every
  figure is printed absolute and as a ratio to each peer and to the strongest. `--peers` alone
  runs PyTorch at its best (`PYTORCH_PEERS`: the reference CNN fp32 / bf16 autocast, eager /
  torch.compile, and the torch speedrun fp32 / bf16); a torch peer without PyTorch
  (`$PEER_TORCH_PYTHON`, else this interpreter) is skipped with a line saying how to install it;
* `--scaling`: seconds per epoch of the config against the batch size and against the number of
  CPU devices (one subprocess per cell, since the device split is fixed when JAX starts);
* `--models a,b`: the config with each model side by side (for example the linen reference CNN
  and its NNX version, `cnn,nnx_cnn`): train and predict images/s, measured in `--rounds`
  interleaved rounds (a, b, a, b, ...: load that comes and goes hits both) and the median taken,
  and with `--seeds` each model's accuracy over those seeds; ratios to the first model.

It prints tables and writes JSON (`--json`, default `<workdir>/benchmark.json`, the workdir being
`--config.workdir` or a new temporary folder). Timings on a shared machine are noise: run it on an
otherwise idle machine, and read the load averages it records.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
PEERS_DIR = REPO.parent / 'shared' / 'peers'
# name: (script, its extra arguments). The torch_refcnn peers train the reference CNN (the peer
# for images/s), the torch_speedrun peers a published fast recipe (the peer for time to 99%).
PEERS = {
    'flax': ('flax_example.py', ()), 'keras': ('keras_convnet.py', ()),
    'torch': ('torch_examples.py', ()),
    'torch-refcnn': ('torch_refcnn.py', ()), 'torch-refcnn-bf16': ('torch_refcnn.py', ('--bf16',)),
    'torch-refcnn-compile': ('torch_refcnn.py', ('--compile',)),
    'torch-refcnn-bf16-compile': ('torch_refcnn.py', ('--bf16', '--compile')),
    'torch-speedrun': ('torch_speedrun.py', ()),
    'torch-speedrun-bf16': ('torch_speedrun.py', ('--bf16',)),
}
# `--peers` alone: PyTorch at its best on a CPU, fp32 and bf16, eager and compiled.
PYTORCH_PEERS = ('torch-refcnn', 'torch-refcnn-bf16', 'torch-refcnn-compile',
                 'torch-refcnn-bf16-compile', 'torch-speedrun', 'torch-speedrun-bf16')
# The torch peers need an interpreter with PyTorch (this project's has none): $PEER_TORCH_PYTHON.
PEER_PYTHON_ENV = {'torch': 'PEER_TORCH_PYTHON', 'keras': 'PEER_KERAS_PYTHON',
                   'flax': 'PEER_FLAX_PYTHON'}
TORCH_INSTALL = ('pip install torch==2.13.0 (the CPU build) in a separate virtual environment, '
                 'then PEER_TORCH_PYTHON=/path/to/that/venv/bin/python')
PHASES_SCRIPT = REPO / 'experiments' / 'phases.py'
sys.path.insert(0, str(REPO))  # run as a script from a checkout without installing


# ---------------------------------------------------------------------------- the machine


def cpu_model() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def nominal_peak_gflops() -> float | None:
  """Cores x clock x fp32 FLOP/cycle from the ISA flags (2 FMA pipes assumed); None if unknown."""
  try:
    info = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return None
  mhz = re.search(r'cpu MHz\s*:\s*([\d.]+)', info)
  flags = re.search(r'flags\s*:(.*)', info)
  if not mhz or not flags:
    return None
  flags = flags.group(1).split()
  lanes = 16 if 'avx512f' in flags else 8 if 'avx2' in flags else 4
  flop_per_cycle = lanes * 2 * 2  # 2 FLOPs per FMA lane, 2 FMA pipes
  return os.cpu_count() * float(mhz.group(1)) / 1000 * flop_per_cycle


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
  """The best fp32 matmul rate numpy (BLAS, all cores) reaches: a practical peak."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  b = a.T.copy()
  a @ b  # warm up the BLAS threads
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def machine_record() -> dict:
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import sharding  # pylint: disable=import-outside-toplevel
  return {
      'cpu': cpu_model(), 'cpu_cores': os.cpu_count(), 'platform': platform.platform(),
      'python': platform.python_version(), 'jax': jax.__version__, 'flax': flax.__version__,
      'optax': optax.__version__, 'backend': jax.default_backend(),
      'devices': sharding.describe_devices(), 'num_devices': jax.device_count(),
      'isa': cpu_flags_of_interest(),
      'load_average_1m': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
  }


def cpu_flags_of_interest() -> list[str]:
  """The vector ISA flags that decide XLA CPU's matmul kernels (fp32 and bf16)."""
  try:
    info = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return []
  flags = re.search(r'flags\s*:(.*)', info)
  wanted = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16')
  return [f for f in wanted if flags and f in flags.group(1).split()]


# ---------------------------------------------------------------------------- FLOPs


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, 'eqns'):
        yield item
      elif hasattr(item, 'jaxpr') and hasattr(item.jaxpr, 'eqns'):
        yield item.jaxpr


def _count_flops(jaxpr) -> int:
  """2 x multiply-adds of every convolution and matmul in a jaxpr (nested ones included)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
      out_channels = rhs.shape[eqn.params['dimension_numbers'].rhs_spec[0]]
      total += 2 * int(np.prod(out.shape)) * int(np.prod(rhs.shape)) // out_channels
    elif name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      contracted = int(np.prod([lhs.shape[d] for d in lhs_contract]))
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted
    for sub in _sub_jaxprs(eqn):
      total += _count_flops(sub)
  return total


def analytic_train_flops_per_image(model, variables) -> float:
  """Forward conv+matmul FLOPs of one image, times 3 (forward + two backward matmuls)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mnist_flax import data  # pylint: disable=import-outside-toplevel
  batch = 8
  forward = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  jaxpr = jax.make_jaxpr(forward)(variables, jnp.zeros((batch,) + data.MNIST.image_shape))
  return 3 * _count_flops(jaxpr.jaxpr) / batch


def _cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


# ---------------------------------------------------------------------------- measurements


def _peak_device_bytes() -> int | None:
  import jax  # pylint: disable=import-outside-toplevel
  stats = getattr(jax.local_devices()[0], 'memory_stats', lambda: None)()
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def measure_training(config, steps: int, warmup: int, inference: bool = True) -> dict:
  """Compile time, steady throughput and FLOP counts of the config's jitted train step."""
  import jax  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import sharding, train  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import steps as steps_lib  # pylint: disable=import-outside-toplevel  (`steps` is the count)

  mesh = sharding.make_mesh()
  # The set-up of `train_and_evaluate` itself: data on the device, model, state, jitted step.
  setup = train.build_training(config, mesh)
  datasets, model, step_fn = setup.datasets, setup.model, setup.step_fn
  state = setup.initial_state()
  steps_per_epoch = setup.steps_per_epoch
  n_train = len(datasets.train)
  images, labels = setup.train_images, setup.train_labels
  metrics = jax.device_put(steps_lib.zero_train_totals(), sharding.replicated(mesh))
  perm = setup.permutation(0)
  flops_image = analytic_train_flops_per_image(model, state.variables())

  t = time.perf_counter()
  lowered = step_fn.lower(state, metrics, images, labels, perm, 0)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  xla_flops = _cost_flops(compiled)

  sync_every = config.get('sync_every_steps', 8) or 8
  def run(first, count):
    nonlocal state, metrics
    for i in range(first, first + count):
      state, metrics = compiled(state, metrics, images, labels, perm, i % steps_per_epoch)
      if (i + 1) % sync_every == 0:
        jax.block_until_ready(metrics)
    jax.block_until_ready(metrics)

  run(0, warmup)
  cpu0, t = time.process_time(), time.perf_counter()
  run(warmup, steps)
  seconds = time.perf_counter() - t
  cores_busy = (time.process_time() - cpu0) / seconds
  images_per_s = steps * config.batch_size / seconds
  out = {
      'batch_size': config.batch_size, 'steps_timed': steps, 'compile_seconds': compile_s,
      'train_images_per_s': images_per_s, 'step_ms': 1000 * seconds / steps,
      'cores_busy': cores_busy,
      # Robust to other processes sharing the CPU: throughput per core-second actually used.
      'images_per_cpu_second': images_per_s / max(cores_busy, 1e-9),
      'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'train_images': n_train, 'num_devices': mesh.devices.size,
      'epoch_seconds': n_train / images_per_s,  # steady state: compile and evaluation excluded
      'train_flops_per_image_analytic': flops_image,
      'achieved_gflops_analytic': images_per_s * flops_image / 1e9,
  }
  if xla_flops:
    # cost_analysis counts one device's share of the partitioned step; scale to the whole batch.
    per_image = xla_flops * mesh.devices.size / config.batch_size
    out.update(train_flops_per_image_xla=per_image,
               achieved_gflops_xla=images_per_s * per_image / 1e9)
  if inference:
    out.update(_measure_inference(config, model, state, datasets.test, mesh))
  return out


def _measure_inference(config, model, state, test, mesh, repeats: int = 3) -> dict:
  """Images/s of the jitted `predict` (one batch) and of exact evaluation (whole test set)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mnist_flax.inference import predict, scoring  # pylint: disable=import-outside-toplevel
  variables = state.variables()
  batch = test.images[:config.eval_batch_size]
  jax.block_until_ready(predict.predict(model, variables, batch))  # compile
  t = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(predict.predict(model, variables, batch))
  predict_rate = repeats * len(batch) / (time.perf_counter() - t)
  scorer = scoring.Scorer(test, scoring.model_logits(model), mesh, config.eval_batch_size)
  scorer(variables)  # compile
  t = time.perf_counter()
  for _ in range(repeats):
    scorer(variables)
  eval_rate = repeats * len(test) / (time.perf_counter() - t)
  return {'predict_images_per_s': predict_rate, 'eval_images_per_s': eval_rate}


def run_seed(config_file: str, overrides: list[str], seed: int, workdir: pathlib.Path,
             target: float, cache_dir: pathlib.Path, phases: bool = False) -> dict:
  """One real `mnist-flax train` process; its accuracy, training time and time to target.

  `cache_dir` is its persistent compilation cache (`$MNIST_FLAX_CACHE`): an empty one gives the
  cold figure, one a previous run filled the warm one. `phases`: run it through
  experiments/phases.py (the same CLI, with timers) and return its phases too.
  """
  entry = [str(PHASES_SCRIPT)] if phases else ['-m', 'mnist_flax.cli']
  cmd = [sys.executable, *entry, 'train', '--config', config_file, *overrides,
         f'--config.seed={seed}', f'--config.workdir={workdir}', '--config.progress_bar=false']
  env = dict(os.environ, MNIST_FLAX_CACHE=str(cache_dir))
  cpu0 = _children_cpu_seconds()
  t = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
  wall = time.perf_counter() - t
  cpu = _children_cpu_seconds() - cpu0
  if proc.returncode != 0:
    raise RuntimeError(f'seed {seed}: {" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
  summary = json.loads((workdir / 'summary.json').read_text())
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()
             if line.strip()]
  elapsed, to_target = 0.0, None
  for record in records:
    elapsed += record['seconds']
    if to_target is None and record['test_accuracy'] >= target:
      to_target = {'seconds': elapsed, 'epoch': record['epoch']}
  out = {'seed': seed, 'test_accuracy': summary['test_accuracy'],
         'train_seconds': summary['train_seconds'],
         'process_seconds': wall, 'process_cpu_seconds': cpu, 'epochs': summary['epochs'],
         'epoch_seconds': [r['seconds'] for r in records],
         'time_to_target_seconds': to_target and to_target['seconds'],
         'epoch_to_target': to_target and to_target['epoch']}
  line = next((l for l in proc.stdout.splitlines() if l.startswith('PHASES ')), None)
  if line:
    out['phases'] = json.loads(line[len('PHASES '):])
    out['phases']['interpreter'] = wall - out['phases']['in_python']  # start-up and exit
  return out


def run_seeds(args, overrides: list[str], workdir: pathlib.Path) -> dict:
  """`--seeds` cold runs (each its own empty compilation cache) and, with `--warm`, a rerun of
  each on the cache it filled; spreads, phases and the cold-vs-warm accuracy check."""
  cold, warm = [], []
  config_file = args.seeds_config or args.config
  for seed in range(args.seeds):
    cache = workdir / f'xla-cache-seed{seed}'
    cold.append(run_seed(config_file, overrides, seed, workdir / f'seed{seed}', args.target,
                         cache, args.phases))
    if args.warm:
      warm.append(run_seed(config_file, overrides, seed, workdir / f'seed{seed}-warm',
                           args.target, cache, args.phases))
  out = {'cold': _summarize_runs(cold)}
  if warm:
    out['warm'] = _summarize_runs(warm)
    same = all(c['test_accuracy'] == w['test_accuracy'] for c, w in zip(cold, warm))
    out['warm_same_accuracy'] = same
  return out


def _summarize_runs(runs: list[dict]) -> dict:
  out = {key: _spread([r[key] for r in runs]) for key in (
      'test_accuracy', 'train_seconds', 'process_seconds', 'process_cpu_seconds',
      'time_to_target_seconds')}
  out['runs'] = runs
  with_phases = [r['phases'] for r in runs if 'phases' in r]
  if with_phases:
    out['phases_mean'] = {k: statistics.fmean(p.get(k, 0.0) for p in with_phases)
                          for k in with_phases[0]}
  return out


def run_models(args, config, overrides: list[str], workdir: pathlib.Path | None) -> list[dict]:
  """`--models`: throughput of each model in interleaved rounds, then `--seeds` runs of each."""
  from mnist_flax import config as config_lib  # pylint: disable=import-outside-toplevel
  names = [n for n in args.models.split(',') if n]
  rounds = {name: [] for name in names}
  for _ in range(max(1, args.rounds)):
    for name in names:
      model_config = config_lib.apply_overrides(config, [f'model={name}'])
      rounds[name].append(measure_training(model_config, args.steps, args.warmup))
  out = []
  for name in names:
    runs = rounds[name]
    entry = {'model': name, 'params': runs[0]['params'], 'rounds': runs,
             'compile_seconds': statistics.median(r['compile_seconds'] for r in runs)}
    for key in ('train_images_per_s', 'images_per_cpu_second', 'predict_images_per_s',
                'eval_images_per_s'):
      entry[key] = statistics.median(r[key] for r in runs)
    if args.seeds:
      entry['seeds'] = run_seeds(args, overrides + [f'--config.model={name}'], workdir / name)
    out.append(entry)
  return out


def _print_models(models: list[dict] | None) -> None:
  if not models:
    return
  first = models[0]
  print(f"\nmodels side by side (images/s: median of {len(first['rounds'])} interleaved rounds; "
        f"x = ratio to {first['model']}):")
  print(f"  {'model':<12} {'params':>9} {'train img/s':>12} {'x':>5} {'per core-s':>10} "
        f"{'predict img/s':>13} {'x':>5} {'compile s':>9}  test accuracy (cold seeds)")
  for m in models:
    seeds = m.get('seeds', {}).get('cold')
    acc = seeds and seeds['test_accuracy']
    accuracy = (f"{100 * acc['mean']:.2f}% mean, {100 * acc['std']:.2f} std over {acc['n']}"
                if acc else '-')
    print(f"  {m['model']:<12} {m['params']:>9,} {m['train_images_per_s']:>12,.0f} "
          f"{m['train_images_per_s'] / first['train_images_per_s']:>5.2f} "
          f"{m['images_per_cpu_second']:>10,.0f} {m['predict_images_per_s']:>13,.0f} "
          f"{m['predict_images_per_s'] / first['predict_images_per_s']:>5.2f} "
          f"{m['compile_seconds']:>9.1f}  {accuracy}")


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _spread(values: list[float]) -> dict:
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
  return {'mean': statistics.fmean(values), 'std': statistics.pstdev(values),
          'min': min(values), 'max': max(values), 'n': len(values)}


def run_peer(name: str, epochs: int, train_limit: int = 0, seeds: int = 0) -> dict:
  """One peer recipe of ../shared/peers/ on this machine; its final JSON line.

  Its interpreter: `$PEER_<FRAMEWORK>_PYTHON` (e.g. PEER_TORCH_PYTHON=/path/venv/bin/python, since
  PyTorch is not in this project's environment), else this one. A torch peer without PyTorch is
  skipped with a line saying how to install it. `epochs` for the per-epoch peers; `seeds` (0:
  the script's default, 5) for the speedrun peers, whose recipe fixes its epochs.
  """
  script_name, extra = PEERS[name]
  script = PEERS_DIR / script_name
  if not script.is_file():
    return {'peer': name, 'error': f'{script} not found'}
  python = os.environ.get(PEER_PYTHON_ENV[name.split('-')[0]]) or sys.executable
  if name.startswith('torch') and subprocess.run([python, '-c', 'import torch'],
                                                 capture_output=True, check=False).returncode:
    return {'peer': name, 'skipped': f'no PyTorch in {python}: {TORCH_INSTALL}'}
  cmd = [python, str(script), *extra]
  if 'speedrun' in name:
    cmd += ['--seeds', str(seeds)] if seeds else []
  else:
    cmd += ['--epochs', str(epochs)]
  if train_limit:
    cmd += ['--train-limit', str(train_limit)]
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_NUM_CPU_DEVICES', 'XLA_FLAGS')}
  load = os.getloadavg()[0]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=script.parent, env=env,
                        check=False)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith('{'):
      return dict(json.loads(line), peer=name, load_average_1m_before=load)
  return {'peer': name, 'error': f'peer failed (exit {proc.returncode}): {proc.stderr[-500:]}'}


def _ours_speedrun_seconds(result: dict) -> float | None:
  runs = (result.get('seeds') or {}).get('cold') or {}
  return (runs.get('train_seconds') or {}).get('mean')


def peer_ratios(result: dict) -> dict:
  """Each figure of ours divided by the peer's (for times: the peer's over ours), per peer."""
  training = result.get('training') or {}
  runs = (result.get('seeds') or {}).get('cold') or {}
  ours_t99 = (runs.get('time_to_target_seconds') or {}).get('mean')
  ours_train = _ours_speedrun_seconds(result)
  ratios = {}
  for peer in result.get('peers', []):
    if 'error' in peer or 'skipped' in peer:
      continue
    r = {}
    if training and peer.get('steady_images_per_s'):
      r['train_images_per_s'] = training['train_images_per_s'] / peer['steady_images_per_s']
      r['gflops'] = training['achieved_gflops_analytic'] / max(peer['steady_gflops'], 1e-9)
    if ours_t99 and peer.get('time_to_99_s') and abs(result['target'] - 0.99) < 1e-9:
      r['time_to_99'] = peer['time_to_99_s'] / ours_t99
    if ours_train and peer.get('mean_train_s'):
      r['train_seconds'] = peer['mean_train_s'] / ours_train
    ratios[peer['peer']] = r
  return ratios


def strongest_peers(result: dict) -> dict:
  """The strongest peer of each kind: most images/s (the reference CNN's peers) and least mean
  training time (the speedrun peers), as {'images_per_s': peer, 'train_seconds': peer}."""
  peers = [p for p in result.get('peers', []) if 'error' not in p and 'skipped' not in p]
  fast = [p for p in peers if p.get('steady_images_per_s')]
  timed = [p for p in peers if p.get('mean_train_s')]
  out = {}
  if fast:
    out['images_per_s'] = max(fast, key=lambda p: p['steady_images_per_s'])
  if timed:
    out['train_seconds'] = min(timed, key=lambda p: p['mean_train_s'])
  return out


def run_scaling(args, overrides: list[str], workdir: pathlib.Path) -> list[dict]:
  """Seconds per epoch against batch size and CPU devices: one subprocess per cell."""
  cells = []
  for devices in args.scaling_devices:
    for batch in args.scaling_batches:
      if batch % devices:
        continue
      out = workdir / f'scaling-d{devices}-b{batch}.json'
      steps = max(10, args.scaling_images // batch)
      cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), '--config', args.config,
             *overrides, f'--config.cpu_devices={devices}', f'--config.batch_size={batch}',
             '--steps', str(steps), '--warmup', '5', '--steps-only', '--peak-gflops', '1',
             '--json', str(out)]
      env = {k: v for k, v in os.environ.items() if k not in ('JAX_NUM_CPU_DEVICES', 'XLA_FLAGS')}
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
      if proc.returncode != 0:
        cells.append({'devices': devices, 'batch_size': batch, 'error': proc.stderr[-300:]})
        continue
      t = json.loads(out.read_text())['training']
      cells.append({'devices': devices, 'batch_size': batch,
                    'epoch_seconds': t['epoch_seconds'], 'images_per_s': t['train_images_per_s'],
                    'compile_seconds': t['compile_seconds'], 'cores_busy': t['cores_busy'],
                    'load_average_1m': os.getloadavg()[0]})
  return cells


# ---------------------------------------------------------------------------- report


def _fmt(value, spec: str = ',.0f') -> str:
  return '-' if value is None else format(value, spec)


def _row_runs(label: str, runs: dict, target: float) -> list[tuple[str, str]]:
  acc, to_target = runs['test_accuracy'], runs['time_to_target_seconds']
  rows = [
      (f'test accuracy ({label})', f"{100 * acc['mean']:.2f}% mean, {100 * acc['std']:.2f} std, "
                                   f"{100 * acc['min']:.2f}..{100 * acc['max']:.2f} over "
                                   f"{acc['n']} seeds"),
      (f'training seconds ({label})', f"{runs['train_seconds']['mean']:.1f} mean "
                                      f"({runs['train_seconds']['min']:.1f}.."
                                      f"{runs['train_seconds']['max']:.1f})"),
      (f'process seconds ({label})', f"{runs['process_seconds']['mean']:.1f} mean "
                                     f"({runs['process_seconds']['min']:.1f}.."
                                     f"{runs['process_seconds']['max']:.1f}), "
                                     f"{runs['process_cpu_seconds']['mean']:.1f} CPU seconds"),
      (f'time to {100 * target:.2f}% ({label})',
       f"{_fmt(to_target['mean'], '.1f')} s mean ({to_target['n']}/{acc['n']} seeds reached it)"),
  ]
  if runs.get('phases_mean'):
    phases = runs['phases_mean']
    rows.append((f'process phases, s ({label})', ', '.join(
        f'{k} {v:.2f}' for k, v in phases.items() if k != 'in_python')))
  return rows


def print_table(result: dict) -> None:
  m, t = result['machine'], result.get('training') or {}
  peak = result['peak_gflops']
  rows = [
      ('machine', f"{m['cpu']}, {m['cpu_cores']} cores ({', '.join(m.get('isa', []))}), "
                  f"{m['devices']}, jax {m['jax']}"),
      ('XLA CPU lowering', f"{m.get('cpu_lowering')} (XLA_FLAGS={m.get('xla_flags', '')!r})"),
      ('load average (1 min)', f"{_fmt(m['load_average_1m'], '.2f')} at start, "
                               f"{_fmt(result.get('load_average_1m_end'), '.2f')} at end"),
      ('peak fp32 GFLOP/s', f"{_fmt(peak['used'], '.0f')} ({peak['source']}; nominal "
                            f"{_fmt(peak['nominal'], '.0f')}, sgemm {_fmt(peak['sgemm'], '.0f')})"),
  ]
  if t:
    share = t['achieved_gflops_analytic'] / peak['used'] if peak['used'] else None
    rows += [
        ('train step compile', f"{t['compile_seconds']:.2f} s"),
        ('train images/s', f"{t['train_images_per_s']:,.0f} (batch {t['batch_size']}, "
                           f"{t['step_ms']:.1f} ms/step, {t['cores_busy']:.2f} cores busy, "
                           f"{t['images_per_cpu_second']:,.0f} per core-second)"),
        ('train FLOPs/image', f"{t['train_flops_per_image_analytic'] / 1e6:.1f} M analytic, "
                              f"{_fmt(t.get('train_flops_per_image_xla', 0) / 1e6, '.1f')} M XLA"),
        ('achieved GFLOP/s', f"{t['achieved_gflops_analytic']:.1f} analytic "
                             f"({_fmt(share and 100 * share, '.0f')}% of peak), "
                             f"{_fmt(t.get('achieved_gflops_xla'), '.1f')} XLA"),
    ]
    if 'predict_images_per_s' in t:
      rows.append(('predict images/s', f"{t['predict_images_per_s']:,.0f} (jitted predict), "
                                       f"{t['eval_images_per_s']:,.0f} (exact evaluation)"))
  rows.append(('peak host memory', f"{result['peak_rss_mb']:.0f} MB RSS"
               + (f", device {result['peak_device_mb']:.0f} MB" if result.get('peak_device_mb')
                  else '')))
  seeds = result.get('seeds')
  if seeds:
    rows.append(('seeds of', result['seeds_config']))
    rows += _row_runs('cold cache', seeds['cold'], result['target'])
    if 'warm' in seeds:
      rows += _row_runs('warm cache', seeds['warm'], result['target'])
      rows.append(('reproducibility', 'same accuracy cold and warm, seed by seed: '
                                      f"{seeds['warm_same_accuracy']}"))
  width = max(len(k) for k, _ in rows)
  print(f"\nbenchmark: {result['config']} {' '.join(result['overrides'])}")
  for key, value in rows:
    print(f'  {key:<{width}}  {value}')
  _print_peers(result)
  _print_scaling(result.get('scaling'))
  _print_models(result.get('models'))


def _print_peers(result: dict) -> None:
  peers = result.get('peers')
  if not peers:
    return
  ratios, best = peer_ratios(result), strongest_peers(result)
  print('\npeers, one after another on the same machine (ratio = mnist_flax / peer; for times, '
        'peer / mnist_flax):')
  if any(not p.get('mean_train_s') for p in peers):
    print(f"  {'peer':<26} {'images/s':>10} {'GFLOP/s':>8} {'time to 99%':>12} {'test acc':>9} "
          f"{'epochs':>6} {'load':>5}  {'x images/s':>10} {'x time to 99%':>13}")
  for peer in peers:
    if 'error' in peer or 'skipped' in peer:
      print(f"  {peer['peer']:<26} {'skipped: ' if 'skipped' in peer else ''}"
            f"{(peer.get('error') or peer['skipped'])[:160]}")
      continue
    if not peer.get('steady_images_per_s'):
      continue  # a speedrun peer: its own table below
    r = ratios.get(peer['peer'], {})
    print(f"  {peer['peer']:<26} {peer['steady_images_per_s']:>10,.0f} "
          f"{peer['steady_gflops']:>8.1f} {_fmt(peer['time_to_99_s'], '.1f'):>12} "
          f"{100 * peer['test_acc']:>8.2f}% {peer['epochs']:>6} "
          f"{peer['load_average_1m_before']:>5.1f}  "
          f"{_fmt(r.get('train_images_per_s'), '.2f'):>10} {_fmt(r.get('time_to_99'), '.1f'):>13}")
  timed = [p for p in peers if p.get('mean_train_s')]
  if timed:
    ours = _ours_speedrun_seconds(result)
    print(f"\n  {'speedrun peer':<26} {'mean train s':>12} {'mean test acc':>13} {'seeds':>5} "
          f"{'load':>5}  {'peer s / ours':>13}")
    for peer in timed:
      print(f"  {peer['peer']:<26} {peer['mean_train_s']:>12.2f} "
            f"{100 * peer['mean_test_acc']:>12.2f}% {peer['seeds']:>5} "
            f"{peer['load_average_1m_before']:>5.1f}  "
            f"{_fmt(ratios.get(peer['peer'], {}).get('train_seconds'), '.2f'):>13}")
  t = result.get('training') or {}
  if 'images_per_s' in best and t:
    peer = best['images_per_s']
    print(f"  strongest for images/s: {peer['peer']} ({peer['steady_images_per_s']:,.0f}); "
          f"mnist_flax ({result['config']}) {t['train_images_per_s']:,.0f} = "
          f"{t['train_images_per_s'] / peer['steady_images_per_s']:.2f}x it")
  if 'train_seconds' in best and _ours_speedrun_seconds(result):
    peer, ours = best['train_seconds'], _ours_speedrun_seconds(result)
    acc = result['seeds']['cold']['test_accuracy']['mean']
    print(f"  strongest speedrun: {peer['peer']} ({peer['mean_train_s']:.2f} s, "
          f"{100 * peer['mean_test_acc']:.2f}%); mnist_flax ({result['seeds_config']}) "
          f"{ours:.2f} s, {100 * acc:.2f}% = {ours / peer['mean_train_s']:.2f}x its time")


def _print_scaling(cells) -> None:
  if not cells:
    return
  devices = sorted({c['devices'] for c in cells})
  batches = sorted({c['batch_size'] for c in cells})
  by = {(c['devices'], c['batch_size']): c for c in cells}
  print('\nseconds per epoch (steady, compile excluded; images/s in brackets) by batch size and '
        'CPU devices:')
  print('  ' + f"{'batch':>6}" + ''.join(f'{f"{d} device(s)":>22}' for d in devices))
  for b in batches:
    line = f'  {b:>6}'
    for d in devices:
      c = by.get((d, b))
      text = '-' if c is None else 'error' if 'error' in c else \
          f"{c['epoch_seconds']:.2f} ({c['images_per_s']:,.0f})"
      line += f'{text:>22}'
    print(line)


# ---------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x]


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='default',
                      help='a shipped recipe by name or a config file (default: default)')
  parser.add_argument('--seeds-config', default='',
                      help='time --seeds of this config instead of --config (e.g. the speedrun '
                           'beside the reference CNN\'s throughput; overrides apply to both)')
  parser.add_argument('--seeds', type=int, default=0,
                      help='train this many seeds (0, 1, ...) end to end; 0 = throughput only')
  parser.add_argument('--target', type=float, default=0.99, help='test accuracy to time')
  parser.add_argument('--steps', type=int, default=200, help='timed train steps')
  parser.add_argument('--warmup', type=int, default=20, help='untimed steps after compiling')
  parser.add_argument('--peak-gflops', type=float, default=0.0,
                      help='machine fp32 peak; default: measured numpy sgemm rate')
  parser.add_argument('--peer-epochs', type=int, default=0,
                      help='run the peers (--peers; default: the Flax example) for this many '
                           'epochs')
  parser.add_argument('--peers', default='', nargs='?', const=','.join(PYTORCH_PEERS),
                      help='comma-separated peers of ../shared/peers/ (alone: the PyTorch peers at '
                           f'their best, {",".join(PYTORCH_PEERS)}); known: {",".join(PEERS)}')
  parser.add_argument('--peer-seeds', type=int, default=0,
                      help='seeds of the speedrun peers (default: theirs, 5)')
  parser.add_argument('--phases', action='store_true',
                      help="split each seed's process time into phases (experiments/phases.py)")
  parser.add_argument('--warm', action='store_true',
                      help='rerun each seed on the compilation cache its cold run filled')
  parser.add_argument('--scaling', action='store_true',
                      help='seconds per epoch against batch size and number of CPU devices')
  parser.add_argument('--scaling-batches', type=_ints, default=[64, 128, 256, 512])
  parser.add_argument('--scaling-devices', type=_ints, default=[1, 2])
  parser.add_argument('--scaling-images', type=int, default=12800,
                      help='images timed per scaling cell')
  parser.add_argument('--models', default='',
                      help='comma-separated model names measured side by side (e.g. cnn,nnx_cnn)')
  parser.add_argument('--rounds', type=int, default=3,
                      help='interleaved throughput rounds per model with --models')
  parser.add_argument('--steps-only', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--peer-train-limit', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--no-throughput', action='store_true', help='skip the throughput section')
  parser.add_argument('--json', default='', help='output file (default: <workdir>/benchmark.json)')
  args, rest = parser.parse_known_args(argv)
  unknown = [p for p in args.peers.split(',') if p and p not in PEERS]
  if unknown:
    parser.error(f'unknown peers {unknown}; known: {",".join(PEERS)}')
  bad = [a for a in rest if not a.startswith('--config.')]
  if bad:
    parser.error(f'unrecognized arguments: {" ".join(bad)}')
  return args, rest


def main(argv: list[str] | None = None) -> dict:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from mnist_flax import config as config_lib, configs  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import lowering, sharding
  config = config_lib.apply_overrides(configs.load(args.config, validate=False),
                                      overrides)
  config_lib.validate_config(config)
  # Same XLA CPU lowering and device split as `mnist-flax train`, before JAX starts.
  lowering_applied = lowering.setup(config, sharding.planned_cpu_devices(
      config.get('cpu_devices', 0), config.batch_size))
  sharding.setup_cpu_devices(config.get('cpu_devices', 0), config.batch_size)
  workdir = pathlib.Path(config.workdir) if config.workdir else None
  if workdir is None and (args.seeds or args.scaling or args.models or not args.json):
    workdir = pathlib.Path(tempfile.mkdtemp(prefix='mnist_flax_bench_'))
  result = {'config': args.config, 'seeds_config': args.seeds_config or args.config,
            'overrides': overrides, 'target': args.target,
            'machine': dict(machine_record(), cpu_lowering=lowering_applied,
                            xla_flags=os.environ.get('XLA_FLAGS', ''))}
  # A given peak skips the sgemm measurement (a few seconds of both cores).
  nominal, sgemm = nominal_peak_gflops(), None if args.peak_gflops else sgemm_gflops()
  result['peak_gflops'] = {
      'nominal': nominal, 'sgemm': sgemm,
      'used': args.peak_gflops or sgemm,
      'source': '--peak-gflops' if args.peak_gflops else 'measured numpy sgemm'}
  if args.models:  # the side-by-side section replaces the single-config one
    result['models'] = run_models(args, config, overrides, workdir)
  elif not args.no_throughput:
    training = measure_training(config, args.steps, args.warmup, inference=not args.steps_only)
    training['share_of_peak'] = training['achieved_gflops_analytic'] / result['peak_gflops']['used']
    result['training'] = training
  if args.seeds and not args.models:
    result['seeds'] = run_seeds(args, overrides, workdir)
    result['seeds']['note'] = (
        'each seed is a plain `mnist-flax train` run (same code path as users get); the same '
        'config and seed give the same accuracy on the same device count; compare the mean with '
        "the config docstring's figure (differences within ~2 std are seed noise)")
  peers = [p for p in args.peers.split(',') if p] or (['flax'] if args.peer_epochs else [])
  if peers:
    epochs = args.peer_epochs or 3
    result['peers'] = [run_peer(p, epochs, args.peer_train_limit, args.peer_seeds) for p in peers]
    result['peer_ratios'] = peer_ratios(result)
  if args.scaling:
    result['scaling'] = run_scaling(args, overrides, workdir)
  result['load_average_1m_end'] = os.getloadavg()[0]
  result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  device_bytes = _peak_device_bytes()
  result['peak_device_mb'] = device_bytes and device_bytes / 2 ** 20
  out = pathlib.Path(args.json) if args.json else workdir / 'benchmark.json'
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + '\n')
  print_table(result)
  print(f'\nJSON: {out}')
  return result


if __name__ == '__main__':
  main()
