"""experiments/benchmark.py on a tiny config: it runs, and its JSON holds every figure.

No timing is asserted (timings on a shared CPU are noise); FLOP counts, accuracies and the
structure of the record are.
"""

import importlib.util
import json
import subprocess
import sys

from conftest import REPO, tiny_overrides

# The tiny CNN (conv 8, conv 16, dense 32): forward multiply-adds x 2, x 3 for a training step.
TINY_FORWARD_FLOPS = 2 * (28 * 28 * 9 * 1 * 8 + 14 * 14 * 9 * 8 * 16 + 7 * 7 * 16 * 32 + 32 * 10)


def _load_benchmark():
  spec = importlib.util.spec_from_file_location('benchmark', REPO / 'experiments' / 'benchmark.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_benchmark_writes_json_with_every_field(idx_dir, tfds_dir, tmp_path, monkeypatch):
  monkeypatch.setenv('MNIST_IDX_DIR', str(idx_dir))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tfds_dir))
  benchmark = _load_benchmark()
  out = tmp_path / 'bench.json'
  overrides = [f'--config.{o}' for o in tiny_overrides(idx_dir, tfds_dir, tmp_path / 'runs')
               if not o.startswith('num_epochs')] + ['--config.num_epochs=1']
  benchmark.main(['--steps', '4', '--warmup', '1', '--seeds', '1', '--target', '0.2',
                  '--peak-gflops', '100', '--warm', '--phases',
                  '--scaling', '--scaling-batches', '128', '--scaling-devices', '1',
                  '--scaling-images', '256',
                  '--json', str(out), *overrides])
  result = json.loads(out.read_text())

  machine = result['machine']
  assert machine['cpu_cores'] >= 1 and machine['jax'] and machine['num_devices'] == 2
  assert result['peak_gflops']['used'] == 100 and result['peak_gflops']['source'] == '--peak-gflops'

  training = result['training']
  assert training['train_flops_per_image_analytic'] == 3 * TINY_FORWARD_FLOPS
  assert training['params'] == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 784 * 32 + 32 + 32 * 10 + 10
  for key in ('compile_seconds', 'train_images_per_s', 'achieved_gflops_analytic',
              'share_of_peak', 'predict_images_per_s', 'eval_images_per_s', 'cores_busy',
              'images_per_cpu_second'):
    assert training[key] > 0, key
  assert result['peak_rss_mb'] > 0

  seeds = result['seeds']['cold']
  (run,) = seeds['runs']
  assert run['seed'] == 0 and 0.2 <= run['test_accuracy'] <= 1
  assert seeds['test_accuracy']['mean'] == run['test_accuracy']
  # The target was reached in the only epoch, so its time is that epoch's training time.
  assert run['epoch_to_target'] == 1
  assert run['time_to_target_seconds'] == run['train_seconds']
  assert run['process_seconds'] > run['train_seconds']
  summary = json.loads((tmp_path / 'runs' / 'seed0' / 'summary.json').read_text())
  assert summary['test_accuracy'] == run['test_accuracy']

  # --warm: the same seed again on the compilation cache the cold run filled, same accuracy
  (warm,) = result['seeds']['warm']['runs']
  assert warm['test_accuracy'] == run['test_accuracy'] and result['seeds']['warm_same_accuracy']
  assert any((tmp_path / 'runs' / 'xla-cache-seed0').iterdir())
  # --phases: the process split into its parts, which add up to the time spent in Python
  phases = run['phases']
  for key in ('imports', 'data', 'init', 'epochs', 'evaluation', 'checkpoint', 'compile'):
    assert phases[key] > 0, key
  assert abs(phases['epochs'] - run['train_seconds']) < 1e-2
  parts = sum(v for k, v in phases.items() if k not in ('in_python', 'compile', 'interpreter'))
  assert abs(parts - phases['in_python']) < 1e-2
  assert phases['interpreter'] > 0
  # --scaling: one cell (1 device, batch 128) with a positive epoch time
  (cell,) = result['scaling']
  assert cell['devices'] == 1 and cell['batch_size'] == 128 and cell['epoch_seconds'] > 0


def test_peer_ratios_are_ours_over_theirs_and_their_time_over_ours():
  benchmark = _load_benchmark()
  result = {
      'target': 0.99,
      'training': {'train_images_per_s': 4000.0, 'achieved_gflops_analytic': 100.0},
      'seeds': {'cold': {'time_to_target_seconds': {'mean': 5.0}}},
      'peers': [{'peer': 'flax', 'steady_images_per_s': 2000.0, 'steady_gflops': 50.0,
                 'time_to_99_s': 100.0},
                {'peer': 'torch', 'error': 'not installed'}],
  }
  assert benchmark.peer_ratios(result) == {
      'flax': {'train_images_per_s': 2.0, 'gflops': 2.0, 'time_to_99': 20.0}}


def test_flop_counter_counts_convs_and_matmuls():
  import jax.numpy as jnp
  from mnist_flax import models
  benchmark = _load_benchmark()
  model = models.CNN(features=(8, 16), hidden=32)
  variables = model.init(__import__('jax').random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert benchmark.analytic_train_flops_per_image(model, variables) == 3 * TINY_FORWARD_FLOPS


def test_unoptimized_init_compile_gives_the_same_parameters(tiny_config):
  """steps.init_train_state skips LLVM optimization for speed; the parameters must not change
  beyond float rounding (else seeds would silently give other results than before)."""
  import functools
  import jax
  import numpy as np
  from mnist_flax import models
  from mnist_flax.training import sharding, steps
  mesh = sharding.make_mesh()
  model = models.get_model(tiny_config)
  rng = jax.random.PRNGKey(3)
  fast = steps.init_train_state(tiny_config, model, rng, 16, mesh)
  optimized = jax.jit(functools.partial(steps.create_train_state, tiny_config, model,
                                        steps_per_epoch=16))(rng)
  for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(optimized.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  assert fast.params['Conv_0']['kernel'].sharding.is_fully_replicated


def test_strongest_peers_and_speedrun_ratios():
  benchmark = _load_benchmark()
  result = {
      'target': 0.99, 'config': 'default', 'seeds_config': 'speedrun',
      'training': {'train_images_per_s': 6000.0, 'achieved_gflops_analytic': 100.0},
      'seeds': {'cold': {'train_seconds': {'mean': 2.0}, 'time_to_target_seconds': {'mean': 2.0},
                         'test_accuracy': {'mean': 0.991}}},
      'peers': [{'peer': 'torch-refcnn', 'steady_images_per_s': 5000.0, 'steady_gflops': 80.0,
                 'time_to_99_s': None},
                {'peer': 'torch-refcnn-bf16', 'steady_images_per_s': 10000.0,
                 'steady_gflops': 160.0, 'time_to_99_s': None},
                {'peer': 'torch-speedrun', 'mean_train_s': 3.0, 'mean_test_acc': 0.989},
                {'peer': 'torch-speedrun-bf16', 'mean_train_s': 1.0, 'mean_test_acc': 0.989},
                {'peer': 'torch-refcnn-compile', 'skipped': 'no PyTorch'}],
  }
  best = benchmark.strongest_peers(result)
  assert best['images_per_s']['peer'] == 'torch-refcnn-bf16'
  assert best['train_seconds']['peer'] == 'torch-speedrun-bf16'
  ratios = benchmark.peer_ratios(result)
  assert ratios['torch-refcnn-bf16'] == {'train_images_per_s': 0.6, 'gflops': 100.0 / 160.0}
  assert ratios['torch-speedrun'] == {'train_seconds': 1.5}
  assert 'torch-refcnn-compile' not in ratios


def test_a_torch_peer_without_torch_is_skipped_with_the_install_line(tmp_path, monkeypatch):
  benchmark = _load_benchmark()
  (tmp_path / 'torch_refcnn.py').write_text('raise SystemExit(3)\n')
  no_torch = tmp_path / 'python'
  no_torch.write_text('#!/bin/sh\nexit 1\n')  # fails `-c "import torch"` as a torch-less one does
  no_torch.chmod(0o755)
  monkeypatch.setattr(benchmark, 'PEERS_DIR', tmp_path)
  monkeypatch.setenv('PEER_TORCH_PYTHON', str(no_torch))
  peer = benchmark.run_peer('torch-refcnn-bf16', epochs=1)
  assert peer['peer'] == 'torch-refcnn-bf16' and 'pip install torch==2.13.0' in peer['skipped']
  args, _ = benchmark.parse_args(['--peers'])
  assert args.peers.split(',') == list(benchmark.PYTORCH_PEERS)


def test_op_table_names_each_convolution_pass_and_the_dense_layers(tmp_path):
  """experiments/op_table.py profiles the real train step and sorts every executed HLO
  instruction into the table's rows: both convolutions' forward and kernel gradient, the second
  one's input gradient (the first layer has none), the dense layers and the all-reduce."""
  out = tmp_path / 'ops.json'
  result = subprocess.run(
      [sys.executable, str(REPO / 'experiments' / 'op_table.py'), '--config', 'default',
       '--steps', '2', '--profiles', '1', '--json', str(out)],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  record = json.loads(out.read_text())
  rows = record['ops_ms_per_device']
  expected = {'Conv_0 forward', 'Conv_0 kernel gradient', 'Conv_1 forward',
              'Conv_1 input gradient', 'Conv_1 kernel gradient', 'Dense_0 forward',
              'Dense_0 gradients'}
  if record['devices'] > 1:  # one CPU device per core: a 1-core machine has no all-reduce
    expected.add('all-reduce (gradients, metrics)')
  assert expected <= set(rows), sorted(rows)
  assert 'Conv_0 input gradient' not in rows
  assert all(ms >= 0 for ms in rows.values())


def test_benchmark_puts_linen_and_nnx_side_by_side(idx_dir, tfds_dir, tmp_path, monkeypatch):
  monkeypatch.setenv('MNIST_IDX_DIR', str(idx_dir))
  benchmark = _load_benchmark()
  overrides = [f'--config.{o}' for o in tiny_overrides(idx_dir, tfds_dir, tmp_path / 'runs')
               if not o.startswith('num_epochs')] + ['--config.num_epochs=1']
  out = tmp_path / 'bench.json'
  benchmark.main(['--models', 'cnn,nnx_cnn', '--rounds', '1', '--steps', '2', '--warmup', '1',
                  '--seeds', '1', '--peak-gflops', '100', '--json', str(out), *overrides])
  linen, nnx_model = json.loads(out.read_text())['models']
  assert (linen['model'], nnx_model['model']) == ('cnn', 'nnx_cnn')
  assert linen['params'] == nnx_model['params']
  assert (linen['rounds'][0]['train_flops_per_image_analytic']
          == nnx_model['rounds'][0]['train_flops_per_image_analytic'])
  for entry in (linen, nnx_model):
    assert entry['train_images_per_s'] > 0 and entry['predict_images_per_s'] > 0
    (run,) = entry['seeds']['cold']['runs']
    seed_dir = tmp_path / 'runs' / entry['model'] / 'seed0'
    summary = json.loads((seed_dir / 'summary.json').read_text())
    assert run['test_accuracy'] == summary['test_accuracy'] > 0.3
