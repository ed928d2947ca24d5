"""The house rules of issue #14: layers that import only downward, functions that fit a screen.

The layers are the import-linter contract in pyproject.toml; a circle (or an upward import)
fails `lint-imports`, which runs here on this checkout and on a copy with a bad import added.
"""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'mnist_flax'
MAX_LINES = 60  # per function (issue #14: helpers about 40, none over about 60)
TRAIN_AND_EVALUATE_LINES = 50
# Declarative tables, not logic: the default config, its runtime-only fields, the CLI's verbs.
TABLES = {('config.py', 'default_config'), ('config.py', 'runtime_fields'),
          ('cli.py', 'build_parser')}


def lint_imports(root: pathlib.Path) -> subprocess.CompletedProcess:
  """`lint-imports` with the contract of root/pyproject.toml on the package under `root`."""
  pytest.importorskip('importlinter')  # the [dev] extra
  code = 'import sys; from importlinter.cli import lint_imports_command; lint_imports_command()'
  return subprocess.run([sys.executable, '-c', code, '--no-cache'], cwd=root, capture_output=True,
                        text=True, timeout=300, env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'})


pytestmark = pytest.mark.fast


def test_the_package_keeps_its_layers():
  result = lint_imports(REPO)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'KEPT' in result.stdout


@pytest.mark.parametrize('module, bad_import', [
    ('runs/rundir.py', 'from mnist_flax.training import train'),  # an upward import that makes a circle
    ('config.py', 'from mnist_flax.training import steps'),  # the circle issue #14 found (config -> train)
])
def test_an_added_circle_fails_the_check(tmp_path, module, bad_import):
  shutil.copytree(PACKAGE, tmp_path / 'mnist_flax', ignore=shutil.ignore_patterns('__pycache__'))
  shutil.copy(REPO / 'pyproject.toml', tmp_path / 'pyproject.toml')
  target = tmp_path / 'mnist_flax' / module
  target.write_text(target.read_text() + f'\n\ndef _bad():\n  {bad_import}\n')
  result = lint_imports(tmp_path)
  assert result.returncode != 0, result.stdout
  assert 'BROKEN' in result.stdout


def _functions():
  for path in sorted(PACKAGE.rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        yield path.relative_to(PACKAGE), node


def test_no_function_is_longer_than_a_screen():
  long = [f'{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)'
          for path, node in _functions()
          if node.end_lineno - node.lineno + 1 > MAX_LINES and (str(path), node.name) not in TABLES]
  assert not long, long


def test_train_and_evaluate_reads_in_one_screen():
  (node,) = [n for path, n in _functions()
             if str(path) == 'training/train.py' and n.name == 'train_and_evaluate']
  assert node.end_lineno - node.lineno + 1 <= TRAIN_AND_EVALUATE_LINES


def test_function_level_imports_say_why():
  """An import inside a function is there for start-up time (or is optional): it says why, in
  parentheses after its pragma or in a comment just above."""
  silent = []
  for path, node in _functions():
    if str(path) == 'cli.py':  # the launcher: each command imports what it needs (its docstring)
      continue
    lines = (PACKAGE / path).read_text().splitlines()
    for inner in ast.walk(node):
      if isinstance(inner, (ast.Import, ast.ImportFrom)):
        line = lines[inner.lineno - 1]
        above = [l.strip() for l in lines[max(0, inner.lineno - 3):inner.lineno - 1]]
        if 'import-outside-toplevel  (' not in line and not any(l.startswith('#') for l in above):
          silent.append(f'{path}:{inner.lineno}')
  assert not silent, silent
