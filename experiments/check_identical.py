"""Same config and seed -> bit-identical training: sha256 of every leaf of two shrunk runs.

    JAX_NUM_CPU_DEVICES=2 python experiments/check_identical.py --idx-dir /work/shared/mnist \
        [--write tests/data/identical/jax-0.10.2.json]

Trains, through `train_and_evaluate`, a shrunk default run (the reference CNN, Adam, a validation
split) and a shrunk `best` run (ConvBN with batch norm and dropout, EMA, augmentation, AdamW),
then prints one JSON object: per run, the sha256 of every leaf of the final TrainState (params,
batch_stats, ema, opt_state, step) and the per-epoch records without their timings. Comparing it
with `tests/data/identical/jax-<version>.json` (written by this script from the code before the
issue #14 redesign, at commit ce7f6ec, one file per JAX version) is what
`tests/test_identical.py` does.

The numbers are those of two CPU devices (the test suite's setting), float32, on this machine's
XLA build; another JAX version or device count may round differently and needs its own reference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault('JAX_NUM_CPU_DEVICES', '2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from a checkout without installing

# Each run takes well under a minute on the shared 2-core CPU.
RUNS = {
    'default': ('default',
                ['train_limit=4096', 'validation_size=512', 'num_epochs=2']),
    'best': ('best',
             ['train_limit=2048', 'num_epochs=2', 'model_kwargs.features=(16, 32)',
              'model_kwargs.hidden=64']),
}
COMMON = ['data_source=idx', 'progress_bar=false', 'batch_size=128']


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


def run_one(name: str, idx_dir: str, workdir: pathlib.Path) -> dict:
  from mnist_flax import config as config_lib, configs  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import train
  recipe, overrides = RUNS[name]
  config = configs.load(recipe, validate=False)
  config = config_lib.apply_overrides(
      config, COMMON + overrides + [f'idx_dir={idx_dir}', f'workdir={workdir / name}'])
  state = train.train_and_evaluate(config)
  records = [json.loads(line) for line in (workdir / name / 'metrics.jsonl').read_text().splitlines()]
  records = [{k: v for k, v in r.items() if k != 'seconds'} for r in records]
  tree = {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'ema': state.ema, 'opt_state': state.opt_state}
  return {'leaves': leaf_hashes(tree), 'records': records}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--idx-dir', default=os.environ.get('MNIST_IDX_DIR', ''))
  parser.add_argument('--write', help='also write the result to this JSON file')
  parser.add_argument('--runs', nargs='+', default=list(RUNS), choices=list(RUNS))
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix='mnist_flax_identical_') as tmp:
    result = {name: run_one(name, args.idx_dir, pathlib.Path(tmp)) for name in args.runs}
  import jax  # pylint: disable=import-outside-toplevel
  result['versions'] = {'jax': jax.__version__, 'devices': jax.device_count()}
  text = json.dumps(result, indent=1, sort_keys=True) + '\n'
  if args.write:
    pathlib.Path(args.write).write_text(text)
  print(text)
  return result


if __name__ == '__main__':
  main()
