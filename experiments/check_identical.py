"""Did a change alter any number? Two commits' code trains the same shrunk runs on this machine.

    python experiments/check_identical.py --against ac614d8 [--idx-dir /work/shared/mnist]

exports the older commit's tree (`git archive`) into a temporary folder and runs this script once
with each tree's `mnist_flax` on PYTHONPATH (this checkout's working tree, or `--new COMMIT`),
one fresh process each, same environment (2 CPU devices, no compilation cache). Each trains,
through the public API only (`get_config`, `apply_overrides`, `train_and_evaluate`):

  default  the reference CNN, Adam, warmup-cosine: 4,096 images, 512 held out, 2 epochs;
  best     the `best` recipe (ConvBN with batch norm and dropout, EMA, augmentation, AdamW,
           label smoothing) at (16, 32) channels: 2,048 images, 512 held out, 2 epochs;

and records the sha256 of every leaf of the returned TrainState (params, batch statistics, EMA,
optimizer state, step) and every per-epoch record of metrics.jsonl but its wall-clock seconds.
Prints the differences and exits 1 if there is any, 0 if every bit agrees.

Only one machine's results are ever compared: another CPU makes XLA choose other kernels and
round differently, so hashes written elsewhere say nothing. Without --against the script prints
this checkout's hashes as JSON (--write FILE saves them).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent

# The `best` recipe (experiments/configs/best.py) written as overrides of the default config, so
# that only the package's public API is needed, in any layout of the package; shrunk to (16, 32)
# channels and 64 hidden units, and given a validation split.
BEST = ['model=convbn', 'model_kwargs.features=(16, 32)', 'model_kwargs.hidden=64',
        'model_kwargs.dropout=0.25', 'optimizer=adamw', 'learning_rate=0.003',
        'weight_decay=0.01', 'schedule=warmup_cosine', 'warmup_epochs=1.0',
        'label_smoothing=0.1', 'ema_decay=0.999', 'augment.translate=2.0', 'augment.rotate=10.0',
        'augment.scale=0.1', 'augment.shear=5.0', 'name=best']
# Each run takes about half a minute of the 2-core CPU.
RUNS = {
    'default': ['train_limit=4096', 'validation_size=512', 'num_epochs=2'],
    'best': BEST + ['train_limit=2048', 'validation_size=512', 'num_epochs=2'],
}
COMMON = ['data_source=idx', 'progress_bar=false', 'batch_size=128']
TIMING_KEYS = ('seconds',)


def public_api():
  """(get_config, apply_overrides, train_and_evaluate) of the `mnist_flax` on sys.path."""
  import mnist_flax  # pylint: disable=import-outside-toplevel
  try:
    return mnist_flax.get_config, mnist_flax.apply_overrides, mnist_flax.train_and_evaluate
  except AttributeError:  # a package without the top-level API: its flat modules
    config = importlib.import_module('mnist_flax.config')
    train = importlib.import_module('mnist_flax.train')
    return config.default_config, config.apply_overrides, train.train_and_evaluate


def leaf_hashes(tree) -> dict[str, str]:
  """'path': 'dtype shape sha256' of every leaf, on the host."""
  import jax  # pylint: disable=import-outside-toplevel  (after JAX_NUM_CPU_DEVICES is set)
  import numpy as np  # pylint: disable=import-outside-toplevel
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    arr = np.ascontiguousarray(np.asarray(leaf))
    out[jax.tree_util.keystr(path)] = (f'{arr.dtype} {arr.shape} '
                                       f'{hashlib.sha256(arr.tobytes()).hexdigest()}')
  return out


def run_one(name: str, idx_dir: str, workdir: pathlib.Path, extra: list[str]) -> dict:
  get_config, apply_overrides, train_and_evaluate = public_api()
  config = apply_overrides(get_config(), COMMON + RUNS[name] + list(extra) + [
      f'idx_dir={idx_dir}', f'workdir={workdir / name}'])
  state = train_and_evaluate(config)
  lines = (workdir / name / 'metrics.jsonl').read_text().splitlines()
  records = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]
  return {'leaves': leaf_hashes(state), 'records': records}


def train_here(code: pathlib.Path, idx_dir: str, runs: list[str], extra: list[str]) -> dict:
  """Trains `runs` with the `mnist_flax` of the tree `code`; returns the hashes."""
  os.environ.setdefault('JAX_NUM_CPU_DEVICES', '2')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  sys.path.insert(0, str(code))
  import mnist_flax  # pylint: disable=import-outside-toplevel
  package = pathlib.Path(mnist_flax.__file__).resolve().parent
  if not package.is_relative_to(code.resolve()):
    sys.exit(f'check_identical: imported mnist_flax from {package}, not from {code} (an install '
             'shadows it: run with PYTHONPATH pointing at the tree)')
  with tempfile.TemporaryDirectory(prefix='mnist_flax_identical_') as tmp:
    result = {name: run_one(name, idx_dir, pathlib.Path(tmp), extra) for name in runs}
  import jax  # pylint: disable=import-outside-toplevel
  import benchmark  # pylint: disable=import-outside-toplevel  (this folder's: the CPU's name)
  result['versions'] = {'jax': jax.__version__, 'devices': jax.device_count(),
                        'machine': benchmark.cpu_model(), 'code': str(code)}
  return result


def differences(old: dict, new: dict, runs: list[str]) -> list[str]:
  """One line per difference between two results of `train_here` (empty: identical)."""
  lines = []
  for name in runs:
    a, b = old[name]['leaves'], new[name]['leaves']
    changed = [k for k in a if k in b and a[k] != b[k]]
    for label, keys in (('changed', changed), ('only in old', [k for k in a if k not in b]),
                        ('only in new', [k for k in b if k not in a])):
      if keys:
        lines.append(f'{name}: {len(keys)} of {len(a)} state leaves {label}, e.g. '
                     f'{", ".join(keys[:3])}')
    ra, rb = old[name]['records'], new[name]['records']
    if len(ra) != len(rb):
      lines.append(f'{name}: {len(ra)} epoch records in old, {len(rb)} in new')
    for i, (x, y) in enumerate(zip(ra, rb), 1):
      for key in sorted(set(x) | set(y)):
        if x.get(key, '(missing)') != y.get(key, '(missing)'):
          lines.append(f'{name}: epoch {x.get("epoch", i)} {key}: old {x.get(key, "(missing)")}, '
                       f'new {y.get(key, "(missing)")}')
  return lines


def export_commit(commit: str, into: pathlib.Path) -> tuple[pathlib.Path, str]:
  """`git archive` of `commit` unpacked into `into`; returns (the tree, the full hash)."""
  def git(*args, **kwargs):
    return subprocess.run(['git', '-C', str(REPO), *args], check=True, **kwargs)
  try:
    full = git('rev-parse', '--verify', f'{commit}^{{commit}}', capture_output=True,
               text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as e:
    sys.exit(f'check_identical: {commit!r} is not a commit of the git checkout {REPO} ({e})')
  tree = into / full[:12]
  tree.mkdir(parents=True)
  archive = git('archive', '--format=tar', full, capture_output=True).stdout
  subprocess.run(['tar', '-x', '-C', str(tree)], input=archive, check=True)
  return tree, full


def train_in_subprocess(code: pathlib.Path, args, out: pathlib.Path) -> dict:
  """This script, in a fresh process, with the tree `code` first on PYTHONPATH."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(code)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
             JAX_NUM_CPU_DEVICES=os.environ.get('JAX_NUM_CPU_DEVICES', '2'), MNIST_FLAX_CACHE='')
  command = [sys.executable, str(pathlib.Path(__file__).resolve()), '--code', str(code),
             '--idx-dir', args.idx_dir, '--write', str(out), '--quiet', '--runs', *args.runs]
  for override in args.override:
    command += ['--override', override]
  print(f'check_identical: training {", ".join(args.runs)} with {code} ...', file=sys.stderr,
        flush=True)
  done = subprocess.run(command, env=env, cwd=code, check=False)
  if done.returncode != 0:
    sys.exit(f'check_identical: the runs with {code} failed (exit {done.returncode})')
  return json.loads(out.read_text())


def compare(args) -> int:
  with tempfile.TemporaryDirectory(prefix='mnist_flax_commits_') as tmp:
    tmp = pathlib.Path(tmp)
    old_tree, old_hash = export_commit(args.against, tmp)
    if args.new:
      new_tree, new_hash = export_commit(args.new, tmp / 'new')
    else:
      new_tree, new_hash = REPO, 'working tree'
    old = train_in_subprocess(old_tree, args, tmp / 'old.json')
    new = train_in_subprocess(new_tree, args, tmp / 'new.json')
  lines = differences(old, new, args.runs)
  where = (f'{new["versions"]["machine"]}, jax {new["versions"]["jax"]}, '
           f'{new["versions"]["devices"]} devices')
  if lines:
    print(f'DIFFERENT: {old_hash[:12]} (old) vs {new_hash[:12]} (new) ({where}):')
    print('\n'.join(f'  {line}' for line in lines))
    return 1
  counts = ', '.join(f'{name}: {len(new[name]["leaves"])} leaves, {len(new[name]["records"])} '
                     'epochs' for name in args.runs)
  print(f'IDENTICAL: {old_hash[:12]} vs {new_hash[:12]} ({counts}; {where})')
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--against', metavar='COMMIT',
                      help='compare with the code of this (older) commit, on this machine')
  parser.add_argument('--new', metavar='COMMIT',
                      help='with --against: the newer side (default: this working tree)')
  parser.add_argument('--idx-dir', default=os.environ.get('MNIST_IDX_DIR', ''))
  parser.add_argument('--runs', nargs='+', default=list(RUNS), choices=list(RUNS))
  parser.add_argument('--override', action='append', default=[], metavar='FIELD=VALUE',
                      help='appended to every run\'s config (e.g. to shrink it further)')
  parser.add_argument('--write', help='also write the hashes to this JSON file')
  parser.add_argument('--code', type=pathlib.Path, default=REPO, help=argparse.SUPPRESS)
  parser.add_argument('--quiet', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if not args.idx_dir:
    parser.error('no MNIST IDX folder: pass --idx-dir or set MNIST_IDX_DIR')
  args.idx_dir = str(pathlib.Path(args.idx_dir).resolve())
  if args.against:
    return compare(args)
  if args.new:
    parser.error('--new needs --against')
  result = train_here(args.code, args.idx_dir, args.runs, args.override)
  text = json.dumps(result, indent=1, sort_keys=True) + '\n'
  if args.write:
    pathlib.Path(args.write).write_text(text)
  if not args.quiet:
    print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
