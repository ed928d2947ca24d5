"""Issue #14's acceptance: the redesign changed no number. Same config and seed -> the same bits.

`experiments/check_identical.py` trains a shrunk default run and a shrunk `best` run (ConvBN with
batch norm, EMA, augmentation, AdamW) and hashes every leaf of the final state. The references
in tests/data/identical/ were written by that script from the code before the redesign (commit
ce7f6ec), one file per JAX version:

    JAX_NUM_CPU_DEVICES=2 python experiments/check_identical.py --idx-dir /work/shared/mnist \
        --write tests/data/identical/jax-$(python -c 'import jax; print(jax.__version__)').json

A JAX version without a reference is skipped (another XLA rounds differently).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
REFERENCES = REPO / 'tests' / 'data' / 'identical'
# On jax 0.7.2 the validation figures of the old code itself differ between reruns on the
# 2-device CPU (epoch 2 of the default run: 0.9316, 0.8887; a race in evaluating a second split
# right after the first, see the issue #14 note), while the parameters and test figures agree.
UNSTABLE = {'0.7.2': ('validation_',)}


@pytest.mark.slow
def test_shrunk_default_and_best_runs_are_bit_identical_to_before_the_redesign(idx_dir, tmp_path):
  import jax
  reference = REFERENCES / f'jax-{jax.__version__}.json'
  if not reference.is_file():
    pytest.skip(f'no reference for jax {jax.__version__} in {REFERENCES}')
  out = tmp_path / 'now.json'
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='2', PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(REPO / 'experiments' / 'check_identical.py'),
                         '--idx-dir', str(idx_dir), '--write', str(out)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  now, before = json.loads(out.read_text()), json.loads(reference.read_text())
  skip = UNSTABLE.get(jax.__version__, ())
  for run in ('default', 'best'):
    changed = [k for k in before[run]['leaves'] if now[run]['leaves'].get(k) != before[run]['leaves'][k]]
    assert not changed, f'{run}: {len(changed)} leaves differ, e.g. {changed[:3]}'
    assert set(now[run]['leaves']) == set(before[run]['leaves'])
    strip = lambda records: [{k: v for k, v in r.items() if not k.startswith(skip or ('\0',))}  # noqa: E731
                             for r in records]
    assert strip(now[run]['records']) == strip(before[run]['records']), run
