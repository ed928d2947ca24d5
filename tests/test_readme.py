"""The README's and docs/extending.md's extension examples, run as a user would: the code block
saved as a file of its own, named in config.imports, trained and used for a prediction by the
real `mnist-flax` in fresh processes. So the examples cannot drift from the library."""

import json
import pathlib
import re

import pytest

from conftest import REPO, run_cli, tiny_overrides

pytestmark = pytest.mark.slow
SAMPLE = REPO / 'experiments' / 'samples' / '7_mnist_28x28.png'


def code_block(doc: pathlib.Path, first_line: str) -> str:
  """The ```python block of `doc` whose first line is `first_line`."""
  for block in re.findall(r'```python\n(.*?)```', doc.read_text(), re.S):
    if block.startswith(first_line + '\n'):
      return block
  raise AssertionError(f'{doc} has no python block starting {first_line!r}')


@pytest.mark.parametrize('doc, module, overrides', [
    ('README.md', 'my_parts.py', ['model=tiny_mlp', 'loss=focal']),
    ('docs/extending.md', 'my_nnx.py', ['model=nnx_mlp']),
], ids=['readme-linen-loss-metric', 'extending-nnx'])
def test_documented_extension_trains_and_predicts(doc, module, overrides, idx_dir, tfds_dir,
                                                  real_data_env, tmp_path):
  (tmp_path / module).write_text(code_block(REPO / doc, f'# {module}'))
  workdir = tmp_path / 'run'
  tiny = [o for o in tiny_overrides(idx_dir, tfds_dir, workdir) if not o.startswith('model_kwargs')]
  args = ['train', *[f'--config.{o}' for o in tiny],
          f'--config.imports={tmp_path / module}', *[f'--config.{o}' for o in overrides]]
  result = run_cli(args, env=real_data_env)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / 'metrics.jsonl').read_text().splitlines()[-1])
  assert record['test_accuracy'] > 0.3, record  # it learned (chance: 0.1)
  if module == 'my_parts.py':
    assert 'test_top2' in record and record['test_top2'] >= record['test_accuracy']
  result = run_cli(['predict', '--json', '--workdir', str(workdir), str(SAMPLE)],
                   env=real_data_env)
  assert result.returncode == 0, result.stderr[-3000:]
  (prediction,) = json.loads(result.stdout) if result.stdout.lstrip().startswith('[') else [
      json.loads(line) for line in result.stdout.splitlines() if line.strip()]
  assert 0 <= prediction['label'] <= 9
